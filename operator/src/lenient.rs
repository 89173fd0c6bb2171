//! Reading a StreamJob as the API server holds it. The API types reject unknown fields, which
//! is right for `streamjob validate` and matches the CRD schema, but an object written through
//! a newer CRD may carry fields this operator's types lack: a strict read would fail (and one
//! such object in a watch list would stop the whole watch). Here the fields that this
//! operator's own schema does not have are removed, exactly as a structural schema prunes
//! them, and named, so the reconcile can refuse the job with a status that says which fields
//! an upgraded operator is needed for, instead of acting on part of its spec.

use std::sync::OnceLock;

use kube::CustomResourceExt;
use serde_json::Value;
use streamjob_crds::spec::StreamJob;

/// A job read from the API server.
#[derive(Debug, Clone)]
pub struct Read {
    pub job: StreamJob,
    /// Paths of the spec fields this operator does not know (removed from `job`).
    pub unknown: Vec<String>,
}

/// The `spec` schema of the StreamJob CRD this operator was built with.
fn spec_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let crd = serde_json::to_value(StreamJob::crd()).expect("the CRD serialises");
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
    })
}

/// Removes from `v` what `schema` has no place for, noting each removed path.
fn prune(schema: &Value, v: &mut Value, path: &str, unknown: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == true {
        return;
    }
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let sub = props.and_then(|p| p.get(&k)).or(additional);
                match sub {
                    Some(sub) => {
                        prune(sub, m.get_mut(&k).unwrap(), &format!("{path}.{k}"), unknown)
                    }
                    // An object schema without properties (a marker like `print: {}`) has no
                    // fields either.
                    None if schema["type"] == "object" => {
                        m.remove(&k);
                        unknown.push(format!("{path}.{k}"));
                    }
                    None => {}
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = schema.get("items") {
                for (i, x) in a.iter_mut().enumerate() {
                    prune(items, x, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Reads a StreamJob object (as JSON from the API server), dropping and naming the spec fields
/// this operator does not know. Fails only on a spec whose known fields do not fit the types
/// (which the CRD schema makes impossible for objects it admitted).
pub fn read(mut object: Value) -> Result<Read, serde_json::Error> {
    let mut unknown = Vec::new();
    if let Some(spec) = object.get_mut("spec") {
        prune(spec_schema(), spec, "spec", &mut unknown);
    }
    let job = serde_json::from_value(object)?;
    Ok(Read { job, unknown })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(spec: Value) -> Value {
        json!({
            "apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
            "metadata": {"name": "wc", "namespace": "prod"},
            "spec": spec,
            "status": {"phase": "Running", "someNewStatusField": 1}
        })
    }

    #[test]
    fn fields_of_a_newer_crd_are_dropped_and_named() {
        let spec = json!({
            "parallelism": 2,
            "futureField": {"a": 1},
            "steps": [
                {"name": "src", "source": {"collection": {"values": [{"x": 1}]}}},
                {"name": "out", "sink": {"print": {"newOption": true}}, "newStepField": "x"}
            ]
        });
        // The strict types refuse it, as `streamjob validate` must.
        assert!(serde_json::from_value::<StreamJob>(object(spec.clone())).is_err());
        let r = read(object(spec)).unwrap();
        assert_eq!(
            r.unknown,
            [
                "spec.futureField",
                "spec.steps[1].newStepField",
                "spec.steps[1].sink.print.newOption"
            ]
        );
        assert_eq!(r.job.spec.parallelism, 2);
        assert!(r.job.spec.steps[1].sink.as_ref().unwrap().print.is_some());
        // Free-form parts keep what they hold.
        assert_eq!(
            r.job.spec.steps[0]
                .source
                .as_ref()
                .unwrap()
                .collection
                .as_ref()
                .unwrap()
                .values[0],
            json!({"x": 1})
        );
    }

    #[test]
    fn a_known_spec_reads_unchanged() {
        let spec = json!({
            "podTemplate": {"spec": {"nodeSelector": {"disk": "ssd"}}},
            "env": [{"name": "A", "value": "1"}],
            "steps": [
                {"name": "src", "source": {"kafka": {"bootstrapServers": "k:9092", "topics": ["t"], "groupId": "g", "properties": {"fetch.min.bytes": "1"}}}},
                {"name": "out", "sink": {"blackhole": {}}}
            ]
        });
        let r = read(object(spec)).unwrap();
        assert!(r.unknown.is_empty(), "{:?}", r.unknown);
        assert_eq!(
            r.job.spec.pod_template.unwrap(),
            json!({"spec": {"nodeSelector": {"disk": "ssd"}}})
        );
    }
}
