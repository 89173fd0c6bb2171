//! Lines of the text sources (file, socket) and the one policy for lines that are not
//! UTF-8: by default the job fails, naming where the line was read and its byte offset; a
//! source given an [`InvalidLineHandler`] hands such lines to it instead (the spec path
//! applies the job's `onError` there: fail, skip and count, or dead-letter the raw bytes).
//! No text source replaces or drops bytes by itself.

use std::sync::Arc;

use crate::error::BoxError;
use crate::runtime::context::SubtaskContext;

/// Makes a record from a line of text; lets a text source emit its final record type
/// directly instead of a `String` that is copied again.
pub type LineToRecord<T> = fn(&str) -> T;

/// A line that is not valid UTF-8.
#[derive(Debug)]
pub struct InvalidLine<'a> {
    /// Where it was read: a file's path, or `socket host:port`.
    pub origin: &'a str,
    /// Offset of the line's first byte: in the file, or since the connection was made.
    pub offset: u64,
    /// The line as read, without its line end.
    pub bytes: &'a [u8],
    pub error: std::str::Utf8Error,
}

impl InvalidLine<'_> {
    /// One line naming the origin, the offset and the first bad byte.
    pub fn describe(&self) -> String {
        format!(
            "{}: the line at byte offset {} is not valid UTF-8 (bad byte at offset {}; {} bytes)",
            self.origin,
            self.offset,
            self.offset + self.error.valid_up_to() as u64,
            self.bytes.len()
        )
    }
}

/// Takes a line that is not UTF-8: `Ok` means it was dealt with (counted, stored) and the
/// source goes on with the next line; an error fails the job.
pub type InvalidLineHandler = Box<dyn FnMut(&InvalidLine<'_>) -> Result<(), BoxError> + Send>;

/// Makes the handler of one source subtask.
pub type InvalidLineFactory =
    Arc<dyn Fn(&SubtaskContext) -> Result<InvalidLineHandler, BoxError> + Send + Sync>;

/// The default: the job fails, naming the line.
fn fail(line: &InvalidLine<'_>) -> Result<(), BoxError> {
    Err(line.describe().into())
}

/// The handler of a subtask: the source's own, or failing.
pub(crate) fn handler_for(
    factory: &Option<InvalidLineFactory>,
    ctx: &SubtaskContext,
) -> Result<InvalidLineHandler, BoxError> {
    match factory {
        Some(f) => f(ctx),
        None => Ok(Box::new(fail)),
    }
}

/// Strips the line end (`\n` or `\r\n`) of a line read with `read_until(b'\n')`.
pub(crate) fn trim_line_end(mut line: &[u8]) -> &[u8] {
    if let [rest @ .., b'\n'] = line {
        line = rest;
    }
    if let [rest @ .., b'\r'] = line {
        line = rest;
    }
    line
}

/// Decodes `bytes` (one line without its end) into a record, or hands it to `on_invalid`.
/// Returns the record, `None` for a line the handler took, or the handler's error.
#[inline]
pub(crate) fn decode<T>(
    bytes: &[u8],
    make: LineToRecord<T>,
    origin: &str,
    offset: u64,
    on_invalid: &mut InvalidLineHandler,
) -> Result<Option<T>, BoxError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(Some(make(text))),
        Err(error) => {
            on_invalid(&InvalidLine {
                origin,
                offset,
                bytes,
                error,
            })?;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_fails_naming_origin_and_offsets() {
        let mut fail: InvalidLineHandler = Box::new(fail);
        let err = decode(b"ab\xffc", str::to_owned, "in.txt", 100, &mut fail).unwrap_err();
        assert_eq!(
            err.to_string(),
            "in.txt: the line at byte offset 100 is not valid UTF-8 (bad byte at offset 102; 4 bytes)"
        );
    }

    #[test]
    fn a_handler_gets_the_raw_bytes_and_the_line_is_not_emitted() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut keep: InvalidLineHandler = Box::new(move |l| {
            s.lock().unwrap().push((l.bytes.to_vec(), l.offset));
            Ok(())
        });
        assert_eq!(
            decode(b"\xc3(", str::to_owned, "x", 7, &mut keep).unwrap(),
            None
        );
        assert_eq!(
            decode("é".as_bytes(), str::to_owned, "x", 9, &mut keep).unwrap(),
            Some("é".to_string())
        );
        assert_eq!(*seen.lock().unwrap(), vec![(b"\xc3(".to_vec(), 7)]);
    }
}
