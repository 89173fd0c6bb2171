//! Nexmark queries on the DataStream API, shared by the examples, the tests and the
//! benchmark. Each takes the event stream and returns the query's result stream.

use std::cmp::Reverse;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::model::{Bid, Event};
use crate::api::watermark::WatermarkStrategy;
use crate::api::windows::{
    AggregateFunction, SlidingEventTimeWindows, TumblingEventTimeWindows, WindowContext,
};
use crate::{Collector, DataStream};

/// Euro cents per 1000 dollar cents (q1's fixed exchange rate, 0.908).
pub const EUROS_PER_1000_DOLLARS: u64 = 908;
/// q2 keeps bids on auctions whose id is a multiple of this.
pub const Q2_AUCTION_MODULUS: u64 = 123;

/// q2's result: an auction and a price bid on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AuctionPrice {
    pub auction: u64,
    pub price: u64,
}

fn bids(events: &DataStream<Event>) -> DataStream<Bid> {
    events.flat_map(|e: Event, out| {
        if let Event::Bid(b) = e {
            out.collect(b);
        }
    })
}

/// q0, pass-through: every bid, unchanged (the cost of reading and moving records).
pub fn q0(events: &DataStream<Event>) -> DataStream<Bid> {
    bids(events)
}

/// q1, currency conversion: bids with the price in euro cents (dollars x 0.908, rounded
/// down).
pub fn q1(events: &DataStream<Event>) -> DataStream<Bid> {
    bids(events).map(|mut b: Bid| {
        b.price = b.price * EUROS_PER_1000_DOLLARS / 1000;
        b
    })
}

/// q2, selection: auction and price of the bids on every 123rd auction.
pub fn q2(events: &DataStream<Event>) -> DataStream<AuctionPrice> {
    events.flat_map(|e: Event, out| {
        if let Event::Bid(b) = e
            && b.auction % Q2_AUCTION_MODULUS == 0
        {
            out.collect(AuctionPrice {
                auction: b.auction,
                price: b.price,
            });
        }
    })
}

/// q5's result: the auction with the most bids in the sliding window ending at
/// `window_end` (ties: the smallest auction id), and its bid count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HotItem {
    pub window_end: i64,
    pub auction: u64,
    pub count: u64,
}

/// q7's result: the highest bid of the tumbling window ending at `window_end` (ties: the
/// smallest auction, then bidder, then time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HighestBid {
    pub window_end: i64,
    pub bid: Bid,
}

/// q5's window: 10 s, every 2 s.
pub const Q5_SIZE: Duration = Duration::from_secs(10);
pub const Q5_SLIDE: Duration = Duration::from_secs(2);
/// q7's window: 10 s.
pub const Q7_SIZE: Duration = Duration::from_secs(10);

/// The events with watermarks: each generator subtask emits in event-time order, so the
/// watermark follows its latest timestamp.
fn timed(events: &DataStream<Event>) -> DataStream<Event> {
    events.assign_timestamps_and_watermarks(WatermarkStrategy::for_monotonous_timestamps())
}

struct CountBids;

impl AggregateFunction<Bid> for CountBids {
    type Acc = u64;
    type Out = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, _: Bid, acc: &mut u64) {
        *acc += 1;
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
    fn merge(&self, a: u64, b: u64) -> u64 {
        a + b
    }
}

/// q5, hot items: bids per auction in sliding windows, then per window the auction with
/// the most.
pub fn q5(events: &DataStream<Event>) -> DataStream<HotItem> {
    let counts = bids(&timed(events))
        .key_by(|b: &Bid| b.auction)
        .window(SlidingEventTimeWindows::of(Q5_SIZE, Q5_SLIDE))
        .aggregate_with_process(
            CountBids,
            |auction: &u64, ctx: &WindowContext, count: u64, out: &mut Collector<'_, HotItem>| {
                out.collect(HotItem {
                    window_end: ctx.window.end,
                    auction: *auction,
                    count,
                })
            },
        );
    // A window's results carry its last millisecond as their time, so the tumbling window
    // of one slide that ends with it holds exactly that window's counts.
    counts
        .key_by(|h: &HotItem| h.window_end)
        .window(TumblingEventTimeWindows::of(Q5_SLIDE))
        .reduce(|a: HotItem, b: HotItem| {
            if (b.count, Reverse(b.auction)) > (a.count, Reverse(a.auction)) {
                b
            } else {
                a
            }
        })
}

/// The order q7 picks the highest bid by.
pub fn q7_rank(b: &Bid) -> (u64, Reverse<u64>, Reverse<u64>, Reverse<i64>) {
    (
        b.price,
        Reverse(b.auction),
        Reverse(b.bidder),
        Reverse(b.date_time),
    )
}

/// q7, highest bid: the highest bid of each tumbling window over all bids.
pub fn q7(events: &DataStream<Event>) -> DataStream<HighestBid> {
    bids(&timed(events))
        .window_all(TumblingEventTimeWindows::of(Q7_SIZE))
        .reduce_with_process(
            |a: Bid, b: Bid| if q7_rank(&b) > q7_rank(&a) { b } else { a },
            |_: &(), ctx: &WindowContext, bid: Bid, out: &mut Collector<'_, HighestBid>| {
                out.collect(HighestBid {
                    window_end: ctx.window.end,
                    bid,
                })
            },
        )
}
