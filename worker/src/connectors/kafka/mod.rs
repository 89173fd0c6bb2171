//! Kafka source and sink (librdkafka through `rdkafka`).
//!
//! The source assigns partitions to its subtasks itself (a pure function of topic, partition
//! and parallelism, as Flink does) instead of relying on consumer-group rebalancing, so every
//! worker agrees on who reads what and a rescaled job moves partitions predictably. The group
//! id is only used to commit offsets. The sink is a producer per subtask; `exactly-once` makes
//! it transactional, with two-phase commit on checkpoints when checkpointing is on (see
//! [`sink`]).

mod logs;
mod scram;
pub(crate) mod security;
pub mod sink;
pub mod source;
pub(crate) mod spec;
mod txn_client;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use rdkafka::ClientConfig;
use streamjob_crds::spec::SecretKeyRef;
use xxhash_rust::xxh3::xxh3_64;

pub use sink::{Encoded, KafkaSink, KafkaSinkBuilder};
pub use source::{KafkaRecord, KafkaSource, KafkaSourceBuilder, MalformedHandler};
pub use streamjob_crds::spec::{
    DeliveryGuarantee, KafkaPartitioner, MissingTopic, OffsetReset, StartingOffsets,
};

/// Where Secrets referenced by `secretProperties` are mounted: `<dir>/<secret>/<key>`.
pub const SECRETS_DIR_ENV: &str = "STREAMJOB_SECRETS_DIR";
pub const DEFAULT_SECRETS_DIR: &str = "/var/run/secrets/streamjob";

/// Client properties of a source or sink. Values of secret properties are kept apart so
/// `Debug` and logs never show them.
#[derive(Clone, Default)]
pub struct ClientProperties {
    pub bootstrap_servers: String,
    pub properties: BTreeMap<String, String>,
    secrets: BTreeMap<String, String>,
}

impl fmt::Debug for ClientProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientProperties")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("properties", &self.properties)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ClientProperties {
    pub fn new(bootstrap_servers: &str) -> Self {
        ClientProperties {
            bootstrap_servers: bootstrap_servers.to_string(),
            ..Default::default()
        }
    }

    /// A secret property (password, key): used for the client, never printed.
    pub fn set_secret(&mut self, key: &str, value: String) {
        self.secrets.insert(key.to_string(), value);
    }

    /// Reads each `secretProperties` entry from the mounted Secret files
    /// (`$STREAMJOB_SECRETS_DIR/<secret>/<key>`).
    pub fn resolve_secrets(
        &mut self,
        refs: &BTreeMap<String, SecretKeyRef>,
        at: &str,
    ) -> Result<(), String> {
        let dir = PathBuf::from(
            std::env::var(SECRETS_DIR_ENV).unwrap_or_else(|_| DEFAULT_SECRETS_DIR.to_string()),
        );
        self.resolve_secrets_in(&dir, refs, at)
    }

    pub fn resolve_secrets_in(
        &mut self,
        dir: &std::path::Path,
        refs: &BTreeMap<String, SecretKeyRef>,
        at: &str,
    ) -> Result<(), String> {
        for (prop, r) in refs {
            let path = dir.join(&r.name).join(&r.key);
            // A file property (`ssl.ca.location`, `ssl.certificate.location`,
            // `ssl.key.location`, ...) names the mounted Secret file itself.
            if prop.ends_with(".location") {
                if !path.is_file() {
                    return Err(format!(
                        "{at}.secretProperties.{prop}: key '{}' of Secret '{}' is not mounted at \
                         {} (the operator mounts it there; locally set {SECRETS_DIR_ENV})",
                        r.key,
                        r.name,
                        path.display()
                    ));
                }
                self.set_secret(prop, path.display().to_string());
                continue;
            }
            let value = std::fs::read_to_string(&path).map_err(|e| {
                format!(
                    "{at}.secretProperties.{prop}: cannot read key '{}' of Secret '{}' at {}: {e} \
                     (the operator mounts it there; locally set {SECRETS_DIR_ENV})",
                    r.key,
                    r.name,
                    path.display()
                )
            })?;
            self.set_secret(prop, value.trim_end_matches(['\n', '\r']).to_string());
        }
        Ok(())
    }

    /// librdkafka configuration: ours first, then the user's properties (which win), then
    /// secrets.
    pub(crate) fn client_config(&self, ours: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in ours {
            c.set(*k, *v);
        }
        for (k, v) in self.properties.iter().chain(&self.secrets) {
            c.set(k, v);
        }
        c
    }
}

/// The source subtask that reads `partition` of `topic`: partitions of a topic go round-robin
/// over the subtasks from a start that depends on the topic, so several topics spread evenly.
pub fn subtask_for_partition(topic: &str, partition: i32, parallelism: u32) -> u32 {
    let start = xxh3_64(topic.as_bytes()) % u64::from(parallelism);
    ((start + partition as u64) % u64::from(parallelism)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_evenly_and_deterministically() {
        for p in 1..=5u32 {
            let mut per_subtask = vec![0; p as usize];
            for partition in 0..(3 * p as i32) {
                let s = subtask_for_partition("events", partition, p);
                assert_eq!(s, subtask_for_partition("events", partition, p));
                per_subtask[s as usize] += 1;
            }
            assert!(per_subtask.iter().all(|&n| n == 3), "{per_subtask:?}");
        }
    }

    #[test]
    fn secrets_are_read_from_files_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("sj-secrets-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kafka-credentials")).unwrap();
        std::fs::write(dir.join("kafka-credentials/password"), "hunter2\n").unwrap();
        let mut props = ClientProperties::new("k:9092");
        let secret = |name: &str| {
            BTreeMap::from([(
                "sasl.password".to_string(),
                SecretKeyRef {
                    name: name.into(),
                    key: "password".into(),
                },
            )])
        };
        let at = "spec.steps[0].source.kafka";
        props
            .resolve_secrets_in(&dir, &secret("kafka-credentials"), at)
            .unwrap();
        let err = props
            .clone()
            .resolve_secrets_in(&dir, &secret("nope"), at)
            .unwrap_err();
        assert!(
            err.starts_with(
                "spec.steps[0].source.kafka.secretProperties.sasl.password: \
                 cannot read key 'password' of Secret 'nope'"
            ),
            "{err}"
        );
        assert_eq!(props.secrets["sasl.password"], "hunter2");
        // Certificate files: the path of the mounted Secret file, which librdkafka and the
        // transaction client read themselves.
        std::fs::write(dir.join("kafka-credentials/ca.crt"), "PEM").unwrap();
        let ca = BTreeMap::from([(
            "ssl.ca.location".to_string(),
            SecretKeyRef {
                name: "kafka-credentials".into(),
                key: "ca.crt".into(),
            },
        )]);
        props.resolve_secrets_in(&dir, &ca, at).unwrap();
        assert_eq!(
            props.secrets["ssl.ca.location"],
            dir.join("kafka-credentials/ca.crt").display().to_string()
        );
        let missing = BTreeMap::from([(
            "ssl.certificate.location".to_string(),
            SecretKeyRef {
                name: "kafka-credentials".into(),
                key: "tls.crt".into(),
            },
        )]);
        let err = props.resolve_secrets_in(&dir, &missing, at).unwrap_err();
        assert!(
            err.starts_with(
                "spec.steps[0].source.kafka.secretProperties.ssl.certificate.location: key \
                 'tls.crt' of Secret 'kafka-credentials' is not mounted at"
            ),
            "{err}"
        );
        assert!(!format!("{props:?}").contains("hunter2"));
        assert_eq!(
            props.client_config(&[]).get("sasl.password"),
            Some("hunter2")
        );
    }
}
