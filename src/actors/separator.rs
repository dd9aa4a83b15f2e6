//! Separator is an actor that claims tasks from the separation stage and separates them.
//!
//! For each task it downloads the audio (async), then decodes, separates and writes the stems
//! on a dedicated thread (never on an async arbiter). While the work runs it renews the
//! Scheduler lease every third of `LEASE_SECONDS` and writes the progress to the task record;
//! when the client cancels (or the lease is lost) the thread stops at its next chunk. The
//! stems land in `STAGING_DIR/<task>/<token>/`, one directory per attempt, so a stale worker
//! never writes over its successor. A panic inside a separator fails the attempt with
//! `internal_error` (it is retried) and restarts the actor under its policy.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use actix::prelude::*;

use crate::actors::scheduler::{Ack, Fail, SchedulerHandle};
use crate::actors::worker::{self, Ended, LoopControl, LoopSpec};
use crate::pipeline::process::{self, Progress};
use crate::pipeline::{JobError, ProcessorConfig};
use crate::queue::{Claimed, Failure, Outcome, QueueError};
use crate::supervise::{self, RestartTracker, Verdict};
use crate::task::Stage;

pub use crate::actors::messages::{Drain, Restart};

/// The Separator actor.
pub struct SeparatorActor {
    scheduler: SchedulerHandle,
    cfg: Arc<ProcessorConfig>,
    client: reqwest::Client,
    worker: String,
    tracker: RestartTracker,
    ctl: LoopControl,
}

impl SeparatorActor {
    /// A separator claiming for `worker` (an id unique to this process).
    pub fn new(scheduler: SchedulerHandle, cfg: ProcessorConfig, worker: String) -> Self {
        let client = crate::audio::fetch::client(&cfg.fetch, None);
        Self {
            scheduler,
            cfg: Arc::new(cfg),
            client,
            worker,
            tracker: RestartTracker::new("separator", supervise::policy("separator")),
            ctl: LoopControl::default(),
        }
    }

    /// Starts it under a supervisor.
    pub fn start_supervised(self) -> Addr<Self> {
        actix::Supervisor::start(move |_| self)
    }
}

impl Actor for SeparatorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let delay = match self.tracker.on_start() {
            Verdict::ResumeAfter(d) => d,
            Verdict::GiveUp => return,
        };
        let env = Env {
            scheduler: self.scheduler.clone(),
            cfg: self.cfg.clone(),
            client: self.client.clone(),
        };
        let spec = LoopSpec {
            scheduler: self.scheduler.clone(),
            ctl: self.ctl.clone(),
            stage: Stage::Separate,
            worker: self.worker.clone(),
            concurrency: self.cfg.concurrency,
            delay,
            info: env.describe(),
        };
        worker::spawn_loops(ctx, spec, move |c| {
            let env = env.clone();
            async move { env.task(c).await }
        });
    }
}

crate::worker_actor_common!(SeparatorActor);

#[derive(Clone)]
struct Env {
    scheduler: SchedulerHandle,
    cfg: Arc<ProcessorConfig>,
    client: reqwest::Client,
}

impl Env {
    fn describe(&self) -> serde_json::Value {
        let device = self
            .cfg
            .engine
            .device_label()
            .map(|(kind, name)| serde_json::json!({"kind": kind, "name": name}));
        serde_json::json!({
            "role": "processor",
            "version": env!("CARGO_PKG_VERSION"),
            "device": device,
            "default_model": self.cfg.default_model,
            "concurrency": self.cfg.concurrency,
        })
    }

    async fn task(&self, claimed: Claimed) -> Ended {
        let id = claimed.id().clone();
        let started = Instant::now();
        tracing::info!(task = %id, attempt = claimed.record.attempts, "separating");
        let attempt_dir =
            process::task_dir(&self.cfg.staging_dir, &id).join(claimed.token.to_string());
        let progress = Arc::new(Progress::default());
        let work = {
            let cfg = self.cfg.clone();
            let client = self.client.clone();
            let record = claimed.record.clone();
            let progress = progress.clone();
            let dir = attempt_dir.clone();
            async move {
                let (source, _bytes) = process::download(&cfg, &client, &record, &dir).await?;
                progress.percent.store(5, Ordering::Relaxed);
                let (tx, rx) = tokio::sync::oneshot::channel();
                std::thread::Builder::new()
                    .name(format!("separate-{}", record.id))
                    .spawn(move || {
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            process::separate(&cfg, &record, &source, progress)
                        }));
                        let _ = tx.send(r);
                    })
                    .map_err(|e| JobError::internal(format!("cannot start a thread: {e}")))?;
                match rx.await {
                    Ok(Ok(r)) => r.map(Some),
                    Ok(Err(_panic)) => Ok(None),
                    Err(_) => Err(JobError::internal("separation thread vanished")),
                }
            }
        };
        let (outcome, lost) =
            worker::with_lease(&self.scheduler, &claimed, self.cfg.lease, &progress, work).await;
        if lost {
            let _ = tokio::fs::remove_dir_all(&attempt_dir).await;
            return Ended::Done;
        }
        let mut ended = Ended::Done;
        let report = match outcome {
            Ok(Some(mut result)) => {
                result["timings"]["processing_seconds"] =
                    serde_json::json!((started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0);
                let r = self
                    .scheduler
                    .ask(Ack {
                        claimed: claimed.clone(),
                        result: Some(result),
                        failed: false,
                    })
                    .await;
                if let Ok(o) = &r {
                    crate::metrics::outcome("separate", *o);
                    if *o == Outcome::Cancelled {
                        let _ = tokio::fs::remove_dir_all(&attempt_dir).await;
                    }
                }
                r.map(|_| ())
            }
            Ok(None) => {
                ended = Ended::Panicked;
                tracing::error!(task = %id, "the separator panicked");
                self.fail(&claimed, JobError::internal("the separator panicked"))
                    .await
            }
            Err(e) => {
                tracing::info!(task = %id, code = e.code, error = %e.message, "attempt failed");
                self.fail(&claimed, e).await
            }
        };
        if let Err(e) = report {
            // The lease will expire and the task come back: nothing is lost.
            tracing::warn!(task = %id, error = %e, "could not report the outcome");
        }
        ended
    }

    async fn fail(&self, claimed: &Claimed, e: JobError) -> Result<(), QueueError> {
        let dir =
            process::task_dir(&self.cfg.staging_dir, claimed.id()).join(claimed.token.to_string());
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let o = self
            .scheduler
            .ask(Fail {
                claimed: claimed.clone(),
                failure: Failure {
                    code: e.code.to_string(),
                    message: e.message,
                    retryable: e.retryable,
                    delay: e.retry_after,
                },
            })
            .await?;
        crate::metrics::outcome("separate", o);
        Ok(())
    }
}
