//! The processing pipeline behind the queue: what a processor does with a claimed task
//! ([`process`]: fetch, decode, separate, write stems to the staging directory), and what an
//! uploader does with a separated one ([`storage`]: store stems and sign links;
//! [`webhook`]: the signed completion call), and how stored results end ([`retention`]:
//! stems and staging leftovers deleted once their links have expired).

pub mod process;
pub mod retention;
pub mod storage;
pub mod uploads;
pub mod webhook;

use std::path::PathBuf;
use std::time::Duration;

use crate::audio::fetch::FetchConfig;
use crate::config::{ConfigError, Env, Shared};
use crate::net::UrlPolicy;

/// A failure of one attempt, with its stable code.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct JobError {
    /// Stable error code.
    pub code: &'static str,
    /// Message for humans (and the webhook).
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// A server-requested delay before the next attempt.
    pub retry_after: Option<Duration>,
}

impl JobError {
    /// A new error.
    pub fn new(code: &'static str, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            code,
            message: message.into(),
            retryable,
            retry_after: None,
        }
    }

    /// An internal error (a bug or a local resource problem): retried.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new("internal_error", message, true)
    }
}

/// Settings of the processor role.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// Where stems are staged for the uploader (`STAGING_DIR`), shared by both roles.
    pub staging_dir: PathBuf,
    /// Download limits and address policy.
    pub fetch: FetchConfig,
    /// Most bytes one task's stems may take together (`MAX_OUTPUT_BYTES`, default 4 GiB;
    /// 0: no budget).
    pub max_output_bytes: u64,
    /// Longest accepted audio (`MAX_AUDIO_SECONDS`; 0: no cap).
    pub max_audio_seconds: u64,
    /// Tasks separated at once per process (`PROCESSOR_CONCURRENCY`).
    pub concurrency: usize,
    /// Model used when a task names none (`DEFAULT_MODEL`).
    pub default_model: String,
    /// The queue lease (`LEASE_SECONDS`); heartbeats go out every third of it.
    pub lease: Duration,
    /// The separation engine (models, device).
    pub engine: std::sync::Arc<crate::engine::Engine>,
}

impl ProcessorConfig {
    /// Reads the processor's own settings; `shared` holds those other roles read too, and
    /// `fetch` the download limits (read once for the processor and the uploader).
    pub fn from_env(
        env: &Env,
        shared: &Shared,
        catalog: std::sync::Arc<crate::models::Library>,
        lease: Duration,
        fetch: FetchConfig,
    ) -> Result<Self, ConfigError> {
        let default_model = catalog.current().default.clone();
        Ok(Self {
            engine: std::sync::Arc::new(engine(env, catalog)?),
            lease,
            staging_dir: shared.staging_dir.clone(),
            fetch,
            max_audio_seconds: env.parse("MAX_AUDIO_SECONDS", 3 * 3600u64)?,
            max_output_bytes: env.parse("MAX_OUTPUT_BYTES", 4u64 << 30)?,
            concurrency: env.ranged("PROCESSOR_CONCURRENCY", 1usize, 1..=64)?,
            default_model,
        })
    }
}

/// The separation engine from `SEPARATOR_DEVICE`, `SEPARATOR_CACHE_DIR`,
/// `SEPARATOR_AUTOTUNE`, the `MDX_*` demix options and the `ROFORMER_*` overrides.
pub fn engine(
    env: &Env,
    catalog: std::sync::Arc<crate::models::Library>,
) -> Result<crate::engine::Engine, ConfigError> {
    let choice = env.parse("SEPARATOR_DEVICE", crate::mdx::device::DeviceChoice::Auto)?;
    let overlap: f32 = env.parse("MDX_OVERLAP", 0.25)?;
    if !(0.0..0.99).contains(&overlap) {
        return Err(ConfigError::Invalid {
            var: "MDX_OVERLAP",
            value: overlap.to_string(),
            reason: "expected 0 <= overlap < 0.99".into(),
        });
    }
    let opts = crate::mdx::DemixOptions {
        overlap,
        denoise: env.boolean("MDX_DENOISE", false)?,
        batch: env.optional_ranged("MDX_BATCH", 1usize..=64)?,
    };
    let cache_dir = env.string("SEPARATOR_CACHE_DIR", "data/cache");
    let tuning = crate::mdx::device::Tuning {
        // `off`: no persistent cache, every process tunes anew.
        cache_dir: (!cache_dir.eq_ignore_ascii_case("off")).then(|| PathBuf::from(cache_dir)),
        level: env.optional("SEPARATOR_AUTOTUNE")?,
    };
    let roformer = crate::roformer::RoformerOptions {
        num_overlap: env.optional_ranged("ROFORMER_NUM_OVERLAP", 1usize..=64)?,
        batch_size: env.optional_ranged("ROFORMER_BATCH_SIZE", 1usize..=64)?,
    };
    Ok(crate::engine::Engine::new(catalog, choice, opts)
        .with_tuning(tuning)
        .with_roformer(roformer))
}

/// The HTTP client limits shared by downloads and webhooks.
pub fn fetch_config(env: &Env, shared: &Shared) -> Result<FetchConfig, ConfigError> {
    Ok(FetchConfig {
        policy: UrlPolicy {
            allow_private: shared.allow_private,
        },
        max_bytes: shared.max_audio_bytes,
        connect_timeout: env.seconds("FETCH_CONNECT_TIMEOUT_SECONDS", Duration::from_secs(10))?,
        read_timeout: env.seconds("FETCH_READ_TIMEOUT_SECONDS", Duration::from_secs(30))?,
        total_timeout: match env.seconds("FETCH_TOTAL_TIMEOUT_SECONDS", Duration::from_secs(600))? {
            t if t >= Duration::from_secs(1) => t,
            t => {
                return Err(ConfigError::Invalid {
                    var: "FETCH_TOTAL_TIMEOUT_SECONDS",
                    value: t.as_secs_f64().to_string(),
                    reason: "expected at least 1 second".into(),
                });
            }
        },
        min_bytes_per_second: env.parse("FETCH_MIN_BYTES_PER_SECOND", 16 * 1024u64)?,
        min_rate_after: crate::audio::fetch::MIN_RATE_AFTER,
        proxy: match env.get("OUTBOUND_PROXY") {
            None => None,
            Some(raw) => Some(
                url::Url::parse(raw.trim())
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
                    .ok_or_else(|| ConfigError::Invalid {
                        var: "OUTBOUND_PROXY",
                        value: crate::net::redact_str(raw),
                        reason: "expected an http:// or https:// proxy URL".into(),
                    })?,
            ),
        },
        lookup: Default::default(),
    })
}

/// Settings of the uploader role.
#[derive(Debug, Clone)]
pub struct UploaderConfig {
    /// Where the processor staged the stems (`STAGING_DIR`).
    pub staging_dir: PathBuf,
    /// Where stems are stored and how links are made.
    pub storage: storage::StorageConfig,
    /// Webhook signing and retry policy.
    pub webhook: webhook::WebhookConfig,
    /// Address policy and timeouts of the webhook client.
    pub fetch: FetchConfig,
    /// Tasks delivered at once per process (`UPLOADER_CONCURRENCY`).
    pub concurrency: usize,
    /// The queue lease (`LEASE_SECONDS`).
    pub lease: Duration,
    /// First retry delay of deliveries (`RETRY_BASE_SECONDS`).
    pub retry_base: Duration,
    /// When stored stems and staging leftovers are deleted (`RESULT_URL_TTL`, the delivery
    /// window, `RETENTION_SWEEP_SECONDS`).
    pub retention: retention::Retention,
}

impl UploaderConfig {
    /// Reads the uploader's own settings; `shared` holds those other roles read too,
    /// `storage` is the stem store (read once for the API and the uploader) and `fetch` the
    /// HTTP client limits (read once for the processor and the uploader).
    pub fn from_env(
        env: &Env,
        shared: &Shared,
        queue: &crate::config::QueueConfig,
        storage: storage::StorageConfig,
        fetch: FetchConfig,
    ) -> Result<Self, ConfigError> {
        let staging_dir = shared.staging_dir.clone();
        let webhook = webhook::WebhookConfig::from_env(
            env,
            shared.secret_policy,
            queue.deliver_max_attempts,
        )?;
        let every = env.seconds("RETENTION_SWEEP_SECONDS", Duration::from_secs(3600))?;
        if !every.is_zero() && every < Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                var: "RETENTION_SWEEP_SECONDS",
                value: every.as_secs_f64().to_string(),
                reason: "expected 0 (never) or at least 0.1".into(),
            });
        }
        // Every delivery attempt signs fresh links, valid for the TTL from then: a stored
        // stem is kept for the TTL after the last attempt that can still happen.
        let ttl = storage.ttl();
        let delivery_window = webhook.retry_max.saturating_mul(webhook.max_attempts);
        Ok(Self {
            lease: queue.lease,
            retry_base: queue.retry_base,
            retention: retention::Retention {
                staging: staging_dir.clone(),
                keep: ttl.saturating_add(delivery_window),
                keep_staging: ttl,
                every,
            },
            staging_dir,
            storage,
            webhook,
            fetch,
            concurrency: env.ranged("UPLOADER_CONCURRENCY", 4usize, 1..=256)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> std::sync::Arc<crate::models::Library> {
        std::sync::Arc::new(crate::models::Library::fixed(
            crate::models::Catalog::scan(std::path::Path::new("/nonexistent"), None).unwrap(),
        ))
    }

    fn engine_with(pairs: &[(&str, &str)]) -> Result<crate::engine::Engine, ConfigError> {
        engine(&Env::from_pairs(pairs.iter().copied()), catalog())
    }

    #[test]
    fn separator_device_and_autotune_are_read_from_the_environment() {
        let shown = format!("{:?}", engine_with(&[]).unwrap());
        assert!(shown.contains("choice: Auto"), "{shown}");
        let shown = format!(
            "{:?}",
            engine_with(&[
                ("SEPARATOR_DEVICE", "gpu:2"),
                ("SEPARATOR_AUTOTUNE", "full")
            ])
            .unwrap()
        );
        assert!(shown.contains("choice: Gpu(2)"), "{shown}");
    }

    #[test]
    fn bad_separator_device_or_autotune_is_a_configuration_error_naming_the_variable() {
        for (var, value, expected) in [
            (
                "SEPARATOR_DEVICE",
                "tpu",
                "expected auto, cpu, gpu, gpu:N or software",
            ),
            (
                "SEPARATOR_DEVICE",
                "gpu:-1",
                "expected auto, cpu, gpu, gpu:N or software",
            ),
            (
                "SEPARATOR_AUTOTUNE",
                "max",
                "expected minimal, balanced, extensive or full",
            ),
        ] {
            let err = engine_with(&[(var, value)]).unwrap_err();
            let ConfigError::Invalid {
                var: named,
                value: shown,
                ..
            } = &err;
            assert_eq!((*named, shown.as_str()), (var, value), "{err}");
            let text = err.to_string();
            assert!(
                text.contains(var) && text.contains(value) && text.contains(expected),
                "{text}"
            );
        }
    }
}
