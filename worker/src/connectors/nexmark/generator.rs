//! Event `n` of the stream, computed from `n` alone.
//!
//! The shape follows the public description of the standard Nexmark generator: fixed
//! proportions of people, auctions and bids; ids that grow with the event number; sellers
//! and bidders drawn mostly from a few "hot" people and bids mostly on a few hot auctions,
//! the rest spread over recent ones; prices spread over orders of magnitude. Randomness is
//! a hash of the event number, so nothing depends on what came before.

use super::model::{Auction, Bid, Event, Person};
use super::{
    AUCTION_PROPORTION, FIRST_AUCTION_ID, FIRST_PERSON_ID, PERSON_PROPORTION,
    PROPORTION_DENOMINATOR,
};

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratorConfig {
    /// Events in total (over all subtasks); `None` for an unbounded stream.
    pub events: Option<u64>,
    /// Events per second of event time.
    pub events_per_second: u64,
    /// Event time of event 0, ms since the epoch.
    pub first_event_time_ms: i64,
    /// Pacing in wall-clock time; `None` generates as fast as downstream takes them.
    pub max_events_per_second: Option<u64>,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            events: None,
            events_per_second: 10_000,
            first_event_time_ms: 0,
            max_events_per_second: None,
        }
    }
}

/// Of every `HOT_RATIO` draws of a seller, bidder or auction, all but one are hot.
const HOT_RATIO: u64 = 4;
/// Hot ids are the latest id rounded down to a multiple of this.
const HOT_SPACING: u64 = 100;
/// Cold draws pick among this many of the most recent people or auctions.
const ACTIVE_PEOPLE: u64 = 1000;
const ACTIVE_AUCTIONS: u64 = 100;
/// Auctions stay open for up to this long in event time.
const MAX_AUCTION_LENGTH_MS: u64 = 20_000;

const FIRST_NAMES: &[&str] = &[
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: &[&str] = &[
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const US_STATES: &[&str] = &["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: &[&str] = &[
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const CHANNELS: &[&str] = &["Google", "Facebook", "Baidu", "Apple"];

/// Event time of event `n`: `first + n / rate` seconds, in whole ms.
pub fn event_time_of(config: &GeneratorConfig, n: u64) -> i64 {
    let ms = (u128::from(n) * 1000 / u128::from(config.events_per_second.max(1))) as i64;
    config.first_event_time_ms.saturating_add(ms)
}

/// The `n`-th event (0-based).
pub fn event_at(config: &GeneratorConfig, n: u64) -> Event {
    let time = event_time_of(config, n);
    let mut rng = Rng::new(n);
    let slot = n % PROPORTION_DENOMINATOR;
    if slot < PERSON_PROPORTION {
        Event::Person(person(n, time, &mut rng))
    } else if slot < PERSON_PROPORTION + AUCTION_PROPORTION {
        Event::Auction(auction(n, time, &mut rng))
    } else {
        Event::Bid(bid(n, time, &mut rng))
    }
}

/// People among events `0..n`.
fn people_before(n: u64) -> u64 {
    let cycles = n / PROPORTION_DENOMINATOR;
    cycles * PERSON_PROPORTION + (n % PROPORTION_DENOMINATOR).min(PERSON_PROPORTION)
}

/// Auctions among events `0..n`.
fn auctions_before(n: u64) -> u64 {
    let cycles = n / PROPORTION_DENOMINATOR;
    let in_cycle = (n % PROPORTION_DENOMINATOR).saturating_sub(PERSON_PROPORTION);
    cycles * AUCTION_PROPORTION + in_cycle.min(AUCTION_PROPORTION)
}

/// A person index below `count` (> 0): mostly a hot one, else a recent one.
fn pick(rng: &mut Rng, count: u64, active: u64) -> u64 {
    let latest = count - 1;
    if rng.below(HOT_RATIO) > 0 {
        latest / HOT_SPACING * HOT_SPACING
    } else {
        latest - rng.below(active.min(count))
    }
}

fn person(n: u64, time: i64, rng: &mut Rng) -> Person {
    let id = FIRST_PERSON_ID + people_before(n);
    let name = format!("{} {}", rng.choose(FIRST_NAMES), rng.choose(LAST_NAMES));
    let email_address = format!("{}@{}.com", rng.word(7), rng.word(5));
    let credit_card = format!(
        "{:04} {:04} {:04} {:04}",
        rng.below(10_000),
        rng.below(10_000),
        rng.below(10_000),
        rng.below(10_000)
    );
    Person {
        id,
        name,
        email_address,
        credit_card,
        city: rng.choose(US_CITIES).to_string(),
        state: rng.choose(US_STATES).to_string(),
        date_time: time,
        extra: String::new(),
    }
}

fn auction(n: u64, time: i64, rng: &mut Rng) -> Auction {
    let id = FIRST_AUCTION_ID + auctions_before(n);
    // Every auction comes after at least one person (event 0 is a person).
    let seller = FIRST_PERSON_ID + pick(rng, people_before(n), ACTIVE_PEOPLE);
    let initial_bid = price(rng);
    let reserve = initial_bid + price(rng);
    Auction {
        id,
        item_name: rng.word(8),
        description: rng.word(20),
        initial_bid,
        reserve,
        date_time: time,
        expires: time + 1 + rng.below(MAX_AUCTION_LENGTH_MS) as i64,
        seller,
        category: 10 + rng.below(5),
        extra: String::new(),
    }
}

fn bid(n: u64, time: i64, rng: &mut Rng) -> Bid {
    // A bid's slot comes after the cycle's person and auctions, so both exist.
    let auction = FIRST_AUCTION_ID + pick(rng, auctions_before(n), ACTIVE_AUCTIONS);
    let bidder = FIRST_PERSON_ID + pick(rng, people_before(n), ACTIVE_PEOPLE);
    let channel = rng.choose(CHANNELS);
    Bid {
        auction,
        bidder,
        price: price(rng),
        channel: channel.to_string(),
        url: format!(
            "https://www.nexmark.com/{}/item.htm?query=1",
            channel.to_lowercase()
        ),
        date_time: time,
        extra: String::new(),
    }
}

/// Cents from 1.00 to 1,000,000.00, spread evenly over the orders of magnitude.
fn price(rng: &mut Rng) -> u64 {
    (10f64.powf(rng.unit() * 6.0) * 100.0).round() as u64
}

/// splitmix64 over the event number: small, fast, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn new(n: u64) -> Self {
        Rng(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x005E_ED0F_4E78_4D41)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn choose<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
    fn word(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| (b'a' + self.below(26) as u8) as char)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proportions_ids_and_times() {
        let config = GeneratorConfig {
            events_per_second: 1000,
            first_event_time_ms: 5_000,
            ..GeneratorConfig::default()
        };
        let events: Vec<Event> = (0..5000).map(|n| event_at(&config, n)).collect();
        let (mut people, mut auctions, mut bids) = (0, 0, 0);
        for (n, e) in events.iter().enumerate() {
            assert_eq!(e.date_time(), 5_000 + n as i64);
            match e {
                Event::Person(p) => {
                    assert_eq!(p.id, FIRST_PERSON_ID + people);
                    people += 1;
                }
                Event::Auction(a) => {
                    assert_eq!(a.id, FIRST_AUCTION_ID + auctions);
                    assert!(a.seller >= FIRST_PERSON_ID && a.seller < FIRST_PERSON_ID + people);
                    assert!(a.expires > a.date_time && a.reserve >= a.initial_bid);
                    auctions += 1;
                }
                Event::Bid(b) => {
                    assert!(
                        b.auction >= FIRST_AUCTION_ID && b.auction < FIRST_AUCTION_ID + auctions
                    );
                    assert!(b.bidder >= FIRST_PERSON_ID && b.bidder < FIRST_PERSON_ID + people);
                    assert!((100..=100_000_000).contains(&b.price));
                    bids += 1;
                }
            }
        }
        assert_eq!((people, auctions, bids), (100, 300, 4600));
        assert_eq!(event_at(&config, 4321), events[4321], "deterministic");
    }
}
