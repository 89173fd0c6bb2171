//! Invalid specs: each is rejected with the exact path and the key part of the message.

use streamjob_crds::validate::{parse_job, validate_job};

fn job(spec: &str) -> String {
    let body: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: streamjob.dev/v1alpha1\nkind: StreamJob\nmetadata:\n  name: t\nspec:\n{body}"
    )
}

/// All (path, message) errors of a spec body.
fn errors(spec: &str) -> Vec<(String, String)> {
    let text = job(spec);
    let parsed = parse_job(&text).unwrap_or_else(|e| panic!("parse failed: {e}\n{text}"));
    match validate_job(&parsed) {
        Ok(_) => panic!("spec unexpectedly valid:\n{text}"),
        Err(errs) => errs.into_iter().map(|e| (e.path, e.message)).collect(),
    }
}

#[track_caller]
fn assert_error(spec: &str, path: &str, fragment: &str) {
    let errs = errors(spec);
    assert!(
        errs.iter().any(|(p, m)| p == path && m.contains(fragment)),
        "expected {path}: ..{fragment}.. in {errs:#?}"
    );
}

#[track_caller]
fn assert_valid(spec: &str) {
    let text = job(spec);
    let parsed = parse_job(&text).unwrap_or_else(|e| panic!("parse failed: {e}\n{text}"));
    if let Err(errs) = validate_job(&parsed) {
        panic!("expected valid, got {errs:#?}\n{text}");
    }
}

const SRC: &str = "- name: src\n  source: {collection: {values: [a, b]}}";
const SINK: &str = "- name: out\n  sink: {print: {}}";

fn steps(middle: &str) -> String {
    format!("steps:\n{SRC}\n{middle}\n{SINK}")
}

#[test]
fn a_minimal_job_is_valid() {
    let text = job(&format!("steps:\n{SRC}\n{SINK}"));
    validate_job(&parse_job(&text).unwrap()).unwrap();
}

#[test]
fn no_steps() {
    assert_error("steps: []", "spec.steps", "the job has no steps");
}

#[test]
fn no_source() {
    assert_error(
        &format!("steps:\n- name: m\n  map: {{expr: value}}\n{SINK}"),
        "spec.steps",
        "no source step",
    );
}

#[test]
fn no_sink() {
    assert_error(
        &format!("steps:\n{SRC}\n- name: m\n  map: {{expr: value}}"),
        "spec.steps",
        "no sink step",
    );
}

#[test]
fn duplicate_step_name() {
    assert_error(
        &steps("- name: src\n  map: {expr: value}"),
        "spec.steps[1].name",
        "duplicate step name 'src'",
    );
}

#[test]
fn invalid_step_name() {
    assert_error(
        &steps("- name: My_Step\n  map: {expr: value}"),
        "spec.steps[1].name",
        "not a valid step name",
    );
}

#[test]
fn input_naming_an_unknown_step() {
    assert_error(
        &steps("- name: m\n  input: [nope]\n  map: {expr: value}"),
        "spec.steps[1].input[0]",
        "unknown step 'nope'",
    );
}

#[test]
fn input_naming_a_later_step() {
    assert_error(
        &steps(
            "- name: m\n  input: [n]\n  map: {expr: value}\n- name: n\n  input: [src]\n  map: {expr: value}",
        ),
        "spec.steps[1].input[0]",
        "inputs must name earlier steps",
    );
}

#[test]
fn input_naming_itself() {
    assert_error(
        &steps("- name: m\n  input: [m]\n  map: {expr: value}"),
        "spec.steps[1].input[0]",
        "not before this step",
    );
}

#[test]
fn step_with_no_kind() {
    assert_error(
        &steps("- name: m"),
        "spec.steps[1]",
        "exactly one of source, map, filter, flatMap, keyBy, reduce, window, rebalance, sink; none is set",
    );
}

#[test]
fn step_with_two_kinds() {
    assert_error(
        &steps("- name: m\n  map: {expr: value}\n  filter: {expr: 'true'}"),
        "spec.steps[1]",
        "found map and filter",
    );
}

#[test]
fn source_with_an_input() {
    assert_error(
        &steps("- name: s2\n  input: [src]\n  source: {file: {path: /x}}"),
        "spec.steps[1].input",
        "a source step cannot have an input",
    );
}

#[test]
fn first_step_is_not_a_source() {
    assert_error(
        &format!("steps:\n- name: m\n  map: {{expr: value}}\n{SRC}\n{SINK}"),
        "spec.steps[0]",
        "a job must start with a source",
    );
}

#[test]
fn reading_a_sink() {
    assert_error(
        &format!(
            "steps:\n{SRC}\n{SINK}\n- name: m\n  map: {{expr: value}}\n- name: out2\n  sink: {{print: {{}}}}"
        ),
        "spec.steps[2]",
        "step 'out' is a sink and has no output",
    );
}

#[test]
fn reduce_without_key_by() {
    assert_error(
        &steps("- name: r\n  reduce: {expr: acc}"),
        "spec.steps[1].reduce",
        "reduce needs a keyed input",
    );
}

#[test]
fn reduce_after_a_map_after_key_by() {
    assert_error(
        &steps(
            "- name: k\n  keyBy: {expr: value}\n- name: m\n  map: {expr: value}\n- name: r\n  reduce: {expr: acc}",
        ),
        "spec.steps[3].reduce",
        "put a keyBy step directly before it",
    );
}

#[test]
fn parallelism_zero() {
    assert_error(
        &format!("parallelism: 0\n{}", steps("")),
        "spec.parallelism",
        "at least 1",
    );
}

#[test]
fn step_parallelism_zero() {
    assert_error(
        &steps("- name: m\n  parallelism: 0\n  map: {expr: value}"),
        "spec.steps[1].parallelism",
        "at least 1",
    );
}

#[test]
fn parallelism_above_max_parallelism() {
    assert_error(
        &format!("parallelism: 8\nmaxParallelism: 4\n{}", steps("")),
        "spec.parallelism",
        "8 exceeds maxParallelism 4",
    );
    assert_error(
        &steps("- name: m\n  parallelism: 200\n  map: {expr: value}"),
        "spec.steps[1].parallelism",
        "200 exceeds maxParallelism 128",
    );
}

#[test]
fn max_parallelism_out_of_range() {
    assert_error(
        &format!("maxParallelism: 40000\n{}", steps("")),
        "spec.maxParallelism",
        "must be between 1 and 32768, got 40000",
    );
    assert_error(
        &format!("maxParallelism: 0\n{}", steps("")),
        "spec.maxParallelism",
        "got 0",
    );
}

#[test]
fn non_parallel_sources() {
    assert_error(
        "steps:\n- name: src\n  parallelism: 2\n  source: {socket: {host: localhost, port: 9999}}\n- name: out\n  sink: {print: {}}",
        "spec.steps[0].parallelism",
        "a socket source is not parallel",
    );
    assert_error(
        "steps:\n- name: src\n  parallelism: 3\n  source: {collection: {values: [1]}}\n- name: out\n  sink: {print: {}}",
        "spec.steps[0].parallelism",
        "a collection source is not parallel",
    );
}

#[test]
fn expression_that_does_not_compile() {
    assert_error(
        &steps("- name: m\n  map: {expr: 'value +'}"),
        "spec.steps[1].map.expr",
        "does not compile: syntax error at 1:",
    );
    assert_error(
        &steps("- name: m\n  map: {expr: 'event.user_id'}"),
        "spec.steps[1].map.expr",
        "unknown variable 'event' (available: value)",
    );
}

#[test]
fn filter_must_return_a_bool() {
    assert_error(
        &steps("- name: f\n  filter: {expr: 'size(value) + 1'}"),
        "spec.steps[1].filter.expr",
        "a filter expression must return bool, but 'size(value) + 1' returns int",
    );
}

#[test]
fn flat_map_must_return_a_list() {
    assert_error(
        &steps("- name: f\n  flatMap: {expr: 'value.lower()'}"),
        "spec.steps[1].flatMap.expr",
        "must return list, but 'value.lower()' returns string",
    );
}

#[test]
fn key_by_must_return_a_string_or_int() {
    assert_error(
        &steps("- name: k\n  keyBy: {expr: 'value.words()'}\n- name: r\n  reduce: {expr: acc}"),
        "spec.steps[1].keyBy.expr",
        "must return string or int or uint, but 'value.words()' returns list",
    );
}

#[test]
fn reduce_unknown_variable() {
    assert_error(
        &steps(
            "- name: k\n  keyBy: {expr: value}\n- name: r\n  reduce: {expr: 'accumulator + value'}",
        ),
        "spec.steps[2].reduce.expr",
        "unknown variable 'accumulator' (available: acc, value, key)",
    );
}

#[test]
fn dead_letter_without_a_sink() {
    assert_error(
        &format!("onError: deadLetter\n{}", steps("")),
        "spec.deadLetter",
        "a deadLetter sink is required",
    );
}

#[test]
fn dead_letter_sink_without_on_error_dead_letter() {
    assert_error(
        &format!("deadLetter: {{print: {{}}}}\n{}", steps("")),
        "spec.deadLetter",
        "onError is fail",
    );
}

const KAFKA_SRC: &str = "- name: src\n  source:\n    kafka:\n      bootstrapServers: k:9092\n      topics: [t]\n      groupId: g";

fn kafka_source(extra: &str) -> String {
    let extra: String = extra.lines().map(|l| format!("      {l}\n")).collect();
    format!("steps:\n{KAFKA_SRC}\n{extra}{SINK}")
}

#[test]
fn kafka_source_without_topics() {
    assert_error(
        "steps:\n- name: src\n  source:\n    kafka: {bootstrapServers: 'k:9092', topics: [], groupId: g}\n- name: out\n  sink: {print: {}}",
        "spec.steps[0].source.kafka.topics",
        "at least one topic",
    );
}

#[test]
fn kafka_source_with_empty_bootstrap_servers() {
    assert_error(
        "steps:\n- name: src\n  source:\n    kafka: {bootstrapServers: '', topics: [t], groupId: g}\n- name: out\n  sink: {print: {}}",
        "spec.steps[0].source.kafka.bootstrapServers",
        "must not be empty",
    );
}

#[test]
fn kafka_source_timestamp_offsets_without_timestamp() {
    assert_error(
        &kafka_source("startingOffsets: timestamp"),
        "spec.steps[0].source.kafka.startingTimestampMs",
        "startingTimestampMs (ms since the epoch) is required",
    );
}

#[test]
fn kafka_inline_secret_property() {
    assert_error(
        &kafka_source("properties:\n  sasl.password: hunter2"),
        "spec.steps[0].source.kafka.properties[\"sasl.password\"]",
        "give it via secretProperties",
    );
}

#[test]
fn kafka_sink_exactly_once_without_prefix() {
    assert_error(
        &format!(
            "steps:\n{SRC}\n- name: out\n  sink:\n    kafka: {{bootstrapServers: 'k:9092', topic: t, deliveryGuarantee: exactly-once}}"
        ),
        "spec.steps[1].sink.kafka.transactionalIdPrefix",
        "exactly-once requires a transactionalIdPrefix",
    );
}

#[test]
fn kafka_sink_inline_ssl_key_password() {
    assert_error(
        &format!(
            "steps:\n{SRC}\n- name: out\n  sink:\n    kafka:\n      bootstrapServers: 'k:9092'\n      topic: t\n      properties: {{ssl.key.password: x}}"
        ),
        "spec.steps[1].sink.kafka.properties[\"ssl.key.password\"]",
        "holds a credential",
    );
}

#[test]
fn kafka_sink_key_of_the_wrong_type() {
    assert_error(
        &format!(
            "steps:\n{SRC}\n- name: out\n  sink:\n    kafka: {{bootstrapServers: 'k:9092', topic: t, key: 'value == 1'}}"
        ),
        "spec.steps[1].sink.kafka.key",
        "a Kafka key expression must return string or int or uint or bytes, but 'value == 1' returns bool",
    );
}

#[test]
fn source_with_two_kinds() {
    assert_error(
        "steps:\n- name: src\n  source: {file: {path: /a}, socket: {host: h, port: 1}}\n- name: out\n  sink: {print: {}}",
        "spec.steps[0].source",
        "found socket and file",
    );
}

#[test]
fn sink_with_no_kind() {
    assert_error(
        &format!("steps:\n{SRC}\n- name: out\n  sink: {{}}"),
        "spec.steps[1].sink",
        "exactly one of print, file, blackhole, kafka; none is set",
    );
}

#[test]
fn unused_step_output() {
    assert_error(
        &format!(
            "steps:\n{SRC}\n- name: m\n  input: [src]\n  map: {{expr: value}}\n- name: out\n  input: [src]\n  sink: {{print: {{}}}}"
        ),
        "spec.steps[1]",
        "the output of step 'm' is not used",
    );
}

#[test]
fn parallelism_on_a_key_by() {
    assert_error(
        &steps(
            "- name: k\n  parallelism: 2\n  keyBy: {expr: value}\n- name: r\n  reduce: {expr: acc}",
        ),
        "spec.steps[1].parallelism",
        "set parallelism on the step that reads it",
    );
}

#[test]
fn bad_job_name() {
    let text = job(&steps("")).replace("name: t\n", "name: Bad_Name\n");
    let errs = validate_job(&parse_job(&text).unwrap()).unwrap_err();
    assert_eq!(errs[0].path, "metadata.name");
    assert!(errs[0].message.contains("not a valid job name"));
}

#[test]
fn all_errors_are_reported_at_once() {
    let errs = errors(&format!(
        "parallelism: 0\n{}",
        steps("- name: f\n  filter: {expr: '1'}\n- name: f\n  map: {expr: 'x'}")
    ));
    let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.parallelism",
            "spec.steps[1].filter.expr",
            "spec.steps[2].name",
            "spec.steps[2].map.expr"
        ],
        "{errs:#?}"
    );
}

// ----- parse errors -----

#[test]
fn malformed_yaml_has_a_position() {
    let text =
        "apiVersion: streamjob.dev/v1alpha1\nkind: StreamJob\nspec:\n  steps: [\n    - name: x\n";
    let e = parse_job(text).unwrap_err();
    assert!(e.line.is_some() && e.column.is_some(), "{e:?}");
}

#[test]
fn unknown_field_has_a_position_and_the_path() {
    let text = job(&format!(
        "steps:\n{SRC}\n- name: m\n  mapp: {{expr: value}}\n{SINK}"
    ));
    let e = parse_job(&text).unwrap_err();
    assert!(e.message.contains("unknown field `mapp`"), "{e}");
    assert!(e.message.contains("spec.steps[1]"), "{e}");
    assert_eq!(e.line, Some(10), "{e:?}");
}

#[test]
fn misspelt_spec_field() {
    let text = job(&format!("paralelism: 2\n{}", steps("")));
    let e = parse_job(&text).unwrap_err();
    assert!(e.message.contains("unknown field `paralelism`"), "{e}");
    assert_eq!(e.line, Some(6), "{e:?}");
}

#[test]
fn wrong_type() {
    let text = job(&format!("parallelism: two\n{}", steps("")));
    let e = parse_job(&text).unwrap_err();
    assert!(e.message.contains("spec.parallelism"), "{e}");
    assert!(e.message.contains("invalid type"), "{e}");
}

#[test]
fn bad_enum_value() {
    let text = job(&format!("onError: ignore\n{}", steps("")));
    let e = parse_job(&text).unwrap_err();
    assert!(e.message.contains("unknown variant `ignore`"), "{e}");
}

#[test]
fn wrong_api_version_and_kind() {
    let text = job(&steps("")).replace("streamjob.dev/v1alpha1", "streamjob.dev/v1");
    assert!(
        parse_job(&text)
            .unwrap_err()
            .message
            .contains("expected 'streamjob.dev/v1alpha1'")
    );
    let text = job(&steps("")).replace("kind: StreamJob", "kind: Job");
    assert!(
        parse_job(&text)
            .unwrap_err()
            .message
            .contains("expected 'StreamJob'")
    );
}

#[test]
fn kafka_sink_commit_interval_beyond_the_transaction_timeout() {
    assert_error(
        &format!(
            "steps:\n{SRC}\n- name: out\n  sink:\n    kafka: {{bootstrapServers: 'k:9092', topic: t, commitIntervalMs: 600000}}"
        ),
        "spec.steps[1].sink.kafka.commitIntervalMs",
        "must be at most 300000 ms (within the brokers' transaction timeout), got 600000",
    );
}

#[test]
fn kafka_source_discovery_interval_too_short() {
    assert_error(
        &kafka_source("partitionDiscoveryIntervalMs: 5"),
        "spec.steps[0].source.kafka.partitionDiscoveryIntervalMs",
        "must be at least 100 ms, got 5",
    );
}

#[test]
fn an_exactly_once_transaction_timeout_shorter_than_a_checkpoint_and_restart_is_refused() {
    assert_error(
        &format!(
            "checkpointing: {{intervalMs: 60000, directory: /tmp/c}}\nrestartStrategy: {{maxDelayMs: 30000}}\nsteps:\n{SRC}\n- name: out\n  sink:\n    kafka: {{bootstrapServers: 'k:9092', topic: t, deliveryGuarantee: exactly-once, transactionalIdPrefix: p, transactionTimeoutMs: 200000}}"
        ),
        "spec.steps[1].sink.kafka.transactionTimeoutMs",
        "200000 ms is too short: it must exceed twice the checkpoint interval plus restartStrategy.maxDelayMs plus 60000 ms to restart (more than 210000 ms)",
    );
}

/// Exactly-once with checkpointing over TLS and SASL (PLAIN, SCRAM) runs, so validation
/// accepts it; what the transaction-coordinator client cannot speak (GSSAPI, the default
/// SASL mechanism; turned-off verification) `run` refuses, and validation too, or the
/// operator would deploy pods that crash-loop.
#[test]
fn exactly_once_with_checkpointing_validates_what_run_accepts_over_tls_and_sasl() {
    let spec = |props: &str| {
        format!(
            "checkpointing: {{intervalMs: 1000, directory: /tmp/c}}\nsteps:\n{SRC}\n- name: out\n  sink:\n    kafka: {{bootstrapServers: 'k:9092', topic: t, deliveryGuarantee: exactly-once, transactionalIdPrefix: p, properties: {{{props}}}, secretProperties: {{sasl.password: {{name: kafka, key: password}}}}}}"
        )
    };
    for ok in [
        "security.protocol: SSL, ssl.ca.location: /etc/ca.crt",
        "security.protocol: SASL_SSL, sasl.mechanism: SCRAM-SHA-512, sasl.username: u",
        "security.protocol: sasl_plaintext, sasl.mechanism: PLAIN, sasl.username: u",
    ] {
        assert_valid(&spec(ok));
    }
    assert_error(
        &spec("security.protocol: SASL_SSL"),
        "spec.steps[1].sink.kafka.properties.sasl.mechanism",
        "SASL mechanism 'GSSAPI' (librdkafka's default) is not supported with deliveryGuarantee exactly-once",
    );
    // The mechanism in a Secret (under either of librdkafka's names): its value is read by
    // run, which accepts PLAIN and SCRAM; validation cannot see it and must not assume GSSAPI.
    for name in ["sasl.mechanism", "sasl.mechanisms"] {
        assert_valid(&format!(
            "checkpointing: {{intervalMs: 1000, directory: /tmp/c}}\nsteps:\n{SRC}\n- name: out\n  sink:\n    kafka: {{bootstrapServers: 'k:9092', topic: t, deliveryGuarantee: exactly-once, transactionalIdPrefix: p, properties: {{security.protocol: SASL_SSL, sasl.username: u}}, secretProperties: {{sasl.password: {{name: kafka, key: password}}, {name}: {{name: kafka, key: mechanism}}}}}}"
        ));
    }
    assert_error(
        &spec("security.protocol: SSL, enable.ssl.certificate.verification: 'false'"),
        "spec.steps[1].sink.kafka.properties.enable.ssl.certificate.verification",
        "turning off certificate verification is not supported",
    );
}

#[test]
fn operator_owned_environment_variables_are_reserved() {
    assert_error(
        &format!("env: [{{name: STREAMJOB_TOKEN, value: x}}]\nsteps:\n{SRC}\n{SINK}"),
        "spec.env[0].name",
        "'STREAMJOB_TOKEN' is reserved",
    );
}

#[test]
fn stateful_upgrade_modes_need_checkpointing() {
    assert_error(
        &format!("upgradeMode: savepoint\nsteps:\n{SRC}\n{SINK}"),
        "spec.upgradeMode",
        "savepoint needs spec.checkpointing",
    );
}

#[test]
fn a_restart_strategy_whose_max_delay_is_below_the_initial_delay_is_refused() {
    assert_error(
        &format!(
            "restartStrategy: {{initialDelayMs: 5000, maxDelayMs: 100}}\nsteps:\n{SRC}\n{SINK}"
        ),
        "spec.restartStrategy.maxDelayMs",
        "100 is below initialDelayMs 5000",
    );
}

#[test]
fn checkpoint_storage_other_than_files_and_s3_is_refused() {
    assert_error(
        &format!(
            "checkpointing: {{intervalMs: 1000, directory: 'gs://bucket/chk'}}\nsteps:\n{SRC}\n- name: out\n  sink: {{print: {{}}}}"
        ),
        "spec.checkpointing.directory",
        "'gs://bucket/chk': storage must be file:///path, a path, or s3://bucket/prefix",
    );
    assert_error(
        &format!(
            "checkpointing: {{intervalMs: 1000, directory: 's3:///chk'}}\nsteps:\n{SRC}\n- name: out\n  sink: {{print: {{}}}}"
        ),
        "spec.checkpointing.directory",
        "s3:// needs a bucket",
    );
}
