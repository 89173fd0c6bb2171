//! `read_text_file`: lines of a file or of every file in a directory (bounded source).
//!
//! Splits: with at least as many files as subtasks, whole files are dealt round-robin; with
//! fewer, each file is cut into one byte range per subtask. A range owns the lines that start
//! inside it, so every line is read exactly once whatever the cut points.
//!
//! A directory is read recursively (see [`list_files`]); a line that is not UTF-8 fails the
//! job unless the source was given a handler ([`FileSource::on_invalid_utf8`]).

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tracing::info;

use crate::api::functions::{Collector, Source, SourceReader, SourceStatus};
use crate::connectors::SOURCE_BATCH;
use crate::connectors::lines::{
    InvalidLineFactory, InvalidLineHandler, decode, handler_for, trim_line_end,
};
use crate::error::BoxError;
use crate::runtime::context::SubtaskContext;

pub use crate::connectors::lines::{InvalidLine, LineToRecord};

pub struct FileSource<T = String> {
    path: PathBuf,
    make: LineToRecord<T>,
    on_invalid: Option<InvalidLineFactory>,
}

impl FileSource<String> {
    pub fn new(path: PathBuf) -> Self {
        Self::with_records(path, str::to_owned)
    }
}

impl<T> FileSource<T> {
    /// Lines become records through `make`.
    pub fn with_records(path: PathBuf, make: LineToRecord<T>) -> Self {
        FileSource {
            path,
            make,
            on_invalid: None,
        }
    }

    /// What to do with a line that is not UTF-8 (default: the job fails, naming the file and
    /// the line's byte offset). The factory makes one handler per subtask.
    pub fn on_invalid_utf8(
        mut self,
        factory: impl Fn(&SubtaskContext) -> Result<InvalidLineHandler, BoxError>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.on_invalid = Some(std::sync::Arc::new(factory));
        self
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

/// Names skipped in directories, as Flink's default file filter does: hidden files and
/// directories (`.`), and `_` files such as `_SUCCESS` or `_temporary`. Kubernetes keeps a
/// ConfigMap's real files in `..data`, reached through symlinks named after the keys.
fn hidden(name: &std::ffi::OsStr) -> bool {
    let name = name.as_encoded_bytes();
    name.starts_with(b".") || name.starts_with(b"_")
}

/// Files of `path`: itself if a file; for a directory, every regular file below it at any
/// depth, following symlinks, in path order, without hidden names. Whatever is left out
/// (hidden names, entries that are not regular files, symlinks leading back to a directory
/// being read) is logged at info with the reason; an entry that cannot be read (a broken
/// symlink, no permission) fails the job, naming it. Every subtask lists the files; only
/// the one with `report` logs.
pub(crate) fn list_files(path: &Path, report: bool) -> Result<Vec<(PathBuf, u64)>, BoxError> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.is_file() {
        return Ok(vec![(path.to_path_buf(), meta.len())]);
    }
    if !meta.is_dir() {
        return Err(format!("{} is neither a file nor a directory", path.display()).into());
    }
    let mut files = Vec::new();
    let walk = walkdir::WalkDir::new(path)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            let skip = e.depth() > 0 && hidden(e.file_name());
            if skip && report {
                info!(path = %e.path().display(), "file source skips a hidden name (starts with '.' or '_')");
            }
            !skip
        });
    for entry in walk {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                // A link back to a directory being read would repeat it forever; its files
                // are read once, where the loop leads.
                if let (Some(ancestor), Some(at)) = (e.loop_ancestor(), e.path()) {
                    if report {
                        info!(path = %at.display(), ancestor = %ancestor.display(), "file source skips a symlink loop: its files are read under the directory it points back to");
                    }
                    continue;
                }
                let at = e.path().unwrap_or(path).display().to_string();
                return Err(format!("cannot read {at}: {e}").into());
            }
        };
        let meta = entry
            .metadata()
            .map_err(|e| format!("cannot read {}: {e}", entry.path().display()))?;
        if meta.is_file() {
            files.push((entry.into_path(), meta.len()));
        } else if !meta.is_dir() && report {
            info!(path = %entry.path().display(), file_type = ?meta.file_type(), "file source skips an entry that is not a regular file");
        }
    }
    files.sort();
    if report {
        info!(directory = %path.display(), files = files.len(), "file source lists the files to read");
    }
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
        let files = list_files(&self.path, ctx.subtask == 0)?;
        let mut splits = splits_for(&files, ctx.subtask, ctx.parallelism);
        splits.reverse();
        Ok(Box::new(FileReader {
            make: self.make,
            on_invalid: handler_for(&self.on_invalid, ctx)?,
            parallelism: ctx.parallelism,
            unreported_total: Some(splits.iter().map(|s| s.end - s.start).sum()),
            splits,
            current: None,
            scratch: Vec::with_capacity(256),
        }))
    }
}

struct OpenSplit {
    reader: BufReader<File>,
    path: PathBuf,
    /// `path` as shown in errors.
    origin: String,
    /// Offset of the next byte to read.
    pos: u64,
    end: u64,
}

struct FileReader<T> {
    make: LineToRecord<T>,
    on_invalid: InvalidLineHandler,
    parallelism: u32,
    /// Remaining splits, next last.
    splits: Vec<Split>,
    current: Option<OpenSplit>,
    scratch: Vec<u8>,
    /// Bytes of the splits, told to the metrics (progress, ETA) on the task's first poll.
    unreported_total: Option<u64>,
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
        origin: split.path.display().to_string(),
        pos,
        end: split.end,
    })
}

impl<T: Send> SourceReader<T> for FileReader<T> {
    fn poll_next(&mut self, out: &mut Collector<'_, T>) -> Result<SourceStatus, BoxError> {
        if let Some(total) = self.unreported_total.take() {
            crate::runtime::metrics::source_total(Some(total), None);
        }
        let mut emitted = 0;
        let mut read = 0;
        while emitted < SOURCE_BATCH {
            let cur = match &mut self.current {
                Some(c) => c,
                None => match self.splits.pop() {
                    Some(split) => self.current.insert(open(&split)?),
                    None => {
                        crate::runtime::metrics::source_read(read);
                        return Ok(SourceStatus::Finished);
                    }
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
            read += n as u64;
            let line = trim_line_end(&self.scratch);
            if let Some(record) = decode(
                line,
                self.make,
                &cur.origin,
                line_start,
                &mut self.on_invalid,
            )? {
                out.collect(record);
            }
            emitted += 1;
        }
        crate::runtime::metrics::source_read(read);
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
        // Progress counts what is left to read.
        self.unreported_total = Some(splits.iter().map(|s| s.end - s.start).sum());
        self.splits = splits;
        self.current = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sj-file-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn relative(root: &Path, files: &[(PathBuf, u64)]) -> Vec<String> {
        files
            .iter()
            .map(|(p, _)| p.strip_prefix(root).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn a_directory_is_read_recursively_through_symlinks_without_hidden_names() {
        let base = tmp("tree");
        let root = base.join("in");
        write(&root.join("a.txt"), "a\n");
        write(&root.join("sub/b.txt"), "b\n");
        write(&root.join("sub/deeper/c.txt"), "c\n");
        write(&root.join(".hidden.txt"), "h\n");
        write(&root.join("_SUCCESS"), "");
        write(&root.join(".git/x.txt"), "x\n");
        write(&root.join("_temporary/y.txt"), "y\n");
        write(&base.join("outside/f.txt"), "f\n");
        write(&base.join("outside/dir/d.txt"), "d\n");
        symlink(base.join("outside/f.txt"), root.join("link-file")).unwrap();
        symlink(base.join("outside/dir"), root.join("link-dir")).unwrap();
        // A Kubernetes ConfigMap volume: keys are symlinks into a hidden, swapped directory.
        write(&root.join("cm/..2026_12_03/key1"), "k\n");
        symlink("..2026_12_03", root.join("cm/..data")).unwrap();
        symlink("..data/key1", root.join("cm/key1")).unwrap();
        let files = list_files(&root, true).unwrap();
        assert_eq!(
            relative(&root, &files),
            vec![
                "a.txt",
                "cm/key1",
                "link-dir/d.txt",
                "link-file",
                "sub/b.txt",
                "sub/deeper/c.txt"
            ]
        );
        assert!(files.iter().all(|(_, len)| *len == 2));
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn a_symlink_loop_is_skipped_not_followed_forever() {
        let root = tmp("loop");
        write(&root.join("a.txt"), "a\n");
        write(&root.join("sub/b.txt"), "b\n");
        symlink(&root, root.join("sub/back-to-root")).unwrap();
        symlink("../sub", root.join("sub/self")).unwrap();
        let files = list_files(&root, true).unwrap();
        assert_eq!(relative(&root, &files), vec!["a.txt", "sub/b.txt"]);
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn a_broken_symlink_fails_naming_it() {
        let root = tmp("broken");
        write(&root.join("a.txt"), "a\n");
        symlink(root.join("gone.txt"), root.join("link")).unwrap();
        let err = list_files(&root, true).unwrap_err().to_string();
        assert!(
            err.contains(&format!("cannot read {}", root.join("link").display())),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn entries_that_are_not_regular_files_are_skipped() {
        let root = tmp("fifo");
        write(&root.join("a.txt"), "a\n");
        let made = std::process::Command::new("mkfifo")
            .arg(root.join("pipe"))
            .status()
            .unwrap();
        assert!(made.success());
        assert_eq!(
            relative(&root, &list_files(&root, true).unwrap()),
            vec!["a.txt"]
        );
        let _ = std::fs::remove_dir_all(root);
    }

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
