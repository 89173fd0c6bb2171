//! TLS and SASL settings of the exactly-once sink's own connections to the transaction
//! coordinators (`txn_client`), read from the same librdkafka properties the source and the
//! other sinks hand to librdkafka, so one connection config serves them all.
//!
//! Certificates come from files (`ssl.ca.location`, `ssl.certificate.location`,
//! `ssl.key.location`) or inline PEM (`ssl.ca.pem`, `ssl.certificate.pem`, `ssl.key.pem`, as
//! `secretProperties` give them); without a CA the system's roots are trusted, as librdkafka
//! does. What the client cannot speak is refused up front by the check `streamjob validate`
//! shares (`streamjob_crds::kafka_security`).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use streamjob_crds::kafka_security::{Property, transaction_client_refusal};

use super::ClientProperties;

/// A SASL mechanism the transaction client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// SASL credentials (never printed).
#[derive(Clone)]
pub(crate) struct Sasl {
    pub mechanism: Mechanism,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Sasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// How to connect: TLS (a rustls client config) and/or SASL, or neither.
#[derive(Clone, Default)]
pub(crate) struct Security {
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub sasl: Option<Sasl>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.tls.is_some())
            .field("sasl", &self.sasl)
            .finish()
    }
}

impl Security {
    /// The security settings of `client` (properties, then secrets, which win, as in
    /// librdkafka's config). Errors name the property.
    pub fn of(client: &ClientProperties) -> Result<Security, String> {
        let get = |k: &str| {
            client
                .secrets
                .get(k)
                .or_else(|| client.properties.get(k))
                .map(String::as_str)
        };
        Security::from_lookup(get)
    }

    pub fn from_lookup<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Security, String> {
        // Run knows every value, secrets included.
        if let Some((key, why)) = transaction_client_refusal(|k| Property::of(get(k), false)) {
            return Err(format!("Kafka property {key}: {why}"));
        }
        let protocol = get("security.protocol")
            .unwrap_or("plaintext")
            .to_ascii_lowercase();
        let tls = if protocol == "ssl" || protocol == "sasl_ssl" {
            Some(Arc::new(tls_config(&get)?))
        } else {
            None
        };
        let sasl = if protocol.starts_with("sasl") {
            let m = get("sasl.mechanism")
                .or_else(|| get("sasl.mechanisms"))
                .unwrap_or_default()
                .trim()
                .to_ascii_uppercase();
            let mechanism = match m.as_str() {
                "PLAIN" => Mechanism::Plain,
                "SCRAM-SHA-256" => Mechanism::ScramSha256,
                "SCRAM-SHA-512" => Mechanism::ScramSha512,
                _ => unreachable!("transaction_client_refusal admits only these"),
            };
            let need = |k: &str| {
                get(k)
                    .map(str::to_string)
                    .ok_or_else(|| format!("Kafka property {k} is needed for SASL {m}"))
            };
            Some(Sasl {
                mechanism,
                username: need("sasl.username")?,
                password: need("sasl.password")?,
            })
        } else {
            None
        };
        Ok(Security { tls, sasl })
    }
}

/// Why librdkafka could not connect, when the cause is the TLS or SASL settings: opens one
/// connection of our own (a few seconds at most) to tell a wrong CA or password from an
/// unreachable broker, which librdkafka's errors do not. `None` when the settings are not
/// ones our client speaks, or it connects.
pub(crate) fn diagnose(client: &ClientProperties, bootstrap_servers: &str) -> Option<String> {
    let security = Security::of(client).ok()?;
    if security.tls.is_none() && security.sasl.is_none() {
        return None;
    }
    super::txn_client::connection_refusal(
        bootstrap_servers,
        "streamjob-diagnose",
        &security,
        std::time::Instant::now() + std::time::Duration::from_secs(5),
    )
}

fn read_pem<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    location: &str,
    pem: &str,
) -> Result<Option<Vec<u8>>, String> {
    if let Some(text) = get(pem) {
        return Ok(Some(text.as_bytes().to_vec()));
    }
    match get(location) {
        None => Ok(None),
        Some(path) => std::fs::read(path)
            .map(Some)
            .map_err(|e| format!("Kafka property {location}: cannot read {path}: {e}")),
    }
}

fn tls_config<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    // librdkafka's `probe` means the system's CA locations.
    let ca = match get("ssl.ca.location") {
        Some(l) if l.trim().eq_ignore_ascii_case("probe") && get("ssl.ca.pem").is_none() => None,
        _ => read_pem(get, "ssl.ca.location", "ssl.ca.pem")?,
    };
    match ca {
        Some(pem) => {
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("Kafka property ssl.ca.location/ssl.ca.pem: {e}"))?;
            if certs.is_empty() {
                return Err(
                    "Kafka property ssl.ca.location/ssl.ca.pem holds no PEM certificate".into(),
                );
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("Kafka property ssl.ca.location/ssl.ca.pem: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(
                    "no system CA certificates found: set ssl.ca.location or ssl.ca.pem".into(),
                );
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots);
    let cert = read_pem(get, "ssl.certificate.location", "ssl.certificate.pem")?;
    let key = read_pem(get, "ssl.key.location", "ssl.key.pem")?;
    match (cert, key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("Kafka property ssl.certificate.location/.pem: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(&key)
                .map_err(|e| format!("Kafka property ssl.key.location/.pem: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("Kafka client certificate: {e}"))
        }
        (Some(_), None) => Err(
            "Kafka property ssl.certificate.location/.pem is set, ssl.key.location/.pem not".into(),
        ),
        (None, Some(_)) => Err(
            "Kafka property ssl.key.location/.pem is set, ssl.certificate.location/.pem not".into(),
        ),
    }
}

/// The name the broker's certificate must carry: its host (a DNS name or an IP address).
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("'{host}' is not a valid TLS server name: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn security(pairs: &[(&str, &str)]) -> Result<Security, String> {
        let m: BTreeMap<&str, &str> = pairs.iter().copied().collect();
        Security::from_lookup(|k| m.get(k).copied())
    }

    #[test]
    fn plaintext_needs_nothing_and_sasl_needs_credentials() {
        let s = security(&[]).unwrap();
        assert!(s.tls.is_none() && s.sasl.is_none());
        let e = security(&[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "SCRAM-SHA-256"),
            ("sasl.username", "u"),
        ])
        .unwrap_err();
        assert_eq!(
            e,
            "Kafka property sasl.password is needed for SASL SCRAM-SHA-256"
        );
        let s = security(&[
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanism", "scram-sha-512"),
            ("sasl.username", "u"),
            ("sasl.password", "hunter2"),
        ])
        .unwrap();
        let sasl = s.sasl.unwrap();
        assert_eq!(sasl.mechanism, Mechanism::ScramSha512);
        assert!(!format!("{sasl:?}").contains("hunter2"));
    }

    /// `validate` accepts a mechanism given in a Secret under either name (it cannot read
    /// it); run reads it and agrees for what the client speaks, refuses the rest.
    #[test]
    fn a_mechanism_from_a_secret_under_the_plural_name_is_read() {
        for (mechanism, want) in [
            ("SCRAM-SHA-256", Ok(Mechanism::ScramSha256)),
            ("GSSAPI", Err(())),
        ] {
            let mut client = ClientProperties::new("k:9092");
            client
                .properties
                .insert("security.protocol".into(), "SASL_PLAINTEXT".into());
            client.properties.insert("sasl.username".into(), "u".into());
            client.set_secret("sasl.password", "p".into());
            client.set_secret("sasl.mechanisms", mechanism.into());
            match (Security::of(&client), want) {
                (Ok(s), Ok(m)) => assert_eq!(s.sasl.unwrap().mechanism, m),
                (Err(e), Err(())) => assert!(
                    e.starts_with("Kafka property sasl.mechanisms: SASL mechanism 'GSSAPI' is not"),
                    "{e}"
                ),
                (got, _) => panic!("{mechanism}: {got:?}"),
            }
        }
    }

    #[test]
    fn unreadable_or_empty_certificates_name_the_property() {
        let e = security(&[
            ("security.protocol", "SSL"),
            ("ssl.ca.location", "/nonexistent/ca.crt"),
        ])
        .unwrap_err();
        assert!(
            e.starts_with("Kafka property ssl.ca.location: cannot read /nonexistent/ca.crt"),
            "{e}"
        );
        let e = security(&[("security.protocol", "SSL"), ("ssl.ca.pem", "not pem")]).unwrap_err();
        assert_eq!(
            e,
            "Kafka property ssl.ca.location/ssl.ca.pem holds no PEM certificate"
        );
        let probe = security(&[("security.protocol", "SSL"), ("ssl.ca.location", "probe")]);
        assert!(
            probe.is_ok_and(|s| s.tls.is_some()),
            "probe: the system CAs"
        );
        let e = security(&[("security.protocol", "SASL_SSL")]).unwrap_err();
        assert!(
            e.starts_with("Kafka property sasl.mechanism: SASL mechanism 'GSSAPI'"),
            "{e}"
        );
    }

    #[test]
    fn server_names_are_hosts_or_addresses() {
        assert!(server_name("broker-0.kafka.svc").is_ok());
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("[::1]").is_ok());
    }
}
