//! The API's error type: every rejection is `{"error": {"code", "message"[, "field"]}}` with
//! a stable code and the matching status; the mapping from each layer's errors lives here.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::actors::intake::IntakeError;
use crate::queue::QueueError;

/// An HTTP error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Message for humans.
    pub message: String,
    /// The request field at fault, for 422s.
    pub field: Option<&'static str>,
    /// `Retry-After` seconds, for 429 and 503.
    pub retry_after: Option<u64>,
    /// The `WWW-Authenticate` challenge of a 401 (HTTP Basic unless set).
    pub challenge: Option<&'static str>,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
            challenge: None,
            allow: None,
        }
    }

    /// Sets the `Allow` header a 405 carries.
    pub fn allow(mut self, methods: &'static str) -> Self {
        self.allow = Some(methods);
        self
    }

    /// 422 for the request field `field`.
    pub fn invalid(field: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message);
        e.field = Some(field);
        e
    }

    /// Sets the `WWW-Authenticate` challenge a 401 carries.
    pub fn www_authenticate(mut self, challenge: &'static str) -> Self {
        self.challenge = Some(challenge);
        self
    }

    /// Adds a `Retry-After`.
    pub fn retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d.as_secs_f64().ceil().max(1.0) as u64);
        self
    }

    /// 401 with `WWW-Authenticate`.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "valid HTTP Basic credentials are required",
        )
    }

    /// 404 for an unknown task.
    pub fn task_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "task_not_found",
            format!("no task {id:?} (unknown, or expired after its retention)"),
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = json!({"code": self.code, "message": self.message});
        if let Some(field) = self.field {
            body["field"] = json!(field);
        }
        let mut resp = HttpResponse::build(self.status);
        if let Some(s) = self.retry_after {
            resp.insert_header((header::RETRY_AFTER, s.to_string()));
        }
        if let Some(methods) = self.allow {
            resp.insert_header((header::ALLOW, HeaderValue::from_static(methods)));
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The unread rest of the body is still on the wire: the connection cannot be
            // reused, so say so instead of letting the next request on it fail.
            resp.force_close();
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.insert_header((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    self.challenge
                        .unwrap_or("Basic realm=\"uvr\", charset=\"UTF-8\""),
                ),
            ));
        }
        resp.json(json!({ "error": body }))
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match &e {
            QueueError::NotFound(id) => ApiError::task_not_found(id.as_str()),
            QueueError::NotDeadLettered(id) => ApiError::new(
                StatusCode::CONFLICT,
                "not_dead_lettered",
                format!("task {id} is not a dead letter; only dead letters can be requeued"),
            ),
            QueueError::IdempotencyKeyReused(id) => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                format!(
                    "this Idempotency-Key was used for task {id} with a different request; \
                     use a new key for a new request"
                ),
            ),
            QueueError::AlreadyFinished { .. } => {
                ApiError::new(StatusCode::CONFLICT, e.code(), e.to_string())
            }
            QueueError::Full { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.code(), e.to_string())
                    .retry_after(Duration::from_secs(5))
            }
            e if e.is_unavailable() => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                e.code(),
                "the queue (Redis) is unavailable; retry later",
            )
            .retry_after(Duration::from_secs(2)),
            e => {
                tracing::error!(error = %e, "queue error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "internal error",
                )
            }
        }
    }
}

impl From<IntakeError> for ApiError {
    fn from(e: IntakeError) -> Self {
        match e {
            IntakeError::Invalid {
                field,
                code,
                message,
            } => ApiError::invalid(field, code, message),
            IntakeError::RateLimited { retry_after } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many submissions for this credential; slow down",
            )
            .retry_after(retry_after),
            IntakeError::QueueFull { depth } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_full",
                format!("the queue is full ({depth} tasks waiting); retry later"),
            )
            .retry_after(Duration::from_secs(5)),
            IntakeError::Queue(e) => e.into(),
        }
    }
}
