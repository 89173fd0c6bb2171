//! The checked-in CRD matches the types, and its CEL rules parse.

use kube::CustomResourceExt;
use streamjob_crds::spec::StreamJob;

fn rules(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(serde_json::Value::Array(rs)) = m.get("x-kubernetes-validations") {
                for r in rs {
                    out.push(r["rule"].as_str().expect("rule is a string").to_string());
                }
            }
            m.values().for_each(|x| rules(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| rules(x, out)),
        _ => {}
    }
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
    let crd = serde_json::to_value(StreamJob::crd()).unwrap();
    let mut all = Vec::new();
    rules(&crd, &mut all);
    assert!(all.len() >= 8, "{all:?}");
    for r in &all {
        if let Err(e) = cel::parser::Parser::new().parse(r) {
            panic!("rule {r:?} does not parse: {e}");
        }
    }
}

#[test]
fn crd_basics() {
    let crd = serde_json::to_value(StreamJob::crd()).unwrap();
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
    assert_eq!(cols, ["Phase", "Parallelism", "Ready", "Desired", "Age"]);
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["properties"]["steps"]["minItems"], 1);
    assert_eq!(
        spec["properties"]["parallelism"]["minimum"].as_f64(),
        Some(1.0)
    );
    assert_eq!(
        spec["properties"]["maxParallelism"]["maximum"].as_f64(),
        Some(32768.0)
    );
    let on_error = &spec["properties"]["onError"]["enum"];
    assert_eq!(*on_error, serde_json::json!(["fail", "skip", "deadLetter"]));
}
