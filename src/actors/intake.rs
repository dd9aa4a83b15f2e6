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
use crate::audio::encode::{Encoding, SAMPLE_RATES};
use crate::metrics;
use crate::models::Library;
use crate::net::{UrlError, UrlPolicy};
use crate::queue::{NewTask, QueueError};
use crate::separation::ensemble::{ALGORITHMS, Algorithm};
use crate::separation::presets::{PresetError, Presets};
use crate::supervise::{self, RestartTracker, Verdict};
use crate::task::{OutputRate, Priority, SourceRate, TaskId, TaskRequest};

/// What one client may do, beyond the service-wide settings (`API_KEYS_FILE`); unset values
/// fall back to them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClientLimits {
    /// Submissions per second (instead of `RATE_LIMIT_PER_SECOND`).
    pub rate_per_second: Option<f64>,
    /// Burst (instead of `RATE_LIMIT_BURST`).
    pub burst: Option<f64>,
    /// The most urgent priority it may ask for.
    pub max_priority: Option<u8>,
}

/// Submits a job: the parsed JSON body of `POST /generate`.
#[derive(Debug, Message)]
#[rtype(result = "Result<Accepted, IntakeError>")]
pub struct Submit {
    /// The authenticated user (rate limits and idempotency keys are per user).
    pub user: String,
    /// The user's own limits.
    pub limits: ClientLimits,
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
        /// `unsupported_format`, `invalid_body`, `invalid_idempotency_key`,
        /// `priority_not_allowed`).
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
    pub catalog: Arc<Library>,
    /// Named ensembles (`ENSEMBLE_PRESETS_FILE`), for `preset`.
    pub presets: Arc<Presets>,
}

/// Longest accepted URL.
pub const MAX_URL_LEN: usize = 4096;
/// Most models in one ensemble.
pub use crate::separation::ensemble::MAX_MODELS as MAX_ENSEMBLE;
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
    tracker: RestartTracker,
}

impl Intake {
    /// An Intake handing tasks to `scheduler`.
    pub fn new(cfg: IntakeConfig, scheduler: SchedulerHandle) -> Self {
        Self {
            cfg,
            scheduler,
            buckets: HashMap::new(),
            tracker: RestartTracker::new("intake", supervise::policy("intake")),
        }
    }

    /// Takes a token from `user`'s bucket, or says how long until one is available.
    fn take_token(&mut self, user: &str, limits: &ClientLimits) -> Result<(), Duration> {
        let rate = limits.rate_per_second.unwrap_or(self.cfg.rate_per_second);
        let burst = limits.burst.unwrap_or(self.cfg.rate_burst).max(1.0);
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
        // Counts the start against the restart budget (the process exits when it is spent);
        // the Intake holds no work of its own, so it serves again at once.
        if self.tracker.on_start() == Verdict::GiveUp {
            ctx.stop();
        }
    }
}

impl Supervised for Intake {}

impl Handler<Submit> for Intake {
    type Result = ResponseFuture<Result<Accepted, IntakeError>>;

    fn handle(&mut self, msg: Submit, _: &mut Context<Self>) -> Self::Result {
        let cfg = self.cfg.clone();
        let scheduler = self.scheduler.clone();
        // Validate the cheap, synchronous parts before spending a token.
        let parsed = validate(&cfg, &msg.body, msg.idempotency_key.as_deref())
            .and_then(|v| within_limits(v, &msg.limits));
        let limited = match &parsed {
            Ok(_) => self.take_token(&msg.user, &msg.limits).err(),
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

fn preset_error(presets: &Presets, e: PresetError) -> IntakeError {
    match e {
        PresetError::NotAString => {
            IntakeError::invalid("preset", "invalid_type", "preset must be a preset's name")
        }
        PresetError::Unknown(name) => IntakeError::invalid(
            "preset",
            "unknown_preset",
            format!(
                "no preset {name:?} (available: {})",
                presets.names().join(", ")
            ),
        ),
        PresetError::Conflict => IntakeError::invalid(
            "preset",
            "invalid_body",
            "give preset, or model / models and ensemble, not both",
        ),
    }
}

/// Refuses a priority above the client's `max_priority`.
fn within_limits(v: Validated, limits: &ClientLimits) -> Result<Validated, IntakeError> {
    match limits.max_priority {
        Some(max) if v.request.priority.get() > max => Err(IntakeError::invalid(
            "priority",
            "priority_not_allowed",
            format!("this client's key allows priorities up to {max}"),
        )),
        _ => Ok(v),
    }
}

fn url_error(field: &'static str, e: UrlError) -> IntakeError {
    IntakeError::invalid(field, e.code(), e.to_string())
}

/// A request that passed the synchronous checks, with its two URLs already parsed.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The normalised request (no owner yet).
    pub request: TaskRequest,
    /// The checked `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// `audio` and `hook_url` (when given), parsed, by field name: what the DNS check looks
    /// at.
    pub urls: Vec<(&'static str, url::Url)>,
}

/// Checks and normalises a `POST /generate` body and its `Idempotency-Key`: every check that
/// needs neither DNS nor the queue. The URL address checks that resolve names happen after.
pub fn validate(
    cfg: &IntakeConfig,
    body: &Value,
    idempotency_key: Option<&str>,
) -> Result<Validated, IntakeError> {
    let obj = body.as_object().ok_or_else(|| {
        IntakeError::invalid("body", "invalid_body", "the body must be a JSON object")
    })?;
    // A preset stands for its models and ensemble.
    let expanded = cfg
        .presets
        .expand(obj)
        .map_err(|e| preset_error(&cfg.presets, e))?;
    let obj = expanded.as_ref().and_then(Value::as_object).unwrap_or(obj);
    let catalog = cfg.catalog.current();
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
    // An upload (`upload://<id>`, from POST /uploads or a form) instead of a URL.
    let (audio, audio_url) = match obj.get("audio") {
        Some(Value::String(s)) if crate::pipeline::uploads::is_upload(s) => {
            let id = crate::pipeline::uploads::id_of(s).ok_or_else(|| {
                IntakeError::invalid(
                    "audio",
                    "invalid_url",
                    "an upload reference is upload://<id>, as POST /uploads returns it",
                )
            })?;
            (format!("{}{id}", crate::pipeline::uploads::SCHEME), None)
        }
        _ => {
            let u = url_field("audio")?;
            (u.to_string(), Some(u))
        }
    };
    // Optional: without a webhook the client polls `GET /tasks/{id}`.
    let hook_url = match obj.get("hook_url") {
        None | Some(Value::Null) => None,
        Some(_) => Some(url_field("hook_url")?),
    };
    let priority = match obj.get("priority") {
        None | Some(Value::Null) => cfg.default_priority,
        Some(Value::Number(n)) => match n
            .as_u64()
            .and_then(|p| u8::try_from(p).ok())
            .and_then(Priority::new)
        {
            Some(p) => p,
            None if n.as_u64().is_some() || n.as_i64().is_some() => {
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
    // The task names the model it will use, so the record and the webhook can tell.
    let model = match obj.get("model") {
        None | Some(Value::Null) => &catalog.default,
        Some(Value::String(m)) => m,
        Some(_) => {
            return Err(IntakeError::invalid(
                "model",
                "invalid_type",
                "model must be a string",
            ));
        }
    };
    let model_info = catalog.get(model).ok_or_else(|| {
        IntakeError::invalid(
            "model",
            "unknown_model",
            format!(
                "model {model:?} is not installed (available: {})",
                catalog.names().join(", ")
            ),
        )
    })?;
    let mut model = Some(model.clone());
    // An ensemble: several models, each run once, combined stem by stem.
    let mut available: Vec<String> = model_info.stems.clone();
    let mut stems_of = model_info.name.clone();
    let (models, ensemble) = match obj.get("models") {
        None | Some(Value::Null) => {
            if obj.get("ensemble").is_some_and(|v| !v.is_null()) {
                return Err(IntakeError::invalid(
                    "models",
                    "missing_field",
                    "ensemble needs models: the list of models to combine",
                ));
            }
            (None, None)
        }
        Some(Value::Array(items)) => {
            if obj.get("model").is_some_and(|v| !v.is_null()) {
                return Err(IntakeError::invalid(
                    "models",
                    "invalid_body",
                    "give model (one) or models (an ensemble), not both",
                ));
            }
            if !(2..=MAX_ENSEMBLE).contains(&items.len()) {
                return Err(IntakeError::invalid(
                    "models",
                    "out_of_range",
                    format!("an ensemble has 2 to {MAX_ENSEMBLE} models"),
                ));
            }
            let mut names: Vec<String> = Vec::new();
            for item in items {
                let Value::String(name) = item else {
                    return Err(IntakeError::invalid(
                        "models",
                        "invalid_type",
                        "models must be model names",
                    ));
                };
                let info = catalog.get(name).ok_or_else(|| {
                    IntakeError::invalid(
                        "models",
                        "unknown_model",
                        format!(
                            "model {name:?} is not installed (available: {})",
                            catalog.names().join(", ")
                        ),
                    )
                })?;
                if names.contains(name) {
                    return Err(IntakeError::invalid(
                        "models",
                        "out_of_range",
                        format!("model {name:?} is listed twice"),
                    ));
                }
                if names.is_empty() {
                    available = info.stems.clone();
                } else {
                    available.retain(|s| info.has_stem(s));
                }
                names.push(name.clone());
            }
            if available.is_empty() {
                return Err(IntakeError::invalid(
                    "models",
                    "ensemble_mismatch",
                    "these models share no stem name, so there is nothing to combine",
                ));
            }
            let algorithm = match obj.get("ensemble") {
                None | Some(Value::Null) => {
                    return Err(IntakeError::invalid(
                        "ensemble",
                        "missing_field",
                        format!("models needs ensemble: one of {}", ALGORITHMS.join(", ")),
                    ));
                }
                Some(Value::String(a)) => a
                    .parse::<Algorithm>()
                    .map_err(|e| IntakeError::invalid("ensemble", "unsupported_ensemble", e))?,
                Some(_) => {
                    return Err(IntakeError::invalid(
                        "ensemble",
                        "invalid_type",
                        "ensemble must be a string",
                    ));
                }
            };
            stems_of = format!("the ensemble of {}", names.join(", "));
            model = None;
            (Some(names), Some(algorithm.name().to_string()))
        }
        Some(_) => {
            return Err(IntakeError::invalid(
                "models",
                "invalid_type",
                "models must be an array of model names",
            ));
        }
    };
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
                if !available.contains(s) {
                    return Err(IntakeError::invalid(
                        "stems",
                        "unknown_stem",
                        format!(
                            "{stems_of} has no stem {s:?} (it has: {})",
                            available.join(", ")
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
        Some(Value::String(f)) => Some(f.to_ascii_lowercase()),
        Some(_) => {
            return Err(IntakeError::invalid(
                "output_format",
                "invalid_type",
                "output_format must be a string",
            ));
        }
    };
    let bitrate = match obj.get("bitrate") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_u64().and_then(|b| u32::try_from(b).ok()).ok_or_else(
            || IntakeError::invalid("bitrate", "out_of_range", "bitrate is in kbps, e.g. 320"),
        )?),
        Some(_) => {
            return Err(IntakeError::invalid(
                "bitrate",
                "invalid_type",
                "bitrate must be an integer (kbps)",
            ));
        }
    };
    // Checks the format and its bit rate together (and, below, the rate it allows).
    let encoding = Encoding::parse(output_format.as_deref(), bitrate)
        .map_err(|e| IntakeError::invalid(e.field, e.code, e.message))?;
    let sample_rate = match obj.get("sample_rate") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "source" => Some(OutputRate::Source(SourceRate::Source)),
        Some(Value::Number(n)) => match n.as_u64().and_then(|r| u32::try_from(r).ok()) {
            Some(r) if SAMPLE_RATES.contains(&r) => Some(OutputRate::Hz(r)),
            _ => {
                return Err(IntakeError::invalid(
                    "sample_rate",
                    "out_of_range",
                    format!("sample_rate must be one of {SAMPLE_RATES:?} or \"source\""),
                ));
            }
        },
        Some(_) => {
            return Err(IntakeError::invalid(
                "sample_rate",
                "invalid_type",
                "sample_rate must be 44100, 48000 or \"source\"",
            ));
        }
    };
    encoding
        .check_rate(sample_rate)
        .map_err(|e| IntakeError::invalid(e.field, e.code, e.message))?;
    let idempotency_key = match idempotency_key {
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
            Some(k.to_string())
        }
    };
    Ok(Validated {
        request: TaskRequest {
            audio,
            hook_url: hook_url.as_ref().map(url::Url::to_string),
            priority,
            model,
            stems,
            output_format,
            bitrate,
            sample_rate,
            models,
            ensemble,
            owner: None,
        },
        idempotency_key,
        urls: audio_url
            .map(|u| ("audio", u))
            .into_iter()
            .chain(hook_url.map(|u| ("hook_url", u)))
            .collect(),
    })
}

#[cfg(test)]
#[path = "intake_tests.rs"]
mod tests;
