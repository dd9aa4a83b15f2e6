//! The field names of a task record's Redis hash (`uvr_tasks:task:<id>`), declared once.
//! Rust code names a field through these constants; the Lua scripts write the same names,
//! and a test of the queue holds every field they touch to this list.

/// The task id.
pub const ID: &str = "id";
/// Lifecycle state ([`super::Status`]).
pub const STATUS: &str = "status";
/// The stage the task is in ([`super::Stage`]).
pub const STAGE: &str = "stage";
/// Priority 1-5 (also inside the request; kept apart for the scripts' scores).
pub const PRIORITY: &str = "priority";
/// The request as JSON ([`super::TaskRequest`]).
pub const REQUEST: &str = "request";
/// Attempts made in the current stage.
pub const ATTEMPTS: &str = "attempts";
/// Attempts allowed in the current stage.
pub const MAX_ATTEMPTS: &str = "max_attempts";
/// The score the task holds in its stage's ZSet.
pub const SCORE: &str = "score";
/// Creation time, ms since the epoch.
pub const CREATED_AT: &str = "created_at";
/// Last change, ms since the epoch.
pub const UPDATED_AT: &str = "updated_at";
/// When the task entered the separate stage, ms since the epoch.
pub const QUEUED_AT: &str = "queued_at";
/// When the current claim started, ms since the epoch.
pub const STARTED_AT: &str = "started_at";
/// When separation ended and the task moved to the deliver stage, ms since the epoch.
pub const SEPARATED_AT: &str = "separated_at";
/// When a failed attempt is retried, ms since the epoch.
pub const RETRY_AT: &str = "retry_at";
/// When the task ended, ms since the epoch.
pub const FINISHED_AT: &str = "finished_at";
/// The worker holding (or last holding) the lease.
pub const WORKER: &str = "worker";
/// The fencing token of the current claim (empty when unclaimed).
pub const TOKEN: &str = "token";
/// The current lease's deadline, ms since the epoch.
pub const LEASE_UNTIL: &str = "lease_until";
/// Progress 0-100 of the current stage.
pub const PROGRESS: &str = "progress";
/// Stable code of the last failure.
pub const ERROR_CODE: &str = "error_code";
/// Message of the last failure.
pub const ERROR_MESSAGE: &str = "error_message";
/// `1` once a cancel was requested while the task was in flight.
pub const CANCEL_REQUESTED: &str = "cancel_requested";
/// The stage result as JSON ([`super::result::StageResult`]).
pub const RESULT: &str = "result";
/// The webhook delivery log: a JSON list of attempts, oldest first.
pub const WEBHOOK_LOG: &str = "webhook_log";
/// The failure notice of a task that failed separation: `pending`, then `done`.
pub const NOTIFY: &str = "notify";

/// Every field, in the order above.
pub const ALL: [&str; 25] = [
    ID,
    STATUS,
    STAGE,
    PRIORITY,
    REQUEST,
    ATTEMPTS,
    MAX_ATTEMPTS,
    SCORE,
    CREATED_AT,
    UPDATED_AT,
    QUEUED_AT,
    STARTED_AT,
    SEPARATED_AT,
    RETRY_AT,
    FINISHED_AT,
    WORKER,
    TOKEN,
    LEASE_UNTIL,
    PROGRESS,
    ERROR_CODE,
    ERROR_MESSAGE,
    CANCEL_REQUESTED,
    RESULT,
    WEBHOOK_LOG,
    NOTIFY,
];
