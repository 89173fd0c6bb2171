//! [`Str`], the string payload of [`Value::String`](super::Value::String).

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::keygroup::StableKey;

/// Longest string kept inside the value itself. 16 bytes, not the 23 that would fit: the
/// text then sits in the two aligned words after the length byte, like every other
/// payload of `Value`, so records are copied word by word (an unaligned 23-byte payload
/// made every move of a `Value` a series of odd-sized copies that stall the CPU's store
/// forwarding, which cost more than the longer words gained).
pub const INLINE_CAP: usize = 16;

/// Length of an inline string. An enum rather than a `u8` so that the byte has spare
/// values: they tell `Str` and `Value` variants apart without a separate tag byte (this is
/// what keeps `Value` at 24 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum InlineLen {
    L0,
    L1,
    L2,
    L3,
    L4,
    L5,
    L6,
    L7,
    L8,
    L9,
    L10,
    L11,
    L12,
    L13,
    L14,
    L15,
    L16,
}

const INLINE_LENS: [InlineLen; INLINE_CAP + 1] = {
    use InlineLen::*;
    [
        L0, L1, L2, L3, L4, L5, L6, L7, L8, L9, L10, L11, L12, L13, L14, L15, L16,
    ]
};

/// The inline text, zero-padded, word-aligned.
#[derive(Clone, Copy)]
#[repr(align(8))]
struct Words([u8; INLINE_CAP]);

#[derive(Clone, Copy)]
struct Inline {
    len: InlineLen,
    bytes: Words,
}

/// `s` (at most 16 bytes) zero-padded, assembled in two registers from at most four
/// overlapping loads: a byte-wise copy followed by the word-wise reads of every later move
/// would stall store forwarding (this runs once per word of a text).
#[inline]
fn pack(s: &[u8]) -> Words {
    let n = s.len();
    let word = |at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    let half = |at: usize| u64::from(u32::from_le_bytes(s[at..at + 4].try_into().expect("4")));
    let (lo, hi) = match n {
        0 => (0, 0),
        1..=3 => (
            u64::from(s[0])
                | u64::from(s[n / 2]) << (8 * (n / 2))
                | u64::from(s[n - 1]) << (8 * (n - 1)),
            0,
        ),
        4..=7 => (half(0) | half(n - 4) << (8 * (n - 4)), 0),
        8 => (word(0), 0),
        _ => (word(0), word(n - 8) >> (8 * (16 - n))),
    };
    let mut out = [0; INLINE_CAP];
    out[..8].copy_from_slice(&lo.to_le_bytes());
    out[8..].copy_from_slice(&hi.to_le_bytes());
    Words(out)
}

#[derive(Clone)]
enum Repr {
    Inline(Inline),
    Heap(Arc<str>),
}

/// An immutable UTF-8 string, cheap to clone: up to [`INLINE_CAP`] bytes are stored inline
/// (no allocation, and a clone is a copy), longer strings are shared through an [`Arc`].
///
/// Words and keys, the strings records carry most, are short: inline they cost no
/// allocation where they are made and no (cross-thread) free where they are dropped, and
/// their bytes sit next to the rest of the record instead of behind another pointer.
///
/// Equality, ordering and hashing depend only on the text, never on the representation.
#[derive(Clone)]
pub struct Str(Repr);

impl Str {
    #[inline]
    pub fn new(s: &str) -> Str {
        if s.len() <= INLINE_CAP {
            Str(Repr::Inline(Inline {
                len: INLINE_LENS[s.len()],
                bytes: pack(s.as_bytes()),
            }))
        } else {
            Str(Repr::Heap(Arc::from(s)))
        }
    }

    /// The UTF-8 bytes; unlike [`Str::as_str`] this costs no validation for inline text.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline(i) => &i.bytes.0[..i.len as usize],
            Repr::Heap(s) => s.as_bytes(),
        }
    }

    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Without `unsafe` an inline text has to be re-validated; it is short, and the
            // hot paths (hashing, comparing, encoding) use `as_bytes` instead.
            Repr::Inline(i) => std::str::from_utf8(&i.bytes.0[..i.len as usize])
                .expect("inline bytes are copied from a str"),
            Repr::Heap(s) => s,
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Inline(i) => i.len as usize,
            Repr::Heap(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the text is stored inline (no allocation).
    pub fn is_inline(&self) -> bool {
        matches!(self.0, Repr::Inline(_))
    }

    /// The shared allocation of a long string (`None` for an inline one).
    pub fn as_arc(&self) -> Option<&Arc<str>> {
        match &self.0 {
            Repr::Inline(_) => None,
            Repr::Heap(s) => Some(s),
        }
    }

    /// The text as an `Arc<str>` (map keys are), allocating only for inline text.
    pub fn into_arc(self) -> Arc<str> {
        match self.0 {
            Repr::Inline(_) => Arc::from(self.as_str()),
            Repr::Heap(s) => s,
        }
    }
}

impl Default for Str {
    fn default() -> Self {
        Str::new("")
    }
}

impl std::ops::Deref for Str {
    type Target = str;
    #[inline]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Str {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Str {
    fn from(s: &str) -> Self {
        Str::new(s)
    }
}

impl From<String> for Str {
    fn from(s: String) -> Self {
        if s.len() <= INLINE_CAP {
            Str::new(&s)
        } else {
            Str(Repr::Heap(Arc::from(s)))
        }
    }
}

/// Keeps the allocation whatever the length: the string is already shared, so this is a
/// reference-count increment at most, and `Arc`s given in keep their identity.
impl From<Arc<str>> for Str {
    fn from(s: Arc<str>) -> Self {
        Str(Repr::Heap(s))
    }
}

impl From<&Arc<str>> for Str {
    fn from(s: &Arc<str>) -> Self {
        Str(Repr::Heap(s.clone()))
    }
}

impl PartialEq for Str {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            // Zero-padded, so two words compare the whole text: no length-dependent loop
            // for the comparison every keyed-state lookup makes.
            (Repr::Inline(a), Repr::Inline(b)) => a.len == b.len && a.bytes.0 == b.bytes.0,
            _ => self.as_bytes() == other.as_bytes(),
        }
    }
}

impl Eq for Str {}

impl PartialEq<str> for Str {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for Str {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialOrd for Str {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Byte order, which for UTF-8 is the order of `str`.
impl Ord for Str {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

/// Feeds the hasher what `str`'s `Hash` feeds the default hashers (the bytes, then `0xff`),
/// without validating inline text first.
impl Hash for Str {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.as_bytes());
        state.write_u8(0xff);
    }
}

/// Exactly the hash of the same `str`, inline or not.
impl StableKey for Str {
    #[inline]
    fn stable_hash(&self) -> u64 {
        self.as_bytes().stable_hash()
    }
}

impl fmt::Display for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl fmt::Debug for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_inline_long_ones_shared() {
        for len in 0..=INLINE_CAP + 2 {
            let text: String = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let s = Str::from(text.as_str());
            assert_eq!(s.as_str(), text);
            assert_eq!(s.as_bytes(), text.as_bytes());
            assert_eq!(s.len(), text.len());
            assert_eq!(s.is_inline(), text.len() <= INLINE_CAP, "{text:?}");
            assert_eq!(s.as_arc().is_none(), s.is_inline());
            assert_eq!(Str::from(text.clone()), s);
            assert_eq!(&*s.clone().into_arc(), text.as_str());
        }
        assert!(Str::default().is_empty());
        assert!(Str::from("x".repeat(INLINE_CAP)).is_inline());
        assert!(!Str::from("x".repeat(INLINE_CAP + 1)).is_inline());
    }

    #[test]
    fn pack_is_a_zero_padded_copy() {
        let text: Vec<u8> = (1..=INLINE_CAP as u8).collect();
        for n in 0..=INLINE_CAP {
            let mut expected = [0; INLINE_CAP];
            expected[..n].copy_from_slice(&text[..n]);
            assert_eq!(pack(&text[..n]).0, expected, "length {n}");
        }
    }

    #[test]
    fn representation_does_not_show() {
        use std::collections::hash_map::DefaultHasher;
        let hash = |v: &dyn Fn(&mut DefaultHasher)| {
            let mut h = DefaultHasher::new();
            v(&mut h);
            h.finish()
        };
        let inline = Str::new("word");
        let heap = Str::from(Arc::<str>::from("word"));
        assert!(inline.is_inline() && !heap.is_inline());
        assert_eq!(inline, heap);
        assert_eq!(inline.cmp(&heap), Ordering::Equal);
        assert_eq!(inline.stable_hash(), "word".stable_hash());
        assert_eq!(heap.stable_hash(), "word".stable_hash());
        assert_eq!(
            hash(&|h| inline.hash(h)),
            hash(&|h| heap.hash(h)),
            "Hash is that of the text"
        );
        assert_eq!(hash(&|h| inline.hash(h)), hash(&|h| "word".hash(h)));
        assert_eq!(format!("{inline:?} {heap}"), r#""word" word"#);
        assert_ne!(Str::new("ab"), Str::new("ab\0"));
        assert_ne!(Str::new("ab"), Str::new("ac"));
        assert_eq!(Str::new("ab"), Str::from("ab".to_string()));
        assert!(Str::new("ab") < Str::new("b"));
        assert!(Str::new("é") > Str::new("z"));
        // An `Arc` given in is kept, not copied.
        let arc: Arc<str> = Arc::from("shared");
        assert!(Arc::ptr_eq(Str::from(&arc).as_arc().unwrap(), &arc));
    }
}
