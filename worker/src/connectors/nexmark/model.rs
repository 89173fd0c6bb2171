//! The Nexmark event types.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use streamjob_crds::expr::Value;

/// A person: registers, then opens auctions and bids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub id: u64,
    pub name: String,
    pub email_address: String,
    pub credit_card: String,
    pub city: String,
    pub state: String,
    /// Event time, ms since the epoch.
    pub date_time: i64,
    pub extra: String,
}

/// An item put up for auction by `seller`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auction {
    pub id: u64,
    pub item_name: String,
    pub description: String,
    pub initial_bid: u64,
    pub reserve: u64,
    pub date_time: i64,
    /// When the auction closes, ms since the epoch.
    pub expires: i64,
    pub seller: u64,
    pub category: u64,
    pub extra: String,
}

/// A bid of `bidder` on `auction`, `price` in cents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bid {
    pub auction: u64,
    pub bidder: u64,
    pub price: u64,
    pub channel: String,
    pub url: String,
    pub date_time: i64,
    pub extra: String,
}

/// One Nexmark event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Person(Person),
    Auction(Auction),
    Bid(Bid),
}

impl Event {
    /// The event's time, ms since the epoch.
    pub fn date_time(&self) -> i64 {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }

    /// The bid, if this is one.
    pub fn as_bid(&self) -> Option<&Bid> {
        match self {
            Event::Bid(b) => Some(b),
            _ => None,
        }
    }

    /// The event as a spec record: a map with `type` (`person`, `auction`, `bid`) and the
    /// fields in camelCase (`dateTime`, `itemName`, ...), ints as ints.
    pub fn to_value(&self) -> Value {
        fn s(v: &str) -> Value {
            Value::from(v)
        }
        fn i(v: u64) -> Value {
            // Ids and prices stay far below i64::MAX; an int compares with literals in CEL.
            Value::Int(v as i64)
        }
        let entries: Vec<(Arc<str>, Value)> = match self {
            Event::Person(p) => vec![
                ("type".into(), s("person")),
                ("id".into(), i(p.id)),
                ("name".into(), s(&p.name)),
                ("emailAddress".into(), s(&p.email_address)),
                ("creditCard".into(), s(&p.credit_card)),
                ("city".into(), s(&p.city)),
                ("state".into(), s(&p.state)),
                ("dateTime".into(), Value::Int(p.date_time)),
                ("extra".into(), s(&p.extra)),
            ],
            Event::Auction(a) => vec![
                ("type".into(), s("auction")),
                ("id".into(), i(a.id)),
                ("itemName".into(), s(&a.item_name)),
                ("description".into(), s(&a.description)),
                ("initialBid".into(), i(a.initial_bid)),
                ("reserve".into(), i(a.reserve)),
                ("dateTime".into(), Value::Int(a.date_time)),
                ("expires".into(), Value::Int(a.expires)),
                ("seller".into(), i(a.seller)),
                ("category".into(), i(a.category)),
                ("extra".into(), s(&a.extra)),
            ],
            Event::Bid(b) => vec![
                ("type".into(), s("bid")),
                ("auction".into(), i(b.auction)),
                ("bidder".into(), i(b.bidder)),
                ("price".into(), i(b.price)),
                ("channel".into(), s(&b.channel)),
                ("url".into(), s(&b.url)),
                ("dateTime".into(), Value::Int(b.date_time)),
                ("extra".into(), s(&b.extra)),
            ],
        };
        Value::map(entries)
    }
}
