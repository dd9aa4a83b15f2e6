//! The claim loop and lease keeping shared by the Separator and Uploader actors.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use actix::prelude::*;

use crate::actors::scheduler::{Claim, Heartbeat, RegisterWorker, SchedulerHandle};
use crate::pipeline::process::Progress;
use crate::queue::{Claimed, LeaseState, QueueError};
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

/// Implements, for a worker actor with a `ctl: LoopControl` field, what every worker shares:
/// the supervisor hook, [`Drain`](crate::actors::messages::Drain) and
/// [`Restart`](crate::actors::messages::Restart).
#[macro_export]
#[doc(hidden)]
macro_rules! worker_actor_common {
    ($actor:ty) => {
        impl actix::Supervised for $actor {
            fn restarting(&mut self, _: &mut Self::Context) {
                // The loops were dropped with the old context; their tasks come back by
                // lease expiry.
                self.ctl
                    .active
                    .store(0, std::sync::atomic::Ordering::SeqCst);
            }
        }

        impl actix::Handler<$crate::actors::messages::Drain> for $actor {
            type Result = actix::ResponseFuture<()>;
            fn handle(
                &mut self,
                _: $crate::actors::messages::Drain,
                _: &mut actix::Context<Self>,
            ) -> Self::Result {
                self.ctl
                    .draining
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                let ctl = self.ctl.clone();
                Box::pin(async move { ctl.idle().await })
            }
        }

        impl actix::Handler<$crate::actors::messages::Restart> for $actor {
            type Result = ();
            fn handle(
                &mut self,
                _: $crate::actors::messages::Restart,
                ctx: &mut actix::Context<Self>,
            ) {
                actix::ActorContext::stop(ctx);
            }
        }
    };
}
