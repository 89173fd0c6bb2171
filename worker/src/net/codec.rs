//! What the exchange and older callers take from the codecs in `crate::codec`: the network
//! record codec itself lives in `crate::codec::record`.

use streamjob_crds::expr::Value;

pub use crate::codec::record::{DecodeError, EncodeError, Wire};

/// One `Value` appended to / taken from a byte buffer, for `declarative.rs`'s reduce
/// snapshot until it writes `crate::codec::state`'s versioned format (issue 15 item 4);
/// then this and the varints below go. The bytes are those of postcard, which for `Value`
/// are exactly what the hand-written codec wrote before, so its snapshots did not change.
pub(crate) trait Codec: Sized {
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(input: &mut &[u8]) -> Result<Self, postcard::Error>;
}

impl Codec for Value {
    fn encode(&self, out: &mut Vec<u8>) {
        crate::codec::append(self, out).expect("a Value always encodes");
    }
    fn decode(input: &mut &[u8]) -> Result<Self, postcard::Error> {
        let (v, rest) = postcard::take_from_bytes(input)?;
        *input = rest;
        Ok(v)
    }
}

pub(crate) fn put_varint(out: &mut Vec<u8>, v: u64) {
    crate::codec::append(&v, out).expect("an integer always encodes");
}

pub(crate) fn get_varint(input: &mut &[u8]) -> Result<u64, postcard::Error> {
    let (v, rest) = postcard::take_from_bytes(input)?;
    *input = rest;
    Ok(v)
}
