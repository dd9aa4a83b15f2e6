//! Configuration from the environment.
//!
//! Every setting has the seed's name and default where the seed names one
//! (`REDIS_HOST`, `REDIS_PORT`, `REDIS_DB`, `REDIS_PASSWORD`, `REDIS_TASK_QUEUE`,
//! `REDIS_RESULT_QUEUE`, `DEFAULT_PRIORITY`); the rest follow the same style. An invalid
//! value stops start-up with a [`ConfigError`] naming the variable.

mod env;

use std::fmt;
use std::time::Duration;

pub use env::{ConfigError, Env, SecretPolicy};

use crate::task::Priority;

/// Where the API listens (`API_HOST`, default `127.0.0.1`; `API_PORT`, default 8000, 0: any
/// free port). Local storage's links point there unless `PUBLIC_BASE_URL` says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// The host or address.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl Listen {
    /// Reads `API_HOST` and `API_PORT`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            host: env.string("API_HOST", "127.0.0.1"),
            port: env.ranged("API_PORT", 8000, 0..=65535)?,
        })
    }
}

/// The settings more than one role uses, read once for all of them.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Staged stems and uploaded audio (`STAGING_DIR`, default `data/staging`): written by
    /// the API (uploads) and the processor, read by the uploader.
    pub staging_dir: std::path::PathBuf,
    /// Largest audio download or upload (`MAX_AUDIO_BYTES`, default 1 GiB).
    pub max_audio_bytes: u64,
    /// Whether user URLs may point at private and loopback addresses
    /// (`ALLOW_PRIVATE_NETWORKS`, default false).
    pub allow_private: bool,
    /// Whether guessable secrets are let through (`ALLOW_WEAK_SECRETS`).
    pub secret_policy: SecretPolicy,
}

impl Shared {
    /// Reads the shared settings.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            staging_dir: env.string("STAGING_DIR", "data/staging").into(),
            max_audio_bytes: env.parse("MAX_AUDIO_BYTES", 1u64 << 30)?,
            allow_private: env.boolean("ALLOW_PRIVATE_NETWORKS", false)?,
            secret_policy: SecretPolicy::from_env(env)?,
        })
    }
}

/// Where Redis is and how to talk to it.
#[derive(Clone)]
pub struct RedisConfig {
    /// The connection URL (`redis://[:password@]host:port/db`), built from the parts or
    /// taken from `REDIS_URL`.
    pub url: String,
    /// Connections in the pool (`REDIS_POOL_SIZE`, default 16).
    pub pool_size: u32,
    /// How long one Redis operation may take before it fails (`REDIS_TIMEOUT`, seconds).
    pub op_timeout: Duration,
    /// Redis Sentinel: when set, the master is found through these sentinels and the host
    /// and port of `url` are not used (its database and credentials still are).
    pub sentinel: Option<SentinelConfig>,
    /// Replicas that must confirm a new task before the submission is acknowledged
    /// (`REDIS_WAIT_REPLICAS`, default 0: the master's own write is enough).
    pub wait_replicas: u32,
    /// How long to wait for those confirmations (`REDIS_WAIT_TIMEOUT`, default 1 s).
    pub wait_timeout: Duration,
}

/// How to reach a Sentinel-monitored master.
#[derive(Clone)]
pub struct SentinelConfig {
    /// The sentinels, `host:port` (`REDIS_SENTINELS`, comma-separated).
    pub nodes: Vec<(String, u16)>,
    /// The monitored master's name (`REDIS_SENTINEL_MASTER`, default `mymaster`).
    pub master: String,
    /// Password of the sentinels themselves (`REDIS_SENTINEL_PASSWORD`), when they have one.
    pub password: Option<String>,
}

impl fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelConfig")
            .field("nodes", &self.nodes)
            .field("master", &self.master)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("op_timeout", &self.op_timeout)
            .field("sentinel", &self.sentinel)
            .field("wait_replicas", &self.wait_replicas)
            .finish()
    }
}

/// Replaces the password of a `redis://user:pass@host` URL with `***`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparseable url>".into(),
    }
}

/// Queue names, timings and retry policy.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// The separation stage's ZSet (`REDIS_TASK_QUEUE`, default `uvr_tasks`).
    pub task_queue: String,
    /// The upload/webhook stage's ZSet (`REDIS_RESULT_QUEUE`, default `uvr_results`).
    pub result_queue: String,
    /// Optional Redis Cluster hash tag (`REDIS_KEY_HASH_TAG`): all keys get a `{tag}` prefix.
    pub hash_tag: Option<String>,
    /// Priority when a request names none (`DEFAULT_PRIORITY`, default 3).
    pub default_priority: Priority,
    /// How long a claim is valid without a heartbeat (`LEASE_SECONDS`, default 30).
    pub lease: Duration,
    /// Separation attempts before a task is dead-lettered (`MAX_ATTEMPTS`, default 5).
    pub max_attempts: u32,
    /// Delivery attempts (upload + webhook) of the deliver stage (`WEBHOOK_MAX_ATTEMPTS`,
    /// default 15: with the backoff capped at `WEBHOOK_RETRY_MAX_SECONDS`, about six hours).
    pub deliver_max_attempts: u32,
    /// First retry delay (`RETRY_BASE_SECONDS`, default 2); doubles per attempt, with jitter.
    pub retry_base: Duration,
    /// Upper bound of a retry delay (`RETRY_MAX_SECONDS`, default 600).
    pub retry_max: Duration,
    /// How long finished task records are kept (`RESULT_RETENTION_SECONDS`, default 7 days).
    pub retention: Duration,
    /// How long an idempotency key maps to its task (`IDEMPOTENCY_TTL_SECONDS`, default 24 h).
    pub idempotency_ttl: Duration,
    /// How often the maintenance pass (reaper, delayed promotion) runs (`REAPER_INTERVAL_SECONDS`, default 1).
    pub reaper_interval: Duration,
    /// Longest an idle claimer sleeps between checks when no wake-up arrives (`CLAIM_POLL_SECONDS`, default 1).
    pub claim_poll: Duration,
}

/// Everything the queue layer needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Redis connection.
    pub redis: RedisConfig,
    /// Queue policy.
    pub queue: QueueConfig,
}

impl Config {
    /// Reads the configuration from `env`.
    pub fn from(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            redis: redis_config(env)?,
            queue: queue_config(env)?,
        })
    }
}

fn redis_config(env: &Env) -> Result<RedisConfig, ConfigError> {
    let url = match env.get("REDIS_URL") {
        Some(url) => {
            let parsed = url::Url::parse(url.trim()).map_err(|e| ConfigError::Invalid {
                var: "REDIS_URL",
                value: redact_url(url),
                reason: e.to_string(),
            })?;
            if !matches!(parsed.scheme(), "redis" | "rediss" | "redis+unix" | "unix") {
                return Err(ConfigError::Invalid {
                    var: "REDIS_URL",
                    value: redact_url(url),
                    reason: "expected a redis:// or rediss:// URL".into(),
                });
            }
            url.trim().to_string()
        }
        None => {
            let host = env.string("REDIS_HOST", "localhost");
            if host.is_empty() || host.contains(['/', '@', ' ']) {
                return Err(ConfigError::Invalid {
                    var: "REDIS_HOST",
                    value: host,
                    reason: "expected a host name or address".into(),
                });
            }
            let port: u16 = env.ranged("REDIS_PORT", 6379, 1..=65535)?;
            let db: u32 = env.ranged("REDIS_DB", 0, 0..=65535)?;
            let host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host
            };
            match env.get("REDIS_PASSWORD") {
                Some(pw) => {
                    let pw: String = url::form_urlencoded::byte_serialize(pw.as_bytes()).collect();
                    format!("redis://:{pw}@{host}:{port}/{db}")
                }
                None => format!("redis://{host}:{port}/{db}"),
            }
        }
    };
    Ok(RedisConfig {
        url,
        pool_size: env.ranged("REDIS_POOL_SIZE", 16, 1..=1024)?,
        op_timeout: env.seconds("REDIS_TIMEOUT", Duration::from_secs(5))?,
        sentinel: sentinel_config(env)?,
        wait_replicas: env.ranged("REDIS_WAIT_REPLICAS", 0, 0..=64)?,
        wait_timeout: env.seconds("REDIS_WAIT_TIMEOUT", Duration::from_secs(1))?,
    })
}

fn sentinel_config(env: &Env) -> Result<Option<SentinelConfig>, ConfigError> {
    let Some(list) = env.get("REDIS_SENTINELS") else {
        return Ok(None);
    };
    let invalid = |value: &str, reason: &str| ConfigError::Invalid {
        var: "REDIS_SENTINELS",
        value: value.to_string(),
        reason: reason.into(),
    };
    let mut nodes = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (host, port) = match item.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() => (h, p),
            _ => (item, "26379"),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', '@', ' ']) {
            return Err(invalid(item, "expected host:port"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid(item, "expected a port 1..=65535"))?;
        nodes.push((host.to_string(), port));
    }
    if nodes.is_empty() {
        return Err(invalid(list, "expected at least one host:port"));
    }
    let master = env.string("REDIS_SENTINEL_MASTER", "mymaster");
    if master.is_empty() || master.contains(char::is_whitespace) {
        return Err(ConfigError::Invalid {
            var: "REDIS_SENTINEL_MASTER",
            value: master,
            reason: "expected the name the sentinels monitor".into(),
        });
    }
    Ok(Some(SentinelConfig {
        nodes,
        master,
        password: env.get("REDIS_SENTINEL_PASSWORD").map(str::to_string),
    }))
}

fn queue_name(env: &Env, var: &'static str, default: &str) -> Result<String, ConfigError> {
    let name = env.string(var, default);
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.'))
    {
        return Err(ConfigError::Invalid {
            var,
            value: name,
            reason: "expected letters, digits, '_', '-', ':' or '.'".into(),
        });
    }
    Ok(name)
}

fn queue_config(env: &Env) -> Result<QueueConfig, ConfigError> {
    let task_queue = queue_name(env, "REDIS_TASK_QUEUE", "uvr_tasks")?;
    let result_queue = queue_name(env, "REDIS_RESULT_QUEUE", "uvr_results")?;
    if task_queue == result_queue {
        return Err(ConfigError::Invalid {
            var: "REDIS_RESULT_QUEUE",
            value: result_queue,
            reason: "must differ from REDIS_TASK_QUEUE".into(),
        });
    }
    let hash_tag = match env.get("REDIS_KEY_HASH_TAG") {
        None => None,
        Some(tag) => {
            let tag = tag.trim().trim_start_matches('{').trim_end_matches('}');
            if tag.is_empty() || tag.contains(['{', '}', ' ']) {
                return Err(ConfigError::Invalid {
                    var: "REDIS_KEY_HASH_TAG",
                    value: tag.into(),
                    reason: "expected a short name without braces or spaces".into(),
                });
            }
            Some(tag.to_string())
        }
    };
    let default_priority: u8 = env.ranged("DEFAULT_PRIORITY", 3, 1..=5)?;
    let lease = env.seconds("LEASE_SECONDS", Duration::from_secs(30))?;
    if lease < Duration::from_millis(100) {
        return Err(ConfigError::Invalid {
            var: "LEASE_SECONDS",
            value: format!("{}", lease.as_secs_f64()),
            reason: "expected at least 0.1".into(),
        });
    }
    Ok(QueueConfig {
        task_queue,
        result_queue,
        hash_tag,
        default_priority: Priority::new(default_priority).expect("range checked"),
        lease,
        max_attempts: env.ranged("MAX_ATTEMPTS", 5, 1..=1000)?,
        deliver_max_attempts: env.ranged("WEBHOOK_MAX_ATTEMPTS", 15, 1..=1000)?,
        retry_base: env.seconds("RETRY_BASE_SECONDS", Duration::from_secs(2))?,
        retry_max: env.seconds("RETRY_MAX_SECONDS", Duration::from_secs(600))?,
        retention: env.seconds("RESULT_RETENTION_SECONDS", Duration::from_secs(7 * 86400))?,
        idempotency_ttl: env.seconds("IDEMPOTENCY_TTL_SECONDS", Duration::from_secs(86400))?,
        reaper_interval: env.seconds("REAPER_INTERVAL_SECONDS", Duration::from_secs(1))?,
        claim_poll: env.seconds("CLAIM_POLL_SECONDS", Duration::from_secs(1))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn defaults_are_the_seeds() {
        let c = Config::from(&env(&[])).unwrap();
        assert_eq!(c.redis.url, "redis://localhost:6379/0");
        assert_eq!(c.queue.task_queue, "uvr_tasks");
        assert_eq!(c.queue.result_queue, "uvr_results");
        assert_eq!(c.queue.default_priority.get(), 3);
        assert_eq!(c.queue.hash_tag, None);
    }

    #[test]
    fn parts_build_the_url_and_password_is_redacted() {
        let c = Config::from(&env(&[
            ("REDIS_HOST", "redis.internal"),
            ("REDIS_PORT", "6380"),
            ("REDIS_DB", "2"),
            ("REDIS_PASSWORD", "s3cr/t"),
        ]))
        .unwrap();
        assert_eq!(c.redis.url, "redis://:s3cr%2Ft@redis.internal:6380/2");
        let shown = format!("{:?}", c.redis);
        assert!(!shown.contains("s3cr"), "{shown}");
    }

    #[test]
    fn redis_url_wins_over_parts() {
        let c = Config::from(&env(&[
            ("REDIS_URL", "redis://other:7000/1"),
            ("REDIS_HOST", "ignored"),
        ]))
        .unwrap();
        assert_eq!(c.redis.url, "redis://other:7000/1");
    }

    #[test]
    fn invalid_values_name_the_variable() {
        for (var, value) in [
            ("DEFAULT_PRIORITY", "9"),
            ("DEFAULT_PRIORITY", "0"),
            ("REDIS_PORT", "abc"),
            ("REDIS_PORT", "70000"),
            ("REDIS_DB", "-1"),
            ("REDIS_URL", "http://x"),
            ("LEASE_SECONDS", "soon"),
            ("REDIS_TASK_QUEUE", "bad name"),
            ("REDIS_KEY_HASH_TAG", "a}b"),
            ("REDIS_SENTINELS", "host:0"),
            ("REDIS_SENTINELS", ",,"),
            ("REDIS_SENTINELS", "a b:26379"),
            ("REDIS_WAIT_REPLICAS", "-1"),
        ] {
            let err = Config::from(&env(&[(var, value)])).unwrap_err();
            assert!(err.to_string().contains(var), "{var}={value}: {err}");
        }
    }

    #[test]
    fn sentinels_are_parsed_with_default_port_and_master() {
        let c = Config::from(&env(&[
            ("REDIS_SENTINELS", "s1:26380, s2 ,[::1]:26381"),
            ("REDIS_SENTINEL_PASSWORD", "hush"),
            ("REDIS_PASSWORD", "master-secret"),
        ]))
        .unwrap();
        let s = c.redis.sentinel.as_ref().unwrap();
        assert_eq!(
            s.nodes,
            vec![
                ("s1".to_string(), 26380),
                ("s2".to_string(), 26379),
                ("::1".to_string(), 26381)
            ]
        );
        assert_eq!(s.master, "mymaster");
        let shown = format!("{:?}", c.redis);
        assert!(
            !shown.contains("hush") && !shown.contains("master-secret"),
            "{shown}"
        );
        assert!(Config::from(&env(&[])).unwrap().redis.sentinel.is_none());
    }

    #[test]
    fn same_queue_names_are_rejected() {
        let err = Config::from(&env(&[
            ("REDIS_TASK_QUEUE", "q"),
            ("REDIS_RESULT_QUEUE", "q"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("REDIS_RESULT_QUEUE"));
    }
}
