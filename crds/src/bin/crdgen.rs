//! Prints the `StreamJob` CustomResourceDefinition as YAML (`cargo run -p streamjob-crds --bin crdgen`).

use kube::CustomResourceExt;
use streamjob_crds::spec::StreamJob;

fn main() {
    print!(
        "{}",
        serde_yaml::to_string(&StreamJob::crd()).expect("the CRD serialises")
    );
}
