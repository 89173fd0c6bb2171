//! Binary encoding of record batches for the network exchange. A batch is encoded whole into
//! one buffer (record count, then the records back to back), so one gRPC message carries
//! a whole batch and decoding allocates only what the records themselves own.
//!
//! Which types can cross the network is decided when the edge is built: [`wire_of`] knows
//! the built-in record types (the declarative `Value`, strings, integers and pairs of them);
//! an edge of any other type runs only in-process, and distributed execution says so.

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::sync::Arc;

use streamjob_crds::expr::Value;

/// A batch could not be decoded: the peer runs a different build or the stream is corrupt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed batch from peer: {0}")]
pub struct DecodeError(pub &'static str);

/// Types that can be written to and read back from the exchange.
pub trait Codec: Sized {
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError>;
}

/// Encode/decode functions of one record type, chosen when the edge is built.
pub struct Wire<T> {
    pub encode: fn(&[T], &mut Vec<u8>),
    pub decode: fn(&[u8]) -> Result<Vec<T>, DecodeError>,
}

impl<T> Clone for Wire<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Wire<T> {}

fn encode_batch<T: Codec>(records: &[T], out: &mut Vec<u8>) {
    put_varint(out, records.len() as u64);
    for r in records {
        r.encode(out);
    }
}

fn decode_batch<T: Codec>(mut input: &[u8]) -> Result<Vec<T>, DecodeError> {
    let n = get_varint(&mut input)? as usize;
    // A corrupt count must not make us reserve gigabytes: every record takes >= 1 byte.
    if n > input.len() {
        return Err(DecodeError("record count exceeds batch size"));
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(T::decode(&mut input)?);
    }
    if !input.is_empty() {
        return Err(DecodeError("trailing bytes after the last record"));
    }
    Ok(v)
}

/// The wire format of `T` if it is one of the built-in record types.
pub fn wire_of<T: 'static>() -> Option<Wire<T>> {
    fn w<U: Codec + 'static>() -> Box<dyn Any> {
        Box::new(Wire::<U> {
            encode: encode_batch::<U>,
            decode: decode_batch::<U>,
        })
    }
    let t = TypeId::of::<T>();
    let any: Box<dyn Any> = if t == TypeId::of::<Value>() {
        w::<Value>()
    } else if t == TypeId::of::<String>() {
        w::<String>()
    } else if t == TypeId::of::<(String, u64)>() {
        w::<(String, u64)>()
    } else if t == TypeId::of::<(String, i64)>() {
        w::<(String, i64)>()
    } else if t == TypeId::of::<u64>() {
        w::<u64>()
    } else if t == TypeId::of::<i64>() {
        w::<i64>()
    } else if t == TypeId::of::<Vec<u8>>() {
        w::<Vec<u8>>()
    } else {
        return None;
    };
    any.downcast::<Wire<T>>().ok().map(|b| *b)
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn get_varint(input: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = input.split_first().ok_or(DecodeError("truncated varint"))?;
        *input = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(DecodeError("varint longer than 10 bytes"))
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
    if input.len() < n {
        return Err(DecodeError("truncated record"));
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn get_bytes<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let n = get_varint(input)? as usize;
    take(input, n)
}

fn get_str<'a>(input: &mut &'a [u8]) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(get_bytes(input)?).map_err(|_| DecodeError("string is not UTF-8"))
}

impl Codec for u64 {
    fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, *self);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        get_varint(input)
    }
}

impl Codec for i64 {
    fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, zigzag(*self));
    }
    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        get_varint(input).map(unzigzag)
    }
}

impl Codec for String {
    fn encode(&self, out: &mut Vec<u8>) {
        put_bytes(out, self.as_bytes());
    }
    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        get_str(input).map(str::to_owned)
    }
}

impl Codec for Vec<u8> {
    fn encode(&self, out: &mut Vec<u8>) {
        put_bytes(out, self);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        get_bytes(input).map(<[u8]>::to_vec)
    }
}

impl<A: Codec, B: Codec> Codec for (A, B) {
    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
        self.1.encode(out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        Ok((A::decode(input)?, B::decode(input)?))
    }
}

// Value tags. Part of the wire protocol: changing them needs a PROTOCOL_VERSION bump.
const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const INT: u8 = 3;
const UINT: u8 = 4;
const DOUBLE: u8 = 5;
const STRING: u8 = 6;
const BYTES: u8 = 7;
const LIST: u8 = 8;
const MAP: u8 = 9;

/// Nesting limit on decode, so a hostile or corrupt batch cannot overflow the stack.
const MAX_DEPTH: u32 = 128;

impl Codec for Value {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.push(NULL),
            Value::Bool(false) => out.push(FALSE),
            Value::Bool(true) => out.push(TRUE),
            Value::Int(i) => {
                out.push(INT);
                put_varint(out, zigzag(*i));
            }
            Value::UInt(u) => {
                out.push(UINT);
                put_varint(out, *u);
            }
            Value::Double(d) => {
                out.push(DOUBLE);
                out.extend_from_slice(&d.to_bits().to_le_bytes());
            }
            Value::String(s) => {
                out.push(STRING);
                put_bytes(out, s.as_bytes());
            }
            Value::Bytes(b) => {
                out.push(BYTES);
                put_bytes(out, b);
            }
            Value::List(items) => {
                out.push(LIST);
                put_varint(out, items.len() as u64);
                for v in items.iter() {
                    v.encode(out);
                }
            }
            Value::Map(m) => {
                out.push(MAP);
                put_varint(out, m.len() as u64);
                for (k, v) in m.iter() {
                    put_bytes(out, k.as_bytes());
                    v.encode(out);
                }
            }
        }
    }

    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        decode_value(input, 0)
    }
}

fn decode_value(input: &mut &[u8], depth: u32) -> Result<Value, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError("value nested too deeply"));
    }
    let tag = take(input, 1)?[0];
    Ok(match tag {
        NULL => Value::Null,
        FALSE => Value::Bool(false),
        TRUE => Value::Bool(true),
        INT => Value::Int(unzigzag(get_varint(input)?)),
        UINT => Value::UInt(get_varint(input)?),
        DOUBLE => {
            let b: [u8; 8] = take(input, 8)?.try_into().expect("8 bytes");
            Value::Double(f64::from_bits(u64::from_le_bytes(b)))
        }
        STRING => Value::from(get_str(input)?),
        BYTES => Value::Bytes(Arc::from(get_bytes(input)?)),
        LIST => {
            let n = get_varint(input)? as usize;
            if n > input.len() {
                return Err(DecodeError("list length exceeds batch size"));
            }
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(decode_value(input, depth + 1)?);
            }
            Value::List(Arc::from(items))
        }
        MAP => {
            let n = get_varint(input)? as usize;
            let mut m = BTreeMap::new();
            for _ in 0..n {
                let k: Arc<str> = Arc::from(get_str(input)?);
                m.insert(k, decode_value(input, depth + 1)?);
            }
            Value::Map(Arc::new(m))
        }
        _ => return Err(DecodeError("unknown value tag")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<T: Codec + PartialEq + std::fmt::Debug + Clone + 'static>(records: Vec<T>) {
        let wire = wire_of::<T>().expect("built-in type");
        let mut buf = Vec::new();
        (wire.encode)(&records, &mut buf);
        assert_eq!((wire.decode)(&buf).unwrap(), records);
        // every strict prefix is rejected, never misread
        for cut in 0..buf.len() {
            assert!((wire.decode)(&buf[..cut]).is_err(), "prefix {cut} accepted");
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
            Value::Int(i64::MAX),
            Value::UInt(u64::MAX),
            Value::Double(f64::NAN.copysign(-1.0)),
            Value::from("é ✓"),
            Value::Bytes(Arc::from(&[0u8, 255][..])),
        ]);
    }

    #[test]
    fn strings_encode_the_same_inline_or_shared() {
        use streamjob_crds::expr::{INLINE_CAP, Str};
        let long = "x".repeat(INLINE_CAP + 1);
        for text in ["", "word", "é ✓", &"y".repeat(INLINE_CAP), &long] {
            let mut expected = vec![STRING];
            put_varint(&mut expected, text.len() as u64);
            expected.extend_from_slice(text.as_bytes());
            for v in [
                Value::from(text),
                Value::String(Str::from(Arc::<str>::from(text))),
            ] {
                let mut buf = Vec::new();
                v.encode(&mut buf);
                assert_eq!(buf, expected, "{text:?}");
                let decoded = Value::decode(&mut &buf[..]).unwrap();
                assert_eq!(decoded, v);
                let s = match &decoded {
                    Value::String(s) => s,
                    _ => unreachable!(),
                };
                assert_eq!(s.is_inline(), text.len() <= INLINE_CAP);
            }
        }
    }

    #[test]
    fn builtin_types_roundtrip() {
        roundtrip(vec![("word".to_string(), 7u64), (String::new(), u64::MAX)]);
        roundtrip(vec![("w".to_string(), -7i64)]);
        roundtrip(vec![0u64, 127, 128, u64::MAX]);
        roundtrip(vec![i64::MIN, -1, 0, 1]);
        roundtrip(vec![vec![1u8, 2], vec![]]);
        roundtrip::<String>(vec![]);
    }

    #[test]
    fn other_types_have_no_wire_format() {
        assert!(wire_of::<(u32, u32)>().is_none());
        assert!(wire_of::<std::rc::Rc<u8>>().is_none());
    }

    #[test]
    fn corrupt_input_is_an_error() {
        let wire = wire_of::<Value>().unwrap();
        assert_eq!(
            (wire.decode)(&[1, 42]).unwrap_err(),
            DecodeError("unknown value tag")
        );
        assert_eq!(
            (wire.decode)(&[1, NULL, 0]).unwrap_err(),
            DecodeError("trailing bytes after the last record")
        );
        assert_eq!(
            (wire.decode)(&[200, 1]).unwrap_err(),
            DecodeError("record count exceeds batch size")
        );
        let deep: Vec<u8> = [1u8]
            .into_iter()
            .chain(std::iter::repeat_n([LIST, 1], 200).flatten())
            .chain([NULL])
            .collect();
        assert_eq!(
            (wire.decode)(&deep).unwrap_err(),
            DecodeError("value nested too deeply")
        );
    }
}
