//! Which librdkafka security settings the exactly-once sink's own transaction-coordinator
//! client (worker `txn_client`) speaks. `streamjob run` and `streamjob validate` both ask this,
//! so validation rejects exactly what a run would reject.

/// `security.protocol` values the transaction client speaks (librdkafka's names).
pub const PROTOCOLS: [&str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
/// `sasl.mechanism` values the transaction client speaks.
pub const SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// The property and the reason the transaction client cannot connect with these settings,
/// or `None`. `get` returns a property's value (librdkafka names); properties set through
/// `secretProperties` may be unknown to the caller (validation sees only their names).
pub fn transaction_client_refusal<'a>(
    get: impl Fn(&str) -> Option<&'a str>,
) -> Option<(&'static str, String)> {
    let protocol = get("security.protocol").unwrap_or("plaintext");
    let p = protocol.to_ascii_lowercase();
    if !PROTOCOLS.contains(&p.as_str()) {
        return Some((
            "security.protocol",
            format!(
                "'{protocol}' is not a Kafka security protocol (plaintext, ssl, sasl_plaintext or sasl_ssl)"
            ),
        ));
    }
    if p.starts_with("sasl") {
        // librdkafka's default mechanism is GSSAPI (Kerberos).
        let (key, mechanism) = match (get("sasl.mechanism"), get("sasl.mechanisms")) {
            (Some(m), _) => ("sasl.mechanism", m),
            (None, Some(m)) => ("sasl.mechanisms", m),
            (None, None) => ("sasl.mechanism", "GSSAPI"),
        };
        if !SASL_MECHANISMS
            .iter()
            .any(|m| m.eq_ignore_ascii_case(mechanism.trim()))
        {
            return Some((
                key,
                format!(
                    "SASL mechanism '{mechanism}'{} is not supported with deliveryGuarantee \
                     exactly-once and checkpointing (a restored checkpoint's transactions are \
                     committed over the sink's own connection, which speaks PLAIN, \
                     SCRAM-SHA-256 and SCRAM-SHA-512): set sasl.mechanism to one of those",
                    if get("sasl.mechanism").is_none() && get("sasl.mechanisms").is_none() {
                        " (librdkafka's default)"
                    } else {
                        ""
                    }
                ),
            ));
        }
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
        if get(key).is_some_and(|v| refused.is_none_or(|r| v.trim().eq_ignore_ascii_case(r))) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn refusal(pairs: &[(&str, &str)]) -> Option<(&'static str, String)> {
        let m: BTreeMap<&str, &str> = pairs.iter().copied().collect();
        transaction_client_refusal(|k| m.get(k).copied())
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
}
