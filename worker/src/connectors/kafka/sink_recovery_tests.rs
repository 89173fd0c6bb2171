//! Two-phase commit and its recovery against a real Kafka-protocol broker (`make test`
//! starts one and passes its address in STREAMJOB_TEST_KAFKA): writers are dropped without
//! committing, as a killed process would leave them, and new writers restore from their
//! snapshots.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use streamjob_crds::KeyGroupRange;

use super::two_phase::{SinkState, coordinators};
use super::*;
use crate::connectors::kafka::txn_client::{self, Committed};
use crate::runtime::checkpoint::{CheckpointConfig, Coordinator};
use crate::runtime::context::CancelFlag;

fn broker() -> String {
    std::env::var("STREAMJOB_TEST_KAFKA").expect(
        "STREAMJOB_TEST_KAFKA is not set: run the tests with `make test`, which starts a broker \
         (scripts/with-kafka.sh), or point it at a Kafka broker",
    )
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

fn create_topic(name: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    loop {
        let topic = NewTopic::new(name, 1, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
        match rt.block_on(admin.create_topics([&topic], &opts)) {
            Ok(r) if r.iter().all(|r| r.is_ok()) => break,
            other if started.elapsed() > Duration::from_secs(20) => {
                panic!("cannot create topic {name}: {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Payloads a `read_committed` consumer sees in the topic's only partition, in order.
fn read_committed(topic: &str) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("group.id", unique("check"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut idle = Instant::now();
    while idle.elapsed() < Duration::from_millis(1500) {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
            idle = Instant::now();
        }
    }
    out
}

/// A subtask's context with checkpointing on; `restoring`: the run restores a checkpoint (the
/// writer then waits for `restore_from_all` before it initialises its producers).
pub(super) fn ctx(subtask: u32, parallelism: u32, restoring: bool) -> SubtaskContext {
    let dir = std::env::temp_dir().join(unique("sj-sink-chk"));
    if restoring {
        std::fs::create_dir_all(dir.join("chk-1")).unwrap();
        // An (empty) complete checkpoint in the current metadata format.
        let meta = r#"{"format": 2, "id": 1, "maxParallelism": 128}"#;
        std::fs::write(dir.join("chk-1/_metadata"), meta).unwrap();
    }
    let config = CheckpointConfig::new(Duration::from_secs(1), dir.display().to_string(), 2);
    SubtaskContext {
        job_name: "eo-test".into(),
        operator: "out".into(),
        uid: "out".into(),
        subtask,
        parallelism,
        max_parallelism: 128,
        key_groups: KeyGroupRange::for_subtask(subtask, parallelism, 128),
        batch_size: 1024,
        buffer_timeout: Duration::from_millis(5),
        cancel: CancelFlag::default(),
        // Only tells the sink that checkpointing is on and whether a restore follows.
        checkpoints: Some(Arc::new(Coordinator::new(&config, 1, &["out"]).unwrap())),
    }
}

fn writer(prefix: &str, topic: &str, subtask: u32, parallelism: u32) -> Writer<String> {
    new_writer(prefix, topic, ctx(subtask, parallelism, false))
}

/// A writer of a run that restores: `restore_from_all` comes next.
fn restoring(prefix: &str, topic: &str, subtask: u32, parallelism: u32) -> Writer<String> {
    new_writer(prefix, topic, ctx(subtask, parallelism, true))
}

fn sink(prefix: &str, topic: &str) -> KafkaSink<String> {
    KafkaSink::builder()
        .bootstrap_servers(&broker())
        .topic(topic)
        .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
        .transactional_id_prefix(prefix)
        .transaction_timeout(Duration::from_secs(120))
        .build()
}

fn first_settings(prefix: &str, topic: &str) -> Settings {
    sink(prefix, topic).settings
}

fn new_writer(prefix: &str, topic: &str, ctx: SubtaskContext) -> Writer<String> {
    sink(prefix, topic).writer(&ctx).unwrap()
}

fn lines(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}{i}")).collect()
}

fn write(w: &mut Writer<String>, records: &[String]) {
    for r in records {
        w.write(r.clone()).unwrap();
    }
}

/// What a killed process leaves: the open transaction's records are at the broker, nothing
/// is committed.
fn crash(w: Writer<String>) {
    w.slots[w.current]
        .producer
        .flush(Duration::from_secs(30))
        .unwrap();
    drop(w);
}

#[test]
fn a_pre_committed_transaction_of_a_dead_process_is_committed_by_the_restored_writer() {
    let (topic, prefix) = (unique("eo-recover"), unique("tx"));
    create_topic(&topic);
    let mut first = writer(&prefix, &topic, 0, 1);
    write(&mut first, &lines("a", 100));
    // Checkpoint 1 pre-commits the a's; the b's go into the next transaction.
    let state = first.snapshot(1).unwrap();
    let parsed: SinkState = serde_json::from_slice(&state).unwrap();
    assert_eq!(parsed.pending.len(), 1);
    assert_eq!(parsed.pending[0].transactional_id, format!("{prefix}-0-0"));
    assert_eq!(parsed.pending[0].records, 100);
    assert!(parsed.pending[0].producer_id >= 0);
    write(&mut first, &lines("b", 50));
    // Checkpoint 1 completed, but the process dies before it hears so.
    crash(first);
    assert_eq!(read_committed(&topic), Vec::<String>::new());

    // A restart that committed the a's and died before initialising its producers: the
    // next one commits them again, which the coordinator accepts (already committed).
    let txn = txn_client::Txn {
        transactional_id: parsed.pending[0].transactional_id.clone(),
        producer_id: parsed.pending[0].producer_id,
        producer_epoch: parsed.pending[0].producer_epoch,
    };
    let client = coordinators(&first_settings(&prefix, &topic), "test").unwrap();
    assert_eq!(client.commit(&txn).unwrap(), Committed::Now);
    let mut restart = restoring(&prefix, &topic, 0, 1);
    assert!(restart.restore_from_all(&[(0, state.clone())]).unwrap());
    // Initialising the pool aborts the b's.
    restart.flush().unwrap();
    write(&mut restart, &lines("c", 10));
    restart.snapshot(2).unwrap();
    restart.notify_checkpoint_complete(2).unwrap();
    let mut expected = lines("a", 100);
    expected.extend(lines("c", 10));
    assert_eq!(read_committed(&topic), expected);

    // Restoring checkpoint 1 once more: its transaction's epoch is fenced now, which means
    // it was ended before; nothing is committed twice.
    let mut again = restoring(&prefix, &topic, 0, 1);
    assert!(again.restore_from_all(&[(0, state)]).unwrap());
    again.finish().unwrap();
    assert_eq!(read_committed(&topic), expected);
}

#[test]
fn a_committed_producer_takes_no_new_transaction_until_a_later_checkpoint_completes() {
    let (topic, prefix) = (unique("eo-reuse"), unique("tx"));
    create_topic(&topic);
    let mut w = writer(&prefix, &topic, 0, 1);
    write(&mut w, &lines("a", 10));
    let first = w.snapshot(1).unwrap();
    assert_eq!(w.current, 1);
    w.notify_checkpoint_complete(1).unwrap();
    write(&mut w, &lines("b", 10));
    w.snapshot(2).unwrap();
    // Producer 0 is free but checkpoint 1 lists its transaction: a restore of checkpoint 1
    // would commit whatever it holds.
    assert_eq!(w.current, 2);
    write(&mut w, &lines("c", 10));
    // Checkpoint 2 never completes; the job restarts from checkpoint 1.
    crash(w);
    let mut r = restoring(&prefix, &topic, 0, 1);
    r.restore_from_all(&[(0, first)]).unwrap();
    r.flush().unwrap();
    assert_eq!(read_committed(&topic), lines("a", 10));

    // Once a later checkpoint completed, producer 0 is reused.
    write(&mut r, &lines("d", 1));
    r.snapshot(2).unwrap();
    r.notify_checkpoint_complete(2).unwrap();
    write(&mut r, &lines("e", 1));
    r.snapshot(3).unwrap();
    r.notify_checkpoint_complete(3).unwrap();
    write(&mut r, &lines("f", 1));
    r.snapshot(4).unwrap();
    assert_eq!(
        r.current,
        0,
        "{:?}",
        r.slots.iter().map(|s| s.state).collect::<Vec<_>>()
    );
    // Checkpoints that never complete use up the pool, and then fail clearly.
    for c in 5..=6 {
        write(&mut r, &lines("g", 1));
        r.snapshot(c).unwrap();
    }
    write(&mut r, &lines("h", 1));
    let err = r.snapshot(7).unwrap_err().to_string();
    assert!(
        err.contains("no free transactional producer at checkpoint 7: all 5 of subtask 0"),
        "{err}"
    );
}

#[test]
fn a_smaller_parallelism_commits_and_fences_what_removed_subtasks_left() {
    let (topic, prefix) = (unique("eo-rescale"), unique("tx"));
    create_topic(&topic);
    let mut states = Vec::new();
    // Subtask 2 of 3 pre-commits, then leaves a transaction open in front of the others'
    // records: until it is aborted, read_committed readers see nothing after it.
    let mut w2 = writer(&prefix, &topic, 2, 3);
    write(&mut w2, &lines("s2-", 20));
    states.push((2, w2.snapshot(1).unwrap()));
    write(&mut w2, &lines("late", 5));
    crash(w2);
    for subtask in 0..2 {
        let mut w = writer(&prefix, &topic, subtask, 3);
        write(&mut w, &lines(&format!("s{subtask}-"), 20));
        states.push((subtask, w.snapshot(1).unwrap()));
        crash(w);
    }
    states.sort();
    // Restored at parallelism 2: subtask 0 also takes over old subtask 2.
    let mut restored: Vec<_> = (0..2).map(|s| restoring(&prefix, &topic, s, 2)).collect();
    for w in &mut restored {
        assert!(w.restore_from_all(&states).unwrap());
    }
    for w in &mut restored {
        w.flush().unwrap();
    }
    let mut seen = read_committed(&topic);
    seen.sort();
    let mut expected: Vec<String> = (0..3).flat_map(|s| lines(&format!("s{s}-"), 20)).collect();
    expected.sort();
    assert_eq!(seen, expected);
}

#[test]
fn subtask_0_aborts_what_a_crashed_run_at_a_higher_parallelism_left_open() {
    let (topic, prefix) = (unique("eo-linger"), unique("tx"));
    create_topic(&topic);
    // A run at parallelism 4 dies before any checkpoint completed: no state names its ids.
    let mut gone: Vec<_> = (2..4).map(|s| writer(&prefix, &topic, s, 4)).collect();
    gone[1].flush().unwrap();
    write(&mut gone[1], &lines("lost", 5));
    gone.into_iter().for_each(crash);
    // The next run, at parallelism 2, commits something behind that open transaction...
    let mut one = writer(&prefix, &topic, 1, 2);
    write(&mut one, &lines("x", 3));
    one.snapshot(1).unwrap();
    one.notify_checkpoint_complete(1).unwrap();
    assert_eq!(read_committed(&topic), Vec::<String>::new(), "held back");
    // ...and its subtask 0 finds and aborts it.
    let mut zero = writer(&prefix, &topic, 0, 2);
    zero.flush().unwrap();
    assert_eq!(read_committed(&topic), lines("x", 3));
}
