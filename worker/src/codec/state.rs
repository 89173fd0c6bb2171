//! The keyed-state codec: an operator's keyed state as one versioned blob, key group by key
//! group, so a restore at any parallelism takes the groups it owns and skips the others
//! without decoding them.
//!
//! ```text
//! "SJks" FORMAT_VERSION            header: what this is and how it was written
//! (varint group, varint n, n bytes)*  one chunk per key group (or several)
//!   the n bytes: postcard (key, value) entries back to back
//! varint END, varint chunks          end mark: a cut-off blob is an error, not fewer keys
//! ```
//!
//! The version covers the chunk layout and the entry encoding. A blob without the header or
//! with another version is an error naming what differs. Keys are read back into the key
//! groups they were saved under, so the reader also checks that each key still hashes to its
//! group (with the operator's key hash: `super::key_hash` for the Rust API): state written
//! with another hash function or max parallelism is refused, never misplaced.

use serde::Serialize;
use serde::de::DeserializeOwned;
use streamjob_crds::KeyGroupRange;
use streamjob_crds::keygroup::key_group_of_hash;

/// Version of the keyed-state format this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
const MAGIC: &[u8; 4] = b"SJks";
/// Group number of the end mark; key groups are below 2^15.
const END: u32 = u32::MAX;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "not keyed state in streamjob's versioned format (the {MAGIC:?} header is missing): \
         it was written by a streamjob release before keyed-state format versions, or by \
         another kind of operator under the same uid"
    )]
    MissingHeader,
    #[error(
        "keyed state format version {found} is not supported: this build reads version \
         {supported}; restore it with the streamjob release that wrote it"
    )]
    UnsupportedVersion { found: u8, supported: u8 },
    #[error("corrupt keyed state{}: {detail}", group_suffix(*.key_group))]
    Corrupt {
        key_group: Option<u32>,
        detail: String,
    },
    #[error(
        "a key saved in key group {saved} hashes to key group {hashes_to} here: the state was \
         written with another key hash or max parallelism"
    )]
    Misplaced { saved: u32, hashes_to: u32 },
    #[error("cannot encode keyed state of key group {key_group} ({what}): {source}")]
    Encode {
        key_group: u32,
        what: String,
        #[source]
        source: postcard::Error,
    },
}

fn group_suffix(g: Option<u32>) -> String {
    g.map(|g| format!(" in key group {g}")).unwrap_or_default()
}

/// Builds a keyed-state blob from entries given key group by key group.
pub struct KeyedStateWriter {
    out: Vec<u8>,
    /// The open chunk: its key group and encoded entries.
    group: Option<u32>,
    chunk: Vec<u8>,
    chunks: u64,
}

impl Default for KeyedStateWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyedStateWriter {
    pub fn new() -> Self {
        Self::appending_to(Vec::with_capacity(64))
    }

    /// Appends the blob to `out` (e.g. after a state file's envelope), so a snapshot is
    /// encoded straight into the buffer that gets written, never copied.
    pub fn appending_to(mut out: Vec<u8>) -> Self {
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_VERSION);
        KeyedStateWriter {
            out,
            group: None,
            chunk: Vec::new(),
            chunks: 0,
        }
    }

    /// Adds one entry. Entries of a key group should come together (a group split over
    /// several chunks still reads back, only larger).
    pub fn push<K, V>(&mut self, key_group: u32, key: &K, value: &V) -> Result<(), StateError>
    where
        K: Serialize + ?Sized,
        V: Serialize + ?Sized,
    {
        if self.group != Some(key_group) {
            self.close_chunk();
            self.group = Some(key_group);
        }
        let encode = |what: &str, source| StateError::Encode {
            key_group,
            what: what.to_string(),
            source,
        };
        super::append(key, &mut self.chunk)
            .map_err(|e| encode(&format!("key of type {}", std::any::type_name::<K>()), e))?;
        super::append(value, &mut self.chunk)
            .map_err(|e| encode(&format!("value of type {}", std::any::type_name::<V>()), e))
    }

    fn close_chunk(&mut self) {
        if let Some(g) = self.group.take() {
            let header = (g, self.chunk.len() as u64);
            super::append(&header, &mut self.out).expect("integers always encode");
            self.out.append(&mut self.chunk);
            self.chunks += 1;
        }
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.close_chunk();
        super::append(&(END, self.chunks), &mut self.out).expect("integers always encode");
        self.out
    }
}

/// Which key groups a restoring subtask takes, and how it hashes keys into them.
pub struct Restore<H> {
    pub owned: KeyGroupRange,
    pub max_parallelism: u32,
    pub hash: H,
}

/// Reads a keyed-state blob: calls `put(key group, key hash, key, value)` for every entry
/// of an owned key group and returns how many it read. Chunks of other groups are skipped
/// undecoded.
pub fn read_keyed_state<K, V, H>(
    blob: &[u8],
    restore: &Restore<H>,
    mut put: impl FnMut(u32, u64, K, V),
) -> Result<usize, StateError>
where
    H: Fn(&K) -> u64,
    K: DeserializeOwned,
    V: DeserializeOwned,
{
    let Some(rest) = blob.strip_prefix(MAGIC) else {
        return Err(StateError::MissingHeader);
    };
    let Some((&version, mut input)) = rest.split_first() else {
        return Err(corrupt(None, "no format version after the header"));
    };
    if version != FORMAT_VERSION {
        return Err(StateError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let (mut read, mut chunks) = (0, 0u64);
    loop {
        if input.is_empty() {
            return Err(corrupt(None, "cut off: no end mark"));
        }
        let ((g, len), rest) = postcard::take_from_bytes::<(u32, u64)>(input)
            .map_err(|e| corrupt(None, &format!("bad chunk header: {e}")))?;
        if g == END {
            if len != chunks || !rest.is_empty() {
                return Err(corrupt(
                    None,
                    &format!(
                        "end mark counts {len} chunks, read {chunks}, then {} more bytes",
                        rest.len()
                    ),
                ));
            }
            return Ok(read);
        }
        chunks += 1;
        let len = usize::try_from(len)
            .ok()
            .filter(|n| *n <= rest.len())
            .ok_or_else(|| {
                corrupt(
                    Some(g),
                    &format!("chunk of {len} bytes, {} left", rest.len()),
                )
            })?;
        let (mut chunk, rest) = rest.split_at(len);
        input = rest;
        if !restore.owned.contains(g) {
            continue;
        }
        while !chunk.is_empty() {
            let (key, after) = postcard::take_from_bytes::<K>(chunk).map_err(|e| {
                corrupt(
                    Some(g),
                    &format!("key of type {}: {e}", std::any::type_name::<K>()),
                )
            })?;
            let (value, after) = postcard::take_from_bytes::<V>(after).map_err(|e| {
                corrupt(
                    Some(g),
                    &format!("value of type {}: {e}", std::any::type_name::<V>()),
                )
            })?;
            chunk = after;
            let hash = (restore.hash)(&key);
            let home = key_group_of_hash(hash, restore.max_parallelism);
            if home != g {
                return Err(StateError::Misplaced {
                    saved: g,
                    hashes_to: home,
                });
            }
            put(g, hash, key, value);
            read += 1;
        }
    }
}

fn corrupt(key_group: Option<u32>, detail: &str) -> StateError {
    StateError::Corrupt {
        key_group,
        detail: detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct Visits {
        pages: Vec<u32>,
        total: u64,
    }

    fn sample() -> Vec<u8> {
        let mut w = KeyedStateWriter::new();
        let v = |n: u32| Visits {
            pages: (0..n).collect(),
            total: u64::from(n),
        };
        w.push(3, "3a", &v(1)).unwrap();
        w.push(3, "3b", &v(2)).unwrap();
        w.push(9, "9c", &v(3)).unwrap();
        w.finish()
    }

    /// Keys hash to the group named by their first character's digit ("3a" -> 3).
    fn group_of(k: &String) -> u64 {
        u64::from(k.as_bytes()[0] - b'0')
    }

    fn restore(owned: KeyGroupRange) -> Restore<fn(&String) -> u64> {
        Restore {
            owned,
            max_parallelism: 10,
            hash: group_of,
        }
    }

    const ALL: KeyGroupRange = KeyGroupRange { start: 0, end: 10 };

    fn read_all(blob: &[u8], owned: KeyGroupRange) -> Result<Vec<(u32, String, u64)>, StateError> {
        let mut got = Vec::new();
        read_keyed_state(blob, &restore(owned), |g, _, k: String, v: Visits| {
            got.push((g, k, v.total))
        })?;
        Ok(got)
    }

    #[test]
    fn entries_come_back_for_owned_groups_only() {
        let blob = sample();
        assert_eq!(
            read_all(&blob, ALL).unwrap(),
            [
                (3, "3a".into(), 1),
                (3, "3b".into(), 2),
                (9, "9c".into(), 3)
            ]
        );
        let upper = KeyGroupRange { start: 5, end: 10 };
        assert_eq!(read_all(&blob, upper).unwrap(), [(9, "9c".into(), 3)]);
        assert!(
            read_all(&KeyedStateWriter::new().finish(), ALL)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn another_format_version_is_refused_by_name() {
        let mut blob = sample();
        blob[4] = FORMAT_VERSION + 1;
        let err = read_all(&blob, ALL).unwrap_err();
        assert!(matches!(
            err,
            StateError::UnsupportedVersion {
                found: 2,
                supported: 1
            }
        ));
        assert!(
            err.to_string().contains("version 2 is not supported"),
            "{err}"
        );
    }

    #[test]
    fn state_without_the_header_is_refused() {
        // What the unversioned reduce snapshot of earlier releases began with.
        let err = read_all(&[1, 3, 1, b'a'], ALL).unwrap_err();
        assert!(matches!(err, StateError::MissingHeader), "{err}");
        assert!(read_all(b"SJks", ALL).is_err());
    }

    #[test]
    fn corruption_is_an_error_never_a_misread() {
        let blob = sample();
        // Every strict prefix fails (never fewer keys silently)...
        for cut in 0..blob.len() {
            assert!(
                read_all(&blob[..cut], ALL).is_err(),
                "prefix {cut} accepted"
            );
        }
        // ...and so does a value of another type.
        let err =
            read_keyed_state(&blob, &restore(ALL), |_, _, _: String, _: String| {}).unwrap_err();
        assert!(err.to_string().contains("key group 3"), "{err}");
    }

    #[test]
    fn a_key_that_hashes_elsewhere_is_refused() {
        let mut w = KeyedStateWriter::new();
        w.push(4, "3a", &1u64).unwrap();
        let err =
            read_keyed_state(&w.finish(), &restore(ALL), |_, _, _: String, _: u64| {}).unwrap_err();
        assert!(
            matches!(
                err,
                StateError::Misplaced {
                    saved: 4,
                    hashes_to: 3
                }
            ),
            "{err}"
        );
    }
}
