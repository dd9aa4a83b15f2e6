//! The Redis priority queue: key names, atomic Lua moves and the operations the
//! Scheduler actor performs. The operations are called by the Scheduler alone; the API
//! and the workers use the value types ([`types`]), the errors ([`QueueError`]) and the
//! retry policy ([`backoff`]).
//!
//! - this file: the connection, and the moves (enqueue, claim, heartbeat, ack, fail,
//!   cancel); [`reads`]: records, logs, statistics, maintenance, workers, Redis health;
//!   `keys`, `scripts` (the Lua), `pool`, `target` (plain, Sentinel or Cluster), `wake`.
//!
//! Guarantees (at-least-once, never lost):
//! - a task is always in exactly one of: a stage queue, that stage's in-flight set, its
//!   delayed set, its dead-letter set, or finished (record only) — every move between them
//!   is one Lua script;
//! - a claim hands out a fencing token; heartbeat, ack and fail must present it, so a
//!   worker whose lease expired cannot overwrite the work of the one that took over;
//! - expired leases are returned to the queue with their original score by the reaper.

mod error;
mod keys;
mod pool;
pub mod reads;
mod scripts;
mod target;
pub mod types;
mod wake;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use redis::AsyncCommands;

use crate::config::{Config, QueueConfig};
use crate::task::result::StageResult;
use crate::task::{Priority, Stage, Status, TaskId, TaskRecord};

pub use error::QueueError;
pub use keys::Keys;
use scripts::Scripts;
pub use types::{
    CancelOutcome, Claimed, Enqueued, Failure, LeaseState, Maintenance, NewTask, Outcome,
    QueueStats, RedisInfo, StageStats, WorkerInfo,
};
use wake::Wakers;

pub use pool::Pool;
use pool::{Conn, Manager};
use target::Target;

/// The most tasks kept in a client's list (`GET /tasks`); older ones drop out of the list
/// (their records stay until their retention ends).
pub const OWNED_KEPT: u64 = 100_000;

/// Commands replayed on the master after a demoted one answered `READONLY`.
pub const REDIS_READONLY_REPLAYS: &str = "uvr_redis_readonly_replays_total";
/// New tasks that fewer than `REDIS_WAIT_REPLICAS` replicas confirmed in time.
pub const REDIS_REPLICATION_SHORTFALLS: &str = "uvr_redis_replication_shortfalls_total";

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
        // The canonical request (normalised by the Intake, serialised in field order) is
        // what an idempotency key is bound to.
        let fingerprint = {
            use sha2::Digest;
            hex::encode(&sha2::Sha256::digest(request.as_bytes())[..16])
        };
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
                    .key(self.keys.owned(task.request.owner.as_deref().unwrap_or("")))
                    .arg(id.as_str())
                    .arg(task.request.priority.get())
                    .arg(&request)
                    .arg(self.cfg.max_attempts)
                    .arg(idem_ttl)
                    .arg(task.max_depth)
                    .arg(self.keys.wake(Stage::Separate))
                    .arg(&fingerprint)
                    .arg(if task.request.owner.is_some() {
                        OWNED_KEPT
                    } else {
                        0
                    })
                    .invoke_async::<Vec<String>>(&mut conn)
                    .await?;
                if let (Some((replicas, timeout)), Some("created" | "existing" | "reused")) =
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
            Some("reused") => Err(QueueError::IdempotencyKeyReused(
                reply[1].parse().map_err(|_| protocol("enqueue", &reply))?,
            )),
            Some("full") => Err(QueueError::Full {
                depth: reply.get(1).and_then(|d| d.parse().ok()).unwrap_or(0),
            }),
            _ => Err(protocol("enqueue", &reply)),
        }
    }

    /// Claims the most urgent task of `stage` for `worker`, if there is one; when the queue is
    /// empty and `wait` is not zero, the worker is registered as an idle claimer for `wait` so
    /// that the next enqueue wakes it.
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
        result: Option<&StageResult>,
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
        result: Option<&StageResult>,
    ) -> Result<Outcome, QueueError> {
        self.ack_inner(claimed, result, true, Status::Failed).await
    }

    async fn ack_inner(
        &self,
        claimed: &Claimed,
        result: Option<&StageResult>,
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
                    .arg(result.map(to_json).unwrap_or_default())
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

    /// Puts a dead-lettered task back into the separation queue, from scratch (attempts,
    /// error and result cleared, the record no longer expiring). A failure notice not yet
    /// sent is dropped; while one is being sent the requeue is refused as busy.
    pub async fn requeue_dead(&self, id: &TaskId) -> Result<(), QueueError> {
        let reply: String = self
            .timed(async {
                let mut conn = self.conn().await?;
                Ok(self
                    .scripts
                    .requeue
                    .key(self.keys.dead(Stage::Separate))
                    .key(self.keys.dead(Stage::Deliver))
                    .key(self.keys.queue(Stage::Deliver))
                    .key(self.keys.delayed(Stage::Deliver))
                    .key(self.keys.inflight(Stage::Deliver))
                    .key(self.keys.record(id))
                    .key(self.keys.queue(Stage::Separate))
                    .key(self.keys.clock())
                    .key(self.keys.waiting(Stage::Separate))
                    .arg(id.as_str())
                    .arg(self.cfg.max_attempts)
                    .arg(self.keys.wake(Stage::Separate))
                    .invoke_async(&mut conn)
                    .await?)
            })
            .await?;
        match reply.as_str() {
            "requeued" => Ok(()),
            "missing" => Err(QueueError::NotFound(id.clone())),
            "not_dead" => Err(QueueError::NotDeadLettered(id.clone())),
            "busy" => Err(QueueError::Unavailable(
                "its failure notice is being sent; retry shortly".into(),
            )),
            _ => Err(protocol("requeue", &[reply])),
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
}

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

/// Redis server time in seconds.
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

/// A stage result as its record field stores it.
fn to_json(result: &StageResult) -> String {
    serde_json::to_string(result).expect("a stage result serialises")
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
