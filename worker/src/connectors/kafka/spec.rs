//! Kafka sources and sinks of StreamJob specs: `Value` records, payload formats, record
//! metadata and key expressions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use streamjob_crds::expr::{Program, Value};
use streamjob_crds::spec::{self, RecordFormat};
use streamjob_crds::validate::{KAFKA_RECORD_VARS, VALUE_VARS};

use super::source::KafkaRecord;
use super::{ClientProperties, Encoded, KafkaSink, KafkaSource};
use crate::error::BoxError;

fn client(
    bootstrap: &str,
    properties: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, spec::SecretKeyRef>,
    at: &str,
) -> Result<ClientProperties, String> {
    let mut c = ClientProperties::new(bootstrap);
    c.properties = properties.clone();
    c.resolve_secrets(secrets, at)?;
    Ok(c)
}

/// Decodes a payload per `format`.
pub(crate) fn decode_payload(
    format: RecordFormat,
    payload: Option<&[u8]>,
) -> Result<Value, String> {
    let Some(p) = payload else {
        return Ok(Value::Null);
    };
    match format {
        RecordFormat::String => std::str::from_utf8(p)
            .map(Value::string)
            .map_err(|_| "payload is not UTF-8 (format: string)".to_string()),
        RecordFormat::Json => serde_json::from_slice::<serde_json::Value>(p)
            .map(Value::from)
            .map_err(|e| format!("payload is not JSON (format: json): {e}")),
        RecordFormat::Bytes => Ok(Value::Bytes(Arc::from(p))),
    }
}

fn key_value(key: Option<&[u8]>) -> Value {
    match key {
        None => Value::Null,
        Some(k) => match std::str::from_utf8(k) {
            Ok(s) => Value::string(s),
            Err(_) => Value::Bytes(Arc::from(k)),
        },
    }
}

/// Header name -> value (a string if UTF-8, else bytes: never rewritten; null for a null
/// header); a name that repeats keeps its last value (as the Java client's `lastHeader`).
fn headers_value(r: &KafkaRecord<'_>) -> Value {
    use rdkafka::message::Headers as _;
    let Some(h) = r.headers else {
        return Value::map(Vec::<(&str, Value)>::new());
    };
    Value::map(h.iter().map(|h| (h.key, key_value(h.value))))
}

/// `{key, value, headers, topic, partition, offset, timestamp}` of a record.
fn with_metadata(r: &KafkaRecord<'_>, value: Value) -> Value {
    Value::map([
        ("key", key_value(r.key)),
        ("value", value),
        ("headers", headers_value(r)),
        ("topic", Value::string(r.topic)),
        ("partition", Value::Int(i64::from(r.partition))),
        ("offset", Value::Int(r.offset)),
        ("timestamp", r.timestamp.map_or(Value::Null, Value::Int)),
    ])
}

/// Names of the fields of `record`, made once: cloning an `Arc` per record instead of
/// allocating each name again.
struct RecordFields([Arc<str>; 6]);

impl RecordFields {
    fn new() -> Self {
        RecordFields(
            [
                "key",
                "headers",
                "timestamp",
                "topic",
                "partition",
                "offset",
            ]
            .map(Arc::from),
        )
    }

    /// The `record` variable of a Kafka source's `value` and `watermarks.timestamp`
    /// expressions: `{key, headers, timestamp, topic, partition, offset}`.
    fn of(&self, r: &KafkaRecord<'_>) -> Value {
        let [key, headers, timestamp, topic, partition, offset] = &self.0;
        Value::map([
            (key.clone(), key_value(r.key)),
            (headers.clone(), headers_value(r)),
            (
                timestamp.clone(),
                r.timestamp.map_or(Value::Null, Value::Int),
            ),
            (topic.clone(), Value::string(r.topic)),
            (partition.clone(), Value::Int(i64::from(r.partition))),
            (offset.clone(), Value::Int(r.offset)),
        ])
    }
}

/// Builds the `record` variable for an expression compiled with
/// [`streamjob_crds::validate::KAFKA_RECORD_VARS`], or null if the expression cannot read it:
/// `record` is built per record only for expressions that name it.
pub(crate) struct RecordVar(Option<RecordFields>);

impl RecordVar {
    pub(crate) fn for_program(p: &Program) -> Self {
        // An expression reads a variable only by its name: without the word it cannot.
        let reads = p.vars().iter().any(|v| &**v == "record") && p.source().contains("record");
        RecordVar(reads.then(RecordFields::new))
    }

    pub(crate) fn of(&self, r: &KafkaRecord<'_>) -> Value {
        self.0.as_ref().map_or(Value::Null, |f| f.of(r))
    }
}

/// What the dead-letter record says about a payload that failed to decode.
pub(crate) fn describe_malformed(r: &KafkaRecord<'_>) -> Value {
    let payload = r
        .payload
        .map_or(Value::Null, |p| Value::string(&String::from_utf8_lossy(p)));
    with_metadata(r, payload)
}

/// `record_timestamps`: the source's `watermarks` have no `timestamp` expression, so the
/// Kafka record timestamp is the event time (the spec's documented default).
pub(crate) fn source(
    k: &spec::KafkaSource,
    at: &str,
    record_timestamps: bool,
) -> Result<KafkaSource<Value>, String> {
    let mut b = KafkaSource::builder()
        .client_properties(client(
            &k.bootstrap_servers,
            &k.properties,
            &k.secret_properties,
            at,
        )?)
        .topics(k.topics.iter().cloned())
        .group_id(&k.group_id)
        .starting_offsets(k.starting_offsets)
        .committed_fallback(k.committed_fallback)
        .bounded(k.bounded)
        .missing_topic(k.missing_topic)
        .partition_discovery_interval(Duration::from_millis(k.partition_discovery_interval_ms))
        .commit_interval(Duration::from_millis(k.commit_interval_ms))
        .record_timestamps(record_timestamps);
    if let Some(ts) = k.starting_timestamp_ms {
        b = b.starting_timestamp(ts);
    }
    let (format, metadata) = (k.format, k.include_metadata);
    let Some(src) = &k.value else {
        return Ok(b.build_with(move |r| {
            let v = decode_payload(format, r.payload).map_err(BoxError::from)?;
            Ok(if metadata { with_metadata(r, v) } else { v })
        }));
    };
    // Validated: this compiles.
    let program =
        Program::compile(src, KAFKA_RECORD_VARS).map_err(|e| format!("{at}.value: {e}"))?;
    let record = RecordVar::for_program(&program);
    let at = format!("{at}.value");
    Ok(b.build_with(move |r| {
        let v = decode_payload(format, r.payload).map_err(BoxError::from)?;
        let rec = record.of(r);
        // A failure goes to the job's onError policy like an undecodable payload.
        program
            .eval(&[&v, &rec])
            .map_err(|e| format!("{at}: {e}").into())
    }))
}

/// `fmt::Write` into a byte buffer.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Writes a value as a payload per `format`.
pub(crate) fn encode_payload(
    format: RecordFormat,
    v: &Value,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    use std::io::Write as _;
    match (format, v) {
        (RecordFormat::String, Value::String(s)) => out.extend_from_slice(s.as_bytes()),
        // Anything else is written as its compact JSON text.
        (RecordFormat::String, v) => write!(out, "{v}").expect("writes to a Vec"),
        // Straight from the value: no intermediate serde_json tree per record.
        (RecordFormat::Json, v) => v
            .write_json(&mut VecWriter(out))
            .expect("writes to a Vec cannot fail"),
        (RecordFormat::Bytes, Value::Bytes(b)) => out.extend_from_slice(b),
        (RecordFormat::Bytes, Value::String(s)) => out.extend_from_slice(s.as_bytes()),
        (RecordFormat::Bytes, v) => {
            return Err(format!(
                "format bytes needs a bytes or string value, got {}",
                v.value_type().name()
            ));
        }
    }
    Ok(())
}

pub(crate) fn sink(
    k: &spec::KafkaSink,
    key: Option<Program>,
    at: &str,
) -> Result<KafkaSink<Value>, String> {
    // Validated: this compiles.
    let headers = k
        .headers
        .as_deref()
        .map(|h| Program::compile(h, VALUE_VARS).map_err(|e| format!("{at}.headers: {e}")))
        .transpose()?;
    let headers_at = format!("{at}.headers");
    let mut b = KafkaSink::builder()
        .client_properties(client(
            &k.bootstrap_servers,
            &k.properties,
            &k.secret_properties,
            at,
        )?)
        .topic(&k.topic)
        .delivery_guarantee(k.delivery_guarantee)
        .commit_interval(Duration::from_millis(k.commit_interval_ms))
        .transaction_timeout(Duration::from_millis(k.transaction_timeout_ms));
    if let Some(p) = &k.transactional_id_prefix {
        b = b.transactional_id_prefix(p);
    }
    b = b.partitioner(k.partitioner);
    let (format, metadata) = (k.format, k.metadata);
    Ok(
        b.build_with(move |v: &Value, key_out, value_out, headers_out| {
            let (payload, record_key) = if metadata {
                let m = v.as_map().ok_or_else(|| {
                format!(
                    "Kafka sink with metadata: true needs a map {{key, value, headers}}, got {}",
                    v.value_type().name()
                )
            })?;
                if let (None, Some(h)) = (&headers, m.get("headers")) {
                    write_headers(h, headers_out)?;
                }
                (
                    m.get("value").unwrap_or(&Value::Null),
                    m.get("key").unwrap_or(&Value::Null),
                )
            } else {
                (v, &Value::Null)
            };
            if let Some(program) = &headers {
                let vars = [v];
                let h = program
                    .eval_cow(&vars)
                    .map_err(|e| format!("{headers_at}: {e}"))?;
                write_headers(h.as_ref(), headers_out)?;
            }
            // Null in, null out: a tombstone in every format.
            let has_value = !matches!(payload, Value::Null);
            if has_value {
                // Errors name the value's type, never its contents (they reach the logs).
                encode_payload(format, payload, value_out)?;
            }
            let has_key = match &key {
                Some(program) => {
                    let vars = [v];
                    let k = program
                        .eval_cow(&vars)
                        .map_err(|e| format!("Kafka key: {e}"))?;
                    write_key(k.as_ref(), key_out)
                }
                None => write_key(record_key, key_out),
            };
            Ok(Encoded {
                key: has_key,
                value: has_value,
            })
        }),
    )
}

/// Writes a record key; `false` for null (no key).
fn write_key(k: &Value, out: &mut Vec<u8>) -> bool {
    match k {
        Value::Null => return false,
        Value::String(s) => out.extend_from_slice(s.as_bytes()),
        Value::Bytes(b) => out.extend_from_slice(b),
        other => {
            use std::io::Write as _;
            write!(out, "{other}").expect("writes to a Vec")
        }
    }
    true
}

/// Record headers from a map of strings or bytes (null: no header).
fn write_headers(h: &Value, out: &mut Vec<(String, Vec<u8>)>) -> Result<(), String> {
    let map = match h {
        Value::Null => return Ok(()),
        Value::Map(m) => m,
        other => {
            return Err(format!(
                "Kafka sink headers must be a map, got {}",
                other.value_type().name()
            ));
        }
    };
    for (name, v) in map.iter() {
        let bytes = match v {
            Value::Null => continue,
            Value::String(s) => s.as_bytes().to_vec(),
            Value::Bytes(b) => b.to_vec(),
            other => {
                return Err(format!(
                    "Kafka sink header '{name}' must be a string or bytes, got {}",
                    other.value_type().name()
                ));
            }
        };
        out.push((name.to_string(), bytes));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_decode_per_format() {
        assert_eq!(
            decode_payload(RecordFormat::String, Some(b"hi")).unwrap(),
            Value::string("hi")
        );
        assert_eq!(
            decode_payload(RecordFormat::Json, Some(br#"{"user_id":"u1","n":2}"#))
                .unwrap()
                .to_string(),
            r#"{"n":2,"user_id":"u1"}"#
        );
        assert_eq!(
            decode_payload(RecordFormat::Bytes, Some(&[0, 255])).unwrap(),
            Value::Bytes(Arc::from(&[0u8, 255][..]))
        );
        assert_eq!(
            decode_payload(RecordFormat::Json, None).unwrap(),
            Value::Null
        );
        assert_eq!(
            decode_payload(RecordFormat::String, Some(&[0xff])).unwrap_err(),
            "payload is not UTF-8 (format: string)"
        );
        assert!(
            decode_payload(RecordFormat::Json, Some(b"{oops"))
                .unwrap_err()
                .starts_with("payload is not JSON (format: json): key must be a string")
        );
    }

    #[test]
    fn values_encode_per_format() {
        let enc = |f, v: &Value| {
            let mut out = Vec::new();
            encode_payload(f, v, &mut out).map(|()| String::from_utf8(out).unwrap())
        };
        let s = Value::string("a\"b");
        assert_eq!(enc(RecordFormat::String, &s).unwrap(), "a\"b");
        assert_eq!(enc(RecordFormat::Json, &s).unwrap(), r#""a\"b""#);
        let pair = Value::from(serde_json::json!(["the", 3]));
        assert_eq!(enc(RecordFormat::String, &pair).unwrap(), r#"["the",3]"#);
        assert_eq!(enc(RecordFormat::Json, &pair).unwrap(), r#"["the",3]"#);
        assert_eq!(
            enc(RecordFormat::Bytes, &pair).unwrap_err(),
            "format bytes needs a bytes or string value, got list"
        );
    }

    #[test]
    fn metadata_wraps_the_payload() {
        let r = KafkaRecord {
            topic: "events",
            partition: 3,
            offset: 17,
            timestamp: Some(1_700_000_000_000),
            key: Some(b"u1"),
            payload: Some(b"x"),
            headers: None,
        };
        assert_eq!(
            with_metadata(&r, Value::string("x")).to_string(),
            r#"{"headers":{},"key":"u1","offset":17,"partition":3,"timestamp":1700000000000,"topic":"events","value":"x"}"#
        );
    }
}
