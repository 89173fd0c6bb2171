//! Keyed state, stored per key group so that checkpoints and rescaling can move whole key
//! groups between subtasks.

use std::any::TypeId;
use std::borrow::Borrow;
use std::marker::PhantomData;

use hashbrown::HashTable;
use serde::Serialize;
use streamjob_crds::KeyGroupRange;

use crate::codec::key_hash::{short_str_tag, stable_hash};

/// Value state per key (Flink's `ValueState`) for the key groups one subtask owns. Callers
/// pass the key's stable hash and key group, which they have already computed for routing,
/// so nothing is hashed twice.
pub trait ValueState<K: ?Sized + ToOwned, V>: Send {
    fn get_mut(&mut self, key_group: u32, hash: u64, key: &K) -> Option<&mut V>;
    fn put(&mut self, key_group: u32, hash: u64, key: K::Owned, value: V);
    /// The value of `key`, inserting `make()` (the owned key and a value) if it has none:
    /// one lookup either way.
    fn get_or_insert_with(
        &mut self,
        key_group: u32,
        hash: u64,
        key: &K,
        make: impl FnOnce() -> (K::Owned, V),
    ) -> &mut V
    where
        Self: Sized;
    fn remove(&mut self, key_group: u32, hash: u64, key: &K) -> Option<V>;
    /// Number of keys held.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Visits every entry of one key group (snapshots, rescaling).
    fn for_each_in_group(&self, key_group: u32, f: &mut dyn FnMut(&K::Owned, &V));
}

/// Hash used inside a key group's table. Keys of one group share `hash % max_parallelism`,
/// i.e. their low bits, which hashbrown uses to pick buckets; rotating brings independent
/// bits down so a group's keys spread over its table instead of piling into 1/128 of it.
#[inline]
fn table_hash(hash: u64) -> u64 {
    hash.rotate_left(32)
}

/// How a table stores one entry and finds it.
pub trait TableEntry<K: ?Sized + ToOwned, V>: Send {
    /// What [`TableEntry::matches`] compares, computed once per lookup from the key and
    /// its stable hash.
    fn probe(hash: u64, key: &K) -> u64;
    fn new(hash: u64, probe: u64, key: K::Owned, value: V) -> Self;
    /// Whether this entry holds `key`, whose probe value is `probe`.
    fn matches(&self, probe: u64, key: &K) -> bool;
    /// The key's stable hash (to place the entry again when the table grows).
    fn hash(&self) -> u64;
    fn key(&self) -> &K::Owned;
    fn value(&self) -> &V;
    fn value_mut(&mut self) -> &mut V;
    fn into_value(self) -> V;
}

/// The default entry: as small as its fields allow, the stored hash right before the key so
/// the compare after a tag match reads one place.
#[repr(C)]
pub struct Packed<O, V> {
    hash: u64,
    key: O,
    value: V,
}

impl<K, V> TableEntry<K, V> for Packed<K::Owned, V>
where
    K: ?Sized + ToOwned + Eq,
    K::Owned: Borrow<K> + Send,
    V: Send,
{
    #[inline]
    fn probe(hash: u64, _: &K) -> u64 {
        hash
    }
    #[inline]
    fn new(hash: u64, _: u64, key: K::Owned, value: V) -> Self {
        Packed { hash, key, value }
    }
    #[inline]
    fn matches(&self, probe: u64, key: &K) -> bool {
        self.hash == probe && self.key.borrow() == key
    }
    #[inline]
    fn hash(&self) -> u64 {
        self.hash
    }
    #[inline]
    fn key(&self) -> &K::Owned {
        &self.key
    }
    #[inline]
    fn value(&self) -> &V {
        &self.value
    }
    #[inline]
    fn value_mut(&mut self) -> &mut V {
        &mut self.value
    }
    #[inline]
    fn into_value(self) -> V {
        self.value
    }
}

/// An entry starting on a cache line, for operators whose every record reads and writes
/// its whole entry (reduce, windows): a 64-byte entry is one line instead of two for three
/// entries in four, and a larger one's tag, key and first bytes of value share its first
/// line. Small entries grow to 64 bytes, so it is not the default.
///
/// It stores a tag instead of the hash: for a `String` key of at most 7 bytes, the key
/// itself (`short_str_tag`, top bit set), so a lookup compares 8 bytes and never reads the
/// key's heap allocation (perf: `bcmp` on the key's bytes was 7% of the running word
/// count's CPU and 14% of the windowed one's); for any other key, its hash with the top bit
/// clear, followed by the key compare. The hash is computed again when the table grows.
#[repr(C, align(64))]
pub struct LineAligned<O, V> {
    tag: u64,
    key: O,
    value: V,
}

const SHORT_KEY: u64 = 1 << 63;

impl<K, V> TableEntry<K, V> for LineAligned<K::Owned, V>
where
    K: ?Sized + ToOwned + Eq + Serialize,
    K::Owned: Borrow<K> + Send + 'static,
    V: Send,
{
    #[inline]
    fn probe(hash: u64, key: &K) -> u64 {
        // Only for `String` keys (`K` is `str` or `String`), whose equality is that of
        // their serde string: another type's `Eq` may differ from its serde form.
        if TypeId::of::<K::Owned>() == TypeId::of::<String>()
            && let Some(tag) = short_str_tag(key)
        {
            return tag;
        }
        hash & !SHORT_KEY
    }
    #[inline]
    fn new(_: u64, probe: u64, key: K::Owned, value: V) -> Self {
        LineAligned {
            tag: probe,
            key,
            value,
        }
    }
    #[inline]
    fn matches(&self, probe: u64, key: &K) -> bool {
        self.tag == probe && (probe & SHORT_KEY != 0 || self.key.borrow() == key)
    }
    fn hash(&self) -> u64 {
        stable_hash(self.key.borrow())
    }
    #[inline]
    fn key(&self) -> &K::Owned {
        &self.key
    }
    #[inline]
    fn value(&self) -> &V {
        &self.value
    }
    #[inline]
    fn value_mut(&mut self) -> &mut V {
        &mut self.value
    }
    #[inline]
    fn into_value(self) -> V {
        self.value
    }
}

/// In-memory backend: one hash table per key group.
pub struct HashMapValueState<K: ?Sized + ToOwned, V, E = Packed<<K as ToOwned>::Owned, V>> {
    range: KeyGroupRange,
    groups: Vec<HashTable<E>>,
    len: usize,
    _kv: PhantomData<fn() -> (Box<K>, V)>,
}

/// The state of operators that touch their whole entry per record (see [`LineAligned`]).
pub type LineAlignedState<K, V> = HashMapValueState<K, V, LineAligned<<K as ToOwned>::Owned, V>>;

impl<K: ?Sized + ToOwned, V, E: TableEntry<K, V>> HashMapValueState<K, V, E> {
    pub fn new(range: KeyGroupRange) -> Self {
        HashMapValueState {
            range,
            groups: (0..range.len()).map(|_| HashTable::new()).collect(),
            len: 0,
            _kv: PhantomData,
        }
    }

    pub fn key_groups(&self) -> KeyGroupRange {
        self.range
    }

    /// Whether this subtask owns `key_group` (inline: it is checked per record).
    #[inline]
    pub fn owns(&self, key_group: u32) -> bool {
        key_group.wrapping_sub(self.range.start) < self.range.end.wrapping_sub(self.range.start)
    }

    /// The entries of one key group (empty for groups this subtask does not own).
    pub fn iter_group(&self, key_group: u32) -> impl Iterator<Item = (&K::Owned, &V)> {
        self.range
            .contains(key_group)
            .then(|| &self.groups[(key_group - self.range.start) as usize])
            .into_iter()
            .flatten()
            .map(|e| (e.key(), e.value()))
    }
}

/// The table of `key_group` (split from the state's other fields for the borrow checker).
#[inline]
fn group_table<E>(
    groups: &mut [HashTable<E>],
    range: KeyGroupRange,
    key_group: u32,
) -> &mut HashTable<E> {
    match groups.get_mut(key_group.wrapping_sub(range.start) as usize) {
        Some(t) => t,
        None => not_owned(key_group, range),
    }
}

#[cold]
#[inline(never)]
fn not_owned(key_group: u32, range: KeyGroupRange) -> ! {
    panic!("key group {key_group} is not owned by this subtask ({range:?})")
}

impl<K, V, E> ValueState<K, V> for HashMapValueState<K, V, E>
where
    K: ?Sized + ToOwned + Eq,
    K::Owned: Borrow<K> + Send,
    V: Send,
    E: TableEntry<K, V>,
{
    #[inline]
    fn get_mut(&mut self, key_group: u32, hash: u64, key: &K) -> Option<&mut V> {
        let probe = E::probe(hash, key);
        group_table(&mut self.groups, self.range, key_group)
            .find_mut(table_hash(hash), |e| e.matches(probe, key))
            .map(|e| e.value_mut())
    }

    fn put(&mut self, key_group: u32, hash: u64, key: K::Owned, value: V) {
        let probe = E::probe(hash, key.borrow());
        let table = group_table(&mut self.groups, self.range, key_group);
        match table.find_mut(table_hash(hash), |e| e.matches(probe, key.borrow())) {
            Some(e) => *e.value_mut() = value,
            None => {
                table.insert_unique(table_hash(hash), E::new(hash, probe, key, value), |e| {
                    table_hash(e.hash())
                });
                self.len += 1;
            }
        }
    }

    #[inline]
    fn get_or_insert_with(
        &mut self,
        key_group: u32,
        hash: u64,
        key: &K,
        make: impl FnOnce() -> (K::Owned, V),
    ) -> &mut V {
        let probe = E::probe(hash, key);
        let table = group_table(&mut self.groups, self.range, key_group);
        let entry = table.entry(
            table_hash(hash),
            |e| e.matches(probe, key),
            |e| table_hash(e.hash()),
        );
        let inserted = matches!(entry, hashbrown::hash_table::Entry::Vacant(_));
        let e = entry.or_insert_with(|| {
            let (key, value) = make();
            E::new(hash, probe, key, value)
        });
        if inserted {
            self.len += 1;
        }
        e.into_mut().value_mut()
    }

    fn remove(&mut self, key_group: u32, hash: u64, key: &K) -> Option<V> {
        let probe = E::probe(hash, key);
        let table = group_table(&mut self.groups, self.range, key_group);
        let found = table
            .find_entry(table_hash(hash), |e| e.matches(probe, key))
            .ok()?;
        let (e, _) = found.remove();
        self.len -= 1;
        Some(e.into_value())
    }

    fn len(&self) -> usize {
        self.len
    }

    fn for_each_in_group(&self, key_group: u32, f: &mut dyn FnMut(&K::Owned, &V)) {
        if self.range.contains(key_group) {
            for e in &self.groups[(key_group - self.range.start) as usize] {
                f(e.key(), e.value());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamjob_crds::StableKey;
    use streamjob_crds::keygroup::key_group_of_hash;

    #[test]
    fn state_is_partitioned_by_key_group() {
        partitioned_by_key_group::<Packed<String, u64>>();
        partitioned_by_key_group::<LineAligned<String, u64>>();
    }

    fn partitioned_by_key_group<E: TableEntry<str, u64>>() {
        let range = KeyGroupRange::for_subtask(0, 1, 16);
        let mut s: HashMapValueState<str, u64, E> = HashMapValueState::new(range);
        let words = ["a", "b", "c", "a", "a"];
        for w in words {
            let h = w.stable_hash();
            let g = key_group_of_hash(h, 16);
            match s.get_mut(g, h, w) {
                Some(v) => *v += 1,
                None => s.put(g, h, w.to_string(), 1),
            }
        }
        assert_eq!(s.len(), 3);
        let h = "a".stable_hash();
        let g = key_group_of_hash(h, 16);
        assert_eq!(s.get_mut(g, h, "a").copied(), Some(3));
        let mut seen = vec![];
        s.for_each_in_group(g, &mut |k, v| seen.push((k.clone(), *v)));
        assert!(seen.contains(&("a".to_string(), 3)));
        assert_eq!(s.remove(g, h, "a"), Some(3));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn keys_of_one_key_group_spread_over_their_table() {
        // Regression: keys of a group share `hash % 128`; used directly as the table hash
        // they all landed in 1/128 of the buckets (word count was 3x slower).
        let hashes: Vec<u64> = (0..100_000u64)
            .map(|i| i.stable_hash())
            .filter(|h| key_group_of_hash(*h, 128) == 5)
            .collect();
        assert!(hashes.len() > 500);
        let buckets: std::collections::HashSet<u64> =
            hashes.iter().map(|h| table_hash(*h) & 127).collect();
        assert!(
            buckets.len() > 100,
            "only {} of 128 low-bit patterns used",
            buckets.len()
        );
    }

    #[test]
    fn a_reduce_entry_of_a_string_word_is_one_cache_line() {
        // What the Rust-API word count's reduce stores: hash, key, `Option<(String, u64)>`.
        type E = LineAligned<String, Option<(String, u64)>>;
        assert_eq!((size_of::<E>(), align_of::<E>()), (64, 64));
        let mut s: LineAlignedState<str, Option<(String, u64)>> =
            HashMapValueState::new(KeyGroupRange::for_subtask(0, 1, 16));
        for i in 0..1000u64 {
            let w = i.to_string();
            let h = w.stable_hash();
            let v = s.get_or_insert_with(key_group_of_hash(h, 16), h, &w, || (w.clone(), None));
            assert_eq!(
                std::ptr::from_mut(v).addr() % 64,
                32,
                "value after hash and key"
            );
        }
    }

    #[test]
    fn short_and_long_string_keys_and_other_keys_find_their_own_entries() {
        let words: Vec<String> = (0..3000u64)
            .map(|i| match i % 3 {
                0 => format!("{i}"),
                1 => format!("word-{i:08}"),
                _ => format!("w\0{}", i % 97),
            })
            .collect();
        let mut s: LineAlignedState<str, u64> =
            HashMapValueState::new(KeyGroupRange::for_subtask(0, 1, 16));
        for round in 0..2u64 {
            for w in &words {
                let h = w.stable_hash();
                *s.get_or_insert_with(key_group_of_hash(h, 16), h, w, || (w.clone(), 0)) +=
                    round + 1;
            }
        }
        let distinct: std::collections::HashSet<&String> = words.iter().collect();
        assert_eq!(s.len(), distinct.len());
        for w in &distinct {
            let n = words.iter().filter(|x| x == w).count() as u64;
            let h = w.stable_hash();
            assert_eq!(
                s.get_mut(key_group_of_hash(h, 16), h, w),
                Some(&mut (3 * n))
            );
        }
        let absent = "zz".to_string();
        let h = absent.stable_hash();
        assert_eq!(s.get_mut(key_group_of_hash(h, 16), h, &absent), None);
        // A key that is not a `String` is compared by hash and `Eq`.
        let mut n: LineAlignedState<u64, u64> =
            HashMapValueState::new(KeyGroupRange::for_subtask(0, 1, 16));
        for i in 0..500u64 {
            let h = i.stable_hash();
            n.put(key_group_of_hash(h, 16), h, i, i * 2);
        }
        let h = 77u64.stable_hash();
        assert_eq!(n.remove(key_group_of_hash(h, 16), h, &77), Some(154));
        assert_eq!(n.len(), 499);
    }

    #[test]
    fn ownership_of_key_groups() {
        let s: HashMapValueState<str, u64> =
            HashMapValueState::new(KeyGroupRange::for_subtask(1, 2, 16));
        let owned: Vec<u32> = (0..20).filter(|g| s.owns(*g)).collect();
        assert_eq!(owned, (8..16).collect::<Vec<_>>());
    }

    #[test]
    #[should_panic(expected = "not owned")]
    fn foreign_key_groups_are_refused() {
        let mut s: HashMapValueState<str, u64> =
            HashMapValueState::new(KeyGroupRange::for_subtask(0, 2, 16));
        s.put(15, 1, "x".into(), 1);
    }
}
