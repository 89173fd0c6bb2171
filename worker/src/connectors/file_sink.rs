//! File sink: one line per record (its `Display` form). With parallelism > 1, or with
//! checkpoints, each subtask writes `<path>.<subtask>`.
//!
//! With checkpoints it is exactly once: a snapshot records the file's length after a flush,
//! and a restore cuts the file back to it, dropping lines written after the checkpoint (they
//! are produced again from the restored state and source positions).

use std::fmt::Display;
use std::io::Write as _;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use crate::api::functions::{Sink, SinkWriter};
use crate::error::BoxError;
use crate::runtime::context::SubtaskContext;

pub struct FileSink<T> {
    path: PathBuf,
    _records: PhantomData<fn(T)>,
}

impl<T> FileSink<T> {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSink {
            path: path.into(),
            _records: PhantomData,
        }
    }

    /// The path given to [`FileSink::new`].
    pub fn base_path(&self) -> &Path {
        &self.path
    }

    /// The file subtask `ctx` writes.
    pub fn path_for(&self, ctx: &SubtaskContext) -> PathBuf {
        // With checkpoints, files are named by subtask at every parallelism, so a job
        // restored at another parallelism finds the files its snapshots describe.
        if ctx.parallelism > 1 || ctx.checkpoints.is_some() {
            self.path_of(ctx.subtask)
        } else {
            self.path.clone()
        }
    }

    fn path_of(&self, subtask: u32) -> PathBuf {
        PathBuf::from(format!("{}.{subtask}", self.path.display()))
    }
}

impl<T: Display + Send + 'static> Sink<T> for FileSink<T> {
    fn kind(&self) -> &'static str {
        "file"
    }
    fn create_writer(&self, ctx: &SubtaskContext) -> Result<Box<dyn SinkWriter<T>>, BoxError> {
        let path = self.path_for(ctx);
        // Scaled in: subtask 0 cuts the files of subtasks that no longer exist back to
        // their snapshot, so lines they wrote after it are not left behind as duplicates.
        if let Some(c) = ctx.checkpoints.as_ref().filter(|_| ctx.subtask == 0) {
            for (old, state) in c.restored_states(&ctx.uid)? {
                if old >= ctx.parallelism
                    && let Ok(len) = <[u8; 8]>::try_from(state.as_slice())
                {
                    let orphan = self.path_of(old);
                    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&orphan) {
                        f.set_len(u64::from_le_bytes(len).min(f.metadata()?.len()))?;
                    }
                }
            }
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        // With checkpoints the file is kept and cut back to the restored checkpoint's length
        // (see `restore`); without, every run starts it afresh.
        let file = if ctx.checkpoints.is_some() {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
        } else {
            std::fs::File::create(&path)
        }
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        if ctx
            .checkpoints
            .as_ref()
            .is_some_and(|c| c.restored().is_none())
        {
            file.set_len(0)?;
        }
        Ok(Box::new(FileWriter {
            out: std::io::BufWriter::new(Counted {
                file,
                unreported: 0,
            }),
            path,
            _records: PhantomData,
        }))
    }
}

struct FileWriter<T> {
    out: std::io::BufWriter<Counted>,
    path: PathBuf,
    _records: PhantomData<fn(T)>,
}

/// The file under the buffer, counting what reaches it (once per buffer's worth, not per
/// record) until the metrics are told.
struct Counted {
    file: std::fs::File,
    unreported: u64,
}

impl std::io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unreported += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl<T> FileWriter<T> {
    /// Flushes the buffer and tells the task's output bytes what reached the file.
    fn flush_and_report(&mut self) -> std::io::Result<()> {
        let flushed = self.out.flush();
        let c = self.out.get_mut();
        crate::runtime::metrics::sink_wrote(std::mem::take(&mut c.unreported));
        flushed
    }
}

impl<T: Display> SinkWriter<T> for FileWriter<T> {
    fn write(&mut self, item: T) -> Result<(), BoxError> {
        writeln!(self.out, "{item}")?;
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BoxError> {
        self.flush_and_report()?;
        Ok(())
    }
    fn snapshot(&mut self, _checkpoint: u64) -> Result<Vec<u8>, BoxError> {
        self.flush_and_report()?;
        let file = &self.out.get_ref().file;
        file.sync_data()?;
        Ok(file.metadata()?.len().to_le_bytes().to_vec())
    }
    fn restore(&mut self, state: &[u8]) -> Result<(), BoxError> {
        let len = u64::from_le_bytes(
            state
                .try_into()
                .map_err(|_| format!("bad file sink snapshot for {}", self.path.display()))?,
        );
        let file = &self.out.get_ref().file;
        let now = file.metadata()?.len();
        if now < len {
            return Err(format!(
                "{} has {now} bytes but had {len} at the checkpoint: it was changed outside the job",
                self.path.display()
            )
            .into());
        }
        file.set_len(len)?;
        Ok(())
    }
}
