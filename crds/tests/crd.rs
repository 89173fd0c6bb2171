//! The checked-in CRD matches the types; its CEL rules parse, avoid schema shapes that older
//! API servers cannot evaluate, and (evaluated here with the `cel` crate, after the schema's
//! defaults are applied as the API server does) accept every shipped example and reject the
//! schema-rejects cases that name a rule's message.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kube::CustomResourceExt;
use serde_json::Value as Json;
use streamjob_crds::spec::StreamJob;

fn rules(v: &Json, out: &mut Vec<String>) {
    match v {
        Json::Object(m) => {
            if let Some(Json::Array(rs)) = m.get("x-kubernetes-validations") {
                for r in rs {
                    out.push(r["rule"].as_str().expect("rule is a string").to_string());
                }
            }
            m.values().for_each(|x| rules(x, out));
        }
        Json::Array(a) => a.iter().for_each(|x| rules(x, out)),
        _ => {}
    }
}

fn crd_json() -> Json {
    serde_json::to_value(StreamJob::crd()).unwrap()
}

/// The openAPIV3Schema of the served version.
fn schema() -> Json {
    crd_json()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn checked_in_crd_is_up_to_date() {
    let generated = serde_yaml::to_string(&StreamJob::crd()).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/streamjob.yaml");
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "crds/streamjob.yaml is stale: run `cargo run -p streamjob-crds --bin crdgen > crds/streamjob.yaml`"
    );
}

#[test]
fn crd_cel_rules_parse() {
    let mut all = Vec::new();
    rules(&crd_json(), &mut all);
    assert!(all.len() >= 8, "{all:?}");
    for r in &all {
        if let Err(e) = cel::parser::Parser::new().parse(r) {
            panic!("rule {r:?} does not parse: {e}");
        }
    }
}

#[test]
fn crd_basics() {
    let crd = crd_json();
    assert_eq!(crd["spec"]["group"], "streamjob.dev");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "sj");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object());
    let cols: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        cols,
        [
            "Phase",
            "Parallelism",
            "Ready",
            "Desired",
            "Rate",
            "Lag",
            "Last-Checkpoint",
            "Restarts",
            "Age"
        ]
    );
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["properties"]["steps"]["minItems"], 1);
    assert_eq!(
        spec["properties"]["parallelism"]["minimum"].as_f64(),
        Some(1.0)
    );
    assert_eq!(
        spec["properties"]["parallelism"]["maximum"].as_f64(),
        Some(32768.0)
    );
    assert_eq!(
        spec["properties"]["maxParallelism"]["maximum"].as_f64(),
        Some(32768.0)
    );
    let on_error = &spec["properties"]["onError"]["enum"];
    assert_eq!(*on_error, serde_json::json!(["fail", "skip", "deadLetter"]));
}

#[test]
fn the_scale_subresource_drives_parallelism() {
    let crd = crd_json();
    let version = &crd["spec"]["versions"][0];
    assert_eq!(
        version["subresources"]["scale"],
        serde_json::json!({
            "specReplicasPath": ".spec.parallelism",
            "statusReplicasPath": ".status.parallelism",
            "labelSelectorPath": ".status.selector"
        })
    );
    // The paths name fields the types have.
    let schema = &version["schema"]["openAPIV3Schema"]["properties"];
    assert_eq!(
        schema["spec"]["properties"]["parallelism"]["type"],
        "integer"
    );
    assert_eq!(
        schema["status"]["properties"]["parallelism"]["type"],
        "integer"
    );
    assert_eq!(schema["status"]["properties"]["selector"]["type"], "string");
}

// ---------------------------------------------------------------------------------------
// Shapes older API servers cannot evaluate
// ---------------------------------------------------------------------------------------

/// An object schema without properties, additionalProperties or
/// x-kubernetes-preserve-unknown-fields: Kubernetes before 1.29 cannot turn such a value into a
/// CEL value, so any rule that reads it fails to evaluate (kubernetes/kubernetes#120226).
fn property_less(s: &Json) -> bool {
    s["type"] == "object"
        && s.get("properties")
            .and_then(Json::as_object)
            .is_none_or(|p| p.is_empty())
        && s.get("additionalProperties")
            .is_none_or(|a| !a.is_object() || a.as_object().unwrap().is_empty())
        && s["x-kubernetes-preserve-unknown-fields"] != true
}

/// Names of the property-less objects in the subtree of `s` (itself as "self").
fn property_less_below(s: &Json, name: &str, out: &mut Vec<String>) {
    if property_less(s) {
        out.push(name.to_string());
    }
    if let Some(props) = s.get("properties").and_then(Json::as_object) {
        for (k, v) in props {
            property_less_below(v, k, out);
        }
    }
    if let Some(items) = s.get("items") {
        property_less_below(items, &format!("{name}[]"), out);
    }
    if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
        property_less_below(a, &format!("{name}{{}}"), out);
    }
}

/// Every rule whose node has a property-less object in its subtree and that may read it: by
/// name (`.print`), or through the whole value (`self` not followed by a field access, as in
/// `self == oldSelf`).
fn rules_touching_property_less(s: &Json, path: &str, out: &mut Vec<String>) {
    if let Some(rules) = s.get("x-kubernetes-validations").and_then(Json::as_array) {
        let mut names = Vec::new();
        property_less_below(s, "self", &mut names);
        for r in rules {
            let rule = r["rule"].as_str().unwrap();
            let whole_self = rule
                .match_indices("self")
                .any(|(i, _)| !rule[i + 4..].starts_with('.'));
            for n in &names {
                let field = n.trim_end_matches("[]").trim_end_matches("{}");
                let touched = match n.as_str() {
                    "self" => true,
                    _ => whole_self || rule.contains(&format!(".{field}")),
                };
                if touched {
                    out.push(format!("{path}: rule {rule:?} may read property-less {n}"));
                }
            }
        }
    }
    if let Some(props) = s.get("properties").and_then(Json::as_object) {
        for (k, v) in props {
            rules_touching_property_less(v, &format!("{path}.{k}"), out);
        }
    }
    if let Some(items) = s.get("items") {
        rules_touching_property_less(items, &format!("{path}[]"), out);
    }
    if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
        rules_touching_property_less(a, &format!("{path}{{}}"), out);
    }
}

#[test]
fn rules_use_only_fields_kubernetes_1_25_knows() {
    // `messageExpression` came with 1.27, `fieldPath` and `reason` with 1.28: a 1.25 API
    // server refuses them under strict field validation.
    fn walk(v: &Json, out: &mut Vec<String>) {
        match v {
            Json::Object(m) => {
                if let Some(Json::Array(rs)) = m.get("x-kubernetes-validations") {
                    for r in rs {
                        for k in r.as_object().unwrap().keys() {
                            if k != "rule" && k != "message" {
                                out.push(format!("{k} in {r}"));
                            }
                        }
                    }
                }
                m.values().for_each(|x| walk(x, out));
            }
            Json::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(&crd_json(), &mut found);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn no_cel_rule_reads_an_object_without_properties() {
    let mut found = Vec::new();
    rules_touching_property_less(&schema(), "", &mut found);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_property_less_check_finds_the_rule_that_broke_kubernetes_1_28() {
    // The sink rule this CRD had until the check existed.
    let old = serde_json::json!({
        "type": "object",
        "properties": {
            "print": {"type": "object", "nullable": true},
            "file": {"type": "object", "properties": {"path": {"type": "string"}}}
        },
        "x-kubernetes-validations": [{
            "rule": "[has(self.print), has(self.file)].filter(x, x).size() == 1",
            "message": "exactly one"
        }]
    });
    let mut found = Vec::new();
    rules_touching_property_less(&old, "sink", &mut found);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("property-less print"), "{found:?}");
    // A whole-value rule reads it too.
    let mut whole = old.clone();
    whole["x-kubernetes-validations"][0]["rule"] = "self == oldSelf".into();
    let mut found = Vec::new();
    rules_touching_property_less(&whole, "sink", &mut found);
    assert_eq!(found.len(), 1, "{found:?}");
}

// ---------------------------------------------------------------------------------------
// The rules evaluated on the examples
// ---------------------------------------------------------------------------------------

/// A failed or broken rule at a path.
#[derive(Debug)]
struct Violation {
    path: String,
    rule: String,
    message: String,
    /// The rule did not evaluate to a boolean (an error on the API server too).
    broken: bool,
}

/// Applies the schema's defaults to absent fields, as the API server does before it
/// validates.
fn apply_defaults(s: &Json, v: &mut Json) {
    match v {
        Json::Object(m) => {
            if let Some(props) = s.get("properties").and_then(Json::as_object) {
                for (k, ps) in props {
                    if !m.contains_key(k)
                        && let Some(d) = ps.get("default")
                    {
                        m.insert(k.clone(), d.clone());
                    }
                    if let Some(child) = m.get_mut(k) {
                        apply_defaults(ps, child);
                    }
                }
            }
        }
        Json::Array(a) => {
            if let Some(items) = s.get("items") {
                a.iter_mut().for_each(|x| apply_defaults(items, x));
            }
        }
        _ => {}
    }
}

fn to_cel(v: &Json) -> cel::Value {
    match v {
        Json::Null => cel::Value::Null,
        Json::Bool(b) => cel::Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap()),
        },
        Json::String(s) => cel::Value::String(Arc::new(s.clone())),
        Json::Array(a) => cel::Value::List(Arc::new(a.iter().map(to_cel).collect())),
        Json::Object(m) => {
            let map: std::collections::HashMap<String, cel::Value> =
                m.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            cel::Value::from(map)
        }
    }
}

/// Evaluates every rule of `s` on `v` (with `old` for transition rules, which are skipped
/// without it, as on a create), recursing into properties, items and map values.
fn evaluate(s: &Json, v: &Json, old: Option<&Json>, path: &str, out: &mut Vec<Violation>) {
    if let Some(rules) = s.get("x-kubernetes-validations").and_then(Json::as_array) {
        for r in rules {
            let rule = r["rule"].as_str().unwrap();
            let transition = rule.contains("oldSelf");
            if transition && old.is_none() {
                continue;
            }
            let program = cel::Program::compile(rule).unwrap();
            let mut ctx = cel::Context::default();
            ctx.add_variable_from_value("self", to_cel(v));
            if let Some(o) = old {
                ctx.add_variable_from_value("oldSelf", to_cel(o));
            }
            let result = program.execute(&ctx);
            if result != Ok(cel::Value::Bool(true)) {
                out.push(Violation {
                    path: path.to_string(),
                    rule: rule.to_string(),
                    message: r["message"].as_str().unwrap_or_default().to_string(),
                    broken: !matches!(result, Ok(cel::Value::Bool(_))),
                });
            }
        }
    }
    match v {
        Json::Object(m) => {
            let props = s.get("properties").and_then(Json::as_object);
            for (k, child) in m {
                let sub = props
                    .and_then(|p| p.get(k))
                    .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()));
                if let Some(sub) = sub {
                    let old_child = old.and_then(|o| o.get(k));
                    evaluate(sub, child, old_child, &format!("{path}.{k}"), out);
                }
            }
        }
        Json::Array(a) => {
            if let Some(items) = s.get("items") {
                for (i, x) in a.iter().enumerate() {
                    // Kubernetes correlates old list items only in map lists; ours have no
                    // transition rules below a list.
                    evaluate(items, x, None, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// The StreamJob documents of a YAML file.
fn jobs_in(path: &Path) -> Vec<Json> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .filter(|d| d["kind"] == "StreamJob")
        .collect()
}

fn violations(doc: &Json, old: Option<&Json>) -> Vec<Violation> {
    let schema = schema();
    let mut doc = doc.clone();
    apply_defaults(&schema, &mut doc);
    let old = old.map(|o| {
        let mut o = o.clone();
        apply_defaults(&schema, &mut o);
        o
    });
    let mut out = Vec::new();
    evaluate(&schema, &doc, old.as_ref(), "", &mut out);
    out
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir:?}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_passes_every_rule() {
    let mut checked = 0;
    for f in yaml_files("../manifests/examples")
        .into_iter()
        .chain(yaml_files("../e2e/kind"))
    {
        for doc in jobs_in(&f) {
            let v = violations(&doc, None);
            assert!(v.is_empty(), "{}: {v:#?}", f.display());
            // An update that changes nothing passes the transition rules too.
            let v = violations(&doc, Some(&doc));
            assert!(v.is_empty(), "{} (update): {v:#?}", f.display());
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} examples");
}

/// Every schema-rejects case: a case marked `# expect-rule: <message>` is rejected by exactly
/// that rule; in every other case (`# expect:`, checked against the JSON Schema by
/// scripts/check-examples.py) every rule evaluates and passes.
#[test]
fn schema_rejects_cases_fail_the_rule_they_name() {
    let mut by_rule = 0;
    for f in yaml_files("tests/schema-rejects") {
        let text = std::fs::read_to_string(&f).unwrap();
        let expect: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect-rule: "))
            .collect();
        for doc in jobs_in(&f) {
            let v = violations(&doc, None);
            assert!(
                v.iter().all(|x| !x.broken),
                "{}: a rule did not evaluate: {v:#?}",
                f.display()
            );
            if !expect.is_empty() {
                by_rule += 1;
                assert_eq!(v.len(), 1, "{}: {v:#?}", f.display());
                assert!(
                    expect.iter().all(|e| v[0].message.contains(e)),
                    "{}: expected {expect:?}, got {v:#?}",
                    f.display()
                );
            } else {
                assert!(
                    v.is_empty(),
                    "{}: rejected by a rule, not by what it expects ({expect:?}): {v:#?}",
                    f.display()
                );
            }
        }
    }
    assert!(by_rule >= 2, "only {by_rule} cases are rejected by a rule");
}

fn wordcount() -> Json {
    let f = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/wordcount.yaml");
    jobs_in(&f).remove(0)
}

#[test]
fn max_parallelism_cannot_change_once_set() {
    let old = wordcount();
    let mut new = old.clone();
    new["spec"]["maxParallelism"] = 256.into();
    let v = violations(&new, Some(&old));
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(
        (v[0].path.as_str(), v[0].rule.as_str()),
        (".spec.maxParallelism", "self == oldSelf")
    );
    assert!(
        v[0].message.contains("maxParallelism cannot change"),
        "{v:?}"
    );
    // Unset falls back to the default (128), which differs from an explicit 256 too.
    let mut set = old.clone();
    set["spec"]["maxParallelism"] = 256.into();
    let v = violations(&old, Some(&set));
    assert_eq!(v.len(), 1, "{v:#?}");
    // Writing the default out is no change.
    let mut explicit = old.clone();
    explicit["spec"]["maxParallelism"] = 128.into();
    assert!(violations(&explicit, Some(&old)).is_empty());
    // Other fields may change, parallelism (the scale subresource) too.
    let mut scaled = old.clone();
    scaled["spec"]["parallelism"] = 7.into();
    assert!(violations(&scaled, Some(&old)).is_empty());
}
