//! The network record codec: a batch of records as one buffer for one exchange frame.
//!
//! A batch is postcard's encoding of a sequence: the record count as a varint, then the
//! records back to back. For the built-in types (strings, integers, pairs of them, `Value`)
//! these are exactly the bytes of the hand-written codec this replaced, so the exchange
//! protocol did not change.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A record could not be encoded (its `Serialize` failed, e.g. a sequence of unknown length).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode a record of type {type_name}: {source}")]
pub struct EncodeError {
    pub type_name: &'static str,
    #[source]
    pub source: postcard::Error,
}

/// A batch could not be decoded: the peer runs a different build or the stream is corrupt.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed batch of {type_name} from peer: {source}")]
    Malformed {
        type_name: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error(
        "malformed batch of {type_name} from peer: {trailing} trailing bytes after the last record"
    )]
    Trailing {
        type_name: &'static str,
        trailing: usize,
    },
}

/// Encode/decode functions of one record type, taken by the exchange when an edge is built.
pub struct Wire<T> {
    pub encode: fn(&[T], &mut Vec<u8>) -> Result<(), EncodeError>,
    pub decode: fn(&[u8]) -> Result<Vec<T>, DecodeError>,
}

impl<T> Clone for Wire<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Wire<T> {}

impl<T: Serialize + DeserializeOwned> Wire<T> {
    pub fn of() -> Self {
        Wire {
            encode: encode_batch::<T>,
            decode: decode_batch::<T>,
        }
    }
}

/// Appends the batch to `out`.
pub fn encode_batch<T: Serialize>(records: &[T], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let buf = std::mem::take(out);
    *out = postcard::to_extend(records, buf).map_err(|source| EncodeError {
        type_name: std::any::type_name::<T>(),
        source,
    })?;
    Ok(())
}

pub fn decode_batch<T: DeserializeOwned>(input: &[u8]) -> Result<Vec<T>, DecodeError> {
    let type_name = std::any::type_name::<T>();
    // serde reserves for an untrusted count only up to a bound, so a corrupt count cannot
    // make us allocate gigabytes.
    let (records, rest) = postcard::take_from_bytes::<Vec<T>>(input)
        .map_err(|source| DecodeError::Malformed { type_name, source })?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing {
            type_name,
            trailing: rest.len(),
        });
    }
    Ok(records)
}
