//! Uploader is an actor that claims tasks from the deliver stage (`uvr_results`), stores
//! their stems, signs the links and calls the webhook.
//!
//! - Separated tasks: every staged stem is stored (idempotently: a retry skips what is
//!   there), a signed link is made for each, then the signed webhook is sent. Delivered, or
//!   refused for good (410 Gone, a redirect), or out of `WEBHOOK_MAX_ATTEMPTS`: the task ends
//!   `succeeded` with its links on the record (reachable through `GET /tasks/{id}` whatever
//!   happened to the webhook) and the staging directory is removed. A webhook that fails
//!   otherwise is retried with exponential backoff and jitter (capped at
//!   `WEBHOOK_RETRY_MAX_SECONDS`, at least the receiver's `Retry-After`).
//! - Tasks that failed separation: the failure webhook is sent the same way, and the task
//!   stays `failed`.
//!
//! Every attempt is appended to the record's delivery log (`webhook_deliveries`).

use std::sync::Arc;
use std::time::Instant;

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::actors::scheduler::{Ack, AppendLog, Fail, SaveResult, SchedulerHandle};
use crate::actors::worker::{self, Ended, Job, WorkerActor};
use crate::pipeline::process::{Progress, task_dir};
use crate::pipeline::storage::Storage;
use crate::pipeline::webhook::{self, Payload};
use crate::pipeline::{JobError, UploaderConfig};
use crate::queue::{Claimed, Failure, Outcome};
use crate::task::result::{StageResult, Stem, WebhookOutcome, WebhookState, round3};
use crate::task::{Stage, Status, field};

pub use crate::actors::messages::{Drain, Restart};

/// The Uploader actor.
pub type UploaderActor = WorkerActor<Delivery>;

impl UploaderActor {
    /// An uploader claiming as `worker`.
    pub fn new(
        scheduler: SchedulerHandle,
        cfg: UploaderConfig,
        storage: Storage,
        worker: String,
    ) -> Self {
        Self::with_job(Delivery::new(scheduler, cfg, storage), worker)
    }
}

impl Delivery {
    /// The delivery job on `scheduler`'s queue, to run in an [`UploaderActor`] or a task at
    /// a time ([`worker::step`]).
    pub fn new(scheduler: SchedulerHandle, cfg: UploaderConfig, storage: Storage) -> Self {
        let client = crate::audio::fetch::client(&cfg.fetch, Some(cfg.webhook.timeout));
        Self {
            scheduler,
            cfg: Arc::new(cfg),
            storage,
            client,
        }
    }
}

/// The Uploader's job: store the stems, sign their links, call the webhook, report.
#[derive(Clone)]
pub struct Delivery {
    scheduler: SchedulerHandle,
    cfg: Arc<UploaderConfig>,
    storage: Storage,
    client: reqwest::Client,
}

impl Job for Delivery {
    const ACTOR: &'static str = "uploader";
    const STAGE: Stage = Stage::Deliver;

    fn scheduler(&self) -> &SchedulerHandle {
        &self.scheduler
    }

    fn concurrency(&self) -> usize {
        self.cfg.concurrency
    }

    fn describe(&self) -> Value {
        json!({
            "role": "uploader",
            "version": env!("CARGO_PKG_VERSION"),
            "storage": self.storage.kind(),
        })
    }

    async fn run(&self, claimed: Claimed) -> Ended {
        self.deliver(claimed).await
    }
}

/// What a delivery attempt decided.
enum Next {
    /// End the task (succeeded, or failed for a failure notice) with this result.
    Finish(Box<StageResult>),
    /// Try again later.
    Retry(JobError),
}

impl Delivery {
    async fn deliver(&self, claimed: Claimed) -> Ended {
        let id = claimed.id().clone();
        let progress = Progress::default();
        let failed = claimed.record.status == Status::Failed;
        let (next, lost) = worker::with_lease(
            &self.scheduler,
            &claimed,
            self.cfg.lease,
            &progress,
            self.attempt(&claimed, failed),
        )
        .await;
        if lost {
            return Ended::Done;
        }
        let report = match next {
            Next::Finish(result) => {
                let ack = Ack {
                    claimed: claimed.clone(),
                    result: Some(*result),
                    failed,
                };
                let r = worker::report(&self.scheduler, "deliver", ack).await;
                if let Ok(o) = r {
                    if matches!(o, Outcome::Finished | Outcome::Cancelled) {
                        let _ =
                            tokio::fs::remove_dir_all(task_dir(&self.cfg.staging_dir, &id)).await;
                        // The task's upload ends with it.
                        let uploads =
                            crate::pipeline::uploads::Uploads::new(&self.cfg.staging_dir, 0);
                        if let Some(p) = uploads.resolve(&claimed.record.request.audio) {
                            let _ = tokio::fs::remove_file(p).await;
                        }
                    }
                }
                r.map(|_| ())
            }
            Next::Retry(e) => {
                let backoff = crate::queue::backoff(
                    self.cfg.retry_base,
                    self.cfg.webhook.retry_max,
                    claimed.record.attempts,
                );
                let delay = e.retry_after.map_or(backoff, |ra| ra.max(backoff));
                tracing::info!(task = %id, code = e.code, error = %e.message, ?delay, "delivery will be retried");
                let fail = Fail {
                    claimed: claimed.clone(),
                    failure: Failure {
                        code: e.code.to_string(),
                        message: e.message,
                        retryable: e.retryable,
                        delay: Some(delay),
                    },
                };
                worker::report(&self.scheduler, "deliver", fail)
                    .await
                    .map(|_| ())
            }
        };
        if let Err(e) = report {
            tracing::warn!(task = %id, error = %e, "could not report the delivery outcome");
        }
        Ended::Done
    }

    async fn attempt(&self, claimed: &Claimed, failed: bool) -> Next {
        let rec = &claimed.record;
        let started = Instant::now();
        let mut result = rec.result.clone().unwrap_or_default();
        if !failed {
            let mut links = BTreeMap::new();
            for (name, stem) in std::mem::take(&mut result.stems) {
                let key = match (&stem.file, &stem.key) {
                    (Some(file), _) => {
                        let local = self.cfg.staging_dir.join(file);
                        let ext = local.extension().and_then(|e| e.to_str()).unwrap_or("wav");
                        let key = format!("{}/{name}.{ext}", rec.id);
                        if let Err(e) = self.storage.put_file(&key, &local).await {
                            let exhausted = rec.attempts >= rec.max_attempts;
                            let err = JobError::new("upload_failed", e.to_string(), !exhausted);
                            return Next::Retry(err);
                        }
                        key
                    }
                    // Stored by an earlier attempt (its links are on the task): sign anew.
                    (None, Some(key)) => key.clone(),
                    (None, None) => continue,
                };
                match self.storage.link(&key).await {
                    Ok(link) => {
                        let stored = Stem {
                            file: None,
                            url: Some(link.url),
                            expires_at: Some(link.expires_at),
                            bytes: stem.bytes,
                            sha256: stem.sha256,
                            key: Some(key),
                        };
                        links.insert(name, stored);
                    }
                    Err(e) => {
                        return Next::Retry(JobError::new("upload_failed", e.to_string(), true));
                    }
                }
            }
            result.stems = links;
            result.timings.upload_seconds = Some(round3(started.elapsed().as_secs_f64()));
            // The links are the client's as soon as the stems are stored, webhook or not.
            let save = SaveResult {
                id: rec.id.clone(),
                result: result.clone(),
            };
            if let Err(e) = self.scheduler.ask(save).await {
                tracing::warn!(task = %rec.id, error = %e, "could not show the stored stems on the task yet");
            }
        }
        // No webhook: the client polls the task.
        let Some(hook_url) = rec.request.hook_url.as_deref() else {
            result.webhook = Some(WebhookOutcome {
                state: WebhookState::None,
                attempts: 0,
            });
            return Next::Finish(Box::new(result));
        };
        let payload = Payload::new(rec, &result, failed);
        let body = serde_json::to_vec(&payload).expect("payload serialises");
        let (attempt, sent) = webhook::send(
            &self.client,
            &self.cfg.fetch,
            &self.cfg.webhook,
            hook_url,
            rec.id.as_str(),
            &body,
        )
        .await;
        crate::metrics::webhook_delivery(attempt.outcome.as_str());
        let log = AppendLog {
            id: rec.id.clone(),
            field: field::WEBHOOK_LOG,
            entry: serde_json::to_value(&attempt).unwrap_or(Value::Null),
        };
        if let Err(e) = self.scheduler.ask(log).await {
            tracing::warn!(task = %rec.id, error = %e, "could not log the webhook attempt");
        }
        let state = match sent {
            Ok(()) => WebhookState::Delivered,
            Err(e) if e.retryable && rec.attempts < rec.max_attempts => return Next::Retry(e),
            Err(e) if e.code == "webhook_gone" => WebhookState::Gone,
            Err(_) if rec.attempts >= rec.max_attempts => WebhookState::GaveUp,
            Err(_) => WebhookState::Refused,
        };
        if state != WebhookState::Delivered {
            tracing::warn!(task = %rec.id, ?state, "webhook not delivered; results stay on the task");
        }
        result.webhook = Some(WebhookOutcome {
            state,
            attempts: rec.attempts,
        });
        Next::Finish(Box::new(result))
    }
}
