//! The binary serde form of [`Value`], so declarative records cross processes and live in
//! keyed state through the same codecs as a Rust job's own types.
//!
//! `Value`'s `Serialize` (in `value.rs`) writes plain JSON for human-readable formats
//! (serde_json) and this tagged form for binary ones (postcard): an enum with one variant
//! per tag, `Null`, `False`, `True`, `Int`, `UInt`, `Double`, `String`, `Bytes`, `List`,
//! `Map`, in that order. The order is part of the wire and state formats (binary formats
//! write the variant index): never reorder it. Booleans are two unit variants rather than one
//! with a payload, so that with postcard every value encodes to exactly the bytes of the
//! hand-written codec this replaced (tag byte, then zigzag varint, little-endian double or
//! length-prefixed bytes).
//!
//! Decoding refuses values nested deeper than [`MAX_DEPTH`]: a corrupt or hostile input
//! must not overflow the stack.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::value::Value;

/// Deepest nesting of lists and maps a decoded value may have.
const MAX_DEPTH: u32 = 128;

/// The enum name of the tagged form. Binary formats do not write it; the key hasher
/// (`streamjob::codec::key_hash`) recognises it to hash a `Value` as
/// [`StableKey`](crate::StableKey) does, so it must not be a name a user's own enum could
/// have.
pub const SERDE_ENUM_NAME: &str = "streamjob_crds::expr::Value";
const NAME: &str = SERDE_ENUM_NAME;
const VARIANTS: &[&str] = &[
    "Null", "False", "True", "Int", "UInt", "Double", "String", "Bytes", "List", "Map",
];

/// Writes `v` in the tagged binary form (see the module docs).
pub(super) fn serialize_tagged<S: Serializer>(v: &Value, s: S) -> Result<S::Ok, S::Error> {
    {
        match v {
            Value::Null => s.serialize_unit_variant(NAME, 0, VARIANTS[0]),
            Value::Bool(false) => s.serialize_unit_variant(NAME, 1, VARIANTS[1]),
            Value::Bool(true) => s.serialize_unit_variant(NAME, 2, VARIANTS[2]),
            Value::Int(i) => s.serialize_newtype_variant(NAME, 3, VARIANTS[3], i),
            Value::UInt(u) => s.serialize_newtype_variant(NAME, 4, VARIANTS[4], u),
            Value::Double(d) => s.serialize_newtype_variant(NAME, 5, VARIANTS[5], d),
            Value::String(t) => s.serialize_newtype_variant(NAME, 6, VARIANTS[6], t.as_str()),
            Value::Bytes(b) => s.serialize_newtype_variant(NAME, 7, VARIANTS[7], &Bytes(b)),
            Value::List(items) => s.serialize_newtype_variant(NAME, 8, VARIANTS[8], &List(items)),
            Value::Map(m) => s.serialize_newtype_variant(NAME, 9, VARIANTS[9], &Entries(m)),
        }
    }
}

/// Bytes as serde bytes (one length and the raw bytes), not as a sequence of numbers.
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Elements in the tagged form whatever the format, so nesting stays decodable.
struct List<'a>(&'a [Value]);

impl Serialize for List<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(Tagged))
    }
}

struct Tagged<'a>(&'a Value);

impl Serialize for Tagged<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_tagged(self.0, s)
    }
}

struct Entries<'a>(&'a BTreeMap<Arc<str>, Value>);

impl Serialize for Entries<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(&**k, &Tagged(v))?;
        }
        map.end()
    }
}

/// Binary formats read the tagged form; human-readable ones read plain JSON (as
/// `Value::from(serde_json::Value)` does: bytes written as base64 text come back as strings).
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            serde_json::Value::deserialize(d).map(Value::from)
        } else {
            Depth(0).deserialize(d)
        }
    }
}

/// Decodes a value at nesting level `.0`.
#[derive(Clone, Copy)]
struct Depth(u32);

impl Depth {
    fn deeper<E: de::Error>(self) -> Result<Depth, E> {
        if self.0 >= MAX_DEPTH {
            return Err(E::custom(format_args!(
                "value nested deeper than {MAX_DEPTH} levels"
            )));
        }
        Ok(Depth(self.0 + 1))
    }
}

impl<'de> DeserializeSeed<'de> for Depth {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_enum(NAME, VARIANTS, self)
    }
}

impl<'de> Visitor<'de> for Depth {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a streamjob Value")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (tag, variant) = data.variant::<Tag>()?;
        Ok(match tag.0 {
            0 => variant.unit_variant().map(|()| Value::Null)?,
            1 => variant.unit_variant().map(|()| Value::Bool(false))?,
            2 => variant.unit_variant().map(|()| Value::Bool(true))?,
            3 => Value::Int(variant.newtype_variant()?),
            4 => Value::UInt(variant.newtype_variant()?),
            5 => Value::Double(variant.newtype_variant()?),
            6 => variant.newtype_variant_seed(StrSeed)?,
            7 => variant.newtype_variant_seed(BytesSeed)?,
            8 => variant.newtype_variant_seed(ListSeed(self.deeper()?))?,
            _ => variant.newtype_variant_seed(MapSeed(self.deeper()?))?,
        })
    }
}

/// Variant index, from its number (binary formats) or its name (self-describing ones).
struct Tag(u8);

impl<'de> Deserialize<'de> for Tag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Tag;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Value variant")
            }
            fn visit_u64<E: de::Error>(self, i: u64) -> Result<Tag, E> {
                match u8::try_from(i) {
                    Ok(t) if usize::from(t) < VARIANTS.len() => Ok(Tag(t)),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(i), &self)),
                }
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Tag, E> {
                match VARIANTS.iter().position(|v| *v == s) {
                    Some(i) => Ok(Tag(i as u8)),
                    None => Err(E::unknown_variant(s, VARIANTS)),
                }
            }
        }
        d.deserialize_identifier(V)
    }
}

struct StrSeed;

impl<'de> DeserializeSeed<'de> for StrSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for StrSeed {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    // Short strings go inline (`Value::from(&str)`), so a decoded word allocates nothing.
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::from(s))
    }
}

struct BytesSeed;

impl<'de> DeserializeSeed<'de> for BytesSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_bytes(self)
    }
}

impl<'de> Visitor<'de> for BytesSeed {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }
    fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(Arc::from(b)))
    }
    // Self-describing formats without a bytes type (JSON) write them as a list of numbers.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut b = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(x) = seq.next_element::<u8>()? {
            b.push(x);
        }
        Ok(Value::Bytes(Arc::from(b)))
    }
}

struct ListSeed(Depth);

impl<'de> DeserializeSeed<'de> for ListSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ListSeed {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of values")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        // The announced length is untrusted: reserve at most a little up front.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element_seed(self.0)? {
            items.push(v);
        }
        Ok(Value::List(Arc::from(items)))
    }
}

struct MapSeed(Depth);

impl<'de> DeserializeSeed<'de> for MapSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MapSeed {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map from strings to values")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut m = BTreeMap::new();
        while let Some(k) = access.next_key_seed(KeySeed)? {
            let v = access.next_value_seed(self.0)?;
            m.insert(k, v);
        }
        Ok(Value::Map(Arc::new(m)))
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Arc<str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Arc<str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Arc<str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string map key")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Arc<str>, E> {
        Ok(Arc::from(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_readable_formats_read_plain_json() {
        let text = r#"{"user_id":"u-1","n":-3,"big":18446744073709551615,"x":1.5,
            "tags":["a","",null,true,false],"nested":{"k":[[],{}]}}"#;
        let expected = Value::from(serde_json::from_str::<serde_json::Value>(text).unwrap());
        assert_eq!(serde_json::from_str::<Value>(text).unwrap(), expected);
        let written = serde_json::to_string(&expected).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&written).unwrap(), expected);
    }
}
