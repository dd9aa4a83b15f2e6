//! The API case table: a request body (JSON, raw or chunked), optional headers, and the answer
//! it must get; [`run_api_table`] sends each case to an in-process app ([`spawn_app`]) and
//! checks the answer, what is stored in Redis and that `/health` still answers.
//!
//! [`spawn_app`]: crate::common::spawn_app

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::TestApp;
use crate::common::client::{ApiClient, Auth};

/// A request body as sent.
pub(crate) enum Body {
    /// JSON, `Content-Type: application/json`.
    Json(Value),
    /// Raw bytes with an optional content type, with a `Content-Length`.
    Raw(Option<&'static str>, Vec<u8>),
    /// Raw JSON bytes sent chunked, without a `Content-Length`.
    Chunked(Vec<u8>),
}

/// What the API must answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Answer {
    /// Rejected with this status and code, naming this field (or none).
    Reject(u16, &'static str, Option<&'static str>),
    /// Accepted (202), one task stored, its URLs stored in ASCII form.
    Accept,
}

pub(crate) struct ApiCase {
    pub(crate) name: String,
    pub(crate) body: Body,
    pub(crate) headers: Vec<(&'static str, Vec<u8>)>,
    pub(crate) answer: Answer,
}

pub(crate) const AUDIO: &str = "https://93.184.215.14/audio.wav";
pub(crate) const HOOK: &str = "https://93.184.215.14/hook";

pub(crate) fn case(name: impl Into<String>, body: Body, answer: Answer) -> ApiCase {
    ApiCase {
        name: name.into(),
        body,
        headers: Vec::new(),
        answer,
    }
}

/// `{"audio", "hook_url"}` valid, with `field` set to `value` (or removed when `value` is
/// `None`).
pub(crate) fn with(field: &str, value: Option<Value>) -> Value {
    let mut body = json!({"audio": AUDIO, "hook_url": HOOK});
    match value {
        Some(v) => body[field] = v,
        None => {
            body.as_object_mut().unwrap().remove(field);
        }
    }
    body
}

pub(crate) fn reject422(code: &'static str, field: &'static str) -> Answer {
    Answer::Reject(422, code, Some(field))
}

/// Runs the table against one app: each case answers as expected, stores nothing when rejected
/// (exactly one task when accepted), and `/health` answers 200 after it. Every mismatch is
/// collected, so one run reports all of them.
pub(crate) async fn run_api_table(app: &TestApp, cases: Vec<ApiCase>) {
    let api = ApiClient::for_app(&app.base);
    let anonymous = api.with_auth(Auth::None);
    let mut failures = Vec::new();
    let mut lines = Vec::new();
    for c in &cases {
        let before = app.stored_tasks();
        let mut req = api
            .request(reqwest::Method::POST, "/generate")
            .timeout(Duration::from_secs(20));
        for (k, v) in &c.headers {
            req = req.header(*k, reqwest::header::HeaderValue::from_bytes(v).unwrap());
        }
        req = match &c.body {
            Body::Json(v) => req.json(v),
            Body::Raw(ct, bytes) => {
                let req = match ct {
                    Some(ct) => req.header("content-type", *ct),
                    None => req,
                };
                req.body(bytes.clone())
            }
            Body::Chunked(bytes) => {
                let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                    bytes.chunks(4096).map(|c| Ok(c.to_vec())).collect();
                req.header("content-type", "application/json")
                    .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                        chunks,
                    )))
            }
        };
        let (status, body) = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                (
                    status,
                    serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
                )
            }
            Err(e) => (0, json!({"transport_error": e.to_string()})),
        };
        let after = app.stored_tasks();
        let got = if status == 202 {
            Answer::Accept
        } else {
            let code = body["error"]["code"]
                .as_str()
                .unwrap_or("<none>")
                .to_string();
            let field = body["error"]["field"].as_str().map(|f| f.to_string());
            Answer::Reject(
                status,
                Box::leak(code.into_boxed_str()),
                field.map(|f| &*Box::leak(f.into_boxed_str())),
            )
        };
        let mut problems = Vec::new();
        if got != c.answer {
            problems.push(format!("expected {:?}, got {:?}: {body}", c.answer, got));
        }
        match c.answer {
            Answer::Reject(..) => {
                if after != before {
                    problems.push(format!("stored tasks changed {before:?} -> {after:?}"));
                }
                if got == c.answer && body["error"]["message"].as_str().is_none_or(str::is_empty) {
                    problems.push("no error message".into());
                }
            }
            Answer::Accept => {
                if after != (before.0 + 1, before.1 + 1) {
                    problems.push(format!("expected one new task, {before:?} -> {after:?}"));
                }
                if let Some(id) = body["task_id"].as_str() {
                    let t = api.task(id).await;
                    for f in ["audio", "hook_url"] {
                        let u = t["request"][f].as_str().unwrap_or_default();
                        if !u.is_ascii() || u.chars().any(|ch| ch.is_control() || ch == ' ') {
                            problems.push(format!("{f} stored unnormalised: {u:?}"));
                        }
                    }
                }
            }
        }
        let up = anonymous
            .request(reqwest::Method::GET, "/health")
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if !up {
            problems.push("/health no longer answers 200".into());
        }
        let outcome = if problems.is_empty() {
            "ok"
        } else {
            "MISMATCH"
        };
        lines.push(format!("  {outcome:8} {:60} {:?}", c.name, got));
        if !problems.is_empty() {
            failures.push(format!("{}: {}", c.name, problems.join("; ")));
        }
    }
    eprintln!("{} cases:\n{}", cases.len(), lines.join("\n"));
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
