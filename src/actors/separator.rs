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

use crate::actors::scheduler::{Ack, Fail, SchedulerHandle};
use crate::actors::worker::{self, Ended, Job, WorkerActor};
use crate::pipeline::process::{self, Progress};
use crate::pipeline::{JobError, ProcessorConfig};
use crate::queue::{Claimed, Failure, Outcome, QueueError};
use crate::task::Stage;

pub use crate::actors::messages::{Drain, Restart};

/// The Separator actor.
pub type SeparatorActor = WorkerActor<Separation>;

impl SeparatorActor {
    /// A separator claiming for `worker` (an id unique to this process).
    pub fn new(scheduler: SchedulerHandle, cfg: ProcessorConfig, worker: String) -> Self {
        Self::with_job(Separation::new(scheduler, cfg), worker)
    }
}

impl Separation {
    /// The separation job on `scheduler`'s queue, to run in a [`SeparatorActor`] or a task
    /// at a time ([`worker::step`]).
    pub fn new(scheduler: SchedulerHandle, cfg: ProcessorConfig) -> Self {
        let client = crate::audio::fetch::client(&cfg.fetch, None);
        Self {
            scheduler,
            cfg: Arc::new(cfg),
            client,
        }
    }
}

/// The Separator's job: download, separate, write the stems, report.
#[derive(Clone)]
pub struct Separation {
    scheduler: SchedulerHandle,
    cfg: Arc<ProcessorConfig>,
    client: reqwest::Client,
}

impl Job for Separation {
    const ACTOR: &'static str = "separator";
    const STAGE: Stage = Stage::Separate;

    fn scheduler(&self) -> &SchedulerHandle {
        &self.scheduler
    }

    fn concurrency(&self) -> usize {
        self.cfg.concurrency
    }

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

    async fn run(&self, claimed: Claimed) -> Ended {
        self.task(claimed).await
    }
}

impl Separation {
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
                result.timings.processing_seconds =
                    Some(crate::task::result::round3(started.elapsed().as_secs_f64()));
                let ack = Ack {
                    claimed: claimed.clone(),
                    result: Some(result),
                    failed: false,
                };
                let r = worker::report(&self.scheduler, "separate", ack).await;
                if matches!(r, Ok(Outcome::Cancelled)) {
                    let _ = tokio::fs::remove_dir_all(&attempt_dir).await;
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
        let fail = Fail {
            claimed: claimed.clone(),
            failure: Failure {
                code: e.code.to_string(),
                message: e.message,
                retryable: e.retryable,
                delay: e.retry_after,
            },
        };
        worker::report(&self.scheduler, "separate", fail)
            .await
            .map(|_| ())
    }
}
