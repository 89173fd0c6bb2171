//! Which librdkafka security settings the exactly-once sink's own transaction-coordinator
//! client (worker `txn_client`) speaks. `streamjob run` and `streamjob validate` both ask this,
//! so validation rejects exactly what a run would reject.

/// `security.protocol` values the transaction client speaks (librdkafka's names).
pub const PROTOCOLS: [&str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
/// `sasl.mechanism` values the transaction client speaks.
pub const SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// What the caller knows about a client property.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Property<'a> {
    Unset,
    /// Set to this value.
    Value(&'a str),
    /// Set from a Secret whose value the caller cannot read (`streamjob validate` and the
    /// operator see only the names of `secretProperties`): whatever depends on the value is
    /// left to `run`, so validation never refuses what a run would accept.
    Secret,
}

impl<'a> Property<'a> {
    /// A property with this known value (`None`: not set) or, if `secret`, set from a Secret
    /// whose value is unknown.
    pub fn of(value: Option<&'a str>, secret: bool) -> Self {
        match (value, secret) {
            (Some(v), _) => Property::Value(v),
            (None, true) => Property::Secret,
            (None, false) => Property::Unset,
        }
    }

    fn is_set(self) -> bool {
        self != Property::Unset
    }
}

/// The property and the reason the transaction client cannot connect with these settings,
/// or `None`. `get` says what is known of a property (librdkafka names).
pub fn transaction_client_refusal<'a>(
    get: impl Fn(&str) -> Property<'a>,
) -> Option<(&'static str, String)> {
    let refusal = match get("security.protocol") {
        Property::Unset => protocol_refusal("plaintext", &get),
        Property::Value(p) => protocol_refusal(p, &get),
        // Unknown here: the checks that depend on the protocol are run's.
        Property::Secret => None,
    };
    if refusal.is_some() {
        return refusal;
    }
    // (property, the value refused (any if None), what it means)
    let unsupported: [(&'static str, Option<&str>, &str); 4] = [
        (
            "enable.ssl.certificate.verification",
            Some("false"),
            "turning off certificate verification",
        ),
        (
            "ssl.endpoint.identification.algorithm",
            Some("none"),
            "turning off host name verification",
        ),
        (
            "ssl.key.password",
            None,
            "an encrypted private key (give an unencrypted PKCS#8, PKCS#1 or SEC1 key from a Secret)",
        ),
        (
            "ssl.keystore.location",
            None,
            "a PKCS#12 keystore (give ssl.certificate.location and ssl.key.location, or the .pem properties)",
        ),
    ];
    for (key, refused, what) in unsupported {
        let hit = match (get(key), refused) {
            (p, None) => p.is_set(),
            (Property::Value(v), Some(r)) => v.trim().eq_ignore_ascii_case(r),
            // Unset, or a Secret whose value only run knows.
            (_, Some(_)) => false,
        };
        if hit {
            return Some((
                key,
                format!(
                    "{what} is not supported with deliveryGuarantee exactly-once and checkpointing \
                     (a restored checkpoint's transactions are committed over the sink's own \
                     connection)"
                ),
            ));
        }
    }
    None
}

/// What the transaction client cannot speak of `protocol` and its SASL mechanism.
fn protocol_refusal<'a>(
    protocol: &str,
    get: impl Fn(&str) -> Property<'a>,
) -> Option<(&'static str, String)> {
    let p = protocol.to_ascii_lowercase();
    if !PROTOCOLS.contains(&p.as_str()) {
        return Some((
            "security.protocol",
            format!(
                "'{protocol}' is not a Kafka security protocol (plaintext, ssl, sasl_plaintext or sasl_ssl)"
            ),
        ));
    }
    if !p.starts_with("sasl") {
        return None;
    }
    // `sasl.mechanisms` is librdkafka's name, `sasl.mechanism` its alias; librdkafka's
    // default mechanism is GSSAPI (Kerberos).
    let (key, mechanism, default) = match (get("sasl.mechanism"), get("sasl.mechanisms")) {
        (Property::Value(m), _) => ("sasl.mechanism", m, false),
        (Property::Unset, Property::Value(m)) => ("sasl.mechanisms", m, false),
        (Property::Unset, Property::Unset) => ("sasl.mechanism", "GSSAPI", true),
        // Given in a Secret: only run can check it.
        _ => return None,
    };
    if SASL_MECHANISMS
        .iter()
        .any(|m| m.eq_ignore_ascii_case(mechanism.trim()))
    {
        return None;
    }
    Some((
        key,
        format!(
            "SASL mechanism '{mechanism}'{} is not supported with deliveryGuarantee \
             exactly-once and checkpointing (a restored checkpoint's transactions are \
             committed over the sink's own connection, which speaks PLAIN, \
             SCRAM-SHA-256 and SCRAM-SHA-512): set sasl.mechanism to one of those",
            if default {
                " (librdkafka's default)"
            } else {
                ""
            }
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn refusal(pairs: &[(&str, &str)]) -> Option<(&'static str, String)> {
        let m: BTreeMap<&str, &str> = pairs.iter().copied().collect();
        transaction_client_refusal(|k| Property::of(m.get(k).copied(), false))
    }

    #[test]
    fn tls_and_sasl_with_supported_mechanisms_are_accepted() {
        assert_eq!(refusal(&[]), None);
        assert_eq!(refusal(&[("security.protocol", "SSL")]), None);
        for m in SASL_MECHANISMS {
            for p in ["SASL_SSL", "sasl_plaintext"] {
                assert_eq!(
                    refusal(&[("security.protocol", p), ("sasl.mechanism", m)]),
                    None
                );
            }
        }
        assert_eq!(
            refusal(&[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanisms", "scram-sha-512")
            ]),
            None
        );
    }

    #[test]
    fn what_the_client_cannot_speak_is_named() {
        let (key, why) = refusal(&[("security.protocol", "SASL_SSL")]).unwrap();
        assert_eq!(key, "sasl.mechanism");
        assert!(
            why.starts_with("SASL mechanism 'GSSAPI' (librdkafka's default) is not supported"),
            "{why}"
        );
        let (key, _) = refusal(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "OAUTHBEARER"),
        ])
        .unwrap();
        assert_eq!(key, "sasl.mechanism");
        let (key, why) = refusal(&[("security.protocol", "TLS")]).unwrap();
        assert_eq!(key, "security.protocol");
        assert!(
            why.contains("'TLS' is not a Kafka security protocol"),
            "{why}"
        );
        let (key, _) = refusal(&[
            ("security.protocol", "SSL"),
            ("enable.ssl.certificate.verification", "false"),
        ])
        .unwrap();
        assert_eq!(key, "enable.ssl.certificate.verification");
        assert_eq!(
            refusal(&[("ssl.key.password", "x")]).unwrap().0,
            "ssl.key.password"
        );
    }

    /// Validation sees only the names of secretProperties: what depends on their values is
    /// left to run, which reads them; what is refused whatever the value stays refused.
    #[test]
    fn settings_given_in_secrets_are_left_to_run_unless_refused_whatever_their_value() {
        let with_secrets = |pairs: &[(&str, &str)], secrets: &[&str]| {
            let m: BTreeMap<&str, &str> = pairs.iter().copied().collect();
            transaction_client_refusal(|k| Property::of(m.get(k).copied(), secrets.contains(&k)))
        };
        let sasl = [("security.protocol", "SASL_SSL")];
        assert_eq!(with_secrets(&sasl, &["sasl.mechanisms"]), None);
        assert_eq!(with_secrets(&sasl, &["sasl.mechanism"]), None);
        assert_eq!(with_secrets(&[], &["security.protocol"]), None);
        assert_eq!(
            with_secrets(
                &[("security.protocol", "SSL")],
                &["enable.ssl.certificate.verification"]
            ),
            None
        );
        assert_eq!(
            with_secrets(&sasl, &[]).map(|r| r.0),
            Some("sasl.mechanism")
        );
        assert_eq!(
            with_secrets(&[("security.protocol", "SSL")], &["ssl.key.password"]).map(|r| r.0),
            Some("ssl.key.password")
        );
        // What run sees once the Secret is read: the plural alias is checked like the name.
        assert_eq!(
            with_secrets(
                &[
                    ("security.protocol", "SASL_SSL"),
                    ("sasl.mechanisms", "GSSAPI")
                ],
                &[]
            )
            .map(|r| r.0),
            Some("sasl.mechanisms")
        );
    }
}
