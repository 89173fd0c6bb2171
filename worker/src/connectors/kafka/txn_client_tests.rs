//! The transaction client against fake brokers that decode its requests and answer with
//! encoded responses (the `kafka-protocol` crate's broker side): version negotiation, the
//! requests it sends, SASL PLAIN, and how refusals surface.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::describe_transactions_response::TransactionState;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{
    ApiVersionsResponse, DescribeTransactionsResponse, EndTxnResponse, FindCoordinatorResponse,
    SaslAuthenticateResponse, SaslHandshakeResponse,
};
use kafka_protocol::protocol::decode_request_header_from_buffer;

use super::*;

/// What a fake broker supports and answers.
#[derive(Clone)]
struct Fake {
    /// (api key, min, max) advertised in ApiVersions.
    versions: Vec<(i16, i16, i16)>,
    /// Highest ApiVersions version it understands (higher: UNSUPPORTED_VERSION in v0).
    api_versions_max: i16,
    end_txn_error: i16,
    txn_state: &'static str,
    /// SASL PLAIN credentials it accepts, if it requires SASL.
    plain: Option<(&'static str, &'static str)>,
}

impl Default for Fake {
    fn default() -> Self {
        Fake {
            versions: vec![(10, 0, 6), (26, 0, 5), (65, 0, 0), (17, 0, 1), (36, 0, 2)],
            api_versions_max: 4,
            end_txn_error: 0,
            txn_state: "Ongoing",
            plain: None,
        }
    }
}

/// Every request a fake broker received: (api key, version, decoded request as Debug text).
type Log = Arc<Mutex<Vec<(i16, i16, String)>>>;

fn encode<M: Encodable + HeaderVersion>(correlation: i32, version: i16, m: &M) -> Vec<u8> {
    let mut body = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(correlation)
        .encode(&mut body, M::header_version(version))
        .unwrap();
    m.encode(&mut body, version).unwrap();
    let mut out = (body.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn fake_broker(fake: Fake) -> (u16, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let log: Log = Arc::default();
    let seen = log.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let (fake, seen) = (fake.clone(), seen.clone());
            std::thread::spawn(move || serve(&mut s, port, &fake, &seen));
        }
    });
    (port, log)
}

fn serve(s: &mut TcpStream, port: u16, fake: &Fake, seen: &Log) {
    let mut authenticated = fake.plain.is_none();
    loop {
        let mut size = [0u8; 4];
        if s.read_exact(&mut size).is_err() {
            return;
        }
        let mut req = vec![0u8; i32::from_be_bytes(size) as usize];
        s.read_exact(&mut req).unwrap();
        let mut buf = Bytes::from(req);
        let header = decode_request_header_from_buffer(&mut buf).unwrap();
        let (api, v, c) = (
            header.request_api_key,
            header.request_api_version,
            header.correlation_id,
        );
        let answer = match api {
            18 if v > fake.api_versions_max => {
                seen.lock().unwrap().push((api, v, String::new()));
                encode(c, 0, &ApiVersionsResponse::default().with_error_code(35))
            }
            18 => {
                let r = ApiVersionsRequest::decode(&mut buf, v).unwrap();
                seen.lock().unwrap().push((api, v, format!("{r:?}")));
                let keys = fake
                    .versions
                    .iter()
                    .chain(&[(18, 0, fake.api_versions_max)])
                    .map(|&(k, lo, hi)| {
                        ApiVersion::default()
                            .with_api_key(k)
                            .with_min_version(lo)
                            .with_max_version(hi)
                    })
                    .collect();
                encode(c, v, &ApiVersionsResponse::default().with_api_keys(keys))
            }
            17 => {
                let r = SaslHandshakeRequest::decode(&mut buf, v).unwrap();
                seen.lock().unwrap().push((api, v, format!("{r:?}")));
                let offered = vec![StrBytes::from_static_str("PLAIN")];
                let error = if r.mechanism.as_str() == "PLAIN" {
                    0
                } else {
                    33
                };
                encode(
                    c,
                    v,
                    &SaslHandshakeResponse::default()
                        .with_error_code(error)
                        .with_mechanisms(offered),
                )
            }
            36 => {
                let r = SaslAuthenticateRequest::decode(&mut buf, v).unwrap();
                seen.lock().unwrap().push((api, v, String::new()));
                let (user, password) = fake.plain.unwrap();
                let ok = r.auth_bytes[..] == *format!("\0{user}\0{password}").as_bytes();
                authenticated = ok;
                let mut resp = SaslAuthenticateResponse::default();
                if !ok {
                    resp = resp.with_error_code(58).with_error_message(Some(
                        StrBytes::from_static_str(
                            "Authentication failed: Invalid username or password",
                        ),
                    ));
                }
                encode(c, v, &resp)
            }
            _ if !authenticated => return, // a real broker closes the connection
            10 => {
                let r = FindCoordinatorRequest::decode(&mut buf, v).unwrap();
                seen.lock().unwrap().push((api, v, format!("{r:?}")));
                let host = StrBytes::from_static_str("127.0.0.1");
                let resp = if v >= 4 {
                    FindCoordinatorResponse::default().with_coordinators(vec![
                        Coordinator::default()
                            .with_key(r.coordinator_keys[0].clone())
                            .with_host(host)
                            .with_port(i32::from(port)),
                    ])
                } else {
                    FindCoordinatorResponse::default()
                        .with_host(host)
                        .with_port(i32::from(port))
                };
                encode(c, v, &resp)
            }
            26 => {
                let r = EndTxnRequest::decode(&mut buf, v).unwrap();
                seen.lock().unwrap().push((api, v, format!("{r:?}")));
                encode(
                    c,
                    v,
                    &EndTxnResponse::default().with_error_code(fake.end_txn_error),
                )
            }
            65 => {
                let r = DescribeTransactionsRequest::decode(&mut buf, v).unwrap();
                seen.lock().unwrap().push((api, v, format!("{r:?}")));
                let states = r
                    .transactional_ids
                    .iter()
                    .map(|id| {
                        TransactionState::default()
                            .with_transactional_id(id.clone())
                            .with_transaction_state(StrBytes::from_static_str(fake.txn_state))
                    })
                    .collect();
                encode(
                    c,
                    v,
                    &DescribeTransactionsResponse::default().with_transaction_states(states),
                )
            }
            other => panic!("unexpected request {other}"),
        };
        s.write_all(&answer).unwrap();
    }
}

fn client(port: u16, security: Security) -> Client {
    Client::new(
        &format!("PLAINTEXT://127.0.0.1:{port}"),
        "me",
        security,
        Instant::now() + Duration::from_secs(10),
    )
}

fn txn() -> Txn {
    Txn {
        transactional_id: "tx-0-1".into(),
        producer_id: 1000,
        producer_epoch: 3,
    }
}

/// (api, version) of each request after the handshakes.
fn calls(log: &Log) -> Vec<(i16, i16)> {
    log.lock()
        .unwrap()
        .iter()
        .map(|(a, v, _)| (*a, *v))
        .collect()
}

#[test]
fn bootstrap_lists_accept_protocol_prefixes_and_spaces() {
    assert_eq!(
        bootstrap_addresses("PLAINTEXT://a:9092, b:9093,,[::1]:9094"),
        vec!["a:9092", "b:9093", "[::1]:9094"]
    );
}

#[test]
fn the_highest_common_version_of_each_request_is_used() {
    // A recent broker: FindCoordinator v6 (batched keys); EndTxn stops at v4 (v5 is
    // transactions v2).
    let (port, log) = fake_broker(Fake::default());
    assert_eq!(
        client(port, Security::default()).commit(&txn()).unwrap(),
        Committed::Now
    );
    assert_eq!(calls(&log), vec![(18, 3), (10, 6), (26, 4)]);
    let log = log.lock().unwrap();
    assert!(
        log[1].2.contains(r#"coordinator_keys: ["tx-0-1"]"#),
        "{}",
        log[1].2
    );
    assert!(log[1].2.contains("key_type: 1"), "{}", log[1].2);
    let end = &log[2].2;
    for field in [
        r#"transactional_id: "tx-0-1""#,
        "producer_id: 1000",
        "producer_epoch: 3",
        "committed: true",
    ] {
        assert!(end.contains(field), "{field} in {end}");
    }
}

#[test]
fn an_old_broker_is_asked_in_the_versions_it_knows() {
    // ApiVersions v0 only, FindCoordinator up to v2 (the single-key layout), EndTxn v1, no
    // DescribeTransactions.
    let (port, log) = fake_broker(Fake {
        versions: vec![(10, 0, 2), (26, 0, 1)],
        api_versions_max: 0,
        end_txn_error: 47, // INVALID_PRODUCER_EPOCH: committed before
        ..Fake::default()
    });
    let c = client(port, Security::default());
    assert_eq!(c.commit(&txn()).unwrap(), Committed::Earlier);
    assert_eq!(calls(&log), vec![(18, 3), (18, 0), (10, 2), (26, 1)]);
    assert!(log.lock().unwrap()[2].2.contains(r#"key: "tx-0-1""#));
    assert_eq!(c.state("tx-0-1").unwrap(), None, "no DescribeTransactions");
}

#[test]
fn no_common_version_is_an_error_naming_both_ranges() {
    let (port, _) = fake_broker(Fake {
        versions: vec![(10, 0, 0), (26, 0, 1)],
        ..Fake::default()
    });
    let started = Instant::now();
    let e = client(port, Security::default())
        .commit(&txn())
        .unwrap_err();
    assert_eq!(
        e,
        format!(
            "Kafka broker 127.0.0.1:{port}: no common version of FindCoordinator: this client \
             speaks 1..6, the broker 0..0"
        )
    );
    assert!(started.elapsed() < Duration::from_secs(2), "not retried");
}

#[test]
fn describe_transactions_reads_the_state() {
    let (port, log) = fake_broker(Fake::default());
    let state = client(port, Security::default())
        .state("tx-3-0")
        .unwrap()
        .unwrap();
    assert_eq!(state, TxnState::Known("Ongoing".into()));
    assert!(state.is_open());
    assert_eq!(calls(&log)[2], (65, 0));
}

fn plain(password: &str) -> Security {
    Security::from_lookup(|k| match k {
        "security.protocol" => Some("SASL_PLAINTEXT"),
        "sasl.mechanism" => Some("PLAIN"),
        "sasl.username" => Some("alice"),
        "sasl.password" => Some(password),
        _ => None,
    })
    .unwrap()
}

#[test]
fn sasl_plain_authenticates_every_connection() {
    let (port, log) = fake_broker(Fake {
        plain: Some(("alice", "s3cret")),
        ..Fake::default()
    });
    assert_eq!(
        client(port, plain("s3cret")).commit(&txn()).unwrap(),
        Committed::Now
    );
    // Bootstrap connection: versions, handshake, authenticate, FindCoordinator; the
    // coordinator is the same broker, so the same connection ends the transaction.
    assert_eq!(
        calls(&log),
        vec![(18, 3), (17, 1), (36, 2), (10, 6), (26, 4)]
    );
}

#[test]
fn a_wrong_password_fails_at_once_with_one_line() {
    let (port, _) = fake_broker(Fake {
        plain: Some(("alice", "s3cret")),
        ..Fake::default()
    });
    let started = Instant::now();
    let e = client(port, plain("wrong")).commit(&txn()).unwrap_err();
    assert_eq!(
        e,
        format!(
            "Kafka broker 127.0.0.1:{port}: SASL PLAIN authentication as 'alice' failed: \
             SaslAuthenticate: SaslAuthenticationFailed (58): Authentication failed: Invalid \
             username or password"
        )
    );
    assert!(!e.contains("wrong"), "the password is never printed");
    assert!(started.elapsed() < Duration::from_secs(2), "not retried");
}
