//! The HTTP API, started for real on port 0 against a throwaway Redis.
//!
//! Layout: this file is the crate root, with the helper the modules share (`error_of`); its
//! modules live in `tests/api/` (declared with `#[path]`, since a crate root's `mod x;` would
//! look for `tests/x.rs`), one surface each:
//!
//! - `submission`: `POST /generate`: acceptance, priorities, bad input, private targets,
//!   idempotency keys, the rate limit and backpressure;
//! - `tasks`: task views, cancelling, `GET /tasks` pages, queue statistics and requeueing a
//!   dead letter;
//! - `auth`: credentials, client keys and their file, failed-login throttling and the
//!   metrics token;
//! - `files`: the signed local download route and paths out of the storage root;
//! - `service`: health, readiness and shutdown, the OpenAPI document, unknown routes and
//!   security headers;
//! - `models`: models found in `MODELS_DIR` and named ensemble presets.

mod common;

#[path = "api/auth.rs"]
mod auth;
#[path = "api/files.rs"]
mod files;
#[path = "api/models.rs"]
mod models;
#[path = "api/service.rs"]
mod service;
#[path = "api/submission.rs"]
mod submission;
#[path = "api/tasks.rs"]
mod tasks;

use serde_json::Value;

async fn error_of(resp: reqwest::Response) -> (u16, String, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (status, code, body)
}
