//! The worker actor the Separator and the Uploader are made of: [`WorkerActor`] runs a
//! [`Job`] (separation or delivery) in claim loops, under its restart budget, with lease
//! keeping ([`with_lease`]), draining and outcome reporting ([`report`]) shared.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use actix::prelude::*;

use crate::actors::messages::{Drain, Restart};
use crate::actors::scheduler::{Claim, Heartbeat, RegisterWorker, Scheduler, SchedulerHandle};
use crate::pipeline::process::Progress;
use crate::queue::{Claimed, LeaseState, Outcome, QueueError};
use crate::supervise::{self, RestartTracker, Verdict};
use crate::task::Stage;

/// How one task ended, for the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Carry on with the next task.
    Done,
    /// The work panicked: stop the loop so the actor restarts under its policy.
    Panicked,
}

/// Shared switches of a worker actor.
#[derive(Debug, Clone, Default)]
pub struct LoopControl {
    /// Set to stop claiming new tasks.
    pub draining: Arc<AtomicBool>,
    /// Tasks in hand.
    pub active: Arc<AtomicUsize>,
}

impl LoopControl {
    /// Waits until no task is in hand.
    pub async fn idle(&self) {
        while self.active.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What a worker actor's loops need to run.
#[derive(Debug, Clone)]
pub struct LoopSpec {
    /// The Scheduler.
    pub scheduler: SchedulerHandle,
    /// Draining flag and tasks in hand.
    pub ctl: LoopControl,
    /// The stage claimed from.
    pub stage: Stage,
    /// Worker id prefix; each loop appends `-<slot>`.
    pub worker: String,
    /// Loops to run.
    pub concurrency: usize,
    /// Delay before claiming (the restart backoff).
    pub delay: Duration,
    /// The self-description registered for each loop's worker id.
    pub info: serde_json::Value,
}

/// Spawns `spec.concurrency` claim loops in the actor's context: each registers its worker,
/// then hands claimed tasks to `handle`; a panicked task stops the actor so that its
/// supervisor restarts it.
pub fn spawn_loops<A, H, Fut>(ctx: &mut Context<A>, spec: LoopSpec, handle: H)
where
    A: Actor<Context = Context<A>>,
    H: Fn(Claimed) -> Fut + Clone + 'static,
    Fut: Future<Output = Ended> + 'static,
{
    for slot in 0..spec.concurrency {
        let spec = spec.clone();
        let handle = handle.clone();
        let worker = format!("{}-{slot}", spec.worker);
        let fut = async move {
            tokio::time::sleep(spec.delay).await;
            let reg = RegisterWorker {
                worker: worker.clone(),
                info: spec.info.clone(),
            };
            if let Err(e) = spec.scheduler.ask(reg).await {
                tracing::debug!(error = %e, "could not register the worker yet");
            }
            claim_loop(&spec.scheduler, &spec.ctl, spec.stage, worker, handle).await
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, A>(fut).map(|ended, _act, ctx: &mut Context<A>| {
                if ended == Ended::Panicked {
                    ctx.stop();
                }
            }),
        );
    }
}

/// Claims tasks of `stage` as `worker` and hands each to `handle`, until draining.
pub async fn claim_loop<F, Fut>(
    scheduler: &SchedulerHandle,
    ctl: &LoopControl,
    stage: Stage,
    worker: String,
    mut handle: F,
) -> Ended
where
    F: FnMut(Claimed) -> Fut,
    Fut: Future<Output = Ended>,
{
    let mut backoff = Duration::from_millis(100);
    while !ctl.draining.load(Ordering::SeqCst) {
        let claimed = scheduler
            .ask(Claim {
                stage,
                worker: worker.clone(),
                wait: Duration::from_secs(2),
            })
            .await;
        match claimed {
            Ok(Some(c)) => {
                backoff = Duration::from_millis(100);
                ctl.active.fetch_add(1, Ordering::SeqCst);
                let ended = handle(c).await;
                ctl.active.fetch_sub(1, Ordering::SeqCst);
                if ended == Ended::Panicked {
                    return ended;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, ?stage, "claim failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    Ended::Done
}

/// One step of a worker: claims the next task of `job`'s stage as `worker`, without waiting,
/// and works on it until its outcome is reported. `None`: no task was waiting. Tests drive a
/// worker this way, a task at a time, instead of running its loops and waiting for them.
pub async fn step<J: Job>(job: &J, worker: &str) -> Result<Option<Ended>, QueueError> {
    let claim = Claim {
        stage: J::STAGE,
        worker: worker.to_string(),
        wait: Duration::ZERO,
    };
    match job.scheduler().ask(claim).await? {
        Some(claimed) => Ok(Some(job.run(claimed).await)),
        None => Ok(None),
    }
}

/// Runs `work` while renewing the lease every third of `lease` and recording progress.
/// A cancel request sets `progress.stop`; a lost lease sets it too and makes the second
/// value `true` (the caller must then abandon the attempt without reporting).
pub async fn with_lease<F: Future>(
    scheduler: &SchedulerHandle,
    claimed: &Claimed,
    lease: Duration,
    progress: &Progress,
    work: F,
) -> (F::Output, bool) {
    tokio::pin!(work);
    let mut tick = tokio::time::interval((lease / 3).max(Duration::from_millis(10)));
    tick.tick().await;
    let mut lost = false;
    loop {
        tokio::select! {
            r = &mut work => return (r, lost),
            _ = tick.tick() => {
                let p = progress.percent.load(Ordering::Relaxed);
                let hb = Heartbeat { claimed: claimed.clone(), progress: Some(p) };
                match scheduler.ask(hb).await {
                    Ok(LeaseState::Held) => {}
                    Ok(LeaseState::CancelRequested) => {
                        tracing::info!(task = %claimed.id(), "cancel requested; stopping");
                        progress.stop.store(true, Ordering::Relaxed);
                    }
                    Err(QueueError::StaleLease(_)) => {
                        tracing::warn!(task = %claimed.id(), "lease lost; abandoning the attempt");
                        progress.stop.store(true, Ordering::Relaxed);
                        lost = true;
                    }
                    Err(e) => tracing::warn!(task = %claimed.id(), error = %e, "heartbeat failed"),
                }
            }
        }
    }
}

/// What a worker actor does with the tasks of its stage: the Separator's separation and the
/// Uploader's delivery. [`WorkerActor`] supplies the rest (restart budget, claim loops,
/// draining, restarts on request).
pub trait Job: Clone + Unpin + 'static {
    /// The actor's name in restart policies, metrics and logs.
    const ACTOR: &'static str;
    /// The stage it claims from.
    const STAGE: Stage;

    /// The Scheduler it claims from.
    fn scheduler(&self) -> &SchedulerHandle;

    /// Claim loops to run.
    fn concurrency(&self) -> usize;

    /// The self-description registered for each loop's worker id.
    fn describe(&self) -> serde_json::Value;

    /// Works on one claimed task and reports its outcome to the Scheduler.
    fn run(&self, claimed: Claimed) -> impl Future<Output = Ended>;
}

/// A worker actor: `concurrency` claim loops handing the tasks of `J`'s stage to `J`, under
/// actix's `Supervisor` and the restart policy of `J::ACTOR`.
pub struct WorkerActor<J: Job> {
    job: J,
    worker: String,
    tracker: RestartTracker,
    ctl: LoopControl,
}

impl<J: Job> WorkerActor<J> {
    /// A worker doing `job`, claiming as `worker` (an id unique to this process; each loop
    /// appends `-<slot>`).
    pub fn with_job(job: J, worker: String) -> Self {
        Self {
            job,
            worker,
            tracker: RestartTracker::new(J::ACTOR, supervise::policy(J::ACTOR)),
            ctl: LoopControl::default(),
        }
    }

    /// Starts it under a supervisor.
    pub fn start_supervised(self) -> Addr<Self> {
        actix::Supervisor::start(move |_| self)
    }
}

impl<J: Job> Actor for WorkerActor<J> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let delay = match self.tracker.on_start() {
            Verdict::ResumeAfter(d) => d,
            Verdict::GiveUp => return,
        };
        let spec = LoopSpec {
            scheduler: self.job.scheduler().clone(),
            ctl: self.ctl.clone(),
            stage: J::STAGE,
            worker: self.worker.clone(),
            concurrency: self.job.concurrency(),
            delay,
            info: self.job.describe(),
        };
        let job = self.job.clone();
        spawn_loops(ctx, spec, move |c| {
            let job = job.clone();
            async move { job.run(c).await }
        });
    }
}

impl<J: Job> Supervised for WorkerActor<J> {
    fn restarting(&mut self, _: &mut Self::Context) {
        // The loops were dropped with the old context; their tasks come back by lease expiry.
        self.ctl.active.store(0, Ordering::SeqCst);
    }
}

impl<J: Job> Handler<Drain> for WorkerActor<J> {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> Self::Result {
        self.ctl.draining.store(true, Ordering::SeqCst);
        let ctl = self.ctl.clone();
        Box::pin(async move { ctl.idle().await })
    }
}

impl<J: Job> Handler<Restart> for WorkerActor<J> {
    type Result = ();

    fn handle(&mut self, _: Restart, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Reports a worker's outcome message (`Ack` or `Fail`) to the Scheduler, counting the
/// outcome for `stage`; the outcome, or why it could not be reported (the lease then runs
/// out and the task comes back: nothing is lost).
pub async fn report<M>(
    scheduler: &SchedulerHandle,
    stage: &'static str,
    msg: M,
) -> Result<Outcome, QueueError>
where
    M: Message<Result = Result<Outcome, QueueError>> + Send + 'static,
    Scheduler: Handler<M>,
{
    let r = scheduler.ask(msg).await;
    if let Ok(o) = r {
        crate::metrics::outcome(stage, o);
    }
    r
}
