//! Nexmark queries on the DataStream API, shared by the examples, the tests and the
//! benchmark. Each takes the event stream and returns the query's result stream.

use serde::{Deserialize, Serialize};

use super::model::{Bid, Event};
use crate::DataStream;

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
