//! Scheduler is an actor that owns the Redis queue: it is the only code that sends queue
//! commands. Every other part asks it through the messages below and gets a typed
//! [`QueueError`] back when Redis cannot answer.
//!
//! It also runs the periodic maintenance pass (expired leases back to their queue, due
//! retries promoted) and a health monitor. When Redis goes away the monitor marks the
//! Scheduler unhealthy and probes with exponential backoff (100 ms up to 5 s) until Redis
//! answers again; requests meanwhile fail fast with `queue_unavailable` instead of hanging,
//! and nothing is dropped silently. The actor itself keeps no state that matters (all of it
//! is in Redis), so a supervisor restart loses at most the message being handled, whose
//! caller then sees `SchedulerUnavailable`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::prelude::*;
use std::sync::Mutex;

use crate::metrics;
use crate::queue::{
    CancelOutcome, Claimed, Enqueued, Failure, LeaseState, Maintenance, NewTask, Outcome, Queue,
    QueueError, QueueStats, RedisInfo, WorkerInfo,
};
use crate::supervise::{self, RestartTracker, Verdict};
use crate::task::result::StageResult;
use crate::task::{Stage, TaskId, TaskRecord};

/// Adds a new task to the separation stage.
#[derive(Debug, Message)]
#[rtype(result = "Result<Enqueued, QueueError>")]
pub struct Enqueue(pub NewTask);

/// Claims the most urgent task of a stage, waiting up to `wait` for one.
#[derive(Debug, Message)]
#[rtype(result = "Result<Option<Claimed>, QueueError>")]
pub struct Claim {
    /// The stage to claim from.
    pub stage: Stage,
    /// The claiming worker's id (shown in the record and in `check_redis_queue.sh`).
    pub worker: String,
    /// How long to wait for work; zero returns at once.
    pub wait: Duration,
}

/// Renews the lease of a claimed task and records its progress.
#[derive(Debug, Message)]
#[rtype(result = "Result<LeaseState, QueueError>")]
pub struct Heartbeat {
    /// The claim.
    pub claimed: Claimed,
    /// Progress 0-100 of the current stage, if known.
    pub progress: Option<u8>,
}

/// Finishes the current stage of a claimed task (separate -> deliver -> succeeded).
#[derive(Debug, Message)]
#[rtype(result = "Result<Outcome, QueueError>")]
pub struct Ack {
    /// The claim.
    pub claimed: Claimed,
    /// Output of the stage to store on the record (stem locations, links...).
    pub result: Option<StageResult>,
    /// End the task as `failed` instead of `succeeded` (deliver stage only: used once the
    /// failure notification of a task has been delivered).
    pub failed: bool,
}

/// Reports a failed attempt of a claimed task.
#[derive(Debug, Message)]
#[rtype(result = "Result<Outcome, QueueError>")]
pub struct Fail {
    /// The claim.
    pub claimed: Claimed,
    /// What went wrong.
    pub failure: Failure,
}

/// Cancels a task.
#[derive(Debug, Message)]
#[rtype(result = "Result<CancelOutcome, QueueError>")]
pub struct Cancel(pub TaskId);

/// Reads a task record and its position in the queue while it waits.
#[derive(Debug, Message)]
#[rtype(result = "Result<(TaskRecord, Option<u64>), QueueError>")]
pub struct GetTask(pub TaskId);

/// Lists the tasks a client submitted, newest first (see [`Queue::list_owned`]).
#[derive(Debug, Message)]
#[rtype(result = "Result<(Vec<TaskRecord>, Option<u64>), QueueError>")]
pub struct ListOwned {
    /// The client (a task's `owner`).
    pub owner: String,
    /// Only tasks with this status.
    pub status: Option<crate::task::Status>,
    /// Only tasks created before this time (ms): the cursor of a previous page.
    pub before: Option<u64>,
    /// The most tasks in the page.
    pub limit: usize,
}

/// Appends an entry to a JSON-list field of a task record (delivery log).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), QueueError>")]
pub struct AppendLog {
    /// The task.
    pub id: TaskId,
    /// The record field holding the list.
    pub field: &'static str,
    /// The entry.
    pub entry: serde_json::Value,
}

/// Requeues a dead-lettered task for separation.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), QueueError>")]
pub struct RequeueDead(pub TaskId);

/// Writes the result so far (stored stems and their links) onto a task record.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), QueueError>")]
pub struct SaveResult {
    /// The task.
    pub id: TaskId,
    /// The result.
    pub result: StageResult,
}

/// Reads queue statistics of both stages.
#[derive(Debug, Message)]
#[rtype(result = "Result<QueueStats, QueueError>")]
pub struct Stats;

/// Reads Redis facts (latency, version, persistence) for `/health`.
#[derive(Debug, Message)]
#[rtype(result = "Result<RedisInfo, QueueError>")]
pub struct Info;

/// Lists workers that sent a heartbeat within the window.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<WorkerInfo>, QueueError>")]
pub struct LiveWorkers(pub Duration);

/// Records what a worker is (role, device, models).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), QueueError>")]
pub struct RegisterWorker {
    /// The worker id.
    pub worker: String,
    /// Its self-description.
    pub info: serde_json::Value,
}

/// Runs one maintenance pass now (tests and operators; it also runs on a timer).
#[derive(Debug, Message)]
#[rtype(result = "Result<Maintenance, QueueError>")]
pub struct Maintain;

/// The Scheduler's view of Redis health, shared with the HTTP layer.
#[derive(Debug, Default)]
pub struct RedisHealth {
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl RedisHealth {
    /// Whether the last probe or operation reached Redis.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// The last connection error, if Redis is unhealthy.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    fn record<T>(&self, r: &Result<T, QueueError>) {
        match r {
            Ok(_) => {
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("redis reachable");
                }
                *lock(&self.last_error) = None;
            }
            Err(e) if e.is_unavailable() => {
                if self.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "redis unreachable; retrying with backoff");
                }
                *lock(&self.last_error) = Some(e.to_string());
            }
            Err(_) => {}
        }
    }
}

/// The Scheduler actor.
pub struct Scheduler {
    queue: Queue,
    health: Arc<RedisHealth>,
    maintaining: Arc<AtomicBool>,
    tracker: RestartTracker,
}

impl Scheduler {
    /// A Scheduler over `queue`, reporting Redis health into `health`.
    pub fn new(queue: Queue, health: Arc<RedisHealth>) -> Self {
        Self {
            queue,
            health,
            maintaining: Arc::new(AtomicBool::new(false)),
            tracker: RestartTracker::new("scheduler", supervise::policy("scheduler")),
        }
    }

    /// Starts a Scheduler under a supervisor on the current arbiter.
    pub fn start_supervised(queue: Queue, health: Arc<RedisHealth>) -> Addr<Self> {
        actix::Supervisor::start(move |_| Scheduler::new(queue, health))
    }

    fn run<T, F>(&self, fut: F) -> ResponseFuture<Result<T, QueueError>>
    where
        T: 'static,
        F: Future<Output = Result<T, QueueError>> + 'static,
    {
        let health = self.health.clone();
        Box::pin(async move {
            let r = fut.await;
            health.record(&r);
            r
        })
    }
}

/// Mailbox capacity: requests beyond it wait in `send().await` (backpressure) rather than
/// growing memory without bound.
pub const MAILBOX_CAPACITY: usize = 4096;

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        // Counts the start against the restart budget (the process exits when it is spent);
        // the Scheduler's state is in Redis, so it serves again at once.
        if self.tracker.on_start() == Verdict::GiveUp {
            ctx.stop();
            return;
        }
        // Health monitor: probe every second while healthy, back off while not.
        let queue = self.queue.clone();
        let health = self.health.clone();
        ctx.spawn(
            async move {
                let mut delay = Duration::from_millis(100);
                loop {
                    let r = queue.ping().await;
                    health.record(&r);
                    if r.is_ok() {
                        delay = Duration::from_millis(100);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    } else {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            .into_actor(self),
        );
        // Maintenance: reaper and delayed promotion, never two passes at once.
        let interval = self.queue.config().reaper_interval;
        ctx.run_interval(interval, |act, ctx| {
            if act.maintaining.swap(true, Ordering::AcqRel) || !act.health.is_healthy() {
                if !act.health.is_healthy() {
                    act.maintaining.store(false, Ordering::Release);
                }
                return;
            }
            let queue = act.queue.clone();
            let flag = act.maintaining.clone();
            ctx.spawn(
                async move {
                    match queue.maintain().await {
                        Ok(m) if m != Maintenance::default() => {
                            tracing::info!(
                                requeued = m.requeued,
                                dead_lettered = m.dead_lettered,
                                promoted = m.promoted,
                                "maintenance pass"
                            );
                            metrics::maintenance(&m);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "maintenance pass failed"),
                    }
                    flag.store(false, Ordering::Release);
                }
                .into_actor(act),
            );
        });
    }
}

impl Supervised for Scheduler {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.maintaining.store(false, Ordering::Release);
        tracing::warn!("scheduler restarting");
    }
}

impl Handler<Enqueue> for Scheduler {
    type Result = ResponseFuture<Result<Enqueued, QueueError>>;
    fn handle(&mut self, msg: Enqueue, _: &mut Context<Self>) -> Self::Result {
        let q = self.queue.clone();
        self.run(async move { q.enqueue(msg.0).await })
    }
}

impl Handler<Claim> for Scheduler {
    type Result = ResponseFuture<Result<Option<Claimed>, QueueError>>;
    fn handle(&mut self, msg: Claim, _: &mut Context<Self>) -> Self::Result {
        let q = self.queue.clone();
        self.run(async move {
            let claimed = q.claim_wait(msg.stage, &msg.worker, msg.wait).await?;
            if let Some(c) = &claimed {
                // The score is the stage-entry time times (6 - priority).
                let entered = c.record.score / f64::from(c.record.request.priority.multiplier());
                let started = c.record.started_at_ms.unwrap_or(0) as f64 / 1000.0;
                if entered > 0.0 && started > entered {
                    metrics::waited(c.stage.as_str(), started - entered);
                }
            }
            Ok(claimed)
        })
    }
}

impl Handler<Heartbeat> for Scheduler {
    type Result = ResponseFuture<Result<LeaseState, QueueError>>;
    fn handle(&mut self, msg: Heartbeat, _: &mut Context<Self>) -> Self::Result {
        let q = self.queue.clone();
        self.run(async move { q.heartbeat(&msg.claimed, msg.progress).await })
    }
}

impl Handler<Ack> for Scheduler {
    type Result = ResponseFuture<Result<Outcome, QueueError>>;
    fn handle(&mut self, msg: Ack, _: &mut Context<Self>) -> Self::Result {
        let q = self.queue.clone();
        self.run(async move {
            if msg.failed {
                q.ack_failed(&msg.claimed, msg.result.as_ref()).await
            } else {
                q.ack(&msg.claimed, msg.result.as_ref()).await
            }
        })
    }
}

impl Handler<Fail> for Scheduler {
    type Result = ResponseFuture<Result<Outcome, QueueError>>;
    fn handle(&mut self, msg: Fail, _: &mut Context<Self>) -> Self::Result {
        let q = self.queue.clone();
        self.run(async move { q.fail(&msg.claimed, &msg.failure).await })
    }
}

impl Handler<Cancel> for Scheduler {
    type Result = ResponseFuture<Result<CancelOutcome, QueueError>>;
    fn handle(&mut self, msg: Cancel, _: &mut Context<Self>) -> Self::Result {
        let q = self.queue.clone();
        self.run(async move { q.cancel(&msg.0).await })
    }
}

impl Handler<GetTask> for Scheduler {
    type Result = ResponseFuture<Result<(TaskRecord, Option<u64>), QueueError>>;
    fn handle(&mut self, msg: GetTask, _: &mut Context<Self>) -> Self::Result {
        let q = self.queue.clone();
        self.run(async move { q.get(&msg.0).await })
    }
}

impl Handler<ListOwned> for Scheduler {
    type Result = ResponseFuture<Result<(Vec<TaskRecord>, Option<u64>), QueueError>>;
    fn handle(&mut self, msg: ListOwned, _: &mut Context<Self>) -> Self::Result {
        let q = self.queue.clone();
        self.run(async move {
            q.list_owned(&msg.owner, msg.status, msg.before, msg.limit)
                .await
        })
    }
}

impl Handler<AppendLog> for Scheduler {
    type Result = ResponseFuture<Result<(), QueueError>>;
    fn handle(&mut self, msg: AppendLog, _: &mut Context<Self>) -> Self::Result {
        let q = self.queue.clone();
        self.run(async move { q.append_log(&msg.id, msg.field, msg.entry, 50).await })
    }
}

impl Handler<RequeueDead> for Scheduler {
    type Result = ResponseFuture<Result<(), QueueError>>;
    fn handle(&mut self, msg: RequeueDead, _: &mut Context<Self>) -> Self::Result {
        let q = self.queue.clone();
        self.run(async move { q.requeue_dead(&msg.0).await })
    }
}

impl Handler<SaveResult> for Scheduler {
    type Result = ResponseFuture<Result<(), QueueError>>;
    fn handle(&mut self, msg: SaveResult, _: &mut Context<Self>) -> Self::Result {
        let q = self.queue.clone();
        self.run(async move { q.save_result(&msg.id, &msg.result).await })
    }
}

impl Handler<Stats> for Scheduler {
    type Result = ResponseFuture<Result<QueueStats, QueueError>>;
    fn handle(&mut self, _: Stats, _: &mut Context<Self>) -> Self::Result {
        let q = self.queue.clone();
        self.run(async move {
            let stats = q.stats().await?;
            metrics::queue_stats(&stats);
            Ok(stats)
        })
    }
}

impl Handler<Info> for Scheduler {
    type Result = ResponseFuture<Result<RedisInfo, QueueError>>;
    fn handle(&mut self, _: Info, _: &mut Context<Self>) -> Self::Result {
        let q = self.queue.clone();
        self.run(async move { q.info().await })
    }
}

impl Handler<RegisterWorker> for Scheduler {
    type Result = ResponseFuture<Result<(), QueueError>>;
    fn handle(&mut self, msg: RegisterWorker, _: &mut Context<Self>) -> Self::Result {
        let q = self.queue.clone();
        self.run(async move { q.register_worker(&msg.worker, &msg.info).await })
    }
}

impl Handler<LiveWorkers> for Scheduler {
    type Result = ResponseFuture<Result<Vec<WorkerInfo>, QueueError>>;
    fn handle(&mut self, msg: LiveWorkers, _: &mut Context<Self>) -> Self::Result {
        let q = self.queue.clone();
        self.run(async move { q.live_workers(msg.0).await })
    }
}

impl Handler<Maintain> for Scheduler {
    type Result = ResponseFuture<Result<Maintenance, QueueError>>;
    fn handle(&mut self, _: Maintain, _: &mut Context<Self>) -> Self::Result {
        let q = self.queue.clone();
        self.run(async move { q.maintain().await })
    }
}

/// A cloneable handle that sends to the Scheduler and maps mailbox errors to
/// [`QueueError::SchedulerUnavailable`].
#[derive(Clone)]
pub struct SchedulerHandle {
    addr: Addr<Scheduler>,
    health: Arc<RedisHealth>,
}

impl std::fmt::Debug for SchedulerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerHandle").finish_non_exhaustive()
    }
}

impl SchedulerHandle {
    /// Starts a supervised Scheduler over `queue` on the current arbiter.
    pub fn start(queue: Queue) -> Self {
        let health = Arc::new(RedisHealth::default());
        let addr = Scheduler::start_supervised(queue, health.clone());
        Self { addr, health }
    }

    /// The shared Redis health view.
    pub fn health(&self) -> &Arc<RedisHealth> {
        &self.health
    }

    /// Sends a message and waits for its answer (backpressure: waits while the mailbox is full).
    pub async fn ask<M, T>(&self, msg: M) -> Result<T, QueueError>
    where
        M: Message<Result = Result<T, QueueError>> + Send + 'static,
        T: Send + 'static,
        Scheduler: Handler<M>,
    {
        match self.addr.send(msg).await {
            Ok(r) => r,
            Err(e) => Err(QueueError::SchedulerUnavailable(e.to_string())),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
