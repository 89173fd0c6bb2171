//! Nexmark: the generator's shape, and every query (Rust API and YAML) against an oracle
//! computed here from the events with plain loops, at parallelism 1 and 2.

use std::path::{Path, PathBuf};

use streamjob::StreamExecutionEnvironment;
use streamjob::connectors::nexmark::queries::{self, AuctionPrice};
use streamjob::connectors::nexmark::{Bid, Event, GeneratorConfig, NexmarkSource, event_at};
use streamjob::crds::expr::Value;
use streamjob::crds::validate::parse_job;
use streamjob::declarative::build_job;

const EVENTS: u64 = 20_000;

fn config() -> GeneratorConfig {
    GeneratorConfig {
        events: Some(EVENTS),
        events_per_second: 1000,
        first_event_time_ms: 1_000_000,
        max_events_per_second: None,
    }
}

fn all_events() -> Vec<Event> {
    (0..EVENTS).map(|n| event_at(&config(), n)).collect()
}

fn oracle_bids() -> Vec<Bid> {
    all_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Bid(b) => Some(b),
            _ => None,
        })
        .collect()
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn bid_key(b: &Bid) -> (i64, u64, u64, u64) {
    (b.date_time, b.auction, b.bidder, b.price)
}

/// Runs `query` over the generator at `parallelism` and returns what it emitted.
fn run_rust<T: streamjob::Data>(
    parallelism: u32,
    query: impl Fn(&streamjob::DataStream<Event>) -> streamjob::DataStream<T>,
) -> Vec<T> {
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(parallelism);
    let source = env.from_source(NexmarkSource::new(config()), "nexmark");
    let out = query(&source).collect_sink();
    env.execute("nexmark").unwrap();
    out.take()
}

#[test]
fn the_generator_keeps_the_standard_proportions_and_event_times() {
    let events = all_events();
    let count = |f: fn(&Event) -> bool| events.iter().filter(|e| f(e)).count() as u64;
    assert_eq!(count(|e| matches!(e, Event::Person(_))), EVENTS / 50);
    assert_eq!(count(|e| matches!(e, Event::Auction(_))), EVENTS / 50 * 3);
    assert_eq!(count(|e| matches!(e, Event::Bid(_))), EVENTS / 50 * 46);
    for (n, e) in events.iter().enumerate() {
        assert_eq!(
            e.date_time(),
            1_000_000 + n as i64,
            "1000 events/s: 1 ms apart"
        );
    }
    // Hot auctions: most bids go to few auctions.
    let mut per_auction = std::collections::HashMap::<u64, u64>::new();
    for b in oracle_bids() {
        *per_auction.entry(b.auction).or_default() += 1;
    }
    let mut counts: Vec<u64> = per_auction.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let top10: u64 = counts.iter().take(10).sum();
    assert!(
        top10 * 2 > EVENTS / 50 * 46,
        "top 10 auctions get most bids: {top10}"
    );
}

#[test]
fn the_source_emits_every_event_once_at_parallelism_1_2_and_3() {
    let expected: Vec<i64> = (0..EVENTS as i64).map(|n| 1_000_000 + n).collect();
    for p in [1, 2, 3] {
        let times = run_rust(p, |s| s.map(|e: Event| e.date_time()));
        assert_eq!(sorted(times), expected, "parallelism {p}");
    }
}

#[test]
fn q0_passes_every_bid_through() {
    let expected = sorted(oracle_bids().iter().map(bid_key).collect());
    for p in [1, 2] {
        let got = run_rust(p, queries::q0);
        assert_eq!(sorted(got.iter().map(bid_key).collect()), expected, "p={p}");
    }
}

#[test]
fn q1_converts_prices_to_euros() {
    let expected: Vec<_> = sorted(
        oracle_bids()
            .iter()
            .map(|b| (b.date_time, b.auction, b.bidder, b.price * 908 / 1000))
            .collect(),
    );
    for p in [1, 2] {
        let got = run_rust(p, queries::q1);
        assert_eq!(sorted(got.iter().map(bid_key).collect()), expected, "p={p}");
    }
}

#[test]
fn q2_selects_every_123rd_auction() {
    let expected: Vec<AuctionPrice> = sorted(
        oracle_bids()
            .iter()
            .filter(|b| b.auction % 123 == 0)
            .map(|b| AuctionPrice {
                auction: b.auction,
                price: b.price,
            })
            .collect(),
    );
    assert!(expected.len() > 10, "the sample has bids to select");
    for p in [1, 2] {
        assert_eq!(sorted(run_rust(p, queries::q2)), expected, "p={p}");
    }
}

// --- The YAML examples -----------------------------------------------------------------

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sj-nexmark-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs a manifests/examples file with its generator set to [`config`], its print sink
/// replaced by a file, at `parallelism`; returns the records written.
pub fn run_example(name: &str, parallelism: u32) -> Vec<serde_json::Value> {
    let dir = tmp(&format!("{name}-{parallelism}"));
    let out = dir.join("out.txt");
    let yaml = std::fs::read_to_string(examples().join(name))
        .unwrap()
        .replace(
            "          events: 10000\n          eventsPerSecond: 1000\n",
            &format!("          events: {EVENTS}\n          eventsPerSecond: 1000\n          firstEventTimeMs: 1000000\n"),
        )
        .replace("        print: {}", &format!("        file:\n          path: {}", out.display()))
        .replace("  parallelism: 2\n", &format!("  parallelism: {parallelism}\n"));
    assert!(
        yaml.contains(&format!("events: {EVENTS}")),
        "{name}: generator settings not found"
    );
    let job = parse_job(&yaml).unwrap();
    let env = StreamExecutionEnvironment::get_execution_environment();
    build_job(&env, &job, &dir).unwrap();
    env.execute(name).unwrap();
    let mut records = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("out.txt") {
            for l in std::fs::read_to_string(e.path()).unwrap().lines() {
                records.push(serde_json::from_str(l).unwrap());
            }
        }
    }
    records
}

fn as_tuple(v: &serde_json::Value, fields: &[&str]) -> Vec<i64> {
    fields
        .iter()
        .map(|f| v[*f].as_i64().unwrap_or_else(|| panic!("{f} in {v}")))
        .collect()
}

#[test]
fn yaml_q0_q1_q2_match_the_oracle_at_parallelism_1_and_2() {
    let bids = oracle_bids();
    let q0: Vec<Vec<i64>> = sorted(
        bids.iter()
            .map(|b| {
                vec![
                    b.date_time,
                    b.auction as i64,
                    b.bidder as i64,
                    b.price as i64,
                ]
            })
            .collect(),
    );
    let q1: Vec<Vec<i64>> = sorted(
        bids.iter()
            .map(|b| {
                vec![
                    b.date_time,
                    b.auction as i64,
                    b.bidder as i64,
                    (b.price * 908 / 1000) as i64,
                ]
            })
            .collect(),
    );
    let q2: Vec<Vec<i64>> = sorted(
        bids.iter()
            .filter(|b| b.auction % 123 == 0)
            .map(|b| vec![b.auction as i64, b.price as i64])
            .collect(),
    );
    let full = ["dateTime", "auction", "bidder", "price"];
    for p in [1, 2] {
        let got = |name, fields: &[&str]| {
            sorted(
                run_example(name, p)
                    .iter()
                    .map(|v| as_tuple(v, fields))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(got("nexmark-q0.yaml", &full), q0, "q0 p={p}");
        assert_eq!(got("nexmark-q1.yaml", &full), q1, "q1 p={p}");
        assert_eq!(
            got("nexmark-q2.yaml", &["auction", "price"]),
            q2,
            "q2 p={p}"
        );
    }
    // The spec's records are the Rust events' fields.
    let v = event_at(&config(), 7).to_value();
    assert_eq!(v.as_map().unwrap()["type"], Value::from("bid"));
}

// --- Windowed queries -------------------------------------------------------------------

/// q5 by hand: every 2 s window end, the bid counts per auction over the 10 s before it.
fn q5_oracle() -> Vec<queries::HotItem> {
    let bids = oracle_bids();
    let (first, last) = (bids[0].date_time, bids.last().unwrap().date_time);
    let mut out = Vec::new();
    let mut end = first - first.rem_euclid(2000) + 2000;
    while end - 10_000 <= last {
        let mut counts: std::collections::BTreeMap<u64, u64> = Default::default();
        for b in bids
            .iter()
            .filter(|b| b.date_time >= end - 10_000 && b.date_time < end)
        {
            *counts.entry(b.auction).or_default() += 1;
        }
        // Highest count; among equals the smallest auction (BTreeMap order, strict >).
        let mut best: Option<(u64, u64)> = None;
        for (&auction, &count) in &counts {
            if best.is_none_or(|(_, c)| count > c) {
                best = Some((auction, count));
            }
        }
        if let Some((auction, count)) = best {
            out.push(queries::HotItem {
                window_end: end,
                auction,
                count,
            });
        }
        end += 2000;
    }
    out
}

/// q7 by hand: per 10 s window, the highest bid (price, then smallest auction, bidder, time).
fn q7_oracle() -> Vec<(i64, Bid)> {
    let mut best: std::collections::BTreeMap<i64, Bid> = Default::default();
    for b in oracle_bids() {
        let end = b.date_time - b.date_time.rem_euclid(10_000) + 10_000;
        let better = |cur: &Bid| {
            (
                b.price,
                std::cmp::Reverse((b.auction, b.bidder, b.date_time)),
            ) > (
                cur.price,
                std::cmp::Reverse((cur.auction, cur.bidder, cur.date_time)),
            )
        };
        if best.get(&end).is_none_or(better) {
            best.insert(end, b);
        }
    }
    best.into_iter().collect()
}

#[test]
fn q5_finds_the_hottest_auction_per_sliding_window() {
    let expected = q5_oracle();
    assert!(expected.len() >= 10, "{} windows", expected.len());
    for p in [1, 2] {
        assert_eq!(sorted(run_rust(p, queries::q5)), expected, "p={p}");
    }
}

#[test]
fn q7_finds_the_highest_bid_per_tumbling_window() {
    let expected = q7_oracle();
    assert!(expected.len() >= 2, "{} windows", expected.len());
    for p in [1, 2] {
        let mut got: Vec<(i64, Bid)> = run_rust(p, queries::q7)
            .into_iter()
            .map(|h| (h.window_end, h.bid))
            .collect();
        got.sort_by_key(|(end, _)| *end);
        assert_eq!(got, expected, "p={p}");
    }
}

#[test]
fn yaml_q5_q7_match_the_oracle_at_parallelism_1_and_2() {
    let q5: Vec<Vec<i64>> = q5_oracle()
        .iter()
        .map(|h| vec![h.window_end, h.auction as i64, h.count as i64])
        .collect();
    let q7: Vec<Vec<i64>> = q7_oracle()
        .iter()
        .map(|(end, b)| {
            vec![
                *end,
                b.auction as i64,
                b.bidder as i64,
                b.price as i64,
                b.date_time,
            ]
        })
        .collect();
    for p in [1, 2] {
        let got = |name, fields: &[&str]| {
            sorted(
                run_example(name, p)
                    .iter()
                    .map(|v| as_tuple(v, fields))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            got("nexmark-q5.yaml", &["windowEnd", "auction", "count"]),
            q5,
            "q5 p={p}"
        );
        assert_eq!(
            got(
                "nexmark-q7.yaml",
                &["windowEnd", "auction", "bidder", "price", "dateTime"]
            ),
            q7,
            "q7 p={p}"
        );
    }
}
