//! The parts of a Kafka test job's spec every Kafka test writes alike (the header, a Kafka
//! source step, a Kafka sink step), and a one-worker `streamjob worker` process with its
//! metrics port.

use std::path::{Path, PathBuf};

use super::http::Proc;

/// A StreamJob named `name` with `spec` lines (`parallelism: 2`, `checkpointing: {...}`, ...)
/// and these steps (each from [`source`], [`sink`] or written as `    - {name: ..., ...}`).
pub fn job(name: &str, spec: &[&str], steps: &[String]) -> String {
    let mut yaml = format!(
        "apiVersion: streamjob.dev/v1alpha1\nkind: StreamJob\nmetadata:\n  name: {name}\nspec:\n"
    );
    for line in spec {
        yaml.push_str(&format!("  {line}\n"));
    }
    yaml.push_str("  steps:\n");
    for step in steps {
        yaml.push_str(step);
        if !step.ends_with('\n') {
            yaml.push('\n');
        }
    }
    yaml
}

/// [`job`] written to `dir/job.yaml`; its path.
pub fn write(dir: &Path, name: &str, spec: &[&str], steps: &[String]) -> PathBuf {
    let path = dir.join("job.yaml");
    std::fs::write(&path, job(name, spec, steps)).unwrap();
    path
}

/// A step reading `topics` (YAML list items, `a, b`) as group `group`, with more `kafka:`
/// settings in `extra` (`startingOffsets: earliest`, ...).
pub fn source(name: &str, broker: &str, topics: &str, group: &str, extra: &[&str]) -> String {
    let mut step = format!(
        "    - name: {name}\n      source:\n        kafka:\n          bootstrapServers: \"{broker}\"\n          topics: [{topics}]\n          groupId: {group}\n"
    );
    for line in extra {
        step.push_str(&format!("          {line}\n"));
    }
    step
}

/// A step writing to `topic`, with more `kafka:` settings in `extra` (`format: json`, ...).
pub fn sink(name: &str, broker: &str, topic: &str, extra: &[&str]) -> String {
    let mut step = format!(
        "    - name: {name}\n      sink:\n        kafka:\n          bootstrapServers: \"{broker}\"\n          topic: {topic}\n"
    );
    for line in extra {
        step.push_str(&format!("          {line}\n"));
    }
    step
}

/// `streamjob worker <manifest>` as the only worker of its job (common::http::only_worker).
pub fn one_worker(manifest: &Path, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    super::http::only_worker(manifest, extra, env)
}
