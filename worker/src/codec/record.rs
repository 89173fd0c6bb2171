//! The network record codec: a batch of records as one buffer for one exchange frame.
//!
//! A batch is postcard's encoding of a sequence: the record count as a varint, then the
//! records back to back. For the built-in types (strings, integers, pairs of them, `Value`)
//! these are exactly the bytes of the hand-written codec this replaced, so the exchange
//! protocol did not change.
//!
//! A batch whose records carry event timestamps has the timestamps appended after the
//! records, as postcard's encoding of a `Vec<i64>` of the same length; an untimed batch is
//! unchanged, so jobs without event time send exactly the bytes they sent before.

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
    #[error(
        "malformed batch of {type_name} from peer: {timestamps} timestamps for {records} records"
    )]
    TimestampCount {
        type_name: &'static str,
        timestamps: usize,
        records: usize,
    },
}

/// Records and, if the batch has them, their event timestamps.
pub type TimedBatch<T> = (Vec<T>, Option<Vec<i64>>);

/// Encode/decode functions of one record type, taken by the exchange when an edge is built.
pub struct Wire<T> {
    pub encode: fn(&[T], &mut Vec<u8>) -> Result<(), EncodeError>,
    pub decode: fn(&[u8]) -> Result<Vec<T>, DecodeError>,
    /// Decodes a batch with or without timestamps (see the module doc).
    pub decode_timed: fn(&[u8]) -> Result<TimedBatch<T>, DecodeError>,
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
            decode_timed: decode_timed_batch::<T>,
        }
    }
}

/// Appends the batch to `out`.
pub fn encode_batch<T: Serialize>(records: &[T], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    super::append(records, out).map_err(|source| EncodeError {
        type_name: std::any::type_name::<T>(),
        source,
    })
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

/// Appends the timestamps of a timed batch after its records (see the module doc).
pub fn append_timestamps(timestamps: &[i64], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    super::append(timestamps, out).map_err(|source| EncodeError {
        type_name: "event timestamps",
        source,
    })
}

/// Decodes a batch, with its timestamps if it has them.
pub fn decode_timed_batch<T: DeserializeOwned>(input: &[u8]) -> Result<TimedBatch<T>, DecodeError> {
    let type_name = std::any::type_name::<T>();
    let (records, rest) = postcard::take_from_bytes::<Vec<T>>(input)
        .map_err(|source| DecodeError::Malformed { type_name, source })?;
    if rest.is_empty() {
        return Ok((records, None));
    }
    let (stamps, trailing) = postcard::take_from_bytes::<Vec<i64>>(rest)
        .map_err(|source| DecodeError::Malformed { type_name, source })?;
    if !trailing.is_empty() {
        return Err(DecodeError::Trailing {
            type_name,
            trailing: trailing.len(),
        });
    }
    if stamps.len() != records.len() {
        return Err(DecodeError::TimestampCount {
            type_name,
            timestamps: stamps.len(),
            records: records.len(),
        });
    }
    Ok((records, Some(stamps)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use streamjob_crds::expr::Value;

    use super::*;

    fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(records: Vec<T>) {
        let mut buf = Vec::new();
        encode_batch(&records, &mut buf).unwrap();
        assert_eq!(decode_batch::<T>(&buf).unwrap(), records);
        // Every strict prefix is rejected, never misread as fewer records.
        for cut in 0..buf.len() {
            assert!(
                decode_batch::<T>(&buf[..cut]).is_err(),
                "prefix {cut} accepted"
            );
        }
    }

    #[test]
    fn timed_batches_roundtrip_and_untimed_ones_are_unchanged() {
        let records = vec!["a".to_string(), "b".to_string()];
        let mut plain = Vec::new();
        encode_batch(&records, &mut plain).unwrap();
        assert_eq!(
            decode_timed_batch::<String>(&plain).unwrap(),
            (records.clone(), None)
        );
        let mut timed = plain.clone();
        append_timestamps(&[5, i64::MIN], &mut timed).unwrap();
        assert_eq!(
            decode_timed_batch::<String>(&timed).unwrap(),
            (records.clone(), Some(vec![5, i64::MIN]))
        );
        let mut wrong = plain.clone();
        append_timestamps(&[5], &mut wrong).unwrap();
        let err = decode_timed_batch::<String>(&wrong)
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 timestamps for 2 records"), "{err}");
        for cut in plain.len() + 1..timed.len() {
            assert!(decode_timed_batch::<String>(&timed[..cut]).is_err());
        }
    }

    #[test]
    fn values_roundtrip_exactly() {
        let json = r#"{"user_id":"u-1","n":-3,"big":18446744073709551615,"x":1.5,
            "tags":["a","",null,true,false],"nested":{"k":[[],{}]}}"#;
        let v = Value::from(serde_json::from_str::<serde_json::Value>(json).unwrap());
        roundtrip(vec![
            v,
            Value::Null,
            Value::Int(i64::MIN),
            Value::UInt(u64::MAX),
            Value::Double(f64::NAN.copysign(-1.0)),
            Value::from("é ✓"),
            Value::from("x".repeat(100).as_str()),
            Value::Bytes(Arc::from(&[0u8, 255][..])),
        ]);
    }

    /// Postcard writes what the hand-written codec before it wrote, so the exchange
    /// protocol and the declarative reduce snapshots did not change.
    #[test]
    fn built_in_types_keep_their_bytes() {
        let bytes = |v: &[Value]| {
            let mut b = Vec::new();
            encode_batch(v, &mut b).unwrap();
            b
        };
        let map = Value::Map(Arc::new(
            [(Arc::from("k"), Value::UInt(300))].into_iter().collect(),
        ));
        let mut expected = vec![10u8, 0, 1, 2, 3, 5, 4, 0xAC, 0x02, 5];
        expected.extend_from_slice(&1.5f64.to_le_bytes());
        expected.extend_from_slice(&[
            6, 2, b'a', b'b', 7, 1, 9, 8, 1, 0, 9, 1, 1, b'k', 4, 0xAC, 0x02,
        ]);
        let values = [
            Value::Null,
            Value::Bool(false),
            Value::Bool(true),
            Value::Int(-3),
            Value::UInt(300),
            Value::Double(1.5),
            Value::from("ab"),
            Value::Bytes(Arc::from(&[9u8][..])),
            Value::List(Arc::from(vec![Value::Null])),
            map,
        ];
        assert_eq!(bytes(&values), expected);
        let mut pairs = Vec::new();
        encode_batch(&[("ab".to_string(), 300u64)], &mut pairs).unwrap();
        assert_eq!(pairs, [1, 2, b'a', b'b', 0xAC, 0x02]);
        let mut ints = Vec::new();
        encode_batch(&[-1i64, 1], &mut ints).unwrap();
        assert_eq!(ints, [2, 1, 2]);
    }

    #[test]
    fn user_types_roundtrip() {
        #[derive(Serialize, serde::Deserialize, PartialEq, Debug)]
        enum Kind {
            View,
            Buy { cents: u64 },
        }
        #[derive(Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Click {
            user: String,
            page: u32,
            kind: Kind,
            tags: Vec<String>,
            at: Option<i64>,
        }
        roundtrip(vec![
            Click {
                user: "ann".into(),
                page: 7,
                kind: Kind::Buy { cents: 1999 },
                tags: vec!["a".into(), String::new()],
                at: Some(-5),
            },
            Click {
                user: String::new(),
                page: 0,
                kind: Kind::View,
                tags: vec![],
                at: None,
            },
        ]);
        roundtrip::<String>(vec![]);
        roundtrip(vec![vec![1u8, 2], vec![]]);
    }

    #[test]
    fn corrupt_batches_are_errors() {
        let err = decode_batch::<Value>(&[1, 42]).unwrap_err();
        assert!(err.to_string().contains("malformed batch of"), "{err}");
        assert!(matches!(
            decode_batch::<Value>(&[1, 0, 0]).unwrap_err(),
            DecodeError::Trailing { trailing: 1, .. }
        ));
        // A huge announced count with no records behind it.
        assert!(decode_batch::<u64>(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        // Nesting deep enough to overflow the stack is refused (postcard drops the message
        // of the depth limit in `Value`'s Deserialize; the refusal is what counts).
        let deep: Vec<u8> = [1u8]
            .into_iter()
            .chain(std::iter::repeat_n([8, 1], 100_000).flatten())
            .chain([0])
            .collect();
        assert!(decode_batch::<Value>(&deep).is_err());
        let ok_depth: Vec<u8> = [1u8]
            .into_iter()
            .chain(std::iter::repeat_n([8, 1], 128).flatten())
            .chain([0])
            .collect();
        assert!(decode_batch::<Value>(&ok_depth).is_ok());
    }
}
