//! Errors of the queue layer, with their stable codes.

use std::time::Duration;

use super::pool;
use crate::task::{RecordError, Status, TaskId};

/// Errors of the queue layer.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis cannot be reached (connection refused, pool exhausted, connection dropped).
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// A Redis operation took longer than `REDIS_TIMEOUT`.
    #[error("redis operation timed out after {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error (a script error, a wrong type...).
    #[error("redis error: {0}")]
    Redis(#[source] redis::RedisError),
    /// The waiting queue holds `MAX_QUEUE_DEPTH` tasks already.
    #[error("queue is full ({depth} tasks waiting)")]
    Full {
        /// Tasks waiting when the enqueue was refused.
        depth: u64,
    },
    /// The task is not a dead letter (so there is nothing to requeue).
    #[error("task {0} is not dead-lettered")]
    NotDeadLettered(TaskId),
    /// The idempotency key was used before with a different request.
    #[error("idempotency key already used for task {0} with a different request")]
    IdempotencyKeyReused(TaskId),
    /// No record exists for the task (never existed, or expired after its retention).
    #[error("task {0} not found")]
    NotFound(TaskId),
    /// The caller's fencing token is no longer current: its lease expired and the task was
    /// handed to someone else, or it was finished already.
    #[error("lease of task {0} is no longer held by this worker")]
    StaleLease(TaskId),
    /// The task has already ended and cannot change any more.
    #[error("task {id} has already ended ({status})")]
    AlreadyFinished {
        /// The task.
        id: TaskId,
        /// Its final state.
        status: Status,
    },
    /// A task record could not be decoded.
    #[error("corrupt task record: {0}")]
    Corrupt(#[from] RecordError),
    /// A script answered something the code does not understand.
    #[error("unexpected reply from {script}: {reply}")]
    Protocol {
        /// Which script.
        script: &'static str,
        /// What it answered.
        reply: String,
    },
    /// The Scheduler actor is gone (its mailbox is closed or full).
    #[error("scheduler unavailable: {0}")]
    SchedulerUnavailable(String),
}

impl QueueError {
    /// The stable error code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            QueueError::Unavailable(_) | QueueError::Timeout(_) => "queue_unavailable",
            QueueError::Redis(_) | QueueError::Protocol { .. } => "queue_error",
            QueueError::Full { .. } => "queue_full",
            QueueError::NotFound(_) => "task_not_found",
            QueueError::IdempotencyKeyReused(_) => "idempotency_key_reused",
            QueueError::NotDeadLettered(_) => "not_dead_lettered",
            QueueError::StaleLease(_) => "stale_lease",
            QueueError::AlreadyFinished { .. } => "task_finished",
            QueueError::Corrupt(_) => "queue_error",
            QueueError::SchedulerUnavailable(_) => "queue_unavailable",
        }
    }

    /// Whether the error means Redis (or the path to it) is down, not that the request was bad.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            QueueError::Unavailable(_)
                | QueueError::Timeout(_)
                | QueueError::SchedulerUnavailable(_)
        )
    }
}

impl From<redis::RedisError> for QueueError {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.is_unrecoverable_error()
            || pool::is_read_only(&e)
        {
            QueueError::Unavailable(e.to_string())
        } else {
            QueueError::Redis(e)
        }
    }
}

impl From<bb8::RunError<redis::RedisError>> for QueueError {
    fn from(e: bb8::RunError<redis::RedisError>) -> Self {
        match e {
            bb8::RunError::User(e) => QueueError::Unavailable(e.to_string()),
            bb8::RunError::TimedOut => {
                QueueError::Unavailable("no redis connection available in time".into())
            }
        }
    }
}
