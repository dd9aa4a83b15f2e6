//! Intake is an actor that turns submissions into queued tasks. It is the one place request
//! policy lives: field validation and normalisation, the URL address policy, the per-credential
//! rate limit (token bucket) and backpressure (`MAX_QUEUE_DEPTH`), before it hands the task to
//! the Scheduler. Nothing is enqueued for a request it refuses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::Value;

use crate::actors::scheduler::{Enqueue, SchedulerHandle};
use crate::metrics;
use crate::models::{Catalog, OUTPUT_FORMATS};
use crate::net::{UrlError, UrlPolicy};
use crate::queue::{NewTask, QueueError};
use crate::task::{Priority, TaskId, TaskRequest};

/// Submits a job: the parsed JSON body of `POST /generate`.
#[derive(Debug, Message)]
#[rtype(result = "Result<Accepted, IntakeError>")]
pub struct Submit {
    /// The authenticated user (rate limits and idempotency keys are per user).
    pub user: String,
    /// The request body.
    pub body: Value,
    /// The `Idempotency-Key` header, if any.
    pub idempotency_key: Option<String>,
}

/// A submission that was queued (or found again by its idempotency key).
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The task id.
    pub id: TaskId,
    /// False when the idempotency key mapped to an existing task.
    pub created: bool,
    /// The normalised request.
    pub request: TaskRequest,
}

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// A field is missing or invalid (HTTP 422).
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// Stable code (`missing_field`, `invalid_type`, `out_of_range`, `invalid_url`,
        /// `unsupported_scheme`, `private_address`, `unknown_model`, `unknown_stem`,
        /// `unsupported_format`, `invalid_body`, `invalid_idempotency_key`).
        code: &'static str,
        /// What is wrong, for humans.
        message: String,
    },
    /// The user's token bucket is empty (HTTP 429).
    #[error("rate limit exceeded; retry in {retry_after:?}")]
    RateLimited {
        /// When a token will be available.
        retry_after: Duration,
    },
    /// The queue holds `MAX_QUEUE_DEPTH` waiting tasks (HTTP 503).
    #[error("queue is full ({depth} tasks waiting)")]
    QueueFull {
        /// Waiting tasks.
        depth: u64,
    },
    /// The queue could not be reached or failed (HTTP 503 / 500).
    #[error(transparent)]
    Queue(QueueError),
}

impl IntakeError {
    fn invalid(field: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        IntakeError::Invalid {
            field,
            code,
            message: message.into(),
        }
    }

    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            IntakeError::Invalid { code, .. } => code,
            IntakeError::RateLimited { .. } => "rate_limited",
            IntakeError::QueueFull { .. } => "queue_full",
            IntakeError::Queue(e) => e.code(),
        }
    }
}

/// Intake policy.
#[derive(Debug, Clone)]
pub struct IntakeConfig {
    /// Priority when the request names none.
    pub default_priority: Priority,
    /// Address policy for `audio` and `hook_url`.
    pub url_policy: UrlPolicy,
    /// Tokens per second per user (`RATE_LIMIT_PER_SECOND`; 0 turns the limit off).
    pub rate_per_second: f64,
    /// Bucket size (`RATE_LIMIT_BURST`).
    pub rate_burst: f64,
    /// Waiting tasks beyond which submissions are refused (`MAX_QUEUE_DEPTH`; 0 = no limit).
    pub max_queue_depth: u64,
    /// Installed models, for `model` / `stems` / `output_format`.
    pub catalog: Arc<Catalog>,
}

/// Longest accepted URL.
pub const MAX_URL_LEN: usize = 4096;
/// Longest accepted idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The Intake actor.
pub struct Intake {
    cfg: IntakeConfig,
    scheduler: SchedulerHandle,
    buckets: HashMap<String, Bucket>,
}

impl Intake {
    /// An Intake handing tasks to `scheduler`.
    pub fn new(cfg: IntakeConfig, scheduler: SchedulerHandle) -> Self {
        Self {
            cfg,
            scheduler,
            buckets: HashMap::new(),
        }
    }

    /// Takes a token from `user`'s bucket, or says how long until one is available.
    fn take_token(&mut self, user: &str) -> Result<(), Duration> {
        let (rate, burst) = (self.cfg.rate_per_second, self.cfg.rate_burst.max(1.0));
        if rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        if self.buckets.len() > 10_000 {
            // Forget full buckets of idle users so the map stays bounded.
            self.buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < burst
            });
        }
        let b = self.buckets.entry(user.to_string()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.updated).as_secs_f64() * rate).min(burst);
        b.updated = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

impl Actor for Intake {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(crate::actors::scheduler::MAILBOX_CAPACITY);
        metrics::actor_started("intake");
    }
}

impl Supervised for Intake {
    fn restarting(&mut self, _: &mut Self::Context) {
        metrics::actor_restarted("intake");
    }
}

impl Handler<Submit> for Intake {
    type Result = ResponseFuture<Result<Accepted, IntakeError>>;

    fn handle(&mut self, msg: Submit, _: &mut Context<Self>) -> Self::Result {
        let cfg = self.cfg.clone();
        let scheduler = self.scheduler.clone();
        // Validate the cheap, synchronous parts before spending a token.
        let parsed = validate(&cfg, &msg);
        let limited = match &parsed {
            Ok(_) => self.take_token(&msg.user).err(),
            Err(_) => None,
        };
        Box::pin(async move {
            let result = async {
                let Validated {
                    mut request,
                    idempotency_key,
                    urls,
                } = parsed?;
                if let Some(retry_after) = limited {
                    return Err(IntakeError::RateLimited { retry_after });
                }
                for (field, url) in &urls {
                    cfg.url_policy
                        .check_resolved(url)
                        .await
                        .map_err(|e| url_error(field, e))?;
                }
                request.owner = Some(msg.user.clone());
                let task = NewTask {
                    request: request.clone(),
                    idempotency_key: idempotency_key.map(|k| format!("{}:{k}", msg.user)),
                    max_depth: cfg.max_queue_depth,
                };
                match scheduler.ask(Enqueue(task)).await {
                    Ok(e) => {
                        if e.created {
                            metrics::task_enqueued(request.priority);
                        }
                        Ok(Accepted {
                            id: e.id,
                            created: e.created,
                            request,
                        })
                    }
                    Err(QueueError::Full { depth }) => Err(IntakeError::QueueFull { depth }),
                    Err(e) => Err(IntakeError::Queue(e)),
                }
            }
            .await;
            if let Err(e) = &result {
                metrics::task_rejected(e.code());
            }
            result
        })
    }
}

fn url_error(field: &'static str, e: UrlError) -> IntakeError {
    IntakeError::invalid(field, e.code(), e.to_string())
}

/// A request that passed the synchronous checks, with its two URLs already parsed.
struct Validated {
    request: TaskRequest,
    idempotency_key: Option<String>,
    urls: [(&'static str, url::Url); 2],
}

/// Checks and normalises the body; URL address checks that need DNS happen after.
fn validate(cfg: &IntakeConfig, msg: &Submit) -> Result<Validated, IntakeError> {
    let obj = msg.body.as_object().ok_or_else(|| {
        IntakeError::invalid("body", "invalid_body", "the body must be a JSON object")
    })?;
    let url_field = |field: &'static str| -> Result<url::Url, IntakeError> {
        let v = match obj.get(field) {
            None | Some(Value::Null) => {
                return Err(IntakeError::invalid(
                    field,
                    "missing_field",
                    format!("{field} is required"),
                ));
            }
            Some(Value::String(s)) => s,
            Some(_) => {
                return Err(IntakeError::invalid(
                    field,
                    "invalid_type",
                    format!("{field} must be a string URL"),
                ));
            }
        };
        if v.len() > MAX_URL_LEN {
            return Err(IntakeError::invalid(
                field,
                "field_too_long",
                format!("{field} is longer than {MAX_URL_LEN} bytes"),
            ));
        }
        // Syntax and literal-address checks now; DNS checks later.
        cfg.url_policy.parse(v).map_err(|e| url_error(field, e))
    };
    let audio = url_field("audio")?;
    let hook_url = url_field("hook_url")?;
    let priority = match obj.get("priority") {
        None | Some(Value::Null) => cfg.default_priority,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(p) if (1..=5).contains(&p) => Priority::new(p as u8).expect("checked range"),
            Some(_) => {
                return Err(IntakeError::invalid(
                    "priority",
                    "out_of_range",
                    "priority must be 1-5",
                ));
            }
            None if n.as_i64().is_some() => {
                return Err(IntakeError::invalid(
                    "priority",
                    "out_of_range",
                    "priority must be 1-5",
                ));
            }
            None => {
                return Err(IntakeError::invalid(
                    "priority",
                    "invalid_type",
                    "priority must be an integer 1-5",
                ));
            }
        },
        Some(_) => {
            return Err(IntakeError::invalid(
                "priority",
                "invalid_type",
                "priority must be an integer 1-5, not a string or other type",
            ));
        }
    };
    let model = match obj.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => {
            if cfg.catalog.get(m).is_none() {
                return Err(IntakeError::invalid(
                    "model",
                    "unknown_model",
                    format!(
                        "model {m:?} is not installed (available: {})",
                        cfg.catalog.names().join(", ")
                    ),
                ));
            }
            Some(m.clone())
        }
        Some(_) => {
            return Err(IntakeError::invalid(
                "model",
                "invalid_type",
                "model must be a string",
            ));
        }
    };
    // The task names the model it will use, so the record and the webhook can tell.
    let model = Some(model.unwrap_or_else(|| cfg.catalog.default.clone()));
    let model_info = cfg
        .catalog
        .get(model.as_deref().expect("set above"))
        .expect("the default model is in the catalogue");
    let stems = match obj.get("stems") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(IntakeError::invalid(
                    "stems",
                    "out_of_range",
                    "stems must not be empty",
                ));
            }
            let mut out: Vec<String> = Vec::new();
            for item in items {
                let Value::String(s) = item else {
                    return Err(IntakeError::invalid(
                        "stems",
                        "invalid_type",
                        "stems must be strings",
                    ));
                };
                if !model_info.stems.contains(&s.as_str()) {
                    return Err(IntakeError::invalid(
                        "stems",
                        "unknown_stem",
                        format!(
                            "model {} has no stem {s:?} (it has: {})",
                            model_info.name,
                            model_info.stems.join(", ")
                        ),
                    ));
                }
                if !out.contains(s) {
                    out.push(s.clone());
                }
            }
            Some(out)
        }
        Some(_) => {
            return Err(IntakeError::invalid(
                "stems",
                "invalid_type",
                "stems must be an array of stem names",
            ));
        }
    };
    let output_format = match obj.get("output_format") {
        None | Some(Value::Null) => None,
        Some(Value::String(f)) => {
            let f = f.to_ascii_lowercase();
            if !OUTPUT_FORMATS.contains(&f.as_str()) {
                return Err(IntakeError::invalid(
                    "output_format",
                    "unsupported_format",
                    format!("output_format must be one of {}", OUTPUT_FORMATS.join(", ")),
                ));
            }
            Some(f)
        }
        Some(_) => {
            return Err(IntakeError::invalid(
                "output_format",
                "invalid_type",
                "output_format must be a string",
            ));
        }
    };
    let idempotency_key = match &msg.idempotency_key {
        None => None,
        Some(k) => {
            if k.is_empty()
                || k.len() > MAX_IDEMPOTENCY_KEY_LEN
                || !k.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(IntakeError::invalid(
                    "Idempotency-Key",
                    "invalid_idempotency_key",
                    format!(
                        "Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
                    ),
                ));
            }
            Some(k.clone())
        }
    };
    Ok(Validated {
        request: TaskRequest {
            audio: audio.to_string(),
            hook_url: hook_url.to_string(),
            priority,
            model,
            stems,
            output_format,
            owner: None,
        },
        idempotency_key,
        urls: [("audio", audio), ("hook_url", hook_url)],
    })
}
