//! Side outputs of process functions (`ctx.output(&tag, value)`, Flink's side outputs).
//!
//! A process operator emits [`ProcessOutput`]: its main records, and side records tagged with
//! their `OutputTag`'s id and type and encoded with postcard. Which tags a job reads is known
//! only once `get_side_output` has been called, after the operator was added to the graph,
//! so the operator cannot have one typed output per tag; instead each `get_side_output` adds
//! a node chained to the operator that keeps its tag's records and decodes them.

use serde::{Deserialize, Serialize};

use crate::codec::key_hash::stable_hash;

/// A record of a side output, encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SideRecord {
    /// Hash of the tag's id.
    pub(crate) tag: u64,
    /// Hash of the tag's record type name: a tag id read as another type is an error
    /// naming the tag, never a misread.
    pub(crate) type_hash: u64,
    pub(crate) bytes: Vec<u8>,
}

/// What a process operator emits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProcessOutput<O> {
    Main(O),
    Side(SideRecord),
}

pub(crate) fn tag_hash(id: &str) -> u64 {
    stable_hash(id)
}

pub(crate) fn type_hash<X>() -> u64 {
    stable_hash(std::any::type_name::<X>())
}

/// Side records produced by one call of a process function, emitted after it returns
/// (main and side records go to different streams, so their relative order is not
/// observable).
#[derive(Default)]
pub(crate) struct SideBuffer {
    pub records: Vec<SideRecord>,
    /// The first record that could not be encoded, as an error naming its tag.
    pub error: Option<String>,
}

impl SideBuffer {
    pub fn push<X: Serialize>(&mut self, id: &str, value: &X) {
        if self.error.is_some() {
            return;
        }
        match postcard::to_allocvec(value) {
            Ok(bytes) => self.records.push(SideRecord {
                tag: tag_hash(id),
                type_hash: type_hash::<X>(),
                bytes,
            }),
            Err(e) => {
                self.error = Some(format!(
                    "cannot encode a record of type {} for side output {id:?}: {e}",
                    std::any::type_name::<X>()
                ))
            }
        }
    }
}

/// Decodes the records of side output `id` of type `X` from a process operator's output;
/// `None` for main records and other tags.
pub(crate) fn read_side<X: serde::de::DeserializeOwned>(
    id: &str,
    tag: u64,
    out: ProcessOutput<impl Sized>,
) -> Result<Option<X>, String> {
    let ProcessOutput::Side(r) = out else {
        return Ok(None);
    };
    if r.tag != tag {
        return Ok(None);
    }
    if r.type_hash != type_hash::<X>() {
        return Err(format!(
            "side output {id:?} is read as {} but was written with another type",
            std::any::type_name::<X>()
        ));
    }
    match postcard::take_from_bytes::<X>(&r.bytes) {
        Ok((x, [])) => Ok(Some(x)),
        Ok(_) => Err(format!(
            "side output {id:?}: a record has bytes left after decoding it as {}",
            std::any::type_name::<X>()
        )),
        Err(e) => Err(format!(
            "side output {id:?}: cannot decode a record as {}: {e}",
            std::any::type_name::<X>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_records_are_read_by_tag_and_type() {
        let mut b = SideBuffer::default();
        b.push("late", &(String::from("a"), 7i64));
        b.push("other", &1u32);
        let [late, other] = <[SideRecord; 2]>::try_from(b.records).unwrap();
        let read = |id: &str, r: &SideRecord| {
            read_side::<(String, i64)>(id, tag_hash(id), ProcessOutput::<()>::Side(r.clone()))
        };
        assert_eq!(read("late", &late), Ok(Some(("a".into(), 7))));
        assert_eq!(read("late", &other), Ok(None));
        assert_eq!(
            read_side::<(String, i64)>("x", 0, ProcessOutput::Main(1)),
            Ok(None)
        );
        let err = read_side::<u64>("late", tag_hash("late"), ProcessOutput::<()>::Side(late))
            .unwrap_err();
        assert!(
            err.contains("\"late\" is read as u64 but was written with another type"),
            "{err}"
        );
    }
}
