//! The stable hash of a key, computed from its serde form: any `Serialize` type can be a key.
//!
//! The hash follows the serde data model, value by value, with no buffer for the common
//! one-string key:
//! - strings, chars and bytes: XXH3 of their bytes;
//! - integers of any width (and bools as 0/1): XXH3 of their 8-byte little-endian form as
//!   `i64` (128-bit ones: their 16 bytes); floats: their IEEE bits as an integer;
//! - unit, `None`: XXH3 of no bytes; `Some(x)` and newtype structs: the hash of `x`;
//! - tuples, structs, sequences: XXH3 of the concatenated 8-byte hashes of their elements;
//! - maps: that of the list of per-entry hashes, each the XXH3 of `key hash ++ value hash`;
//! - enum variants: the hash of the tuple `(variant index, fields...)`.
//!
//! - the spec's `Value` (`streamjob_crds::expr::Value`): as its payload, transparently (a
//!   string value like the string, a list like the tuple of its elements).
//!
//! So strings, integers, bools and tuples of them hash exactly as `streamjob_crds::StableKey`
//! hashes them, and so does every `Value` (tests check both): their key groups did not move
//! when keys went through serde, and a spec key lands in the same key group whichever
//! operator (reduce, window) holds it. Byte vectors serialize as sequences of numbers and so hash differently from
//! `StableKey`'s `[u8]`. Changing any rule here moves keys to other key groups: it needs a
//! keyed-state format version bump (`super::state::FORMAT_VERSION`).

use serde::Serialize;
use serde::ser;
use streamjob_crds::expr::SERDE_ENUM_NAME;
use xxhash_rust::xxh3::xxh3_64;

/// The stable hash of `key`; equal keys (equal serde forms) hash equally in every process.
///
/// A key whose `Serialize` fails hashes to a fixed value: still the same for the same key,
/// so routing and state stay consistent (checkpointing such a key fails with its error).
#[inline]
pub fn stable_hash<K: Serialize + ?Sized>(key: &K) -> u64 {
    key.serialize(KeyHasher).unwrap_or(0)
}

#[inline]
fn int_hash(i: i64) -> u64 {
    xxh3_64(&i.to_le_bytes())
}

fn empty_hash() -> u64 {
    xxh3_64(&[])
}

/// Never produced by the hasher itself; only a key's own `Serialize` can fail. Carries no
/// message: `stable_hash` drops it, and an empty error keeps `Result<u64, _>` in registers
/// on the per-record path (measured: +1% instructions per word with a `String` inside).
#[derive(Debug, thiserror::Error)]
#[error("the key's Serialize failed")]
pub struct KeyHashError;

impl ser::Error for KeyHashError {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        KeyHashError
    }
}

struct KeyHasher;

/// Hashes of the elements of a compound value, hashed together at the end. Most keys have
/// a few fields: up to eight stay on the stack.
struct Compound {
    inline: [u8; 64],
    len: usize,
    spill: Vec<u8>,
}

impl Compound {
    fn new(variant: Option<u32>) -> Self {
        let mut c = Compound {
            inline: [0; 64],
            len: 0,
            spill: Vec::new(),
        };
        if let Some(index) = variant {
            c.push(int_hash(i64::from(index)));
        }
        c
    }

    fn push(&mut self, h: u64) {
        if self.len + 8 <= self.inline.len() {
            self.inline[self.len..self.len + 8].copy_from_slice(&h.to_le_bytes());
            self.len += 8;
        } else {
            if self.spill.is_empty() {
                self.spill.extend_from_slice(&self.inline[..self.len]);
            }
            self.spill.extend_from_slice(&h.to_le_bytes());
        }
    }

    fn element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), KeyHashError> {
        self.push(v.serialize(KeyHasher)?);
        Ok(())
    }

    fn finish(self) -> u64 {
        if self.spill.is_empty() {
            xxh3_64(&self.inline[..self.len])
        } else {
            xxh3_64(&self.spill)
        }
    }
}

impl ser::Serializer for KeyHasher {
    type Ok = u64;
    type Error = KeyHashError;
    type SerializeSeq = Compound;
    type SerializeTuple = Compound;
    type SerializeTupleStruct = Compound;
    type SerializeTupleVariant = Compound;
    type SerializeMap = MapHasher;
    type SerializeStruct = Compound;
    type SerializeStructVariant = Compound;

    fn serialize_bool(self, v: bool) -> Result<u64, KeyHashError> {
        Ok(int_hash(i64::from(v)))
    }
    fn serialize_i8(self, v: i8) -> Result<u64, KeyHashError> {
        Ok(int_hash(i64::from(v)))
    }
    fn serialize_i16(self, v: i16) -> Result<u64, KeyHashError> {
        Ok(int_hash(i64::from(v)))
    }
    fn serialize_i32(self, v: i32) -> Result<u64, KeyHashError> {
        Ok(int_hash(i64::from(v)))
    }
    fn serialize_i64(self, v: i64) -> Result<u64, KeyHashError> {
        Ok(int_hash(v))
    }
    fn serialize_i128(self, v: i128) -> Result<u64, KeyHashError> {
        Ok(xxh3_64(&v.to_le_bytes()))
    }
    fn serialize_u8(self, v: u8) -> Result<u64, KeyHashError> {
        Ok(int_hash(i64::from(v)))
    }
    fn serialize_u16(self, v: u16) -> Result<u64, KeyHashError> {
        Ok(int_hash(i64::from(v)))
    }
    fn serialize_u32(self, v: u32) -> Result<u64, KeyHashError> {
        Ok(int_hash(i64::from(v)))
    }
    // As `StableKey` does: the two's complement bits, so `u64::MAX` hashes like `-1i64`.
    fn serialize_u64(self, v: u64) -> Result<u64, KeyHashError> {
        Ok(int_hash(v as i64))
    }
    fn serialize_u128(self, v: u128) -> Result<u64, KeyHashError> {
        Ok(xxh3_64(&v.to_le_bytes()))
    }
    fn serialize_f32(self, v: f32) -> Result<u64, KeyHashError> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<u64, KeyHashError> {
        Ok(int_hash(v.to_bits() as i64))
    }
    fn serialize_char(self, v: char) -> Result<u64, KeyHashError> {
        Ok(xxh3_64(v.encode_utf8(&mut [0; 4]).as_bytes()))
    }
    #[inline]
    fn serialize_str(self, v: &str) -> Result<u64, KeyHashError> {
        Ok(xxh3_64(v.as_bytes()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<u64, KeyHashError> {
        Ok(xxh3_64(v))
    }
    fn serialize_none(self) -> Result<u64, KeyHashError> {
        Ok(empty_hash())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<u64, KeyHashError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<u64, KeyHashError> {
        Ok(empty_hash())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<u64, KeyHashError> {
        Ok(empty_hash())
    }
    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        _: &'static str,
    ) -> Result<u64, KeyHashError> {
        if name == SERDE_ENUM_NAME {
            // `Value`'s unit variants: Null, False, True.
            return Ok(match index {
                0 => empty_hash(),
                i => int_hash(i64::from(i) - 1),
            });
        }
        Ok(Compound::new(Some(index)).finish())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<u64, KeyHashError> {
        v.serialize(self)
    }
    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        _: &'static str,
        v: &T,
    ) -> Result<u64, KeyHashError> {
        if name == SERDE_ENUM_NAME {
            // A `Value` hashes as its payload: "a" like `"a"`, 5 like `5i64`.
            return v.serialize(self);
        }
        let mut c = Compound::new(Some(index));
        c.element(v)?;
        Ok(c.finish())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Compound, KeyHashError> {
        Ok(Compound::new(None))
    }
    fn serialize_tuple(self, _: usize) -> Result<Compound, KeyHashError> {
        Ok(Compound::new(None))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Compound, KeyHashError> {
        Ok(Compound::new(None))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Compound, KeyHashError> {
        Ok(Compound::new(Some(index)))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<MapHasher, KeyHashError> {
        Ok(MapHasher {
            entries: Compound::new(None),
            key: None,
        })
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Compound, KeyHashError> {
        Ok(Compound::new(None))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Compound, KeyHashError> {
        Ok(Compound::new(Some(index)))
    }
    fn is_human_readable(&self) -> bool {
        false
    }
}

macro_rules! compound {
    ($($tr:ident :: $method:ident $(($name:ident))?),*) => {$(
        impl ser::$tr for Compound {
            type Ok = u64;
            type Error = KeyHashError;
            fn $method<T: Serialize + ?Sized>(
                &mut self,
                $($name: &'static str,)?
                v: &T,
            ) -> Result<(), KeyHashError> {
                $(let _ = $name;)?
                self.element(v)
            }
            fn end(self) -> Result<u64, KeyHashError> {
                Ok(self.finish())
            }
        }
    )*};
}
compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
    SerializeStruct::serialize_field(_field),
    SerializeStructVariant::serialize_field(_field)
);

struct MapHasher {
    entries: Compound,
    key: Option<u64>,
}

impl ser::SerializeMap for MapHasher {
    type Ok = u64;
    type Error = KeyHashError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), KeyHashError> {
        self.key = Some(k.serialize(KeyHasher)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), KeyHashError> {
        let k = self.key.take().ok_or(KeyHashError)?;
        let mut pair = [0u8; 16];
        pair[..8].copy_from_slice(&k.to_le_bytes());
        pair[8..].copy_from_slice(&v.serialize(KeyHasher)?.to_le_bytes());
        self.entries.push(xxh3_64(&pair));
        Ok(())
    }
    fn end(self) -> Result<u64, KeyHashError> {
        Ok(self.entries.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use streamjob_crds::StableKey;

    #[test]
    fn built_in_keys_hash_as_stable_key_does() {
        // The key groups of existing jobs' keys must not move.
        for s in ["", "word", "é ✓", &"x".repeat(300)] {
            assert_eq!(stable_hash(s), s.stable_hash());
            assert_eq!(stable_hash(&s.to_string()), s.to_string().stable_hash());
        }
        for i in [0i64, 1, -1, i64::MIN, i64::MAX] {
            assert_eq!(stable_hash(&i), i.stable_hash());
            assert_eq!(stable_hash(&(i as u64)), (i as u64).stable_hash());
            assert_eq!(stable_hash(&(i as i32)), (i as i32).stable_hash());
            assert_eq!(stable_hash(&(i as u8)), (i as u8).stable_hash());
        }
        assert_eq!(stable_hash(&true), true.stable_hash());
        let pair = ("a".to_string(), 7u64);
        assert_eq!(stable_hash(&pair), pair.stable_hash());
        let triple = (1i64, "b", false);
        assert_eq!(stable_hash(&triple), triple.stable_hash());
        let four = (1u32, 2u16, "c".to_string(), -4i8);
        assert_eq!(stable_hash(&four), four.stable_hash());
    }

    #[test]
    fn spec_values_hash_as_value_stable_hash_does() {
        use std::sync::Arc;
        use streamjob_crds::expr::Value;
        let values = vec![
            Value::Null,
            Value::Bool(false),
            Value::Bool(true),
            Value::Int(-7),
            Value::UInt(u64::MAX),
            Value::Double(2.5),
            Value::string("word"),
            Value::string(&"long ".repeat(20)),
            Value::Bytes(Arc::from(&b"\x00\xff"[..])),
            Value::list(vec![Value::string("a"), Value::Int(1)]),
            Value::list((0..12).map(Value::Int).collect()),
            Value::map([
                ("k", Value::list(vec![Value::Null, Value::Bool(true)])),
                ("z", Value::Double(-0.0)),
            ]),
        ];
        for v in &values {
            assert_eq!(stable_hash(v), v.stable_hash(), "{v}");
        }
        // A spec string key and a Rust `String` key share their key group.
        assert_eq!(stable_hash(&Value::string("word")), stable_hash("word"));
    }

    #[test]
    fn a_user_enum_named_value_keeps_its_variant_hash() {
        #[derive(Serialize)]
        enum Value {
            S(String),
        }
        assert_ne!(stable_hash(&Value::S("a".into())), stable_hash("a"));
    }

    #[derive(Serialize, Deserialize)]
    struct User {
        name: String,
        region: u32,
    }

    #[derive(Serialize)]
    enum Id {
        A,
        B,
        Num(u64),
        Pair(u64, u64),
    }

    #[test]
    fn user_types_hash_by_their_fields() {
        let u = User {
            name: "ann".into(),
            region: 3,
        };
        // A struct hashes as the tuple of its fields.
        assert_eq!(stable_hash(&u), ("ann", 3u32).stable_hash());
        assert_ne!(stable_hash(&Id::A), stable_hash(&Id::B));
        assert_ne!(stable_hash(&Id::Num(1)), stable_hash(&1u64));
        assert_eq!(
            stable_hash(&Id::Pair(1, 2)),
            (3u32, 1u64, 2u64).stable_hash()
        );
        // More fields than fit on the stack.
        let long: Vec<u64> = (0..20).collect();
        let expected = {
            let mut b = Vec::new();
            for i in &long {
                b.extend_from_slice(&i.stable_hash().to_le_bytes());
            }
            xxh3_64(&b)
        };
        assert_eq!(stable_hash(&long), expected);
    }
}
