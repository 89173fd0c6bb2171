//! The sink against librdkafka's in-process mock cluster, which answers requests with
//! chosen errors: broker behaviour a test cannot otherwise provoke on purpose.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use super::recovery_tests::ctx;
use super::*;

/// tansu on S3 persists a producer's sequence number before the batch: SIGKILLed in
/// between, it answers the client's retry DUPLICATE_SEQUENCE_NUMBER without holding the
/// batch, and librdkafka reports those records delivered (without an offset). Committing
/// their transaction lost 398 records of the broker-restart test (issue 18). The sink must
/// not commit what it cannot prove is in the log.
#[test]
fn records_confirmed_only_as_duplicates_are_never_committed() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("out", 1, 1).unwrap();
    let sink = KafkaSink::builder()
        .bootstrap_servers(&cluster.bootstrap_servers())
        .topic("out")
        .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
        .transactional_id_prefix("dupseq")
        .transaction_timeout(Duration::from_secs(60))
        .build();
    let mut w = sink.writer(&ctx(0, 1, false)).unwrap();
    w.flush().unwrap(); // producers initialised, a transaction open
    // The next produce request writes nothing and is answered as a duplicate.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_DUPLICATE_SEQUENCE_NUMBER],
    );
    for i in 0..10 {
        w.write(format!("r{i}")).unwrap();
    }
    let err = w
        .snapshot(1)
        .expect_err("a checkpoint over unproven records must fail")
        .to_string();
    assert!(
        err.contains("DUPLICATE_SEQUENCE_NUMBER")
            && err.contains("out/0")
            && err.contains("dupseq-0-0"),
        "{err}"
    );
    // The broker indeed holds none of them.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .unwrap();
    assert_eq!(
        consumer
            .fetch_watermarks("out", 0, Duration::from_secs(10))
            .unwrap(),
        (0, 0)
    );
}
