//! What the exchange takes from the codecs in `crate::codec`: the network record codec itself
//! lives in `crate::codec::record`.

pub use crate::codec::record::{DecodeError, EncodeError, Wire};
