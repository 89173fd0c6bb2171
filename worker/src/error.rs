//! Errors of a running job. Every task error names the operator and subtask it came from.

use std::fmt;

use streamjob_crds::PlanError;

/// Error type user functions, sources and sinks may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Whether an error is the root cause or a consequence of another task failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A user function, source or sink failed.
    User,
    /// The job was cancelled because another task failed.
    Cancelled,
    /// A neighbouring task went away without finishing its stream.
    PeerGone,
    /// The data exchange with another worker failed (peer unreachable or gone, handshake
    /// refused).
    Network,
}

#[derive(Debug, Clone)]
pub struct TaskError {
    pub operator: String,
    pub subtask: u32,
    pub message: String,
    pub cause: Cause,
}

impl TaskError {
    pub fn user(operator: &str, subtask: u32, message: impl Into<String>) -> Self {
        TaskError {
            operator: operator.to_string(),
            subtask,
            message: message.into(),
            cause: Cause::User,
        }
    }

    pub(crate) fn secondary(
        operator: &str,
        subtask: u32,
        cause: Cause,
        message: impl Into<String>,
    ) -> Self {
        TaskError {
            operator: operator.to_string(),
            subtask,
            message: message.into(),
            cause,
        }
    }

    pub fn is_root_cause(&self) -> bool {
        matches!(self.cause, Cause::User | Cause::Network)
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "operator '{}' (subtask {}) failed: {}",
            self.operator, self.subtask, self.message
        )
    }
}

impl std::error::Error for TaskError {}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("invalid job: {0}")]
    Plan(#[from] PlanError),
    #[error("cannot start operator '{operator}': {message}")]
    Setup { operator: String, message: String },
    #[error("{0}")]
    Task(TaskError),
    /// A worker could not join the job's checkpoint coordinator (worker 0).
    #[error("checkpoint coordination: {0}")]
    Coordination(String),
}

impl JobError {
    /// Whether running the job again may succeed (a task or network failure), as opposed to
    /// a job that cannot start as defined.
    pub fn is_retryable(&self) -> bool {
        matches!(self, JobError::Task(_) | JobError::Coordination(_))
    }
}

/// Message of a caught panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_string()
    }
}
