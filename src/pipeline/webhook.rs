//! The completion webhook, signed per Standard Webhooks.
//!
//! Headers: `webhook-id` (the task id, the same on every retry so receivers can drop
//! repeats), `webhook-timestamp` (Unix seconds) and `webhook-signature`
//! (`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`). The key is `WEBHOOK_SECRET`;
//! a `whsec_` prefix means the rest is base64 (as Standard Webhooks libraries generate it),
//! otherwise the raw bytes are used. Several secrets separated by spaces sign with each
//! (rotation: receivers accept any `v1,` signature that verifies).
//!
//! Delivery: a 2xx ends it; `410 Gone` stops retries for good; a redirect is not followed
//! and counts as a permanent failure; timeouts, connection errors, 408, 425, 429 and 5xx are
//! retried with exponential backoff and jitter, honouring `Retry-After`; any other 4xx is the
//! receiver refusing the call, and ends delivery at once (a third party is not called again
//! and again with something it has refused). The address policy is checked again at
//! delivery time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::header;
use sha2::Sha256;

use super::JobError;
use crate::audio::fetch::{FetchConfig, FetchError, classify};
use crate::config::{ConfigError, Env, SecretPolicy};
use crate::task::result::{DeliveryAttempt, DeliveryOutcome, StageResult, Stem, TaskError};
use crate::task::{Priority, Status, TaskId, TaskRecord};

/// Webhook settings.
#[derive(Clone)]
pub struct WebhookConfig {
    /// Signing keys (`WEBHOOK_SECRET`, space-separated for rotation; the first is current).
    pub secrets: Vec<Vec<u8>>,
    /// Per-request timeout (`WEBHOOK_TIMEOUT_SECONDS`, default 15).
    pub timeout: Duration,
    /// Delivery attempts before giving up (`WEBHOOK_MAX_ATTEMPTS`, default 15: about six
    /// hours with the default backoff).
    pub max_attempts: u32,
    /// Longest delay between attempts (`WEBHOOK_RETRY_MAX_SECONDS`, default 3600).
    pub retry_max: Duration,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("secrets", &format!("<{} hidden>", self.secrets.len()))
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

impl WebhookConfig {
    /// Reads the webhook settings; `WEBHOOK_SECRET` is required. `max_attempts` is the
    /// deliver stage's (`WEBHOOK_MAX_ATTEMPTS`, read with the queue settings).
    pub fn from_env(
        env: &Env,
        secret_policy: SecretPolicy,
        max_attempts: u32,
    ) -> Result<Self, ConfigError> {
        let raw = env.get("WEBHOOK_SECRET").ok_or(ConfigError::Invalid {
            var: "WEBHOOK_SECRET",
            value: String::new(),
            reason:
                "must be set: webhooks are signed with it (e.g. whsec_ + base64 of 32 random bytes)"
                    .into(),
        })?;
        let mut secrets = Vec::new();
        for part in raw.split_whitespace() {
            let key = match part.strip_prefix("whsec_") {
                Some(b64) => base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| ConfigError::Invalid {
                        var: "WEBHOOK_SECRET",
                        value: "<hidden>".into(),
                        reason: "whsec_ secrets must be base64".into(),
                    })?,
                None => part.as_bytes().to_vec(),
            };
            secret_policy.require_strong("WEBHOOK_SECRET", &key, 32)?;
            secrets.push(key);
        }
        Ok(Self {
            secrets,
            timeout: env.seconds("WEBHOOK_TIMEOUT_SECONDS", Duration::from_secs(15))?,
            max_attempts,
            retry_max: env.seconds("WEBHOOK_RETRY_MAX_SECONDS", Duration::from_secs(3600))?,
        })
    }

    /// The settings of `env` with the default attempts (unit tests).
    #[cfg(test)]
    pub(crate) fn from_test_env(env: &Env) -> Result<Self, ConfigError> {
        Self::from_env(env, SecretPolicy::from_env(env)?, 15)
    }

    /// The `webhook-signature` header value for a message.
    pub fn signature(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        self.secrets
            .iter()
            .map(|key| {
                let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
                mac.update(id.as_bytes());
                mac.update(b".");
                mac.update(timestamp.to_string().as_bytes());
                mac.update(b".");
                mac.update(body);
                format!(
                    "v1,{}",
                    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The body of a webhook (the OpenAPI schema `WebhookPayload`, checked against this type).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Payload {
    /// The task.
    pub task_id: TaskId,
    /// `succeeded` or `failed`.
    pub status: Status,
    /// Its priority.
    pub priority: Priority,
    /// The model used (the request's when separation never ran).
    pub model: Option<String>,
    /// The model's family.
    pub family: Option<String>,
    /// Stem name -> stored file and link; empty when the task failed.
    pub stems: BTreeMap<String, Stem>,
    /// Length of the input, seconds.
    pub duration_seconds: Option<f64>,
    /// Seconds spent in each phase; null for a phase the task did not reach.
    pub timings: PayloadTimings,
    /// Why the task failed; null when it succeeded.
    pub error: Option<TaskError>,
}

/// The phases a webhook reports.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PayloadTimings {
    /// From submission to the end of separation.
    pub time_to_separated_seconds: Option<f64>,
    /// Fetching, decoding, separating and writing the stems.
    pub separation_seconds: Option<f64>,
    /// Storing the stems and signing their links.
    pub upload_seconds: Option<f64>,
}

impl Payload {
    /// The webhook of a task whose stage result is `result`.
    pub fn new(rec: &TaskRecord, result: &StageResult, failed: bool) -> Self {
        let queued = rec
            .separated_at_ms()
            .map(|sep| sep.saturating_sub(rec.created_at_ms) as f64 / 1000.0);
        Self {
            task_id: rec.id.clone(),
            status: if failed {
                Status::Failed
            } else {
                Status::Succeeded
            },
            priority: rec.request.priority,
            model: result.model.clone().or_else(|| rec.request.model.clone()),
            family: result.family.clone(),
            stems: if failed {
                BTreeMap::new()
            } else {
                result.stems.clone()
            },
            duration_seconds: result.duration_seconds,
            timings: PayloadTimings {
                time_to_separated_seconds: queued,
                separation_seconds: result.timings.separation_seconds,
                upload_seconds: result.timings.upload_seconds,
            },
            error: failed.then(|| TaskError::of(rec)),
        }
    }
}

/// Sends one webhook. Ok: delivered. Err: with `retryable` set when worth another attempt.
pub async fn send(
    client: &reqwest::Client,
    fetch: &FetchConfig,
    cfg: &WebhookConfig,
    url: &str,
    id: &str,
    body: &[u8],
) -> (DeliveryAttempt, Result<(), JobError>) {
    let started = Instant::now();
    let at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let attempt = |status, outcome, error: Option<String>| DeliveryAttempt {
        at: at.clone(),
        status,
        duration_ms: started.elapsed().as_millis() as u64,
        outcome,
        error,
    };
    let target = match fetch.policy.parse(url) {
        Ok(u) => u,
        Err(e) => {
            let err = JobError::new("webhook_refused", e.to_string(), false);
            return (
                attempt(None, DeliveryOutcome::Failed, Some(e.to_string())),
                Err(err),
            );
        }
    };
    let resp = client
        .post(target)
        .timeout(cfg.timeout)
        .header(header::CONTENT_TYPE, "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", cfg.signature(id, ts, body))
        .body(body.to_vec())
        .send()
        .await;
    match resp {
        Ok(r) => {
            let status = r.status().as_u16();
            if r.status().is_success() {
                return (
                    attempt(Some(status), DeliveryOutcome::Delivered, None),
                    Ok(()),
                );
            }
            if status == 410 {
                let err = JobError::new("webhook_gone", "receiver answered 410 Gone", false);
                return (
                    attempt(Some(status), DeliveryOutcome::Gone, Some("410 Gone".into())),
                    Err(err),
                );
            }
            if r.status().is_redirection() {
                let err = JobError::new(
                    "webhook_redirected",
                    format!("receiver answered {status}; redirects are not followed"),
                    false,
                );
                return (
                    attempt(
                        Some(status),
                        DeliveryOutcome::Failed,
                        Some(err.message.clone()),
                    ),
                    Err(err),
                );
            }
            if !retryable_status(status) {
                let err = JobError::new(
                    "webhook_rejected",
                    format!("receiver answered {status}; not retried"),
                    false,
                );
                return (
                    attempt(
                        Some(status),
                        DeliveryOutcome::Failed,
                        Some(err.message.clone()),
                    ),
                    Err(err),
                );
            }
            let retry_after = r
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let mut err = JobError::new(
                "webhook_failed",
                format!("receiver answered {status}"),
                true,
            );
            err.retry_after = retry_after;
            (
                attempt(
                    Some(status),
                    DeliveryOutcome::Retry,
                    Some(err.message.clone()),
                ),
                Err(err),
            )
        }
        Err(e) => {
            let fe = classify(&e);
            let retryable = fe.retryable();
            // The fetch error's own text speaks of the audio source; say who failed here.
            let message = match &fe {
                FetchError::Unreachable(m) => format!("webhook receiver unreachable: {m}"),
                FetchError::Timeout(m) => format!("webhook receiver timed out: {m}"),
                other => other.to_string(),
            };
            let err = JobError::new(
                if retryable {
                    "webhook_unreachable"
                } else {
                    "webhook_refused"
                },
                message.clone(),
                retryable,
            );
            let outcome = if retryable {
                DeliveryOutcome::Retry
            } else {
                DeliveryOutcome::Failed
            };
            (attempt(None, outcome, Some(message)), Err(err))
        }
    }
}

/// Whether a receiver's (non-2xx, non-3xx) answer is worth another delivery: request
/// timeout, too early, too many requests and server errors are; any other 4xx is a refusal.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 425 | 429) || status >= 500
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // From the Standard Webhooks specification's test vectors.
        // The vector's key is 24 bytes: below the service's minimum, so allowed explicitly.
        let env = Env::from_pairs([
            ("WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            ("ALLOW_WEAK_SECRETS", "true"),
        ]);
        let cfg = WebhookConfig::from_test_env(&env).unwrap();
        let sig = cfg.signature(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_are_required_and_never_shown() {
        assert!(WebhookConfig::from_test_env(&Env::default()).is_err());
        let env = Env::from_pairs([(
            "WEBHOOK_SECRET",
            "a-long-enough-secret-of-32-bytes! old-secret-also-long-enough-0123",
        )]);
        let cfg = WebhookConfig::from_test_env(&env).unwrap();
        assert_eq!(cfg.secrets.len(), 2);
        assert!(!format!("{cfg:?}").contains("long-enough"));
        let weak = WebhookConfig::from_test_env(&Env::from_pairs([(
            "WEBHOOK_SECRET",
            "a-long-enough-secret-of-32-bytes! short-one",
        )]))
        .unwrap_err();
        assert!(weak.to_string().contains("WEBHOOK_SECRET"), "{weak}");
        assert_eq!(cfg.signature("i", 1, b"{}").matches("v1,").count(), 2);
    }

    /// A loopback server on port 0 answering every request with `head` (a status line and
    /// headers) and an empty body; it counts the requests it gets.
    async fn answering(head: String) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (counter, head) = (counter.clone(), head.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let resp = format!("{head}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        (port, requests)
    }

    fn loopback_fetch() -> FetchConfig {
        FetchConfig {
            policy: crate::net::UrlPolicy {
                allow_private: true,
            },
            max_bytes: 1 << 20,
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(5),
            ..FetchConfig::default()
        }
    }

    /// 408, 425, 429 and 5xx are retried (with `Retry-After` honoured); any other 4xx ends
    /// delivery after its one request; 410 keeps its own code.
    #[tokio::test]
    async fn only_transient_answers_are_retried() {
        use std::sync::atomic::Ordering;
        let fetch = loopback_fetch();
        let cfg = WebhookConfig::from_test_env(&Env::from_pairs([(
            "WEBHOOK_SECRET",
            "test-webhook-secret-0123456789-abcdefgh",
        )]))
        .unwrap();
        let client = crate::audio::fetch::client(&fetch, Some(cfg.timeout));
        for (status, code, retryable, outcome) in [
            (408u16, "webhook_failed", true, "retry"),
            (425, "webhook_failed", true, "retry"),
            (429, "webhook_failed", true, "retry"),
            (500, "webhook_failed", true, "retry"),
            (503, "webhook_failed", true, "retry"),
            (400, "webhook_rejected", false, "failed"),
            (401, "webhook_rejected", false, "failed"),
            (403, "webhook_rejected", false, "failed"),
            (404, "webhook_rejected", false, "failed"),
            (422, "webhook_rejected", false, "failed"),
            (410, "webhook_gone", false, "gone"),
        ] {
            let (port, requests) =
                answering(format!("HTTP/1.1 {status} X\r\nRetry-After: 7")).await;
            let (attempt, sent) = send(
                &client,
                &fetch,
                &cfg,
                &format!("http://127.0.0.1:{port}/hook"),
                "0190a2b4-0000-7000-8000-000000000000",
                b"{}",
            )
            .await;
            let err = sent.unwrap_err();
            assert_eq!((err.code, err.retryable), (code, retryable), "{status}");
            assert_eq!(attempt.outcome, outcome, "{status}");
            assert_eq!(attempt.status, Some(status));
            assert_eq!(requests.load(Ordering::SeqCst), 1, "{status}");
            if retryable {
                assert_eq!(err.retry_after, Some(Duration::from_secs(7)), "{status}");
            }
        }
        assert_eq!(
            (1..=599).filter(|s| retryable_status(*s)).count(),
            3 + 100,
            "408, 425, 429 and 500-599"
        );
    }

    /// Webhooks follow no redirect (README, SECURITY.md): through the client the uploader
    /// uses, a receiver answering 3xx with a `Location` on another loopback server gets that
    /// server no request; the attempt is recorded as failed with the status, and not retried.
    #[tokio::test]
    async fn a_redirecting_receiver_is_not_followed_and_the_delivery_fails_for_good() {
        use std::sync::atomic::Ordering;
        for var in ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"] {
            assert!(
                std::env::var_os(var).is_none(),
                "{var} is set: this test needs direct connections"
            );
        }
        let fetch = loopback_fetch();
        let cfg = WebhookConfig::from_test_env(&Env::from_pairs([(
            "WEBHOOK_SECRET",
            "test-webhook-secret-0123456789-abcdefgh",
        )]))
        .unwrap();
        let client = crate::audio::fetch::client(&fetch, Some(cfg.timeout));
        let (target_port, target_requests) = answering("HTTP/1.1 200 OK".into()).await;
        for status in [301u16, 302, 303, 307, 308] {
            let location = format!("http://127.0.0.1:{target_port}/elsewhere");
            let (port, requests) =
                answering(format!("HTTP/1.1 {status} Moved\r\nLocation: {location}")).await;
            let (attempt, sent) = send(
                &client,
                &fetch,
                &cfg,
                &format!("http://127.0.0.1:{port}/hook"),
                "0190a2b4-0000-7000-8000-000000000000",
                b"{}",
            )
            .await;
            assert_eq!(
                target_requests.load(Ordering::SeqCst),
                0,
                "{status}: the redirect was followed"
            );
            assert_eq!(requests.load(Ordering::SeqCst), 1, "{status}: one request");
            let err = sent.unwrap_err();
            assert_eq!(
                (err.code, err.retryable),
                ("webhook_redirected", false),
                "{status}: {err}"
            );
            assert_eq!(
                err.message,
                format!("receiver answered {status}; redirects are not followed")
            );
            assert_eq!(attempt.status, Some(status));
            assert_eq!(attempt.outcome, "failed", "{status}");
            assert_eq!(attempt.error.as_deref(), Some(err.message.as_str()));
        }
        // Give a followed request time to arrive before concluding none did.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            target_requests.load(Ordering::SeqCst),
            0,
            "the redirect target got a request"
        );
    }
}
