//! What the queue operations take and return.

use std::time::Duration;

use serde::Serialize;

use crate::task::{Stage, TaskId, TaskRecord, TaskRequest};

/// A new task to enqueue.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// The request.
    pub request: TaskRequest,
    /// An idempotency key, already scoped to the submitter; the same key returns the same task.
    pub idempotency_key: Option<String>,
    /// Refuse the task when this many tasks wait already (0: no limit).
    pub max_depth: u64,
}

/// The result of an enqueue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Enqueued {
    /// The task id (an existing one when the idempotency key was seen before).
    pub id: TaskId,
    /// False when the idempotency key mapped to an existing task.
    pub created: bool,
    /// The score the task got (0 for an existing task).
    pub score: f64,
}

/// A claimed task: the lease holder's view.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The stage it was claimed from.
    pub stage: Stage,
    /// The fencing token to present on heartbeat, ack and fail.
    pub token: u64,
    /// The record at claim time.
    pub record: TaskRecord,
}

impl Claimed {
    /// The task id.
    pub fn id(&self) -> &TaskId {
        &self.record.id
    }
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// The lease is renewed; carry on.
    Held,
    /// The lease is renewed, but the client asked to cancel: stop and report.
    CancelRequested,
}

/// How an ack or fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Moved on to the next stage.
    Advanced,
    /// Finished (succeeded or failed for good).
    Finished,
    /// Scheduled for another attempt after a backoff.
    Retrying,
    /// Out of attempts or not retryable: in the dead-letter set.
    DeadLettered,
    /// A cancel had been requested: the task is now cancelled.
    Cancelled,
}

/// A failure to report for a claimed task.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Stable error code.
    pub code: String,
    /// Message for humans.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// The delay before the next attempt; `None`: the queue's backoff for the attempt.
    pub delay: Option<Duration>,
}

/// How a cancel request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// The task was waiting and is now cancelled.
    Cancelled,
    /// The task is being worked on; the worker will stop at its next heartbeat.
    Requested,
}

/// Queue statistics of one stage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageStats {
    /// The ZSet name.
    pub queue: String,
    /// Tasks waiting.
    pub waiting: u64,
    /// Tasks waiting, per priority ("5" ... "1").
    pub waiting_by_priority: std::collections::BTreeMap<String, u64>,
    /// Tasks claimed by a worker.
    pub in_flight: u64,
    /// Tasks waiting for a retry.
    pub delayed: u64,
    /// Dead letters kept.
    pub dead: u64,
    /// How long the oldest waiting task has waited, in seconds.
    pub oldest_wait_seconds: f64,
}

/// Statistics of both stages.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStats {
    /// The separation stage.
    pub separate: StageStats,
    /// The upload/webhook stage.
    pub deliver: StageStats,
}

/// Facts about the Redis server, for `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct RedisInfo {
    /// Round-trip time of a PING, in milliseconds.
    pub latency_ms: f64,
    /// `redis_version`.
    pub version: String,
    /// "aof", "rdb", "aof+rdb" or "none".
    pub persistence: String,
    /// `used_memory` in bytes.
    pub used_memory_bytes: u64,
}

/// A live worker.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerInfo {
    /// Its id (`host-pid-role-slot`).
    pub id: String,
    /// Seconds since its last claim or heartbeat.
    pub last_seen_seconds: f64,
    /// What it reported about itself.
    pub info: Option<serde_json::Value>,
}

/// What one maintenance pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Expired leases returned to their queue.
    pub requeued: u64,
    /// Expired leases dead-lettered (out of attempts).
    pub dead_lettered: u64,
    /// Delayed tasks promoted back to their queue.
    pub promoted: u64,
}
