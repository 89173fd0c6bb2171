//! Kafka TLS material and credentials from Secrets: every Secret a source's or sink's
//! `secretProperties` names is mounted read-only at `<SECRETS_DIR>/<secret>`, where the worker
//! reads them (a `*.location` property is the path of the mounted file, so certificate files
//! need nothing else).

use streamjob_crds::graph::to_logical_graph;
use streamjob_crds::validate::parse_job;
use streamjob_operator::resources::{self, Defaults, SECRETS_DIR};

#[test]
fn secrets_of_sources_and_sinks_are_mounted_where_the_worker_reads_them() {
    let job = parse_job(
        "apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata: {name: tls, namespace: prod, uid: u}
spec:
  steps:
    - name: src
      source:
        kafka:
          bootstrapServers: k:9093
          topics: [t]
          groupId: g
          properties: {security.protocol: SSL}
          secretProperties:
            ssl.ca.location: {name: kafka-tls, key: ca.crt}
            ssl.certificate.location: {name: kafka-tls, key: tls.crt}
            ssl.key.location: {name: kafka-tls, key: tls.key}
    - name: out
      sink:
        kafka:
          bootstrapServers: k:9093
          topic: o
          properties: {security.protocol: SASL_SSL, sasl.mechanism: SCRAM-SHA-512, sasl.username: u}
          secretProperties:
            sasl.password: {name: kafka-credentials, key: password}
            ssl.ca.location: {name: kafka-tls, key: ca.crt}
",
    )
    .unwrap();
    let plan = to_logical_graph(&job).plan().unwrap();
    let c = resources::children(
        &job,
        &plan,
        &Defaults {
            worker_image: "streamjob:test".into(),
            image_pull_policy: None,
            worker_resources: None,
        },
    )
    .unwrap();
    let spec = c.stateful_set.spec.unwrap().template.spec.unwrap();
    let w = &spec.containers[0];
    let env = w.env.as_ref().unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "STREAMJOB_SECRETS_DIR" && e.value.as_deref() == Some(SECRETS_DIR))
    );
    let mounts: Vec<(String, String, Option<bool>)> = w
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .filter(|m| m.mount_path.starts_with(SECRETS_DIR))
        .map(|m| (m.name.clone(), m.mount_path.clone(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [
            (
                "secret-0".to_string(),
                format!("{SECRETS_DIR}/kafka-credentials"),
                Some(true)
            ),
            (
                "secret-1".to_string(),
                format!("{SECRETS_DIR}/kafka-tls"),
                Some(true)
            ),
        ],
        "one mount per Secret, however many properties name it"
    );
    let volumes = spec.volumes.unwrap();
    for (name, secret) in [("secret-0", "kafka-credentials"), ("secret-1", "kafka-tls")] {
        let v = volumes.iter().find(|v| v.name == name).unwrap();
        assert_eq!(
            v.secret.as_ref().unwrap().secret_name.as_deref(),
            Some(secret)
        );
    }
}
