//! `print()`: one line per record on stdout, Flink's format (`3> value` when parallel).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;

use crate::api::functions::{Sink, SinkWriter};
use crate::error::BoxError;
use crate::runtime::context::SubtaskContext;

type Format<T> = Arc<dyn Fn(&T, &mut String) + Send + Sync>;

pub struct PrintSink<T> {
    format: Format<T>,
}

impl<T: std::fmt::Debug> PrintSink<T> {
    /// Formats records with `{:?}`.
    pub fn debug() -> Self {
        PrintSink {
            format: Arc::new(|v, s| {
                let _ = write!(s, "{v:?}");
            }),
        }
    }
}

impl<T> PrintSink<T> {
    /// Formats records with a function of your own.
    pub fn with_format(f: impl Fn(&T, &mut String) + Send + Sync + 'static) -> Self {
        PrintSink {
            format: Arc::new(f),
        }
    }
}

impl<T: Send + 'static> Sink<T> for PrintSink<T> {
    fn kind(&self) -> &'static str {
        "print"
    }
    fn create_writer(&self, ctx: &SubtaskContext) -> Result<Box<dyn SinkWriter<T>>, BoxError> {
        let prefix = if ctx.parallelism > 1 {
            format!("{}> ", ctx.subtask + 1)
        } else {
            String::new()
        };
        Ok(Box::new(PrintWriter {
            prefix,
            format: self.format.clone(),
            buf: String::new(),
        }))
    }
}

struct PrintWriter<T> {
    prefix: String,
    format: Format<T>,
    buf: String,
}

impl<T: Send> SinkWriter<T> for PrintWriter<T> {
    fn write(&mut self, item: T) -> Result<(), BoxError> {
        self.buf.push_str(&self.prefix);
        (self.format)(&item, &mut self.buf);
        self.buf.push('\n');
        if self.buf.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BoxError> {
        if !self.buf.is_empty() {
            // One locked write per batch keeps lines of parallel subtasks whole.
            let mut out = std::io::stdout().lock();
            out.write_all(self.buf.as_bytes())?;
            out.flush()?;
            self.buf.clear();
        }
        Ok(())
    }
}
