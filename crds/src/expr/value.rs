//! The record value type of declarative jobs: JSON-like, immutable, cheap to clone.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use super::small_str::Str;
use crate::keygroup::StableKey;

/// Map payload of [`Value::Map`]: string keys in sorted order (so printing and hashing are
/// deterministic whatever order the JSON had).
pub type ValueMap = BTreeMap<Arc<str>, Value>;

/// A record (or part of one). Compound variants share their payload through an [`Arc`], so
/// `clone()` is a reference-count increment at most; short strings are stored inline (see
/// [`Str`]), so a word costs no allocation at all. A list is one allocation (`Arc<[_]>`,
/// not `Arc<Vec<_>>`): every list costs an allocation and every element access a pointer
/// less.
///
/// Equality (`PartialEq`/`Eq`/`Hash`) is structural and type-strict, with doubles compared
/// by their bits, so values can be map keys: `Int(1) != Double(1.0)` here, whereas the CEL
/// `==` operator (in expressions) compares numbers across types.
#[derive(Clone, Debug, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    String(Str),
    Bytes(Arc<[u8]>),
    List(Arc<[Value]>),
    Map(Arc<ValueMap>),
}

/// The type of a [`Value`], as known statically or at runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    Null,
    Bool,
    Int,
    UInt,
    Double,
    String,
    Bytes,
    List,
    Map,
}

impl ValueType {
    /// CEL's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            ValueType::Null => "null",
            ValueType::Bool => "bool",
            ValueType::Int => "int",
            ValueType::UInt => "uint",
            ValueType::Double => "double",
            ValueType::String => "string",
            ValueType::Bytes => "bytes",
            ValueType::List => "list",
            ValueType::Map => "map",
        }
    }

    pub fn is_numeric(self) -> bool {
        matches!(self, ValueType::Int | ValueType::UInt | ValueType::Double)
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::Null => ValueType::Null,
            Value::Bool(_) => ValueType::Bool,
            Value::Int(_) => ValueType::Int,
            Value::UInt(_) => ValueType::UInt,
            Value::Double(_) => ValueType::Double,
            Value::String(_) => ValueType::String,
            Value::Bytes(_) => ValueType::Bytes,
            Value::List(_) => ValueType::List,
            Value::Map(_) => ValueType::Map,
        }
    }

    pub fn string(s: &str) -> Value {
        Value::String(Str::new(s))
    }

    pub fn list(items: Vec<Value>) -> Value {
        Value::List(Arc::from(items))
    }

    pub fn map<K: Into<Arc<str>>>(entries: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Map(Arc::new(
            entries.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        ))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::UInt(u) => i64::try_from(*u).ok(),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&ValueMap> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// Whether this value may be a `keyBy` key (a string or an integer).
    pub fn is_key(&self) -> bool {
        matches!(self, Value::String(_) | Value::Int(_) | Value::UInt(_))
    }

    /// Converts to a `serde_json::Value`. Bytes become a base64 string; NaN and infinities
    /// become `null` (JSON has no such numbers).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::UInt(u) => J::from(*u),
            Value::Double(d) => serde_json::Number::from_f64(*d).map_or(J::Null, J::Number),
            Value::String(s) => J::String(s.as_str().to_owned()),
            Value::Bytes(b) => J::String(base64(b)),
            Value::List(l) => J::Array(l.iter().map(Value::to_json).collect()),
            Value::Map(m) => J::Object(
                m.iter()
                    .map(|(k, v)| (k.to_string(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Writes the value as compact JSON (strings quoted and escaped).
    pub fn write_json<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        match self {
            Value::Null => out.write_str("null"),
            Value::Bool(b) => out.write_str(if *b { "true" } else { "false" }),
            Value::Int(i) => write!(out, "{i}"),
            Value::UInt(u) => write!(out, "{u}"),
            Value::Double(d) => write_double(*d, out),
            Value::String(s) => write_json_str(s, out),
            Value::Bytes(b) => write_json_str(&base64(b), out),
            Value::List(l) => {
                out.write_char('[')?;
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        out.write_char(',')?;
                    }
                    v.write_json(out)?;
                }
                out.write_char(']')
            }
            Value::Map(m) => {
                out.write_char('{')?;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        out.write_char(',')?;
                    }
                    write_json_str(k, out)?;
                    out.write_char(':')?;
                    v.write_json(out)?;
                }
                out.write_char('}')
            }
        }
    }

    /// Compact JSON text of the value (`toJson` in expressions).
    pub fn to_json_string(&self) -> String {
        let mut s = String::new();
        let _ = self.write_json(&mut s);
        s
    }
}

/// Compact JSON, except that a top-level string is written raw (no quotes): a sink printing
/// the word `hello` shows `hello`, and a word count shows `["hello",3]`.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => f.write_str(s),
            other => other.write_json(f),
        }
    }
}

fn write_double<W: fmt::Write>(d: f64, out: &mut W) -> fmt::Result {
    if !d.is_finite() {
        out.write_str("null")
    } else if d.fract() == 0.0 && d.abs() < 1e16 {
        write!(out, "{d:.1}")
    } else {
        write!(out, "{d}")
    }
}

fn write_json_str<W: fmt::Write>(s: &str, out: &mut W) -> fmt::Result {
    out.write_char('"')?;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let esc: Option<&str> = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            c if (c as u32) < 0x20 => None,
            _ => continue,
        };
        out.write_str(&s[start..i])?;
        match esc {
            Some(e) => out.write_str(e)?,
            None => write!(out, "\\u{:04x}", c as u32)?,
        }
        start = i + c.len_utf8();
    }
    out.write_str(&s[start..])?;
    out.write_char('"')
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                s.push(T[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

impl PartialEq for Value {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::UInt(a), Value::UInt(b)) => a == b,
            (Value::Double(a), Value::Double(b)) => a.to_bits() == b.to_bits(),
            (Value::String(a), Value::String(b)) => a == b,
            (Value::Bytes(a), Value::Bytes(b)) => a == b,
            (Value::List(a), Value::List(b)) => Arc::ptr_eq(a, b) || a == b,
            (Value::Map(a), Value::Map(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Value::Null => {}
            Value::Bool(b) => b.hash(state),
            Value::Int(i) => i.hash(state),
            Value::UInt(u) => u.hash(state),
            Value::Double(d) => d.to_bits().hash(state),
            Value::String(s) => s.hash(state),
            Value::Bytes(b) => b.hash(state),
            Value::List(l) => l.hash(state),
            Value::Map(m) => m.hash(state),
        }
    }
}

/// Strings hash exactly like `str`, integers (signed or not) like `i64`, bools like `bool`,
/// bytes like `[u8]`, a double by its IEEE bits as an `i64`; a list hashes like a tuple of
/// its elements (`["a", 1]` like `("a", 1i64)`), a map like the list of its `[key, value]`
/// pairs, and null like the empty byte string.
impl StableKey for Value {
    fn stable_hash(&self) -> u64 {
        match self {
            Value::Null => xxh3_64(&[]),
            Value::Bool(b) => b.stable_hash(),
            Value::Int(i) => i.stable_hash(),
            Value::UInt(u) => u.stable_hash(),
            Value::Double(d) => (d.to_bits() as i64).stable_hash(),
            Value::String(s) => s.stable_hash(),
            Value::Bytes(b) => b.stable_hash(),
            Value::List(l) => {
                let mut bytes = Vec::with_capacity(8 * l.len());
                for v in l.iter() {
                    bytes.extend_from_slice(&v.stable_hash().to_le_bytes());
                }
                xxh3_64(&bytes)
            }
            Value::Map(m) => {
                let mut bytes = Vec::with_capacity(8 * m.len());
                for (k, v) in m.iter() {
                    let pair = [k.stable_hash(), v.stable_hash()];
                    let mut pb = [0u8; 16];
                    pb[..8].copy_from_slice(&pair[0].to_le_bytes());
                    pb[8..].copy_from_slice(&pair[1].to_le_bytes());
                    bytes.extend_from_slice(&xxh3_64(&pb).to_le_bytes());
                }
                xxh3_64(&bytes)
            }
        }
    }
}

impl From<serde_json::Value> for Value {
    fn from(j: serde_json::Value) -> Self {
        Value::from(&j)
    }
}

impl From<&serde_json::Value> for Value {
    fn from(j: &serde_json::Value) -> Self {
        use serde_json::Value as J;
        match j {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::Int(i)
                } else if let Some(u) = n.as_u64() {
                    Value::UInt(u)
                } else {
                    Value::Double(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            J::String(s) => Value::String(Str::new(s)),
            J::Array(a) => Value::List(a.iter().map(Value::from).collect()),
            J::Object(o) => Value::Map(Arc::new(
                o.iter()
                    .map(|(k, v)| (Arc::from(k.as_str()), Value::from(v)))
                    .collect(),
            )),
        }
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<u64> for Value {
    fn from(u: u64) -> Self {
        Value::UInt(u)
    }
}
impl From<f64> for Value {
    fn from(d: f64) -> Self {
        Value::Double(d)
    }
}
impl From<&str> for Value {
    #[inline]
    fn from(s: &str) -> Self {
        Value::String(Str::new(s))
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(Str::from(s))
    }
}
impl From<Str> for Value {
    fn from(s: Str) -> Self {
        Value::String(s)
    }
}
impl From<Vec<Value>> for Value {
    fn from(l: Vec<Value>) -> Self {
        Value::List(Arc::from(l))
    }
}
impl From<&[u8]> for Value {
    fn from(b: &[u8]) -> Self {
        Value::Bytes(Arc::from(b))
    }
}

impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        if !s.is_human_readable() {
            return super::value_serde::serialize_tagged(self, s);
        }
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::UInt(u) => s.serialize_u64(*u),
            Value::Double(d) => s.serialize_f64(*d),
            Value::String(v) => s.serialize_str(v),
            Value::Bytes(b) => s.serialize_str(&base64(b)),
            Value::List(l) => {
                let mut seq = s.serialize_seq(Some(l.len()))?;
                for v in l.iter() {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Value::Map(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m.iter() {
                    map.serialize_entry(&**k, v)?;
                }
                map.end()
            }
        }
    }
}

// Records are moved and copied by the million: inline strings must not make them bigger.
const _: () = assert!(std::mem::size_of::<Value>() == 24);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_json() {
        let v = Value::list(vec![Value::string("hello"), Value::Int(3)]);
        assert_eq!(v.to_string(), r#"["hello",3]"#);
        assert_eq!(Value::string("hi").to_string(), "hi");
        assert_eq!(Value::string("a\"b\n").to_json_string(), r#""a\"b\n""#);
        assert_eq!(Value::Double(2.0).to_string(), "2.0");
        assert_eq!(Value::Double(2.5).to_string(), "2.5");
        assert_eq!(Value::from(&b"hey"[..]).to_json_string(), r#""aGV5""#);
        let j = serde_json::json!({"b": [1, 2.5, "x", null, true], "a": {"c": 18446744073709551615u64}});
        let v = Value::from(j.clone());
        assert_eq!(v.to_json(), j);
        assert_eq!(
            v.to_string(),
            r#"{"a":{"c":18446744073709551615},"b":[1,2.5,"x",null,true]}"#
        );
        assert_eq!(serde_json::to_value(&v).unwrap(), j);
    }

    #[test]
    fn stable_hash_matches_primitives() {
        assert_eq!(Value::string("hello").stable_hash(), "hello".stable_hash());
        assert_eq!(Value::Int(5).stable_hash(), 5i64.stable_hash());
        assert_eq!(Value::UInt(5).stable_hash(), 5i64.stable_hash());
        assert_eq!(
            Value::list(vec![Value::string("a"), Value::Int(1)]).stable_hash(),
            ("a", 1i64).stable_hash()
        );
    }

    #[test]
    fn eq_and_hash_are_type_strict() {
        use std::collections::HashSet;
        let mut set = HashSet::new();
        set.insert(Value::Int(1));
        set.insert(Value::Double(1.0));
        set.insert(Value::Double(f64::NAN));
        assert!(set.contains(&Value::Double(f64::NAN)));
        assert_eq!(set.len(), 3);
    }

    fn assert_send_sync<T: Send + Sync + Clone>() {}
    #[test]
    fn value_is_send_sync() {
        assert_send_sync::<Value>();
    }
}
