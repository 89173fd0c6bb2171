//! The environment's shortcuts for the built-in sources. They live with the connectors
//! they create (the API layer below does not know them); the methods are the same
//! inherent methods of [`StreamExecutionEnvironment`] wherever they are defined.

use std::path::PathBuf;

use crate::Data;
use crate::api::datastream::DataStream;
use crate::api::environment::StreamExecutionEnvironment;
use crate::connectors::collection::CollectionSource;
use crate::connectors::file::FileSource;
use crate::connectors::socket::SocketSource;

impl StreamExecutionEnvironment {
    /// A bounded, non-parallel source emitting `items` in order.
    pub fn from_collection<T, I>(&self, items: I) -> DataStream<T>
    where
        T: Data + Sync,
        I: IntoIterator<Item = T>,
    {
        self.from_source(
            CollectionSource::new(items.into_iter().collect()),
            "collection",
        )
    }

    /// Lines from a TCP server (non-parallel). The stream ends when the server closes the
    /// connection; see [`Self::socket_text_stream_with_retry`] to reconnect instead.
    pub fn socket_text_stream(&self, host: &str, port: u16) -> DataStream<String> {
        self.socket_text_stream_with_retry(host, port, 0)
    }

    /// Lines from a TCP server. When the connection cannot be made or is lost, retries once a
    /// second for up to `max_retry` seconds (Flink's `maxRetry`): 0 ends the stream when the
    /// server closes the connection (and fails if it cannot connect at all), a negative value
    /// retries forever.
    pub fn socket_text_stream_with_retry(
        &self,
        host: &str,
        port: u16,
        max_retry: i64,
    ) -> DataStream<String> {
        self.from_source(
            SocketSource::new(host, port, max_retry),
            &format!("socket {host}:{port}"),
        )
    }

    /// Lines of a text file, or of every file in a directory (bounded). Files are spread over
    /// the source subtasks; with fewer files than subtasks, files are split at line
    /// boundaries so every subtask reads a share.
    pub fn read_text_file(&self, path: impl Into<PathBuf>) -> DataStream<String> {
        let path = path.into();
        let name = format!("file {}", path.display());
        self.from_source(FileSource::new(path), &name)
    }
}
