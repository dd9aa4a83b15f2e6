//! The task model: ids, priorities, stages, lifecycle states and the task record, with the
//! record's [`field`] names and the stages' [`result`].

pub mod field;
pub mod result;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A task priority: 5 is the most urgent, 1 the least, 3 the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Priority(u8);

impl Priority {
    /// The most urgent priority.
    pub const HIGHEST: Priority = Priority(5);
    /// The least urgent priority.
    pub const LOWEST: Priority = Priority(1);

    /// A priority in `1..=5`, or `None`.
    pub fn new(p: u8) -> Option<Self> {
        (1..=5).contains(&p).then_some(Self(p))
    }

    /// The number `1..=5`.
    pub fn get(self) -> u8 {
        self.0
    }

    /// The seed's score multiplier `6 - priority`: the queue orders by
    /// `timestamp * (6 - priority)`, lowest first.
    pub fn multiplier(self) -> u8 {
        6 - self.0
    }

    /// All priorities, most urgent first.
    pub fn all() -> impl Iterator<Item = Priority> {
        (1..=5).rev().map(Priority)
    }
}

impl TryFrom<u8> for Priority {
    type Error = String;
    fn try_from(p: u8) -> Result<Self, Self::Error> {
        Priority::new(p).ok_or_else(|| format!("priority must be 1-5, got {p}"))
    }
}

impl From<Priority> for u8 {
    fn from(p: Priority) -> u8 {
        p.0
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A task id: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(String);

impl TaskId {
    /// A fresh id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TaskId {
    type Err = String;
    /// Accepts only canonical UUID text, so ids from URLs can be used in key names safely.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let u = uuid::Uuid::parse_str(s).map_err(|_| format!("not a task id: {s:?}"))?;
        Ok(Self(u.hyphenated().to_string()))
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One of the two queue stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Waiting for separation (`REDIS_TASK_QUEUE`, `uvr_tasks`).
    Separate,
    /// Waiting for upload and webhook (`REDIS_RESULT_QUEUE`, `uvr_results`).
    Deliver,
}

impl Stage {
    /// Both stages, in pipeline order.
    pub const ALL: [Stage; 2] = [Stage::Separate, Stage::Deliver];

    /// The stable label used in records, metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Separate => "separate",
            Stage::Deliver => "deliver",
        }
    }

    /// The lifecycle state of a task claimed in this stage.
    pub fn running_status(self) -> Status {
        match self {
            Stage::Separate => Status::Processing,
            Stage::Deliver => Status::Uploading,
        }
    }

    /// The lifecycle state of a task waiting in this stage.
    pub fn waiting_status(self) -> Status {
        match self {
            Stage::Separate => Status::Queued,
            Stage::Deliver => Status::Separated,
        }
    }
}

impl FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "separate" => Ok(Stage::Separate),
            "deliver" => Ok(Stage::Deliver),
            _ => Err(format!("unknown stage {s:?}")),
        }
    }
}

/// The lifecycle: `queued -> processing -> separated -> uploading -> succeeded | failed | cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for a processor.
    Queued,
    /// A processor holds the lease and is separating.
    Processing,
    /// Stems are staged; waiting for an uploader.
    Separated,
    /// An uploader holds the lease: storing stems and calling the webhook.
    Uploading,
    /// Stems stored and the webhook delivered (or given up on, see the delivery log).
    Succeeded,
    /// Out of attempts or a permanent error; see the error code.
    Failed,
    /// Cancelled by the client.
    Cancelled,
}

impl Status {
    /// The stable label stored in Redis and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Processing => "processing",
            Status::Separated => "separated",
            Status::Uploading => "uploading",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether the task has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "queued" => Status::Queued,
            "processing" => Status::Processing,
            "separated" => Status::Separated,
            "uploading" => Status::Uploading,
            "succeeded" => Status::Succeeded,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            _ => return Err(format!("unknown status {s:?}")),
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a client asked for: the request fields stored on the task record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRequest {
    /// URL of the audio to separate.
    pub audio: String,
    /// URL that receives the completion webhook (`None`: the client polls the task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_url: Option<String>,
    /// Priority 1-5.
    pub priority: Priority,
    /// Separation model name (`None`: the service default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Stems to produce (`None`: all the model has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stems: Option<Vec<String>>,
    /// Output format (`None`: the service default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_format: Option<String>,
    /// Bit rate of a lossy output format, kbps (`None`: the format's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate: Option<u32>,
    /// Sample rate of the stems (`None`: 44.1 kHz).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<OutputRate>,
    /// An ensemble's models (then `model` is unset), each run once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// How an ensemble's outputs are combined (`average`, `max_spec`, `min_spec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<String>,
    /// Who submitted it (the API user name), for scoping and auditing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// The sample rate stems are written at: a rate in Hz, or the source's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OutputRate {
    /// This rate (44100 or 48000).
    Hz(u32),
    /// The rate of the submitted audio (`"source"`).
    Source(SourceRate),
}

/// The `"source"` keyword of [`OutputRate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceRate {
    /// `"source"`.
    Source,
}

/// A task record as stored in its Redis hash, decoded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRecord {
    /// The task id.
    pub id: TaskId,
    /// Lifecycle state.
    pub status: Status,
    /// The stage the task is in.
    pub stage: Stage,
    /// The request.
    pub request: TaskRequest,
    /// Attempts made in the current stage.
    pub attempts: u32,
    /// Attempts allowed per stage.
    pub max_attempts: u32,
    /// The queue score the task holds in its stage's ZSet.
    pub score: f64,
    /// Creation time, ms since the epoch.
    pub created_at_ms: u64,
    /// Last change, ms since the epoch.
    pub updated_at_ms: u64,
    /// When the current claim started, ms since the epoch.
    pub started_at_ms: Option<u64>,
    /// When the task ended, ms since the epoch.
    pub finished_at_ms: Option<u64>,
    /// The worker holding (or last holding) the lease.
    pub worker: Option<String>,
    /// Progress 0-100 of the current stage.
    pub progress: u8,
    /// Stable error code of the last failure.
    pub error_code: Option<String>,
    /// Human-readable message of the last failure.
    pub error_message: Option<String>,
    /// Whether a cancel was requested while the task was in flight.
    pub cancel_requested: bool,
    /// What the stages left: stems, links, timings, the webhook's outcome.
    pub result: Option<result::StageResult>,
    /// Every other field of the hash (delivery log, timings...), as stored.
    pub extra: HashMap<String, String>,
}

/// A task record hash could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("task record field {field}: {reason}")]
pub struct RecordError {
    /// The field that was missing or malformed.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

impl TaskRecord {
    /// Decodes a record from the fields of its hash.
    pub fn from_fields(mut h: HashMap<String, String>) -> Result<Self, RecordError> {
        fn take(h: &mut HashMap<String, String>, f: &'static str) -> Result<String, RecordError> {
            h.remove(f).ok_or(RecordError {
                field: f,
                reason: "missing".into(),
            })
        }
        fn num<T: FromStr>(v: String, f: &'static str) -> Result<T, RecordError> {
            v.parse().map_err(|_| RecordError {
                field: f,
                reason: format!("not a number: {v:?}"),
            })
        }
        fn opt_num(
            h: &mut HashMap<String, String>,
            f: &'static str,
        ) -> Result<Option<u64>, RecordError> {
            match h.remove(f) {
                None => Ok(None),
                Some(v) if v.is_empty() => Ok(None),
                Some(v) => num(v, f).map(Some),
            }
        }
        fn opt(h: &mut HashMap<String, String>, f: &str) -> Option<String> {
            h.remove(f).filter(|v| !v.is_empty())
        }
        use field as f;
        let bad = |field: &'static str| move |reason: String| RecordError { field, reason };
        let id: TaskId = take(&mut h, f::ID)?.parse().map_err(bad(f::ID))?;
        let status: Status = take(&mut h, f::STATUS)?.parse().map_err(bad(f::STATUS))?;
        let stage: Stage = take(&mut h, f::STAGE)?.parse().map_err(bad(f::STAGE))?;
        let json = |field: &'static str| move |e: serde_json::Error| bad(field)(e.to_string());
        let request: TaskRequest =
            serde_json::from_str(&take(&mut h, f::REQUEST)?).map_err(json(f::REQUEST))?;
        let result = opt(&mut h, f::RESULT)
            .map(|v| serde_json::from_str(&v).map_err(json(f::RESULT)))
            .transpose()?;
        Ok(TaskRecord {
            id,
            status,
            stage,
            request,
            attempts: num(take(&mut h, f::ATTEMPTS)?, f::ATTEMPTS)?,
            max_attempts: num(take(&mut h, f::MAX_ATTEMPTS)?, f::MAX_ATTEMPTS)?,
            score: num(take(&mut h, f::SCORE)?, f::SCORE)?,
            created_at_ms: num(take(&mut h, f::CREATED_AT)?, f::CREATED_AT)?,
            updated_at_ms: num(take(&mut h, f::UPDATED_AT)?, f::UPDATED_AT)?,
            started_at_ms: opt_num(&mut h, f::STARTED_AT)?,
            finished_at_ms: opt_num(&mut h, f::FINISHED_AT)?,
            worker: opt(&mut h, f::WORKER),
            progress: opt_num(&mut h, f::PROGRESS)?.unwrap_or(0).min(100) as u8,
            error_code: opt(&mut h, f::ERROR_CODE),
            error_message: opt(&mut h, f::ERROR_MESSAGE),
            cancel_requested: opt(&mut h, f::CANCEL_REQUESTED).is_some_and(|v| v == "1"),
            result,
            extra: {
                h.remove(f::TOKEN);
                h.remove(f::LEASE_UNTIL);
                h
            },
        })
    }

    /// When separation ended (the task moved to the deliver stage), ms since the epoch.
    pub fn separated_at_ms(&self) -> Option<u64> {
        self.extra.get(field::SEPARATED_AT)?.parse().ok()
    }

    /// The webhook delivery log, oldest attempt first (empty until one is made).
    pub fn webhook_log(&self) -> Vec<result::DeliveryAttempt> {
        self.extra
            .get(field::WEBHOOK_LOG)
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_bounds_and_multiplier() {
        assert!(Priority::new(0).is_none());
        assert!(Priority::new(6).is_none());
        assert_eq!(Priority::new(5).unwrap().multiplier(), 1);
        assert_eq!(Priority::new(1).unwrap().multiplier(), 5);
        let all: Vec<u8> = Priority::all().map(Priority::get).collect();
        assert_eq!(all, vec![5, 4, 3, 2, 1]);
    }

    #[test]
    fn task_ids_are_canonical_uuids() {
        let id = TaskId::generate();
        assert_eq!(id.as_str().parse::<TaskId>().unwrap(), id);
        assert!("../../etc".parse::<TaskId>().is_err());
        assert!("*".parse::<TaskId>().is_err());
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            Status::Queued,
            Status::Processing,
            Status::Separated,
            Status::Uploading,
            Status::Succeeded,
            Status::Failed,
            Status::Cancelled,
        ] {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), s);
        }
    }
}
