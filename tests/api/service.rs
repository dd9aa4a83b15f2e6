//! The service around the API: `/health` with and without Redis, `/livez` and `/readyz`,
//! readiness during shutdown, the OpenAPI document and docs page, unknown routes and `Allow`,
//! and the security headers on every answer.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use super::error_of;
use crate::common;
use crate::common::client::{ApiClient, Auth};
use crate::common::{USER, seed_body, spawn_app};

#[actix_rt::test]
async fn health_reports_redis_and_turns_503_when_redis_is_down() {
    let mut app = spawn_app(&[]).await;
    let client = ApiClient::for_app(&app.base);
    let anonymous = client.with_auth(Auth::None);
    // Without credentials: the overall status and Redis reachability, nothing else (no
    // versions, memory, host names or pids).
    let resp = anonymous.get("/health").await;
    assert_eq!(resp.status(), 200);
    let public: Value = resp.json().await.unwrap();
    assert_eq!(
        public,
        serde_json::json!({"status": "ok", "redis": {"reachable": true}})
    );
    // Wrong credentials are refused, not answered with the public view.
    let wrong = client
        .with_auth(Auth::basic(USER, "not-the-password"))
        .get("/health")
        .await;
    assert_eq!(wrong.status(), 401);
    let h: Value = client.get("/health").await.json().await.unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["redis"]["reachable"], true);
    // The version is the one this Redis reports about itself.
    let info = app.redis.cli(&["INFO", "server"]).unwrap();
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap()
        .trim();
    assert!(!version.is_empty());
    assert_eq!(h["redis"]["version"], version);
    assert_eq!(h["redis"]["persistence"], "none");
    assert!(h["redis"]["latency_ms"].as_f64().is_some());
    assert_eq!(h["queues"]["separate"]["waiting"], 0);
    assert!(h["workers"].is_array());
    assert_eq!(h["models"]["default"], "dsp-centre");

    app.redis.kill();
    let resp = client.get("/health").await;
    assert_eq!(resp.status(), 503);
    let h: Value = resp.json().await.unwrap();
    assert_eq!(h["redis"]["reachable"], false);
    assert!(h["redis"]["error"].is_string());
    let public: Value = anonymous.get("/health").await.json().await.unwrap();
    assert_eq!(
        public,
        serde_json::json!({"status": "unavailable", "redis": {"reachable": false}})
    );
    let resp = client.generate(&seed_body(3)).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(error_of(resp).await.1, "queue_unavailable");
    assert_eq!(anonymous.get("/livez").await.status(), 200);
    let health = app.scheduler.health().clone();
    assert!(common::eventually(Duration::from_secs(5), || async { !health.is_healthy() }).await);
    assert_eq!(anonymous.get("/readyz").await.status(), 503);

    app.redis.restart();
    assert!(
        common::eventually(Duration::from_secs(15), || {
            let health = anonymous.request(Method::GET, "/health");
            async move { health.send().await.is_ok_and(|r| r.status() == 200) }
        })
        .await,
        "healthy again after Redis comes back"
    );
    assert_eq!(client.generate(&seed_body(3)).await.status(), 202);
}

#[actix_rt::test]
async fn openapi_docs_and_unknown_routes() {
    let app = spawn_app(&[]).await;
    let client = ApiClient::for_app(&app.base);
    let anonymous = client.with_auth(Auth::None);
    let doc: Value = anonymous.get("/openapi.json").await.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/generate",
        "/tasks/{id}",
        "/queue",
        "/models",
        "/health",
        "/livez",
        "/readyz",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
    let docs = anonymous.get("/docs").await;
    assert!(
        docs.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let (s, code, _) = error_of(anonymous.get("/nope").await).await;
    assert_eq!((s, code.as_str()), (404, "not_found"));
    let (s, code, _) = error_of(client.get("/generate").await).await;
    assert_eq!((s, code.as_str()), (405, "method_not_allowed"));
    // Every 405 says what the path takes (RFC 9110 `Allow`).
    for (method, path, allow) in [
        (reqwest::Method::GET, "/generate", "POST"),
        (reqwest::Method::DELETE, "/queue", "GET"),
        (reqwest::Method::PUT, "/tasks/x", "GET, DELETE"),
        (reqwest::Method::POST, "/tasks/x/stems/vocals", "GET"),
        (reqwest::Method::GET, "/uploads", "POST"),
        (reqwest::Method::DELETE, "/files/t/vocals.wav", "GET, HEAD"),
        (reqwest::Method::GET, "/admin/dead/x/requeue", "POST"),
    ] {
        let r = anonymous
            .request(method.clone(), path)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(r.headers()["allow"], allow, "{method} {path}");
    }
}

#[actix_rt::test]
async fn shutdown_turns_readiness_off_before_it_stops_accepting() {
    let app = spawn_app(&[("SHUTDOWN_GRACE_SECONDS", "1")]).await;
    let anonymous = ApiClient::for_app(&app.base).with_auth(Auth::None);
    let readyz = || anonymous.request(Method::GET, "/readyz").send();
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            readyz().await.is_ok_and(|r| r.status() == 200)
        })
        .await,
        "ready once Redis has answered"
    );
    app.stopper.drain();
    // Polled until the drain shows (the first answers may still come from before it).
    let mut draining = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while draining.is_none() && std::time::Instant::now() < deadline {
        let resp = readyz().await.unwrap();
        if resp.status() == 503 {
            draining = Some(resp.json::<Value>().await.unwrap());
        }
    }
    let body = draining.expect("not ready while draining");
    assert_eq!(body["accepting"], false);
    app.running.await.unwrap().unwrap();
    assert!(readyz().await.is_err(), "stopped accepting");
}

/// API answers carry `X-Content-Type-Options: nosniff` and `Cache-Control: no-store`; the
/// docs page a Content-Security-Policy that names its one inline script and style by hash.
#[actix_rt::test]
async fn responses_carry_security_headers() {
    use base64::Engine;
    use sha2::Digest;
    let app = spawn_app(&[]).await;
    let client = ApiClient::for_app(&app.base);
    for path in ["/health", "/queue", "/openapi.json", "/nope", "/tasks/x"] {
        let resp = client.get(path).await;
        assert_eq!(
            resp.headers()["x-content-type-options"],
            "nosniff",
            "{path}"
        );
        assert_eq!(resp.headers()["cache-control"], "no-store", "{path}");
    }
    let docs = client.with_auth(Auth::None).get("/docs").await;
    let csp = docs.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    let html = docs.text().await.unwrap();
    let between = |open: &str, close: &str| {
        let start = html.find(open).unwrap() + open.len();
        let end = start + html[start..].find(close).unwrap();
        format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD
                .encode(sha2::Sha256::digest(&html.as_bytes()[start..end]))
        )
    };
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(
        csp.contains(&format!("script-src {}", between("<script>", "</script>"))),
        "{csp}"
    );
    assert!(
        csp.contains(&format!("style-src {}", between("<style>", "</style>"))),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
}
