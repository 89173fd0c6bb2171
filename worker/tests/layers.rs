//! The library's layers (docs/architecture.md): every top-level module of `src/` may use
//! only modules of a lower rank. Ranks strictly decrease along every import, so this also
//! rules out module cycles. A new top-level module must be given a rank here.
//!
//! Reads the source as text: every `crate::module` path outside comments (including
//! `use crate::{a, b}` groups and names the crate root re-exports) counts as an import.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first. Modules of equal rank may not use each other either.
const RANKS: &[(&str, u32)] = &[
    // Base: errors, the record and state codecs, keyed-state structures.
    ("error", 0),
    ("codec", 0),
    ("state", 0),
    // Tasks, channels, gates, routers, checkpoint coordination, the job graph, the
    // transport trait, restart strategies.
    ("runtime", 1),
    // The gRPC transport, coordination and health (implements runtime's Transport).
    ("net", 2),
    // The HTTP side: metrics text, job page, summary for the operator.
    ("web", 2),
    ("operators", 2),
    ("api", 3),
    // Distributed execution: wires the API's graph to net.
    ("cluster", 4),
    ("connectors", 4),
    ("declarative", 5),
];

fn rank(module: &str) -> Option<u32> {
    RANKS.iter().find(|(m, _)| *m == module).map(|&(_, r)| r)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without `//` comments (doc links name modules without importing them).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Every name used right after `crate::`, with `crate::{a, b::c}` split into `a`, `b`.
fn crate_names(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = code[i + "crate::".len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 && c == ',' {
                    names.push(ident_at(item.trim()).to_string());
                    item.clear();
                } else {
                    item.push(c);
                }
            }
            names.push(ident_at(item.trim()).to_string());
        } else {
            names.push(ident_at(rest).to_string());
        }
    }
    names.retain(|n| !n.is_empty() && n != "self");
    names
}

/// What the crate root's `pub use module::...::{A, B}` lines make available as
/// `crate::A`: name -> module.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for stmt in code_of(lib).split(';') {
        let Some(path) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let module = ident_at(path).to_string();
        let names: Vec<&str> = match (path.find('{'), path.rfind('}')) {
            (Some(a), Some(b)) => path[a + 1..b].split(',').collect(),
            _ => vec![path.rsplit("::").next().unwrap_or(path)],
        };
        for n in names {
            let n = n.trim();
            let n = n.rsplit(" as ").next().unwrap_or(n).trim();
            if !n.is_empty() {
                map.insert(n.to_string(), module.clone());
            }
        }
    }
    map
}

/// Top-level module of a file under `src/`, or `None` for the crate root and the binary.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let module = first.trim_end_matches(".rs").to_string();
    match module.as_str() {
        // The crate root only declares and re-exports; the binary (`main.rs`, `commands/`)
        // is its own crate on top of everything.
        "lib" | "main" | "commands" => None,
        _ => Some(module),
    }
}

/// Every upward or sideways import: (file, from module, to module).
fn violations(src: &Path) -> Vec<String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let reexports = root_reexports(&lib);
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut found = BTreeSet::new();
    for file in files {
        let Some(from) = module_of(src, &file) else {
            continue;
        };
        let Some(from_rank) = rank(&from) else {
            found.insert(format!(
                "{}: top-level module `{from}` has no rank in tests/layers.rs",
                file.display()
            ));
            continue;
        };
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        for name in crate_names(&code) {
            let to = match reexports.get(&name) {
                Some(m) => m.clone(),
                None => name,
            };
            if to == from {
                continue;
            }
            // Anything else the root defines itself (`Data`) or re-exports from other
            // crates (`crds`) is below every layer.
            let Some(to_rank) = rank(&to) else { continue };
            if to_rank >= from_rank {
                found.insert(format!(
                    "{}: `{from}` (rank {from_rank}) uses `crate::{to}` (rank {to_rank})",
                    file.display()
                ));
            }
        }
    }
    found.into_iter().collect()
}

#[test]
fn every_module_uses_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(
        bad.is_empty(),
        "imports against the layering:\n{}",
        bad.join("\n")
    );
}

#[test]
fn an_upward_import_is_caught() {
    let dir = std::env::temp_dir().join(format!("sj-layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("runtime")).unwrap();
    std::fs::write(
        dir.join("lib.rs"),
        "pub use api::environment::{JobExecutionResult, StreamExecutionEnvironment};\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("runtime/task.rs"),
        "// crate::api in a comment is no import\n\
         use crate::{error::TaskError, api::functions::Collector};\n\
         fn f() -> crate::JobExecutionResult { todo!() }\n\
         use crate::runtime::channel::Receiver;\n",
    )
    .unwrap();
    std::fs::write(dir.join("operators.rs"), "use crate::net::exchange;\n").unwrap();
    std::fs::write(dir.join("metrics.rs"), "use crate::error::JobError;\n").unwrap();
    let found = violations(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let rel = |s: &str| s.replace(&format!("{}/", dir.display()), "");
    let found: Vec<String> = found.iter().map(|s| rel(s)).collect();
    assert_eq!(
        found,
        vec![
            "metrics.rs: top-level module `metrics` has no rank in tests/layers.rs".to_string(),
            "operators.rs: `operators` (rank 2) uses `crate::net` (rank 2)".to_string(),
            "runtime/task.rs: `runtime` (rank 1) uses `crate::api` (rank 3)".to_string(),
        ]
    );
}
