//! Nexmark, the standard streaming benchmark: an online auction site whose people open
//! auctions and bid on them. [`NexmarkSource`] generates the three event kinds in the
//! standard generator's proportions (of every 50 events, 1 person, 3 auctions, 46 bids),
//! with event times at a configured rate, deterministically: event `n` depends only on `n`,
//! so any parallelism produces the same events and a restore resumes exactly.

mod generator;
mod model;
pub mod queries;
mod source;

pub use generator::{GeneratorConfig, event_at, event_time_of};
pub use model::{Auction, Bid, Event, Person};
pub use source::NexmarkSource;

/// Ids of the first person and the first auction, as in the standard generator.
pub const FIRST_PERSON_ID: u64 = 1000;
pub const FIRST_AUCTION_ID: u64 = 1000;
/// Events per proportion cycle: [`PERSON_PROPORTION`] + [`AUCTION_PROPORTION`] +
/// [`BID_PROPORTION`].
pub const PROPORTION_DENOMINATOR: u64 = 50;
pub const PERSON_PROPORTION: u64 = 1;
pub const AUCTION_PROPORTION: u64 = 3;
pub const BID_PROPORTION: u64 = 46;
