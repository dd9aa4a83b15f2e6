//! What the stages leave on a task record (its `result` field): the processor writes the
//! separation's summary with the staged stems, the uploader replaces each stem's staged file
//! by its stored key and signed link, adds its timing and the webhook's outcome. Clients see
//! it as the task's `result` (the OpenAPI schema `Result`, checked against this type).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A stage result. Every field has a default, so a record written by an older version (or
/// a failed task with no result at all) reads as a result with the fields it has.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StageResult {
    /// The model that separated the audio.
    pub model: Option<String>,
    /// Its family (`builtin`, `mdx`, `roformer`, `ensemble`).
    pub family: Option<String>,
    /// Stem name -> its file.
    pub stems: BTreeMap<String, Stem>,
    /// Output format (`wav`, `flac`, `mp3`, `opus`).
    pub format: Option<String>,
    /// Sample rate of the stems, Hz.
    pub sample_rate: Option<u32>,
    /// Bit rate of a lossy format, kbps.
    pub bitrate: Option<u32>,
    /// Length of the input, seconds.
    pub duration_seconds: Option<f64>,
    /// Sample rate of the submitted audio, Hz.
    pub source_sample_rate: Option<u32>,
    /// Seconds spent in each phase.
    pub timings: Timings,
    /// Separation time over audio length.
    pub realtime_factor: Option<f64>,
    /// An ensemble's models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// How an ensemble's outputs were combined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<String>,
    /// What became of the webhook (set when the task is delivered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookOutcome>,
}

/// One stem: staged by the processor (`file`), then stored by the uploader (`key`, `url`,
/// `expires_at`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stem {
    /// The staged file, relative to the staging directory (until stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Download URL (once stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// When `url` stops working, RFC 3339 (once stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// File size.
    pub bytes: u64,
    /// Hex SHA-256 of the file.
    pub sha256: String,
    /// The storage key (once stored): later attempts sign fresh links for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Seconds spent in each phase; a phase not reached is absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timings {
    /// Loading the model (0 when it was loaded already).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_seconds: Option<f64>,
    /// Fetching, decoding, separating and writing the stems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub separation_seconds: Option<f64>,
    /// The whole processor attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processing_seconds: Option<f64>,
    /// Storing the stems and signing their links.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_seconds: Option<f64>,
}

/// What became of a task's webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookOutcome {
    /// How delivery ended.
    pub state: WebhookState,
    /// Delivery attempts made.
    pub attempts: u32,
}

/// How a task's webhook delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookState {
    /// The task has no webhook: the client polls.
    None,
    /// The receiver acknowledged it.
    Delivered,
    /// The receiver answered 410 Gone.
    Gone,
    /// Every attempt failed.
    GaveUp,
    /// The receiver refused it for good (a 4xx other than 408, 425, 429 and 410, or a
    /// redirect).
    Refused,
}

/// One webhook delivery attempt, as the task's delivery log keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    /// When (RFC 3339).
    pub at: String,
    /// HTTP status, when there was a response.
    pub status: Option<u16>,
    /// Round trip in milliseconds.
    pub duration_ms: u64,
    /// How the attempt ended.
    pub outcome: DeliveryOutcome,
    /// What went wrong.
    pub error: Option<String>,
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// The receiver acknowledged it (2xx).
    Delivered,
    /// It failed and will be tried again.
    Retry,
    /// The receiver answered 410 Gone.
    Gone,
    /// It failed for good (refused, redirected, or not worth retrying).
    Failed,
}

impl DeliveryOutcome {
    /// The label in the log and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retry => "retry",
            Self::Gone => "gone",
            Self::Failed => "failed",
        }
    }
}

impl PartialEq<&str> for DeliveryOutcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The last failure of a task, as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    /// Stable code.
    pub code: Option<String>,
    /// Message for humans.
    pub message: Option<String>,
}

impl TaskError {
    /// The last failure recorded on `rec`.
    pub fn of(rec: &super::TaskRecord) -> Self {
        Self {
            code: rec.error_code.clone(),
            message: rec.error_message.clone(),
        }
    }
}

/// Seconds rounded to milliseconds, as results show them.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Results keep their JSON shape: a staged stem and a stored one, an ensemble's fields,
    /// and a record with no result of its own but the webhook's outcome.
    #[test]
    fn results_read_and_write_their_json_shape() {
        let staged = serde_json::json!({
            "model": "dsp-centre", "family": "builtin",
            "stems": {"vocals": {"file": "t/1/vocals.wav", "bytes": 10, "sha256": "ab"}},
            "format": "wav", "sample_rate": 44100, "bitrate": null, "duration_seconds": 1.5,
            "source_sample_rate": 48000,
            "timings": {"model_seconds": 0.0, "separation_seconds": 0.25},
            "realtime_factor": 0.167,
        });
        let r: StageResult = serde_json::from_value(staged.clone()).unwrap();
        assert_eq!(r.stems["vocals"].file.as_deref(), Some("t/1/vocals.wav"));
        assert_eq!(serde_json::to_value(&r).unwrap(), staged);

        let only_webhook = serde_json::json!({"webhook": {"state": "gave_up", "attempts": 15}});
        let r: StageResult = serde_json::from_value(only_webhook).unwrap();
        assert_eq!(r.webhook.unwrap().state, WebhookState::GaveUp);
        assert!(r.stems.is_empty() && r.model.is_none());

        let stored = serde_json::json!({"url": "https://x/y", "expires_at": "2026-01-01T00:00:00Z",
            "bytes": 3, "sha256": "cd", "key": "t/vocals.wav"});
        let s: Stem = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), stored);
        assert!(serde_json::from_value::<Stem>(serde_json::json!({"file": "f"})).is_err());
    }
}
