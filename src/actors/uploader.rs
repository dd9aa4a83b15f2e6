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

use serde_json::{Value, json};

use crate::actors::scheduler::{Ack, AppendLog, Fail, SaveResult, SchedulerHandle};
use crate::actors::worker::{self, Ended, Job, WorkerActor};
use crate::pipeline::process::{Progress, task_dir};
use crate::pipeline::storage::Storage;
use crate::pipeline::{JobError, UploaderConfig, webhook};
use crate::queue::{Claimed, Failure, Outcome};
use crate::task::{Stage, Status};

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
        let client = crate::audio::fetch::client(&cfg.fetch, Some(cfg.webhook.timeout));
        let job = Delivery {
            scheduler,
            cfg: Arc::new(cfg),
            storage,
            client,
        };
        Self::with_job(job, worker)
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
    Finish(Value),
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
                    result: Some(result),
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
        let mut result = rec.result.clone().unwrap_or_else(|| json!({}));
        let mut links = serde_json::Map::new();
        if !failed {
            let stems = result["stems"].as_object().cloned().unwrap_or_default();
            for (stem, info) in stems {
                let key = match (info["file"].as_str(), info["key"].as_str()) {
                    (Some(file), _) => {
                        let local = self.cfg.staging_dir.join(file);
                        let ext = local.extension().and_then(|e| e.to_str()).unwrap_or("wav");
                        let key = format!("{}/{stem}.{ext}", rec.id);
                        if let Err(e) = self.storage.put_file(&key, &local).await {
                            let exhausted = rec.attempts >= rec.max_attempts;
                            let err = JobError::new("upload_failed", e.to_string(), !exhausted);
                            return Next::Retry(err);
                        }
                        key
                    }
                    // Stored by an earlier attempt (its links are on the task): sign anew.
                    (None, Some(key)) => key.to_string(),
                    (None, None) => continue,
                };
                match self.storage.link(&key).await {
                    Ok(link) => {
                        links.insert(
                            stem,
                            json!({"url": link.url, "expires_at": link.expires_at,
                                   "bytes": info["bytes"], "sha256": info["sha256"],
                                   "key": key}),
                        );
                    }
                    Err(e) => {
                        return Next::Retry(JobError::new("upload_failed", e.to_string(), true));
                    }
                }
            }
            result["stems"] = Value::Object(links.clone());
            result["timings"]["upload_seconds"] =
                json!((started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0);
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
            result["webhook"] = json!({"state": "none", "attempts": 0});
            return Next::Finish(result);
        };
        let payload = self.payload(claimed, &result, failed);
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
        crate::metrics::webhook_delivery(attempt.outcome);
        let log = AppendLog {
            id: rec.id.clone(),
            field: "webhook_log",
            entry: serde_json::to_value(&attempt).unwrap_or(Value::Null),
        };
        if let Err(e) = self.scheduler.ask(log).await {
            tracing::warn!(task = %rec.id, error = %e, "could not log the webhook attempt");
        }
        let webhook_state = match sent {
            Ok(()) => "delivered",
            Err(e) if e.retryable && rec.attempts < rec.max_attempts => return Next::Retry(e),
            Err(e) if e.code == "webhook_gone" => "gone",
            Err(_) if rec.attempts >= rec.max_attempts => "gave_up",
            Err(_) => "refused",
        };
        if webhook_state != "delivered" {
            tracing::warn!(task = %rec.id, state = webhook_state, "webhook not delivered; results stay on the task");
        }
        result["webhook"] = json!({"state": webhook_state, "attempts": rec.attempts});
        Next::Finish(result)
    }

    fn payload(&self, claimed: &Claimed, result: &Value, failed: bool) -> Value {
        let rec = &claimed.record;
        let queued = rec
            .extra
            .get("separated_at")
            .and_then(|s| s.parse::<u64>().ok())
            .map(|sep| sep.saturating_sub(rec.created_at_ms) as f64 / 1000.0);
        json!({
            "task_id": rec.id,
            "status": if failed { "failed" } else { "succeeded" },
            "priority": rec.request.priority,
            "model": result.get("model").cloned().unwrap_or_else(|| json!(rec.request.model)),
            "family": result.get("family").cloned().unwrap_or(Value::Null),
            "stems": if failed { json!({}) } else { result["stems"].clone() },
            "duration_seconds": result.get("duration_seconds").cloned().unwrap_or(Value::Null),
            "timings": {
                "time_to_separated_seconds": queued,
                "separation_seconds": result["timings"].get("separation_seconds").cloned().unwrap_or(Value::Null),
                "upload_seconds": result["timings"].get("upload_seconds").cloned().unwrap_or(Value::Null),
            },
            "error": if failed {
                json!({"code": rec.error_code, "message": rec.error_message})
            } else {
                Value::Null
            },
        })
    }
}
