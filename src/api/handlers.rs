//! Route table and handlers.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{ApiError, AppState, MetricsAccess, Throttle};
use crate::actors::intake::{ClientLimits, Submit};
use crate::actors::scheduler::{GetTask, Info, LiveWorkers, Stats};
use crate::task::{TaskId, TaskRecord};

/// The OpenAPI document.
pub const OPENAPI: &str = include_str!("openapi.json");
const DOCS: &str = include_str!("docs.html");

/// The one `Authorization` header of a request; two or more are refused (which one a proxy
/// in front would honour is anyone's guess).
fn authorization(req: &HttpRequest) -> Result<Option<&str>, ApiError> {
    let mut values = req.headers().get_all(header::AUTHORIZATION);
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ambiguous_authorization",
            "send one Authorization header, not several",
        ));
    }
    Ok(first.and_then(|v| v.to_str().ok()))
}

/// Who is calling: the administrator (`API_USERNAME`), who sees every task, or a client of
/// `API_KEYS_FILE`, who sees its own.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    /// The name tasks are submitted under (their `owner`).
    pub name: String,
    /// Whether this is the administrator.
    pub admin: bool,
    /// A client's own limits (none for the administrator).
    pub limits: ClientLimits,
}

impl Caller {
    /// Whether the caller may see and cancel `rec`.
    pub fn owns(&self, rec: &TaskRecord) -> bool {
        self.admin || rec.request.owner.as_deref() == Some(self.name.as_str())
    }

    /// Refuses a client on the administrator's routes.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route is the administrator's (API_USERNAME), not a client key's",
        ))
    }
}

/// Checks the caller's credentials: the administrator's, or a client key. An address that
/// failed `AUTH_FAILURES_PER_MINUTE` times within the minute is refused before its
/// credentials are looked at, so the right password found by guessing does not work either
/// until the window has passed.
pub(super) fn authenticate(req: &HttpRequest, st: &AppState) -> Result<Caller, ApiError> {
    let header = authorization(req)?;
    let mut caller = None;
    let verify = |h: Option<&str>| {
        caller = match st.credentials.verify(h) {
            Some(admin) => Some(Caller {
                name: admin.to_string(),
                admin: true,
                limits: ClientLimits::default(),
            }),
            None => st.keys.verify(h).map(|(name, limits)| Caller {
                name,
                admin: false,
                limits,
            }),
        };
        caller.is_some()
    };
    check_credentials(req, &st.throttle, verify, header)?;
    caller.ok_or_else(ApiError::unauthorized)
}

/// Runs `verify` on `header` under the failed-login throttle of the caller's address.
fn check_credentials(
    req: &HttpRequest,
    throttle: &Throttle,
    verify: impl FnOnce(Option<&str>) -> bool,
    header: Option<&str>,
) -> Result<(), ApiError> {
    let ip = req.peer_addr().map(|a| a.ip());
    if let Some(wait) = ip.and_then(|ip| throttle.blocked(ip)) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_auth_failures",
            "too many failed logins from this address; retry later",
        )
        .retry_after(wait));
    }
    if verify(header) {
        return Ok(());
    }
    // A request without credentials is a client finding out it needs them, not a guess.
    if header.is_some()
        && let Some(ip) = ip
        && throttle.failed(ip)
    {
        tracing::warn!(%ip, "failed-login limit reached; the address is throttled");
        crate::metrics::auth_throttled();
    }
    Err(ApiError::unauthorized())
}

pub(super) fn unavailable(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        format!("{what} is unavailable; retry later"),
    )
    .retry_after(Duration::from_secs(2))
}

/// Checks that a body is declared as JSON: `Content-Type` `application/json` or any
/// `application/*+json`, parameters ignored (a missing header is `""`).
pub fn check_json_content_type(content_type: &str) -> Result<(), ApiError> {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/json" && !(mime.starts_with("application/") && mime.ends_with("+json"))
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON (Content-Type: application/json)",
        ));
    }
    Ok(())
}

/// Parses a body that is within the size limit as JSON.
pub fn parse_json_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// Reads the body, enforcing the content type and the size limit.
async fn json_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Value, ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Err(e) = check_json_content_type(ct) {
        super::upload::drain_body(payload).await;
        return Err(e);
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(512).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_body",
                format!("could not read the body: {e}"),
            )
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    parse_json_body(&body)
}

pub(super) async fn generate(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = authenticate(&req, &st)?;
    let (user, limits) = (caller.name, caller.limits);
    // A form carries the audio file itself (stored as an upload); a JSON body a URL or an
    // earlier upload's reference.
    let (body, stored) = if super::upload::is_multipart(&req) {
        let form = super::upload::read_form(&req, payload, &st.uploads).await?;
        (Value::Object(form.fields), form.upload.map(|(id, _)| id))
    } else {
        let body = json_body(&req, payload, st.max_request_bytes).await?;
        if let Some(reference) = body.get("audio").and_then(Value::as_str)
            && st.uploads.resolve(reference).is_some_and(|p| !p.is_file())
        {
            return Err(ApiError::invalid(
                "audio",
                "unknown_upload",
                "no such upload (it expired, or was used by a task that has ended)",
            ));
        }
        (body, None)
    };
    // A stored upload that does not become a new task is not kept.
    let discard = |st: &AppState| {
        if let Some(id) = &stored {
            let _ = std::fs::remove_file(st.uploads.path(id));
        }
    };
    let idempotency_key = match req.headers().get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_idempotency_key",
                        "Idempotency-Key must be visible ASCII",
                    )
                })
                .inspect_err(|_| discard(&st))?
                .to_string(),
        ),
    };
    let accepted = match st
        .intake
        .send(Submit {
            user,
            limits,
            body,
            idempotency_key,
        })
        .await
    {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            discard(&st);
            return Err(e.into());
        }
        Err(_) => {
            discard(&st);
            return Err(unavailable("the intake"));
        }
    };
    if !accepted.created {
        discard(&st);
    }
    let location = format!("/tasks/{}", accepted.id);
    let model = match &accepted.request.ensemble {
        Some(algorithm) => format!("ensemble:{algorithm}"),
        None => accepted
            .request
            .model
            .clone()
            .unwrap_or_else(|| st.catalog.current().default.clone()),
    };
    let mut body = json!({
        "task_id": accepted.id,
        "status": "queued",
        "priority": accepted.request.priority,
        "model": model,
        "created": accepted.created,
        "message": "task queued",
        "links": {"self": location},
    });
    let mut resp = HttpResponse::Accepted();
    if !accepted.created {
        // A replay: report where the task is now.
        if let Ok((rec, _)) = st.scheduler.ask(GetTask(accepted.id.clone())).await {
            body["status"] = json!(rec.status);
            body["priority"] = json!(rec.request.priority);
            body["model"] = json!(
                rec.request
                    .model
                    .unwrap_or_else(|| st.catalog.current().default.clone())
            );
        }
        body["message"] = json!("task already submitted with this Idempotency-Key");
        resp.insert_header(("Idempotency-Replayed", "true"));
    }
    Ok(resp.insert_header((header::LOCATION, location)).json(body))
}

pub(super) fn parse_id(raw: &str) -> Result<TaskId, ApiError> {
    raw.parse().map_err(|_| ApiError::task_not_found(raw))
}

/// `POST /admin/dead/{id}/requeue`: a dead letter goes back to the separation queue.
pub(super) async fn requeue_dead(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authenticate(&req, &st)?.require_admin()?;
    let id = parse_id(&path)?;
    st.scheduler
        .ask(crate::actors::scheduler::RequeueDead(id.clone()))
        .await?;
    tracing::info!(task = %id, "dead letter requeued");
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/tasks/{id}")))
        .json(json!({"task_id": id, "status": "queued", "message": "requeued for separation"})))
}

pub(super) async fn queue_stats(
    req: HttpRequest,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authenticate(&req, &st)?;
    let stats = st.scheduler.ask(Stats).await?;
    Ok(HttpResponse::Ok().json(stats))
}

pub(super) async fn models(
    req: HttpRequest,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authenticate(&req, &st)?;
    let mut listing = serde_json::to_value(&*st.catalog.current()).unwrap_or_default();
    listing["presets"] = serde_json::to_value(&*st.presets).unwrap_or_default();
    Ok(HttpResponse::Ok().json(listing))
}

/// Live workers are those with a heartbeat within this window.
const WORKER_WINDOW: Duration = Duration::from_secs(60);

/// `/health`: the overall status and whether Redis is reachable for anyone; the details
/// (Redis version and memory, queues, workers, models) only with the API credentials.
pub(super) async fn health(
    req: HttpRequest,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // The details are the administrator's; a client key sees the public view.
    let detailed = match authorization(&req)? {
        None => false,
        Some(_) => authenticate(&req, &st)?.admin,
    };
    let (info, stats, workers) = tokio::join!(
        st.scheduler.ask(Info),
        st.scheduler.ask(Stats),
        st.scheduler.ask(LiveWorkers(WORKER_WINDOW)),
    );
    let ready = st.ready.load(std::sync::atomic::Ordering::SeqCst);
    let redis = match &info {
        Ok(i) => json!({
            "status": "ok",
            "reachable": true,
            "latency_ms": i.latency_ms,
            "version": i.version,
            "persistence": i.persistence,
            "used_memory_bytes": i.used_memory_bytes,
        }),
        Err(e) => json!({
            "status": "unavailable",
            "reachable": false,
            "error": e.to_string(),
        }),
    };
    crate::metrics::redis_up(info.is_ok());
    let healthy = info.is_ok() && ready;
    let body = json!({
        "status": if healthy { "ok" } else if ready { "unavailable" } else { "shutting_down" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": st.started.elapsed().as_secs(),
        "redis": redis,
        "queues": stats.ok(),
        "workers": workers.ok(),
        "models": &*st.catalog.current(),
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = if detailed {
        body
    } else {
        json!({
            "status": body["status"],
            "redis": {"reachable": info.is_ok()},
        })
    };
    Ok(HttpResponse::build(status).json(body))
}

pub(super) async fn livez() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub(super) async fn readyz(st: web::Data<AppState>) -> HttpResponse {
    let ready = st.ready.load(std::sync::atomic::Ordering::SeqCst);
    let redis = st.scheduler.health().is_healthy();
    let body = json!({"ready": ready && redis, "accepting": ready, "redis": redis});
    if ready && redis {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `/metrics`, on the API and on the metrics listener of a process without it.
pub(super) async fn metrics(
    req: HttpRequest,
    access: web::Data<MetricsAccess>,
) -> Result<HttpResponse, ApiError> {
    if let Some(token) = &access.token {
        let header = authorization(&req)?;
        check_credentials(&req, &access.throttle, |h| token.verify(h), header)
            .map_err(|e| e.www_authenticate("Bearer realm=\"metrics\""))?;
    }
    // Refresh the queue gauges; a Redis outage shows as uvr_redis_up 0, not as an error.
    let up = access.scheduler.ask(Stats).await.is_ok();
    crate::metrics::redis_up(up);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(access.recorder.render()))
}

pub(super) async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(OPENAPI)
}

/// The docs page's Content-Security-Policy: its own inline script and style (named by their
/// SHA-256, so no other inline code runs), the document fetched from this origin, nothing
/// else (no frames, forms, plugins or other origins).
pub fn docs_csp() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        use base64::Engine;
        use sha2::Digest;
        let hash = |open: &str, close: &str| {
            let start = DOCS.find(open).map(|i| i + open.len()).unwrap_or(0);
            let end = DOCS[start..].find(close).map_or(start, |i| start + i);
            let digest = sha2::Sha256::digest(&DOCS.as_bytes()[start..end]);
            format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        };
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash("<script>", "</script>"),
            hash("<style>", "</style>")
        )
    })
}

pub(super) async fn docs() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::html())
        .insert_header((header::CONTENT_SECURITY_POLICY, docs_csp()))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .body(DOCS)
}

pub(super) async fn index() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "service": "uvr",
        "version": env!("CARGO_PKG_VERSION"),
        "docs": "/docs",
        "openapi": "/openapi.json",
        "health": "/health",
    }))
}

/// The methods a known path takes (for 405's `Allow`), or `None` for an unknown path.
fn allowed_methods(path: &str) -> Option<&'static str> {
    let single = |rest: &str| !rest.is_empty() && !rest.contains('/');
    match path {
        "/generate" | "/uploads" => Some("POST"),
        "/tasks" | "/queue" | "/models" | "/health" | "/livez" | "/readyz" | "/metrics"
        | "/openapi.json" | "/docs" | "/" => Some("GET"),
        _ => {
            if let Some(rest) = path.strip_prefix("/tasks/") {
                let parts: Vec<&str> = rest.split('/').collect();
                return match parts.as_slice() {
                    [id] if !id.is_empty() => Some("GET, DELETE"),
                    [id, "stems", name] if !id.is_empty() && !name.is_empty() => Some("GET"),
                    _ => None,
                };
            }
            if let Some(rest) = path.strip_prefix("/files/") {
                let parts: Vec<&str> = rest.split('/').collect();
                return (parts.len() == 2 && parts.iter().all(|p| !p.is_empty()))
                    .then_some("GET, HEAD");
            }
            path.strip_prefix("/admin/dead/")
                .and_then(|rest| rest.strip_suffix("/requeue"))
                .is_some_and(single)
                .then_some("POST")
        }
    }
}

/// No route: 405 with `Allow` (RFC 9110) for a known path, 404 otherwise.
pub(super) async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let path = req.path();
    Err(match allowed_methods(path) {
        Some(allow) => ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!(
                "{} is not allowed on {path} (allowed: {allow})",
                req.method()
            ),
        )
        .allow(allow),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route {path}"),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_are_recognised() {
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            " application/vnd.uvr+json ",
        ] {
            assert!(check_json_content_type(ct).is_ok(), "{ct}");
        }
        for ct in ["", "text/json", "application/xml", "json", "+json"] {
            assert_eq!(
                check_json_content_type(ct).unwrap_err().code,
                "unsupported_media_type",
                "{ct}"
            );
        }
    }

    #[test]
    fn bodies_that_are_not_json_are_malformed() {
        assert!(parse_json_body(br#"{"a": [1, 2.5, null]}"#).is_ok());
        for body in [
            &b""[..],
            b"{",
            b"\xff\xfe",
            b"{\"a\": 1} trailing",
            b"[1e999999]",
        ] {
            let err = parse_json_body(body).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert_eq!(err.code, "malformed_json");
        }
    }
}
