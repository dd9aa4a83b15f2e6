//! The Redis priority queue: key names, atomic Lua moves and the operations the
//! Scheduler actor performs. Nothing outside `actors::scheduler` calls into this module.
//!
//! Guarantees (at-least-once, never lost):
//! - a task is always in exactly one of: a stage queue, that stage's in-flight set, its
//!   delayed set, its dead-letter set, or finished (record only) — every move between them
//!   is one Lua script;
//! - a claim hands out a fencing token; heartbeat, ack and fail must present it, so a
//!   worker whose lease expired cannot overwrite the work of the one that took over;
//! - expired leases are returned to the queue with their original score by the reaper.

mod keys;
mod pool;
mod scripts;
mod target;
mod wake;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use redis::AsyncCommands;
use serde::Serialize;

use crate::config::{Config, QueueConfig};
use crate::task::{Priority, RecordError, Stage, Status, TaskId, TaskRecord, TaskRequest};

pub use keys::Keys;
use scripts::Scripts;
use wake::Wakers;

pub use pool::Pool;
use pool::{Conn, Manager};
use target::Target;

/// Commands replayed on the master after a demoted one answered `READONLY`.
pub const REDIS_READONLY_REPLAYS: &str = "uvr_redis_readonly_replays_total";
/// New tasks that fewer than `REDIS_WAIT_REPLICAS` replicas confirmed in time.
pub const REDIS_REPLICATION_SHORTFALLS: &str = "uvr_redis_replication_shortfalls_total";

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

/// The queue operations. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    pool: Pool,
    keys: Keys,
    cfg: Arc<QueueConfig>,
    op_timeout: Duration,
    /// Replicas that must confirm a new task (`WAIT`), and for how long to wait.
    wait: Option<(u32, Duration)>,
    scripts: Arc<Scripts>,
    wakers: Wakers,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("keys", &self.keys).finish()
    }
}

/// How many head ids a claim reads; this many concurrent claimers succeed per read.
const CLAIM_CANDIDATES: isize = 8;

impl Queue {
    /// Builds the pool (lazily connected: start-up does not wait for Redis) and starts the
    /// wake-up listener. Must be called inside a Tokio runtime.
    pub fn connect(cfg: &Config) -> Result<Self, QueueError> {
        let connect_timeout = cfg.redis.op_timeout.min(Duration::from_secs(2));
        let manager = Manager::new(
            Target::new(&cfg.redis)?,
            cfg.redis.op_timeout,
            connect_timeout,
        );
        let pool = bb8::Pool::builder()
            .max_size(cfg.redis.pool_size)
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(connect_timeout)
            .retry_connection(false)
            .build_unchecked(manager.clone());
        let keys = Keys::new(&cfg.queue);
        let wakers = Wakers::start(
            manager,
            [keys.wake(Stage::Separate), keys.wake(Stage::Deliver)],
        );
        Ok(Self {
            pool,
            keys,
            cfg: Arc::new(cfg.queue.clone()),
            op_timeout: cfg.redis.op_timeout,
            wait: (cfg.redis.wait_replicas > 0)
                .then_some((cfg.redis.wait_replicas, cfg.redis.wait_timeout)),
            scripts: Arc::new(Scripts::load()),
            wakers,
        })
    }

    /// The key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The queue policy.
    pub fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    async fn timed<T, F>(&self, fut: F) -> Result<T, QueueError>
    where
        F: std::future::Future<Output = Result<T, QueueError>>,
    {
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(QueueError::Timeout(self.op_timeout)),
        }
    }

    /// A connection to use for one operation: a clone of a pooled multiplexed connection
    /// (the pool slot is released at once; clones pipeline over the shared socket).
    async fn conn(&self) -> Result<Conn, QueueError> {
        for _ in 0..4 {
            let pooled = self.pool.get().await?;
            if !pooled.is_broken() {
                return Ok(pooled.clone());
            }
            // Dropping a broken connection makes bb8 discard it; try the next one.
        }
        Err(QueueError::Unavailable(
            "redis connections keep failing".into(),
        ))
    }

    /// Adds a task to the separation stage with the seed's score.
    pub async fn enqueue(&self, task: NewTask) -> Result<Enqueued, QueueError> {
        let id = TaskId::generate();
        let record = self.keys.record(&id);
        let idem_key = task
            .idempotency_key
            .as_deref()
            .map(|k| self.keys.idempotency(k))
            .unwrap_or_else(|| record.clone());
        let idem_ttl = if task.idempotency_key.is_some() {
            self.cfg.idempotency_ttl.as_millis().max(1) as u64
        } else {
            0
        };
        let request = serde_json::to_string(&task.request).expect("request serialises");
        let reply: Vec<String> = self
            .timed(async {
                let mut conn = self.conn().await?;
                let reply = self
                    .scripts
                    .enqueue
                    .key(self.keys.queue(Stage::Separate))
                    .key(&record)
                    .key(self.keys.clock())
                    .key(&idem_key)
                    .key(self.keys.waiting(Stage::Separate))
                    .arg(id.as_str())
                    .arg(task.request.priority.get())
                    .arg(&request)
                    .arg(self.cfg.max_attempts)
                    .arg(idem_ttl)
                    .arg(task.max_depth)
                    .arg(self.keys.wake(Stage::Separate))
                    .invoke_async::<Vec<String>>(&mut conn)
                    .await?;
                if let (Some((replicas, timeout)), Some("created" | "existing")) =
                    (self.wait, reply.first().map(String::as_str))
                {
                    confirm_replicated(&mut conn, replicas, timeout).await?;
                }
                Ok(reply)
            })
            .await?;
        match reply.first().map(String::as_str) {
            Some("created") => Ok(Enqueued {
                id,
                created: true,
                score: reply.get(2).and_then(|s| s.parse().ok()).unwrap_or(0.0),
            }),
            Some("existing") => Ok(Enqueued {
                id: reply[1].parse().map_err(|_| protocol("enqueue", &reply))?,
                created: false,
                score: 0.0,
            }),
            Some("full") => Err(QueueError::Full {
                depth: reply.get(1).and_then(|d| d.parse().ok()).unwrap_or(0),
            }),
            _ => Err(protocol("enqueue", &reply)),
        }
    }

    /// Claims the most urgent task of `stage` for `worker`, if there is one.
    pub async fn claim(&self, stage: Stage, worker: &str) -> Result<Option<Claimed>, QueueError> {
        self.claim_or_register(stage, worker, Duration::ZERO).await
    }

    /// Claims like [`claim`](Self::claim); when the queue is empty and `wait` is not zero, the
    /// worker is registered as an idle claimer for `wait` so that the next enqueue wakes it.
    async fn claim_or_register(
        &self,
        stage: Stage,
        worker: &str,
        wait: Duration,
    ) -> Result<Option<Claimed>, QueueError> {
        let wait_ms = wait.as_millis() as u64;
        self.timed(async {
            let mut conn = self.conn().await?;
            loop {
                let head: Vec<String> = conn
                    .zrange(self.keys.queue(stage), 0, CLAIM_CANDIDATES - 1)
                    .await?;
                if head.is_empty() && wait_ms == 0 {
                    return Ok(None);
                }
                let mut inv = self.scripts.claim.prepare_invoke();
                inv.key(self.keys.queue(stage))
                    .key(self.keys.inflight(stage))
                    .key(self.keys.seq())
                    .key(self.keys.workers())
                    .key(self.keys.waiting(stage));
                for id in &head {
                    let id: TaskId = match id.parse() {
                        Ok(id) => id,
                        // A foreign member (not one of our ids): leave it to the operator.
                        Err(_) => continue,
                    };
                    inv.key(self.keys.record(&id));
                }
                inv.arg(worker)
                    .arg(self.cfg.lease.as_millis() as u64)
                    .arg(stage.running_status().as_str())
                    .arg(wait_ms);
                for id in &head {
                    if id.parse::<TaskId>().is_ok() {
                        inv.arg(id);
                    }
                }
                let reply: Vec<String> = inv.invoke_async(&mut conn).await?;
                match reply.first().map(String::as_str) {
                    None => return Ok(None),
                    Some("retry") | Some("orphan") => continue,
                    Some("claimed") if reply.len() >= 3 => {
                        let token = reply[2].parse().map_err(|_| protocol("claim", &reply))?;
                        let fields = pairs(&reply[3..]);
                        let record = TaskRecord::from_fields(fields)?;
                        return Ok(Some(Claimed {
                            stage,
                            token,
                            record,
                        }));
                    }
                    _ => {
                        // The head is not one of our ids (a foreign member): claiming would
                        // spin forever, so report nothing to do.
                        if head.iter().all(|id| id.parse::<TaskId>().is_err()) {
                            return Ok(None);
                        }
                        return Err(protocol("claim", &reply));
                    }
                }
            }
        })
        .await
    }

    /// Claims the most urgent task of `stage`, waiting up to `wait` for one to arrive.
    /// Idle waiting costs nothing: the wait ends when an enqueue publishes on the stage's
    /// wake channel (or after `CLAIM_POLL_SECONDS` at the latest, in case a wake was missed).
    pub async fn claim_wait(
        &self,
        stage: Stage,
        worker: &str,
        wait: Duration,
    ) -> Result<Option<Claimed>, QueueError> {
        let deadline = Instant::now() + wait;
        let notify = self.wakers.get(stage);
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let nap = deadline
                .saturating_duration_since(now)
                .min(self.cfg.claim_poll);
            // Registered for a little longer than the nap, so that no enqueue in between
            // goes unannounced.
            let register = if nap.is_zero() {
                Duration::ZERO
            } else {
                nap + Duration::from_millis(500)
            };
            if let Some(c) = self.claim_or_register(stage, worker, register).await? {
                return Ok(Some(c));
            }
            if nap.is_zero() {
                return Ok(None);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }

    /// Renews the lease of a claimed task and records its progress (0-100).
    pub async fn heartbeat(
        &self,
        claimed: &Claimed,
        progress: Option<u8>,
    ) -> Result<LeaseState, QueueError> {
        let id = claimed.id();
        let worker = claimed.record.worker.clone().unwrap_or_default();
        let reply: i64 = self
            .timed(async {
                let mut conn = self.conn().await?;
                Ok(self
                    .scripts
                    .heartbeat
                    .key(self.keys.inflight(claimed.stage))
                    .key(self.keys.record(id))
                    .key(self.keys.workers())
                    .arg(id.as_str())
                    .arg(claimed.token)
                    .arg(self.cfg.lease.as_millis() as u64)
                    .arg(worker)
                    .arg(progress.map(|p| p.min(100).to_string()).unwrap_or_default())
                    .invoke_async(&mut conn)
                    .await?)
            })
            .await?;
        match reply {
            -1 => Err(QueueError::StaleLease(id.clone())),
            1 => Ok(LeaseState::CancelRequested),
            _ => Ok(LeaseState::Held),
        }
    }

    /// Finishes the current stage of a claimed task: a separated task moves to the deliver
    /// stage; a delivered one ends as `succeeded`. `result` (JSON) is stored on the record.
    pub async fn ack(
        &self,
        claimed: &Claimed,
        result: Option<&serde_json::Value>,
    ) -> Result<Outcome, QueueError> {
        let final_stage = claimed.stage == Stage::Deliver;
        self.ack_inner(claimed, result, final_stage, Status::Succeeded)
            .await
    }

    /// Ends a claimed task in the deliver stage as `failed` (used when the failure
    /// notification of a task that failed separation has been delivered).
    pub async fn ack_failed(
        &self,
        claimed: &Claimed,
        result: Option<&serde_json::Value>,
    ) -> Result<Outcome, QueueError> {
        self.ack_inner(claimed, result, true, Status::Failed).await
    }

    async fn ack_inner(
        &self,
        claimed: &Claimed,
        result: Option<&serde_json::Value>,
        final_stage: bool,
        final_status: Status,
    ) -> Result<Outcome, QueueError> {
        let id = claimed.id();
        let record = self.keys.record(id);
        let (next, next_waiting) = if final_stage {
            (record.clone(), record.clone())
        } else {
            (
                self.keys.queue(Stage::Deliver),
                self.keys.waiting(Stage::Deliver),
            )
        };
        let reply: String = self
            .timed(async {
                let mut conn = self.conn().await?;
                Ok(self
                    .scripts
                    .ack
                    .key(self.keys.inflight(claimed.stage))
                    .key(&record)
                    .key(next)
                    .key(self.keys.clock())
                    .key(next_waiting)
                    .arg(id.as_str())
                    .arg(claimed.token)
                    .arg(if final_stage { "final" } else { "next" })
                    .arg(result.map(|r| r.to_string()).unwrap_or_default())
                    .arg(self.cfg.retention.as_millis() as u64)
                    .arg(self.keys.wake(Stage::Deliver))
                    .arg(final_status.as_str())
                    .arg(self.cfg.deliver_max_attempts)
                    .invoke_async(&mut conn)
                    .await?)
            })
            .await?;
        match reply.as_str() {
            "ok" if final_stage => Ok(Outcome::Finished),
            "ok" => Ok(Outcome::Advanced),
            "cancelled" => Ok(Outcome::Cancelled),
            "stale" => Err(QueueError::StaleLease(id.clone())),
            _ => Err(protocol("ack", &[reply])),
        }
    }

    /// The retry delay before attempt `attempts + 1`: `RETRY_BASE * 2^(attempts-1)`, capped at
    /// `RETRY_MAX`, with full jitter over its upper half.
    pub fn backoff(&self, attempts: u32) -> Duration {
        backoff(self.cfg.retry_base, self.cfg.retry_max, attempts)
    }

    /// Reports a failed attempt: the task is retried after a backoff while attempts remain
    /// and the error is retryable, else it is dead-lettered and marked `failed`. A task that
    /// fails separation for good also goes to the deliver stage, where an uploader sends the
    /// failure webhook (the record keeps `status: failed` and `notify: pending`).
    pub async fn fail(&self, claimed: &Claimed, failure: &Failure) -> Result<Outcome, QueueError> {
        let id = claimed.id();
        let delay = failure
            .delay
            .unwrap_or_else(|| self.backoff(claimed.record.attempts));
        let notify = claimed.stage == Stage::Separate;
        let record = self.keys.record(id);
        let (next, next_waiting, channel) = if notify {
            (
                self.keys.queue(Stage::Deliver),
                self.keys.waiting(Stage::Deliver),
                self.keys.wake(Stage::Deliver),
            )
        } else {
            (record.clone(), record.clone(), String::new())
        };
        let reply: String = self
            .timed(async {
                let mut conn = self.conn().await?;
                Ok(self
                    .scripts
                    .fail
                    .key(self.keys.inflight(claimed.stage))
                    .key(self.keys.delayed(claimed.stage))
                    .key(self.keys.dead(claimed.stage))
                    .key(&record)
                    .key(next)
                    .key(self.keys.clock())
                    .key(next_waiting)
                    .arg(id.as_str())
                    .arg(claimed.token)
                    .arg(&failure.code)
                    .arg(&failure.message)
                    .arg(if failure.retryable { "1" } else { "0" })
                    .arg(delay.as_millis() as u64)
                    .arg(self.cfg.retention.as_millis() as u64)
                    .arg(claimed.stage.waiting_status().as_str())
                    .arg(channel)
                    .arg(self.cfg.deliver_max_attempts)
                    .invoke_async(&mut conn)
                    .await?)
            })
            .await?;
        match reply.as_str() {
            "retry" => Ok(Outcome::Retrying),
            "dead" => Ok(Outcome::DeadLettered),
            "cancelled" => Ok(Outcome::Cancelled),
            "stale" => Err(QueueError::StaleLease(id.clone())),
            _ => Err(protocol("fail", &[reply])),
        }
    }

    /// Cancels a task: at once while it waits, by flag while a worker holds it.
    pub async fn cancel(&self, id: &TaskId) -> Result<CancelOutcome, QueueError> {
        let reply: Vec<String> = self
            .timed(async {
                let mut conn = self.conn().await?;
                let mut inv = self.scripts.cancel.prepare_invoke();
                for stage in Stage::ALL {
                    inv.key(self.keys.queue(stage))
                        .key(self.keys.inflight(stage))
                        .key(self.keys.delayed(stage));
                }
                inv.key(self.keys.record(id))
                    .arg(id.as_str())
                    .arg(self.cfg.retention.as_millis() as u64);
                Ok(inv.invoke_async(&mut conn).await?)
            })
            .await?;
        match reply.first().map(String::as_str) {
            Some("cancelled") => Ok(CancelOutcome::Cancelled),
            Some("flagged") => Ok(CancelOutcome::Requested),
            Some("missing") => Err(QueueError::NotFound(id.clone())),
            Some("final") => Err(QueueError::AlreadyFinished {
                id: id.clone(),
                status: reply
                    .get(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| protocol("cancel", &reply))?,
            }),
            _ => Err(protocol("cancel", &reply)),
        }
    }

    /// Reads a task record and, while it waits, its 0-based position in its stage queue.
    pub async fn get(&self, id: &TaskId) -> Result<(TaskRecord, Option<u64>), QueueError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let fields: HashMap<String, String> = conn.hgetall(self.keys.record(id)).await?;
            if fields.is_empty() {
                return Err(QueueError::NotFound(id.clone()));
            }
            let record = TaskRecord::from_fields(fields)?;
            let position = if matches!(record.status, Status::Queued | Status::Separated) {
                let rank: Option<u64> = conn
                    .zrank(self.keys.queue(record.stage), id.as_str())
                    .await?;
                rank
            } else {
                None
            };
            Ok((record, position))
        })
        .await
    }

    /// Appends an entry to a JSON-list field of a task record (for example the webhook
    /// delivery log), keeping the last `keep` entries.
    pub async fn append_log(
        &self,
        id: &TaskId,
        field: &str,
        entry: serde_json::Value,
        keep: usize,
    ) -> Result<(), QueueError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let key = self.keys.record(id);
            let current: Option<String> = conn.hget(&key, field).await?;
            let mut list: Vec<serde_json::Value> = current
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_default();
            list.push(entry);
            if list.len() > keep {
                let drop = list.len() - keep;
                list.drain(..drop);
            }
            let exists: bool = conn.exists(&key).await?;
            if exists {
                let _: () = conn
                    .hset(&key, field, serde_json::Value::Array(list).to_string())
                    .await?;
            }
            Ok(())
        })
        .await
    }

    /// Queue statistics of both stages.
    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let now_s = redis_time(&mut conn).await?;
            let mut out = Vec::new();
            for stage in Stage::ALL {
                out.push(self.stage_stats(&mut conn, stage, now_s).await?);
            }
            let deliver = out.pop().expect("two stages");
            let separate = out.pop().expect("two stages");
            Ok(QueueStats { separate, deliver })
        })
        .await
    }

    async fn stage_stats(
        &self,
        conn: &mut Conn,
        stage: Stage,
        now_s: f64,
    ) -> Result<StageStats, QueueError> {
        let queue = self.keys.queue(stage);
        let mut pipe = redis::pipe();
        pipe.zcard(&queue)
            .zcard(self.keys.inflight(stage))
            .zcard(self.keys.delayed(stage))
            .zcard(self.keys.dead(stage));
        for p in Priority::all() {
            let (lo, hi) = priority_band(p, now_s);
            pipe.zcount(&queue, format!("{lo}"), format!("({hi}"));
            pipe.cmd("ZRANGE")
                .arg(&queue)
                .arg(format!("{lo}"))
                .arg(format!("({hi}"))
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(1)
                .arg("WITHSCORES");
        }
        let (waiting, in_flight, delayed, dead): (u64, u64, u64, u64);
        let rest: Vec<redis::Value>;
        {
            let mut all: Vec<redis::Value> = pipe.query_async(&mut *conn).await?;
            let tail = all.split_off(4);
            let nums: Vec<u64> = all
                .into_iter()
                .map(|v| redis::from_redis_value(v).unwrap_or(0))
                .collect();
            (waiting, in_flight, delayed, dead) = (nums[0], nums[1], nums[2], nums[3]);
            rest = tail;
        }
        let mut by_priority = std::collections::BTreeMap::new();
        let mut oldest: f64 = 0.0;
        for (p, chunk) in Priority::all().zip(rest.chunks(2)) {
            let count: u64 = redis::from_redis_value(chunk[0].clone()).unwrap_or(0);
            by_priority.insert(p.to_string(), count);
            let first: Vec<(String, f64)> =
                redis::from_redis_value(chunk[1].clone()).unwrap_or_default();
            if let Some((_, score)) = first.first() {
                let enqueued_at = score / f64::from(p.multiplier());
                oldest = oldest.max(now_s - enqueued_at);
            }
        }
        Ok(StageStats {
            queue,
            waiting,
            waiting_by_priority: by_priority,
            in_flight,
            delayed,
            dead,
            oldest_wait_seconds: (oldest.max(0.0) * 1000.0).round() / 1000.0,
        })
    }

    /// One maintenance pass over both stages: returns expired leases to their queue,
    /// promotes due retries, trims dead letters and forgotten workers past the retention.
    pub async fn maintain(&self) -> Result<Maintenance, QueueError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let now_ms = (redis_time(&mut conn).await? * 1000.0) as u64;
            let mut m = Maintenance::default();
            for stage in Stage::ALL {
                let expired: Vec<String> = conn
                    .zrangebyscore_limit(self.keys.inflight(stage), "-inf", now_ms, 0, 100)
                    .await?;
                for id in expired {
                    let Ok(tid) = id.parse::<TaskId>() else {
                        let _: () = conn.zrem(self.keys.inflight(stage), &id).await?;
                        continue;
                    };
                    let reply: String = self
                        .scripts
                        .reap
                        .key(self.keys.inflight(stage))
                        .key(self.keys.queue(stage))
                        .key(self.keys.dead(stage))
                        .key(self.keys.record(&tid))
                        .arg(&id)
                        .arg(stage.waiting_status().as_str())
                        .arg(self.cfg.retention.as_millis() as u64)
                        .arg(self.keys.wake(stage))
                        .invoke_async(&mut conn)
                        .await?;
                    match reply.as_str() {
                        "requeued" => m.requeued += 1,
                        "dead" => m.dead_lettered += 1,
                        _ => {}
                    }
                }
                let due: Vec<String> = conn
                    .zrangebyscore_limit(self.keys.delayed(stage), "-inf", now_ms, 0, 100)
                    .await?;
                for id in due {
                    let Ok(tid) = id.parse::<TaskId>() else {
                        let _: () = conn.zrem(self.keys.delayed(stage), &id).await?;
                        continue;
                    };
                    let moved: i64 = self
                        .scripts
                        .promote
                        .key(self.keys.delayed(stage))
                        .key(self.keys.queue(stage))
                        .key(self.keys.record(&tid))
                        .arg(&id)
                        .arg(self.keys.wake(stage))
                        .invoke_async(&mut conn)
                        .await?;
                    m.promoted += moved as u64;
                }
                let horizon = now_ms.saturating_sub(self.cfg.retention.as_millis() as u64);
                let _: () = conn
                    .zrembyscore(self.keys.dead(stage), "-inf", horizon)
                    .await?;
            }
            let _: () = conn
                .zrembyscore(
                    self.keys.workers(),
                    "-inf",
                    now_ms.saturating_sub(3_600_000),
                )
                .await?;
            Ok(m)
        })
        .await
    }

    /// Records what a worker is (role, device, models) and marks it seen now.
    pub async fn register_worker(
        &self,
        worker: &str,
        info: &serde_json::Value,
    ) -> Result<(), QueueError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let now_ms = (redis_time(&mut conn).await? * 1000.0) as u64;
            let mut pipe = redis::pipe();
            pipe.hset(self.keys.workers_info(), worker, info.to_string())
                .ignore()
                .zadd(self.keys.workers(), worker, now_ms)
                .ignore();
            let _: () = pipe.query_async(&mut conn).await?;
            Ok(())
        })
        .await
    }

    /// Workers seen within `window`: id, seconds since last seen, and what they reported.
    pub async fn live_workers(&self, window: Duration) -> Result<Vec<WorkerInfo>, QueueError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let now_ms = redis_time(&mut conn).await? * 1000.0;
            let since = now_ms - window.as_millis() as f64;
            let seen: Vec<(String, f64)> = conn
                .zrangebyscore_withscores(self.keys.workers(), since, "+inf")
                .await?;
            if seen.is_empty() {
                return Ok(Vec::new());
            }
            // One round trip for every worker's self-description.
            let ids: Vec<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
            let infos: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(self.keys.workers_info())
                .arg(&ids)
                .query_async(&mut conn)
                .await?;
            let out = seen
                .into_iter()
                .zip(infos)
                .map(|((id, t), info)| WorkerInfo {
                    info: info.and_then(|s| serde_json::from_str(&s).ok()),
                    last_seen_seconds: (((now_ms - t) / 1000.0).max(0.0) * 10.0).round() / 10.0,
                    id,
                })
                .collect();
            Ok(out)
        })
        .await
    }

    /// Pings Redis and reads its version, persistence mode and memory.
    pub async fn info(&self) -> Result<RedisInfo, QueueError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let start = Instant::now();
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
            let info: String = redis::cmd("INFO")
                .arg("server")
                .arg("persistence")
                .arg("memory")
                .query_async(&mut conn)
                .await?;
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
                    .map(|v| v.trim().to_string())
            };
            let aof = field("aof_enabled").as_deref() == Some("1");
            let rdb = field("rdb_last_save_time").is_some()
                && field("rdb_changes_since_last_save").is_some()
                && {
                    let saves: String = redis::cmd("CONFIG")
                        .arg("GET")
                        .arg("save")
                        .query_async::<Vec<String>>(&mut conn)
                        .await
                        .map(|v| v.get(1).cloned().unwrap_or_default())
                        .unwrap_or_default();
                    !saves.trim().is_empty()
                };
            let persistence = match (aof, rdb) {
                (true, true) => "aof+rdb",
                (true, false) => "aof",
                (false, true) => "rdb",
                (false, false) => "none",
            };
            Ok(RedisInfo {
                latency_ms: (latency_ms * 1000.0).round() / 1000.0,
                version: field("redis_version").unwrap_or_default(),
                persistence: persistence.into(),
                used_memory_bytes: field("used_memory")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            })
        })
        .await
    }

    /// A cheap liveness probe: PING with the operation timeout.
    pub async fn ping(&self) -> Result<Duration, QueueError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let start = Instant::now();
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            Ok(start.elapsed())
        })
        .await
    }
}

/// Redis server time in seconds.
/// `WAIT`s until `replicas` replicas hold this connection's writes. A shortfall is an
/// error: the task exists on the master, but a failover now could lose it, so the caller
/// must not be told it is safe (a retry with the same idempotency key finds it).
async fn confirm_replicated(
    conn: &mut Conn,
    replicas: u32,
    timeout: Duration,
) -> Result<(), QueueError> {
    let acked: u32 = redis::cmd("WAIT")
        .arg(replicas)
        .arg(timeout.as_millis().max(1) as u64)
        .query_async(conn)
        .await?;
    if acked < replicas {
        // Often the sign of a failover under way: this server may no longer be the master
        // the sentinels name, so the next operation should ask them again.
        conn.mark_broken();
        metrics::counter!(REDIS_REPLICATION_SHORTFALLS).increment(1);
        return Err(QueueError::Unavailable(format!(
            "new task confirmed by {acked} of {replicas} replicas within {timeout:?}"
        )));
    }
    Ok(())
}

async fn redis_time(conn: &mut Conn) -> Result<f64, QueueError> {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(&mut *conn).await?;
    Ok(s as f64 + us as f64 / 1e6)
}

/// The score band of one priority: tasks of priority `p` enqueued at `t` have score
/// `t * (6 - p)`; with `t` close to `now` the bands `[(m - 0.5) now, (m + 0.5) now)` for
/// `m = 6 - p` separate the priorities as long as no task has waited for more than a twelfth
/// of the Unix epoch (years).
pub fn priority_band(p: Priority, now_s: f64) -> (f64, f64) {
    let m = f64::from(p.multiplier());
    ((m - 0.5) * now_s, (m + 0.5) * now_s)
}

/// Exponential backoff with jitter: `base * 2^(attempts-1)` capped at `max`, then a random
/// point in its upper half (so retries of many tasks spread out but never come early).
pub fn backoff(base: Duration, max: Duration, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let full = base.saturating_mul(1u32 << exp).min(max);
    let half = full / 2;
    let jitter = if half.is_zero() {
        Duration::ZERO
    } else {
        Duration::from_micros(rand::rng().random_range(0..=half.as_micros() as u64))
    };
    half + jitter
}

fn pairs(flat: &[String]) -> HashMap<String, String> {
    flat.chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

fn protocol(script: &'static str, reply: &[String]) -> QueueError {
    QueueError::Protocol {
        script,
        reply: format!("{reply:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(60);
        for attempt in 1..10 {
            let d = backoff(base, max, attempt);
            let full = (base * (1 << (attempt - 1))).min(max);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn priority_bands_do_not_overlap() {
        let now = 1.8e9;
        let mut bands: Vec<_> = Priority::all().map(|p| priority_band(p, now)).collect();
        bands.sort_by(|a, b| a.0.total_cmp(&b.0));
        for w in bands.windows(2) {
            assert!(w[0].1 <= w[1].0);
        }
        // A task enqueued a day ago still falls in its band.
        let p = Priority::new(2).unwrap();
        let score = (now - 86400.0) * f64::from(p.multiplier());
        let (lo, hi) = priority_band(p, now);
        assert!(score >= lo && score < hi);
    }
}
