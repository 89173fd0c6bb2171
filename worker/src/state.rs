//! Keyed state, stored per key group so that checkpoints and rescaling can move whole key
//! groups between subtasks.

use std::borrow::Borrow;

use hashbrown::HashTable;
use streamjob_crds::KeyGroupRange;

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

struct Entry<O, V> {
    hash: u64,
    key: O,
    value: V,
}

/// In-memory backend: one hash table per key group.
pub struct HashMapValueState<K: ?Sized + ToOwned, V> {
    range: KeyGroupRange,
    groups: Vec<HashTable<Entry<K::Owned, V>>>,
    len: usize,
}

impl<K: ?Sized + ToOwned, V> HashMapValueState<K, V> {
    pub fn new(range: KeyGroupRange) -> Self {
        HashMapValueState {
            range,
            groups: (0..range.len()).map(|_| HashTable::new()).collect(),
            len: 0,
        }
    }

    pub fn key_groups(&self) -> KeyGroupRange {
        self.range
    }

    /// Whether this subtask owns `key_group` (inline: it is checked per record, and
    /// `KeyGroupRange::contains` is a call into another crate, ~1% of a word count by perf).
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
            .map(|e| (&e.key, &e.value))
    }

    #[inline]
    fn group(&mut self, key_group: u32) -> &mut HashTable<Entry<K::Owned, V>> {
        assert!(
            self.range.contains(key_group),
            "key group {key_group} is not owned by this subtask ({:?})",
            self.range
        );
        &mut self.groups[(key_group - self.range.start) as usize]
    }
}

impl<K, V> ValueState<K, V> for HashMapValueState<K, V>
where
    K: ?Sized + ToOwned + Eq,
    K::Owned: Borrow<K> + Send,
    V: Send,
{
    #[inline]
    fn get_mut(&mut self, key_group: u32, hash: u64, key: &K) -> Option<&mut V> {
        self.group(key_group)
            .find_mut(table_hash(hash), |e| {
                e.hash == hash && e.key.borrow() == key
            })
            .map(|e| &mut e.value)
    }

    fn put(&mut self, key_group: u32, hash: u64, key: K::Owned, value: V) {
        let table = self.group(key_group);
        match table.find_mut(table_hash(hash), |e| {
            e.hash == hash && e.key.borrow() == key.borrow()
        }) {
            Some(e) => e.value = value,
            None => {
                table.insert_unique(table_hash(hash), Entry { hash, key, value }, |e| {
                    table_hash(e.hash)
                });
                self.len += 1;
            }
        }
    }

    fn get_or_insert_with(
        &mut self,
        key_group: u32,
        hash: u64,
        key: &K,
        make: impl FnOnce() -> (K::Owned, V),
    ) -> &mut V {
        assert!(
            self.range.contains(key_group),
            "key group {key_group} is not owned by this subtask ({:?})",
            self.range
        );
        let table = &mut self.groups[(key_group - self.range.start) as usize];
        let entry = table.entry(
            table_hash(hash),
            |e| e.hash == hash && e.key.borrow() == key,
            |e| table_hash(e.hash),
        );
        let inserted = matches!(entry, hashbrown::hash_table::Entry::Vacant(_));
        let e = entry.or_insert_with(|| {
            let (key, value) = make();
            Entry { hash, key, value }
        });
        if inserted {
            self.len += 1;
        }
        &mut e.into_mut().value
    }

    fn remove(&mut self, key_group: u32, hash: u64, key: &K) -> Option<V> {
        let table = self.group(key_group);
        let found = table
            .find_entry(table_hash(hash), |e| {
                e.hash == hash && e.key.borrow() == key
            })
            .ok()?;
        let (e, _) = found.remove();
        self.len -= 1;
        Some(e.value)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn for_each_in_group(&self, key_group: u32, f: &mut dyn FnMut(&K::Owned, &V)) {
        if self.range.contains(key_group) {
            for e in &self.groups[(key_group - self.range.start) as usize] {
                f(&e.key, &e.value);
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
        let range = KeyGroupRange::for_subtask(0, 1, 16);
        let mut s: HashMapValueState<str, u64> = HashMapValueState::new(range);
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
