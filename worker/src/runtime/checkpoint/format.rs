//! On-disk format of a checkpoint: the envelope around every state file and the
//! `_metadata` document that lists them.
//!
//! A state file is `SJST | version u8 | uid length u16 | uid | subtask u32 | payload`
//! (little endian). The payload is whatever the operator snapshotted; nothing here looks
//! inside it. `_metadata` records each file's length and xxh3 checksum, so a restore can
//! prove that it reads exactly the bytes that were written, for the operator it restores.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of `_metadata` written by this build. Metadata without it (version 0) comes from
/// a build that recorded neither checksums nor `maxParallelism`.
pub const METADATA_VERSION: u32 = 2;

const MAGIC: &[u8; 4] = b"SJST";
const ENVELOPE_VERSION: u8 = 1;

/// Name of the state file of (`uid`, `subtask`) inside a checkpoint directory.
pub fn state_file_name(uid: &str, subtask: u32) -> String {
    format!("{uid}-{subtask}.state")
}

/// The envelope's header for (`uid`, `subtask`); the payload follows it.
pub fn envelope(uid: &str, subtask: u32, payload_len: usize) -> Vec<u8> {
    let uid = &uid.as_bytes()[..uid.len().min(u16::MAX as usize)];
    let mut out = Vec::with_capacity(11 + uid.len() + payload_len);
    out.extend_from_slice(MAGIC);
    out.push(ENVELOPE_VERSION);
    out.extend_from_slice(&(uid.len() as u16).to_le_bytes());
    out.extend_from_slice(uid);
    out.extend_from_slice(&subtask.to_le_bytes());
    out
}

/// A whole state file for `payload`.
pub fn wrap(uid: &str, subtask: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = envelope(uid, subtask, payload.len());
    out.extend_from_slice(payload);
    out
}

/// Checksum of a whole state file, as `_metadata` records it.
pub fn checksum(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

/// Checks the envelope of a state file and removes it, leaving the payload.
pub fn unwrap(mut bytes: Vec<u8>, uid: &str, subtask: u32) -> Result<Vec<u8>, String> {
    let header = parse_header(&bytes)?;
    if header.uid != uid.as_bytes() || header.subtask != subtask {
        return Err(format!(
            "it holds the state of operator '{}' subtask {}, not of '{uid}' subtask {subtask}",
            String::from_utf8_lossy(header.uid),
            header.subtask
        ));
    }
    let len = header.len;
    bytes.drain(..len);
    Ok(bytes)
}

struct Header<'a> {
    uid: &'a [u8],
    subtask: u32,
    /// Bytes of the header.
    len: usize,
}

fn parse_header(bytes: &[u8]) -> Result<Header<'_>, String> {
    if bytes.len() < 7 || &bytes[..4] != MAGIC {
        return Err("it is not a streamjob state file (no SJST header)".into());
    }
    if bytes[4] != ENVELOPE_VERSION {
        return Err(format!(
            "state file format version {} is not supported by this build (it reads {ENVELOPE_VERSION})",
            bytes[4]
        ));
    }
    let uid_len = u16::from_le_bytes([bytes[5], bytes[6]]) as usize;
    let end = 7 + uid_len + 4;
    if bytes.len() < end {
        return Err("its header is cut short".into());
    }
    let subtask = u32::from_le_bytes(bytes[end - 4..end].try_into().expect("4 bytes"));
    Ok(Header {
        uid: &bytes[7..7 + uid_len],
        subtask,
        len: end,
    })
}

/// Where one state file is and what it must contain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateHandle {
    pub operator: String,
    pub subtask: u32,
    pub file: String,
    /// Bytes of the whole file (envelope included).
    #[serde(default)]
    pub length: u64,
    /// xxh3-64 of the whole file, 16 hex digits.
    #[serde(default)]
    pub xxh3: String,
}

/// What a checkpoint knows about one operator of the job that took it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorRecord {
    /// What it was, e.g. `source:file`, `reduce`.
    pub operator: String,
    /// Step name (display name).
    #[serde(default)]
    pub name: String,
    /// The settings that decide what a source's restored position means (its file, topics,
    /// address, contents); a restore with other settings would read the wrong position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<serde_json::Value>,
}

/// `chk-<n>/_metadata`: written last, so its presence means the checkpoint is complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    #[serde(default)]
    pub format: u32,
    pub id: u64,
    #[serde(default)]
    pub triggered_ms: u64,
    #[serde(default)]
    pub completed_ms: u64,
    #[serde(default)]
    pub tasks: usize,
    #[serde(default)]
    pub acknowledged: usize,
    #[serde(default)]
    pub finished: usize,
    #[serde(default)]
    pub savepoint: bool,
    /// Number of key groups keyed state was stored under.
    #[serde(default)]
    pub max_parallelism: Option<u32>,
    /// Total bytes of the state files.
    #[serde(default)]
    pub state_bytes: u64,
    /// By operator uid.
    #[serde(default)]
    pub operators: BTreeMap<String, OperatorRecord>,
    #[serde(default)]
    pub states: Vec<StateHandle>,
}

impl Metadata {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("metadata always serialises")
    }

    pub fn parse(bytes: &[u8]) -> Result<Metadata, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("_metadata does not parse: {e}"))
    }

    pub fn handle(&self, uid: &str, subtask: u32) -> Option<&StateHandle> {
        self.states
            .iter()
            .find(|h| h.operator == uid && h.subtask == subtask)
    }

    /// Checks a state file read back against its handle; `Err` says what is wrong.
    pub fn verify(handle: &StateHandle, bytes: Option<Vec<u8>>) -> Result<Vec<u8>, String> {
        let Some(bytes) = bytes else {
            return Err("it is missing".into());
        };
        if bytes.len() as u64 != handle.length {
            return Err(format!(
                "it has {} bytes, {} were written",
                bytes.len(),
                handle.length
            ));
        }
        let sum = checksum(&bytes);
        if sum != handle.xxh3 {
            return Err(format!(
                "its checksum is {sum}, {} was written: the file is corrupt",
                handle.xxh3
            ));
        }
        unwrap(bytes, &handle.operator, handle.subtask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(bytes: &[u8]) -> StateHandle {
        StateHandle {
            operator: "count".into(),
            subtask: 1,
            file: state_file_name("count", 1),
            length: bytes.len() as u64,
            xxh3: checksum(bytes),
        }
    }

    #[test]
    fn a_state_file_round_trips_and_every_damage_is_named() {
        let file = wrap("count", 1, b"payload");
        let h = handle(&file);
        assert_eq!(
            Metadata::verify(&h, Some(file.clone())).unwrap(),
            b"payload"
        );
        assert_eq!(Metadata::verify(&h, None).unwrap_err(), "it is missing");
        assert_eq!(
            Metadata::verify(&h, Some(Vec::new())).unwrap_err(),
            format!("it has 0 bytes, {} were written", file.len())
        );
        let mut flipped = file.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(
            Metadata::verify(&h, Some(flipped))
                .unwrap_err()
                .contains("the file is corrupt")
        );
        // Another operator's file under this name (renamed by hand, copied over).
        let other = wrap("filter", 1, b"payload");
        assert_eq!(
            Metadata::verify(&handle(&other), Some(other.clone())).unwrap_err(),
            "it holds the state of operator 'filter' subtask 1, not of 'count' subtask 1"
        );
        assert!(
            unwrap(b"junk".to_vec(), "count", 1)
                .unwrap_err()
                .contains("no SJST header")
        );
        let mut future = file;
        future[4] = 9;
        assert!(
            unwrap(future, "count", 1)
                .unwrap_err()
                .contains("format version 9 is not supported")
        );
    }
}
