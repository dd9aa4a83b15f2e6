//! The task routes: `GET /tasks` (the caller's own, a page at a time), `GET /tasks/{id}` and
//! `DELETE /tasks/{id}`, and the public view of a task they share. A client key sees only
//! its own tasks; another client's task is "not found" to it.

use std::time::{Duration, UNIX_EPOCH};

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::handlers::{authenticate, parse_id};
use super::{ApiError, AppState};
use crate::actors::scheduler::{Cancel, GetTask};
use crate::queue::CancelOutcome;
use crate::task::result::{DeliveryAttempt, StageResult, TaskError};
use crate::task::{Priority, Stage, Status, TaskId, TaskRecord};

/// The task `raw_id` names, for an authenticated caller who may see it: its id, record and
/// position while it waits. Another client's task is "not found" to it, as if it did not
/// exist.
pub(super) async fn owned_task(
    req: &HttpRequest,
    st: &AppState,
    raw_id: &str,
) -> Result<(TaskId, TaskRecord, Option<u64>), ApiError> {
    let caller = authenticate(req, st)?;
    let id = parse_id(raw_id)?;
    let (rec, position) = st.scheduler.ask(GetTask(id.clone())).await?;
    if !caller.owns(&rec) {
        return Err(ApiError::task_not_found(id.as_str()));
    }
    Ok((id, rec, position))
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The public view of a task (the OpenAPI schema `Task`, checked against this type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// The task.
    pub task_id: TaskId,
    /// Lifecycle state.
    pub status: Status,
    /// The stage it is in.
    pub stage: Stage,
    /// Its priority.
    pub priority: Priority,
    /// 0-based position in its stage's queue while it waits there.
    pub position: Option<u64>,
    /// Progress 0-100 of the current stage.
    pub progress: u8,
    /// Attempts made in the current stage.
    pub attempts: u32,
    /// Attempts allowed per stage.
    pub max_attempts: u32,
    /// The worker holding, or last holding, the lease.
    pub worker: Option<String>,
    /// A cancel was requested.
    pub cancel_requested: bool,
    /// RFC 3339 times.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// When the current claim started.
    pub started_at: Option<String>,
    /// When the task ended.
    pub finished_at: Option<String>,
    /// The last failure, unless the task got past it and succeeded.
    pub error: Option<TaskError>,
    /// What the stages left.
    pub result: Option<StageResult>,
    /// The webhook delivery log, oldest first.
    pub webhook_deliveries: Vec<DeliveryAttempt>,
    /// The request, without user info or query values.
    pub request: RequestView,
}

/// The request as a task view shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestView {
    /// The audio URL, redacted.
    pub audio: String,
    /// The webhook URL, redacted.
    pub hook_url: Option<String>,
    /// The model asked for.
    pub model: Option<String>,
    /// An ensemble's models.
    pub models: Option<Vec<String>>,
    /// An ensemble's algorithm.
    pub ensemble: Option<String>,
    /// The stems asked for.
    pub stems: Option<Vec<String>>,
    /// The output format asked for.
    pub output_format: Option<String>,
}

impl TaskView {
    /// The view of `rec`, at `position` in its queue.
    pub fn new(rec: &TaskRecord, position: Option<u64>) -> Self {
        // The last error, unless the task got past it and succeeded.
        let error = (rec.error_code.is_some() && rec.status != Status::Succeeded)
            .then(|| TaskError::of(rec));
        Self {
            task_id: rec.id.clone(),
            status: rec.status,
            stage: rec.stage,
            priority: rec.request.priority,
            position,
            progress: rec.progress,
            attempts: rec.attempts,
            max_attempts: rec.max_attempts,
            worker: rec.worker.clone(),
            cancel_requested: rec.cancel_requested,
            created_at: rfc3339(rec.created_at_ms),
            updated_at: rfc3339(rec.updated_at_ms),
            started_at: rec.started_at_ms.map(rfc3339),
            finished_at: rec.finished_at_ms.map(rfc3339),
            error,
            result: rec.result.clone(),
            webhook_deliveries: rec.webhook_log(),
            // Shown without user info or query values; the record keeps the full URLs for
            // the fetch and the webhook only.
            request: RequestView {
                audio: crate::net::redact_str(&rec.request.audio),
                hook_url: rec.request.hook_url.as_deref().map(crate::net::redact_str),
                model: rec.request.model.clone(),
                models: rec.request.models.clone(),
                ensemble: rec.request.ensemble.clone(),
                stems: rec.request.stems.clone(),
                output_format: rec.request.output_format.clone(),
            },
        }
    }
}

pub(super) async fn get_task(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (_, rec, position) = owned_task(&req, &st, &path).await?;
    Ok(HttpResponse::Ok().json(TaskView::new(&rec, position)))
}

/// `GET /tasks`: the caller's own tasks, newest first, a page at a time
/// (`?limit=1-100`, default 20; `?status=`; `?before=<cursor>` from the previous page's `next`).
pub(super) async fn list_tasks(
    req: HttpRequest,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = authenticate(&req, &st)?;
    let bad = |field: &'static str, message: &str| {
        ApiError::invalid(field, "invalid_query", message.to_string())
    };
    let mut query = std::collections::HashMap::new();
    for (key, value) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        let field = match key.as_ref() {
            "limit" => "limit",
            "status" => "status",
            "before" => "before",
            _ => return Err(bad("query", "the parameters are limit, status and before")),
        };
        if query.insert(field, value.into_owned()).is_some() {
            return Err(bad(field, "give each parameter once"));
        }
    }
    let limit = match query.get("limit") {
        None => 20,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| bad("limit", "limit is an integer 1-100"))?,
    };
    let status = query
        .get("status")
        .map(|v| v.parse::<crate::task::Status>())
        .transpose()
        .map_err(|_| {
            bad(
                "status",
                "status is queued, processing, separated, uploading, succeeded, failed or cancelled",
            )
        })?;
    let before = query
        .get("before")
        .map(|v| v.parse::<u64>())
        .transpose()
        .map_err(|_| bad("before", "before is the next value of a previous page"))?;
    let (records, next) = st
        .scheduler
        .ask(crate::actors::scheduler::ListOwned {
            owner: caller.name,
            status,
            before,
            limit,
        })
        .await?;
    let tasks: Vec<TaskView> = records.iter().map(|r| TaskView::new(r, None)).collect();
    Ok(HttpResponse::Ok().json(json!({"tasks": tasks, "next": next.map(|n| n.to_string())})))
}

pub(super) async fn cancel_task(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (id, _, _) = owned_task(&req, &st, &path).await?;
    let outcome = st.scheduler.ask(Cancel(id.clone())).await?;
    let (status, message) = match outcome {
        CancelOutcome::Cancelled => ("cancelled", "task cancelled"),
        CancelOutcome::Requested => (
            "cancel_requested",
            "task is running; it stops at its next checkpoint",
        ),
    };
    Ok(HttpResponse::Accepted().json(json!({"task_id": id, "status": status, "message": message})))
}
