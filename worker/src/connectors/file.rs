//! `read_text_file`: lines of a file or of every file in a directory (bounded source).
//!
//! Splits: with at least as many files as subtasks, whole files are dealt round-robin; with
//! fewer, each file is cut into one byte range per subtask. A range owns the lines that start
//! inside it, so every line is read exactly once whatever the cut points.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::api::functions::{Collector, Source, SourceReader, SourceStatus};
use crate::connectors::SOURCE_BATCH;
use crate::error::BoxError;
use crate::runtime::context::SubtaskContext;

/// Makes a record from a line of text; lets a text source emit its final record type
/// directly instead of a `String` that is copied again.
pub type LineToRecord<T> = fn(&str) -> T;

pub struct FileSource<T = String> {
    path: PathBuf,
    make: LineToRecord<T>,
}

impl FileSource<String> {
    pub fn new(path: PathBuf) -> Self {
        FileSource {
            path,
            make: str::to_owned,
        }
    }
}

impl<T> FileSource<T> {
    /// Lines become records through `make`.
    pub fn with_records(path: PathBuf, make: LineToRecord<T>) -> Self {
        FileSource { path, make }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Split {
    pub path: PathBuf,
    pub start: u64,
    pub end: u64,
    /// `start` is the first byte of a line (a restored position), not a split boundary
    /// whose partial line belongs to the previous split.
    #[serde(default)]
    pub aligned: bool,
}

/// Files of `path` (itself if a file; sorted regular, non-hidden files if a directory).
fn list_files(path: &Path) -> Result<Vec<(PathBuf, u64)>, BoxError> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.is_file() {
        return Ok(vec![(path.to_path_buf(), meta.len())]);
    }
    let mut files = Vec::new();
    for entry in
        std::fs::read_dir(path).map_err(|e| format!("cannot list {}: {e}", path.display()))?
    {
        let entry = entry?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        let meta = entry.metadata()?;
        if meta.is_file() && !hidden {
            files.push((entry.path(), meta.len()));
        }
    }
    files.sort();
    Ok(files)
}

pub(crate) fn splits_for(files: &[(PathBuf, u64)], subtask: u32, parallelism: u32) -> Vec<Split> {
    let (s, p) = (subtask as usize, parallelism.max(1) as usize);
    if files.len() >= p {
        return files
            .iter()
            .enumerate()
            .filter(|(i, _)| i % p == s)
            .map(|(_, (path, len))| Split {
                path: path.clone(),
                start: 0,
                end: *len,
                aligned: false,
            })
            .collect();
    }
    files
        .iter()
        .map(|(path, len)| Split {
            path: path.clone(),
            start: len * s as u64 / p as u64,
            end: len * (s as u64 + 1) / p as u64,
            aligned: false,
        })
        .filter(|sp| sp.start < sp.end)
        .collect()
}

impl<T: Send + 'static> Source<T> for FileSource<T> {
    fn kind(&self) -> &'static str {
        "file"
    }
    fn create_reader(&self, ctx: &SubtaskContext) -> Result<Box<dyn SourceReader<T>>, BoxError> {
        let files = list_files(&self.path)?;
        let mut splits = splits_for(&files, ctx.subtask, ctx.parallelism);
        splits.reverse();
        Ok(Box::new(FileReader {
            make: self.make,
            parallelism: ctx.parallelism,
            splits,
            current: None,
            scratch: Vec::with_capacity(256),
        }))
    }
}

struct OpenSplit {
    reader: BufReader<File>,
    path: PathBuf,
    /// Offset of the next byte to read.
    pos: u64,
    end: u64,
}

struct FileReader<T> {
    make: LineToRecord<T>,
    parallelism: u32,
    /// Remaining splits, next last.
    splits: Vec<Split>,
    current: Option<OpenSplit>,
    scratch: Vec<u8>,
}

fn open(split: &Split) -> Result<OpenSplit, BoxError> {
    let file = File::open(&split.path)
        .map_err(|e| format!("cannot open {}: {e}", split.path.display()))?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut pos = split.start;
    if split.aligned {
        reader.seek(SeekFrom::Start(split.start))?;
    } else if split.start > 0 {
        // The line running through `start - 1` belongs to the previous split.
        reader.seek(SeekFrom::Start(split.start - 1))?;
        let mut skip = Vec::new();
        pos = split.start - 1 + reader.read_until(b'\n', &mut skip)? as u64;
    }
    Ok(OpenSplit {
        reader,
        path: split.path.clone(),
        pos,
        end: split.end,
    })
}

impl<T: Send> SourceReader<T> for FileReader<T> {
    fn poll_next(&mut self, out: &mut Collector<'_, T>) -> Result<SourceStatus, BoxError> {
        let mut emitted = 0;
        while emitted < SOURCE_BATCH {
            let cur = match &mut self.current {
                Some(c) => c,
                None => match self.splits.pop() {
                    Some(split) => self.current.insert(open(&split)?),
                    None => return Ok(SourceStatus::Finished),
                },
            };
            if cur.pos >= cur.end {
                self.current = None;
                continue;
            }
            self.scratch.clear();
            let n = cur.reader.read_until(b'\n', &mut self.scratch)?;
            if n == 0 {
                self.current = None;
                continue;
            }
            let line_start = cur.pos;
            cur.pos += n as u64;
            let mut line = self.scratch.as_slice();
            if let [rest @ .., b'\n'] = line {
                line = rest;
            }
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            let text = std::str::from_utf8(line).map_err(|e| {
                format!(
                    "{}: invalid UTF-8 in the line at byte offset {line_start}: {e}",
                    cur.path.display()
                )
            })?;
            out.collect((self.make)(text));
            emitted += 1;
        }
        Ok(SourceStatus::MoreAvailable)
    }

    /// The splits still to read, the current one from the next line on, and the parallelism
    /// they were dealt for.
    fn snapshot(&mut self) -> Result<Vec<u8>, BoxError> {
        let mut left: Vec<Split> = self.splits.clone();
        if let Some(cur) = &self.current {
            left.push(Split {
                path: cur.path.clone(),
                start: cur.pos,
                end: cur.end,
                aligned: true,
            });
        }
        Ok(serde_json::to_vec(&(self.parallelism, left))?)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), BoxError> {
        let (parallelism, splits): (u32, Vec<Split>) = serde_json::from_slice(state)?;
        if parallelism != self.parallelism {
            return Err(format!(
                "the file source was checkpointed at parallelism {parallelism}; restoring it at \
                 {} is not supported (keyed state can be rescaled, file positions cannot yet)",
                self.parallelism
            )
            .into());
        }
        self.splits = splits;
        self.current = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_files_are_split_by_byte_ranges_covering_everything() {
        let files = vec![(PathBuf::from("a"), 100u64)];
        let mut covered = 0;
        for s in 0..3 {
            let sp = splits_for(&files, s, 3);
            assert_eq!(sp.len(), 1);
            assert_eq!(sp[0].start, covered);
            covered = sp[0].end;
        }
        assert_eq!(covered, 100);
    }

    #[test]
    fn many_files_are_dealt_whole() {
        let files: Vec<_> = (0..5)
            .map(|i| (PathBuf::from(format!("f{i}")), 10))
            .collect();
        let s0 = splits_for(&files, 0, 2);
        let s1 = splits_for(&files, 1, 2);
        assert_eq!(s0.len() + s1.len(), 5);
        assert!(s0.iter().chain(&s1).all(|s| s.start == 0 && s.end == 10));
    }
}
