//! The Kafka `record` variable (a Kafka source's `value` and `watermarks.timestamp`
//! expressions) and the sink's `headers` expression: what validates, and misuse rejected with
//! the step's path and where `record` is available.

use streamjob_crds::validate::{parse_job, validate_job};

fn job(steps: &str) -> String {
    let body: String = steps.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: streamjob.dev/v1alpha1\nkind: StreamJob\nmetadata:\n  name: t\nspec:\n  steps:\n{body}"
    )
}

/// A Kafka source with `extra` settings, then `rest`.
fn kafka(extra: &str, rest: &str) -> String {
    format!(
        "- name: in\n  source:\n    kafka: {{bootstrapServers: 'k:9092', topics: [t], groupId: g{extra}}}\n{rest}"
    )
}

const PRINT: &str = "- name: out\n  sink: {print: {}}";

fn errors(steps: &str) -> Vec<(String, String)> {
    let text = job(steps);
    let parsed = parse_job(&text).unwrap_or_else(|e| panic!("parse failed: {e}\n{text}"));
    match validate_job(&parsed) {
        Ok(_) => Vec::new(),
        Err(errs) => errs.into_iter().map(|e| (e.path, e.message)).collect(),
    }
}

#[track_caller]
fn assert_error(steps: &str, path: &str, fragment: &str) {
    let errs = errors(steps);
    assert!(
        errs.iter().any(|(p, m)| p == path && m.contains(fragment)),
        "expected {path}: ..{fragment}.. in {errs:#?}\n{}",
        job(steps)
    );
}

#[track_caller]
fn assert_valid(steps: &str) {
    let errs = errors(steps);
    assert!(
        errs.is_empty(),
        "expected valid, got {errs:#?}\n{}",
        job(steps)
    );
}

const WHERE: &str = "`record` (a Kafka record's key, headers, timestamp, topic, partition and \
                     offset) exists only in a Kafka source's `value` and `watermarks.timestamp` \
                     expressions";

#[test]
fn record_is_readable_in_a_kafka_sources_value_and_timestamp_expressions() {
    assert_valid(&kafka(
        r#", value: "{'user': value.user, 'trace': record.headers['trace-id'], 'at': [record.topic, record.partition, record.offset], 'key': record.key, 'ts': record.timestamp}""#,
        PRINT,
    ));
    assert_valid(&format!(
        "- name: in\n  source:\n    kafka: {{bootstrapServers: 'k:9092', topics: [t], groupId: g}}\n    watermarks: {{timestamp: \"record.timestamp + 1\"}}\n{PRINT}"
    ));
    assert_valid(&kafka(
        "",
        "- name: out\n  sink:\n    kafka: {bootstrapServers: 'k:9092', topic: o, key: value, headers: \"{'a': value, 'b': b'\\\\x00'}\"}",
    ));
}

#[test]
fn record_anywhere_else_names_the_field_and_where_record_is_available() {
    // A later step: the record is gone (after a keyBy, a window, ...).
    assert_error(
        &kafka(
            "",
            &format!("- name: m\n  map: {{expr: \"record.headers\"}}\n{PRINT}"),
        ),
        "spec.steps[1].map.expr",
        WHERE,
    );
    assert_error(
        &kafka(
            "",
            "- name: out\n  sink:\n    kafka: {bootstrapServers: 'k:9092', topic: o, key: record.key}",
        ),
        "spec.steps[1].sink.kafka.key",
        WHERE,
    );
    assert_error(
        &kafka(
            "",
            "- name: out\n  sink:\n    kafka: {bootstrapServers: 'k:9092', topic: o, headers: record.headers}",
        ),
        "spec.steps[1].sink.kafka.headers",
        WHERE,
    );
    // Not a Kafka source: no Kafka record.
    assert_error(
        &format!(
            "- name: in\n  source:\n    collection: {{values: [1]}}\n    watermarks: {{timestamp: record.timestamp}}\n{PRINT}"
        ),
        "spec.steps[0].source.watermarks.timestamp",
        WHERE,
    );
    // Other unknown variables keep the plain message.
    let errs = errors(&kafka(", value: nope", PRINT));
    assert_eq!(
        errs,
        vec![(
            "spec.steps[0].source.kafka.value".to_string(),
            "'nope' does not compile: unknown variable 'nope' (available: value, record)"
                .to_string()
        )]
    );
}

#[test]
fn a_value_expression_and_include_metadata_are_alternatives() {
    assert_error(
        &kafka(", includeMetadata: true, value: record.key", PRINT),
        "spec.steps[0].source.kafka.includeMetadata",
        "includeMetadata and value are alternatives",
    );
}

#[test]
fn sink_headers_must_be_a_map() {
    assert_error(
        &kafka(
            "",
            "- name: out\n  sink:\n    kafka: {bootstrapServers: 'k:9092', topic: o, headers: \"'x'\"}",
        ),
        "spec.steps[1].sink.kafka.headers",
        "a Kafka headers expression must return map, but ''x'' returns string",
    );
}
