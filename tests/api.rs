//! The HTTP API, started for real on port 0 against a throwaway Redis.

mod common;

use std::time::Duration;

use common::client::{ApiClient, Auth};
use common::{PASSWORD, USER, seed_body, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

async fn error_of(resp: reqwest::Response) -> (u16, String, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (status, code, body)
}

#[actix_rt::test]
async fn the_seeds_request_is_accepted_and_queued() {
    let app = spawn_app(&[]).await;
    let client = ApiClient::for_app(&app.base);
    let resp = client.generate(&seed_body(5)).await;
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    let id = body["task_id"].as_str().unwrap();
    assert_eq!(location, format!("/tasks/{id}"));
    assert_eq!(body["status"], "queued");
    assert_eq!(body["priority"], 5);
    assert_eq!(body["model"], "dsp-centre");

    let task: Value = client.get(&location).await.json().await.unwrap();
    assert_eq!(task["task_id"], id);
    assert_eq!(task["status"], "queued");
    assert_eq!(task["priority"], 5);
    assert_eq!(task["position"], 0);
    assert_eq!(task["progress"], 0);
    assert_eq!(task["attempts"], 0);
    assert_eq!(task["request"]["audio"], "https://93.184.215.14/audio.wav");
    assert!(task["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(app.stored_tasks(), (1, 1));
    // The seed's monitoring commands see it.
    let zrange = app
        .redis
        .cli(&["ZRANGE", "uvr_tasks", "0", "-1", "WITHSCORES"])
        .unwrap();
    assert!(zrange.contains(id));
}

#[actix_rt::test]
async fn priority_defaults_to_default_priority_and_positions_follow_priority() {
    let app = spawn_app(&[("DEFAULT_PRIORITY", "2")]).await;
    let client = ApiClient::for_app(&app.base);
    let mut body = seed_body(1);
    body.as_object_mut().unwrap().remove("priority");
    let low: Value = client.generate(&body).await.json().await.unwrap();
    assert_eq!(low["priority"], 2);
    let high: Value = client.generate(&seed_body(5)).await.json().await.unwrap();
    let t: Value = client
        .get(&format!("/tasks/{}", low["task_id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(t["position"], 1, "the priority-5 task went ahead");
    let t: Value = client
        .get(&format!("/tasks/{}", high["task_id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(t["position"], 0);
}

#[actix_rt::test]
async fn bad_input_gets_a_stable_code_and_nothing_is_enqueued() {
    let app = spawn_app(&[]).await;
    let client = ApiClient::for_app(&app.base);
    let post_raw = |ct: &'static str, body: Vec<u8>| {
        client
            .request(Method::POST, "/generate")
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let cases: Vec<(&str, reqwest::Response, u16, &str)> = vec![
        (
            "malformed JSON",
            post_raw("application/json", b"{\"audio\": ".to_vec())
                .await
                .unwrap(),
            400,
            "malformed_json",
        ),
        (
            "empty body",
            post_raw("application/json", vec![]).await.unwrap(),
            400,
            "malformed_json",
        ),
        (
            "wrong content type",
            post_raw("text/plain", serde_json::to_vec(&seed_body(3)).unwrap())
                .await
                .unwrap(),
            415,
            "unsupported_media_type",
        ),
        (
            "form body",
            post_raw("application/x-www-form-urlencoded", b"audio=x".to_vec())
                .await
                .unwrap(),
            415,
            "unsupported_media_type",
        ),
        (
            "huge body",
            post_raw("application/json", vec![b' '; 200_000])
                .await
                .unwrap(),
            413,
            "payload_too_large",
        ),
        (
            "JSON array",
            post_raw("application/json", b"[1,2]".to_vec())
                .await
                .unwrap(),
            422,
            "invalid_body",
        ),
    ];
    for (name, resp, status, code) in cases {
        let (s, c, body) = error_of(resp).await;
        assert_eq!((s, c.as_str()), (status, code), "{name}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}"
        );
    }
    let field_cases = [
        (
            json!({"audio": "https://93.184.215.14/a.wav", "hook_url": "https://93.184.215.14/h", "priority": 0}),
            "priority",
            "out_of_range",
        ),
        (
            json!({"audio": "https://93.184.215.14/a.wav", "hook_url": "https://93.184.215.14/h", "priority": 6}),
            "priority",
            "out_of_range",
        ),
        (
            json!({"audio": "https://93.184.215.14/a.wav", "hook_url": "https://93.184.215.14/h", "priority": -1}),
            "priority",
            "out_of_range",
        ),
        (
            json!({"audio": "https://93.184.215.14/a.wav", "hook_url": "https://93.184.215.14/h", "priority": "5"}),
            "priority",
            "invalid_type",
        ),
        (
            json!({"audio": "https://93.184.215.14/a.wav", "hook_url": "https://93.184.215.14/h", "priority": 2.5}),
            "priority",
            "invalid_type",
        ),
        (
            json!({"audio": "https://93.184.215.14/a.wav", "hook_url": "https://93.184.215.14/h", "priority": true}),
            "priority",
            "invalid_type",
        ),
        (
            json!({"hook_url": "https://93.184.215.14/h"}),
            "audio",
            "missing_field",
        ),
        (
            json!({"audio": "https://93.184.215.14/a.wav", "hook_url": 42}),
            "hook_url",
            "invalid_type",
        ),
        (
            json!({"audio": 42, "hook_url": "https://93.184.215.14/h"}),
            "audio",
            "invalid_type",
        ),
        (
            json!({"audio": "file:///etc/passwd", "hook_url": "https://93.184.215.14/h"}),
            "audio",
            "unsupported_scheme",
        ),
        (
            json!({"audio": "ftp://93.184.215.14/a.wav", "hook_url": "https://93.184.215.14/h"}),
            "audio",
            "unsupported_scheme",
        ),
        (
            json!({"audio": "not a url", "hook_url": "https://93.184.215.14/h"}),
            "audio",
            "invalid_url",
        ),
        (
            json!({"audio": "http://127.0.0.1/a.wav", "hook_url": "https://93.184.215.14/h"}),
            "audio",
            "private_address",
        ),
        (
            json!({"audio": "http://localhost:8000/a.wav", "hook_url": "https://93.184.215.14/h"}),
            "audio",
            "private_address",
        ),
        (
            json!({"audio": "http://169.254.169.254/latest/meta-data/", "hook_url": "https://93.184.215.14/h"}),
            "audio",
            "private_address",
        ),
        (
            json!({"audio": "http://[::ffff:127.0.0.1]/a.wav", "hook_url": "https://93.184.215.14/h"}),
            "audio",
            "private_address",
        ),
        (
            json!({"audio": "http://2130706433/a.wav", "hook_url": "https://93.184.215.14/h"}),
            "audio",
            "private_address",
        ),
        (
            json!({"audio": "https://93.184.215.14/a.wav", "hook_url": "http://10.0.0.7/hook"}),
            "hook_url",
            "private_address",
        ),
        (
            json!({"audio": "https://93.184.215.14/a.wav", "hook_url": "http://100.64.1.1/hook"}),
            "hook_url",
            "private_address",
        ),
        (
            json!({"audio": "https://93.184.215.14/a.wav", "hook_url": "https://93.184.215.14/h", "model": "nope"}),
            "model",
            "unknown_model",
        ),
        (
            json!({"audio": "https://93.184.215.14/a.wav", "hook_url": "https://93.184.215.14/h", "stems": ["drums"]}),
            "stems",
            "unknown_stem",
        ),
        (
            json!({"audio": "https://93.184.215.14/a.wav", "hook_url": "https://93.184.215.14/h", "stems": []}),
            "stems",
            "out_of_range",
        ),
        (
            json!({"audio": "https://93.184.215.14/a.wav", "hook_url": "https://93.184.215.14/h", "stems": "vocals"}),
            "stems",
            "invalid_type",
        ),
        (
            json!({"audio": "https://93.184.215.14/a.wav", "hook_url": "https://93.184.215.14/h", "output_format": "aiff"}),
            "output_format",
            "unsupported_format",
        ),
        (
            json!({"audio": "https://93.184.215.14/a.wav", "output_format": "flac", "bitrate": 320}),
            "bitrate",
            "unsupported_format",
        ),
        (
            json!({"audio": "https://93.184.215.14/a.wav", "output_format": "mp3", "bitrate": 96}),
            "bitrate",
            "out_of_range",
        ),
        (
            json!({"audio": "https://93.184.215.14/a.wav", "sample_rate": 96000}),
            "sample_rate",
            "out_of_range",
        ),
        (
            json!({"audio": format!("https://93.184.215.14/{}", "a".repeat(5000)), "hook_url": "https://93.184.215.14/h"}),
            "audio",
            "field_too_long",
        ),
    ];
    for (body, field, code) in field_cases {
        let (s, c, resp) = error_of(client.generate(&body).await).await;
        assert_eq!((s, c.as_str()), (422, code), "{body}: {resp}");
        assert_eq!(resp["error"]["field"], field, "{body}");
    }
    assert_eq!(
        app.stored_tasks(),
        (0, 0),
        "nothing enqueued for rejected requests"
    );
    // Valid optional fields are accepted and stored normalised.
    let ok = json!({"audio": "https://93.184.215.14/a.wav", "hook_url": "https://93.184.215.14/h",
        "model": "dsp-centre", "stems": ["vocals", "vocals"], "output_format": "WAV24"});
    let body: Value = client.generate(&ok).await.json().await.unwrap();
    let t: Value = client
        .get(&format!("/tasks/{}", body["task_id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(t["request"]["stems"], json!(["vocals"]));
    assert_eq!(t["request"]["output_format"], "wav24");
}

#[actix_rt::test]
async fn private_targets_are_allowed_when_configured() {
    let app = spawn_app(&[("ALLOW_PRIVATE_NETWORKS", "true")]).await;
    let client = ApiClient::for_app(&app.base);
    let body = json!({"audio": "http://127.0.0.1:9/a.wav", "hook_url": "http://localhost:9/h"});
    assert_eq!(client.generate(&body).await.status(), 202);
    let body = json!({"audio": "file:///etc/passwd", "hook_url": "http://localhost:9/h"});
    assert_eq!(
        error_of(client.generate(&body).await).await.1,
        "unsupported_scheme"
    );
}

#[actix_rt::test]
async fn authentication_is_required_and_checked() {
    let app = spawn_app(&[]).await;
    let client = ApiClient::for_app(&app.base);
    let anonymous = client.with_auth(Auth::None);
    let none = anonymous.generate(&seed_body(3)).await;
    assert_eq!(none.status(), 401);
    assert!(
        none.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    assert_eq!(error_of(none).await.1, "unauthorized");
    for (u, p) in [(USER, "wrong"), ("root", PASSWORD), ("", "")] {
        let resp = client
            .with_auth(Auth::basic(u, p))
            .generate(&seed_body(3))
            .await;
        assert_eq!(resp.status(), 401, "{u}:{p}");
    }
    let bearer = client
        .with_auth(Auth::bearer(PASSWORD))
        .generate(&seed_body(3))
        .await;
    assert_eq!(bearer.status(), 401);
    for path in [
        "/queue",
        "/models",
        "/tasks/0190a2b4-0000-7000-8000-000000000000",
    ] {
        let resp = anonymous.get(path).await;
        assert_eq!(resp.status(), 401, "{path}");
    }
    assert_eq!(app.stored_tasks(), (0, 0));
}

#[actix_rt::test]
async fn idempotency_key_returns_the_same_task() {
    let app = spawn_app(&[]).await;
    let client = ApiClient::for_app(&app.base);
    let send = |key: &'static str| {
        client
            .request(Method::POST, "/generate")
            .header("Idempotency-Key", key)
            .json(&seed_body(4))
            .send()
    };
    let first = send("order-1").await.unwrap();
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotency-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let again = send("order-1").await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotency-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["task_id"], again["task_id"]);
    assert_eq!(again["created"], false);
    let other: Value = send("order-2").await.unwrap().json().await.unwrap();
    assert_ne!(first["task_id"], other["task_id"]);
    assert_eq!(app.stored_tasks(), (2, 2));
}

#[actix_rt::test]
async fn cancel_and_unknown_tasks() {
    let app = spawn_app(&[]).await;
    let client = ApiClient::for_app(&app.base);
    let body: Value = client.generate(&seed_body(3)).await.json().await.unwrap();
    let path = format!("/tasks/{}", body["task_id"].as_str().unwrap());
    let resp = client.delete(&path).await;
    assert_eq!(resp.status(), 202);
    let resp: Value = resp.json().await.unwrap();
    assert_eq!(resp["status"], "cancelled");
    let t: Value = client.get(&path).await.json().await.unwrap();
    assert_eq!(t["status"], "cancelled");
    assert!(t["finished_at"].is_string());
    assert_eq!(app.stored_tasks().0, 0, "removed from the queue");
    let (s, code, _) = error_of(client.delete(&path).await).await;
    assert_eq!((s, code.as_str()), (409, "task_finished"));
    let missing = "/tasks/0190a2b4-0000-7000-8000-000000000000";
    assert_eq!(
        error_of(client.get(missing).await).await.1,
        "task_not_found"
    );
    assert_eq!(error_of(client.delete(missing).await).await.0, 404);
    assert_eq!(
        error_of(client.get("/tasks/../../etc/passwd").await)
            .await
            .0,
        404
    );
    assert_eq!(
        error_of(client.get("/tasks/not-an-id").await).await.1,
        "task_not_found"
    );
}

#[actix_rt::test]
async fn queue_statistics_per_stage_and_priority() {
    let app = spawn_app(&[]).await;
    let client = ApiClient::for_app(&app.base);
    for p in [1, 5, 5, 3] {
        assert_eq!(client.generate(&seed_body(p)).await.status(), 202);
    }
    let stats: Value = client.get("/queue").await.json().await.unwrap();
    assert_eq!(stats["separate"]["queue"], "uvr_tasks");
    assert_eq!(stats["separate"]["waiting"], 4);
    assert_eq!(stats["separate"]["waiting_by_priority"]["5"], 2);
    assert_eq!(stats["separate"]["waiting_by_priority"]["1"], 1);
    assert_eq!(stats["deliver"]["queue"], "uvr_results");
    assert_eq!(stats["deliver"]["waiting"], 0);
    let models: Value = client.get("/models").await.json().await.unwrap();
    assert_eq!(models["default"], "dsp-centre");
}

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
async fn rate_limit_per_credential_answers_429_with_retry_after() {
    let app = spawn_app(&[("RATE_LIMIT_PER_SECOND", "0.5"), ("RATE_LIMIT_BURST", "2")]).await;
    let client = ApiClient::for_app(&app.base);
    assert_eq!(client.generate(&seed_body(3)).await.status(), 202);
    assert_eq!(client.generate(&seed_body(3)).await.status(), 202);
    let resp = client.generate(&seed_body(3)).await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry));
    assert_eq!(error_of(resp).await.1, "rate_limited");
    assert_eq!(app.stored_tasks(), (2, 2));
}

#[actix_rt::test]
async fn backpressure_answers_503_beyond_max_queue_depth() {
    let app = spawn_app(&[("MAX_QUEUE_DEPTH", "2")]).await;
    let client = ApiClient::for_app(&app.base);
    assert_eq!(client.generate(&seed_body(3)).await.status(), 202);
    assert_eq!(client.generate(&seed_body(3)).await.status(), 202);
    let resp = client.generate(&seed_body(5)).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(error_of(resp).await.1, "queue_full");
    assert_eq!(app.stored_tasks(), (2, 2));
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

/// One GET sent byte for byte as given (no client normalises `..` or percent escapes on the
/// way): the status and the body.
async fn raw_get(base: &str, target: &str) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut resp))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let head_end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{target}: no response head: {resp:?}"));
    let head = String::from_utf8_lossy(&resp[..head_end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{target}: {head}"));
    (status, resp[head_end + 4..].to_vec())
}

/// SECURITY.md: local stems are served under `/files/<task>/<stem>.wav` with a signature,
/// and file names are validated so no path traversal reaches the disk. Every spelling of a
/// path out of the storage root is refused with its stable code even when it carries a
/// valid signature for exactly that path (as if the signing key had leaked), and a valid
/// signature for one file opens no other. A bait file sits where each escape would land.
#[actix_rt::test]
async fn local_download_paths_outside_the_storage_root_are_refused() {
    use uvr::pipeline::storage::sign_link;
    const BAIT: &[u8] = b"BAIT: outside the storage root";
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().canonicalize().unwrap();
    let root = outside.join("stems");
    let task = "0190f5a2-7b3c-7d4e-8f5a-6b7c8d9e0f1a";
    let other = "0190f5a2-7b3c-7d4e-8f5a-000000000000";
    for t in [task, other] {
        std::fs::create_dir_all(root.join(t)).unwrap();
        for stem in ["vocals", "instrumental"] {
            std::fs::write(
                root.join(t).join(format!("{stem}.wav")),
                format!("{t}/{stem}"),
            )
            .unwrap();
        }
    }
    // Where `<root>/../secret.wav`, `<root>/<task>/../../secret.wav` and the absolute path
    // land, and a bait inside the task directory's parent for one level of `..`.
    std::fs::write(outside.join("secret.wav"), BAIT).unwrap();
    std::fs::write(root.join("secret.wav"), BAIT).unwrap();
    let storage_url = format!("file://{}", root.display());
    let app = spawn_app(&[("STORAGE_URL", storage_url.as_str())]).await;
    let secret = b"test-link-signing-key-0123456789abcdef"; // spawn_app's LINK_SIGNING_KEY
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let signed = |key: &str| format!("expires={expires}&sig={}", sign_link(secret, key, expires));

    // The control: a valid link for a stored stem serves exactly that file.
    let (status, body) = raw_get(
        &app.base,
        &format!(
            "/files/{task}/vocals.wav?{}",
            signed(&format!("{task}/vocals.wav"))
        ),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, format!("{task}/vocals").as_bytes());

    let abs = format!("{}/secret.wav", outside.display());
    let abs_encoded = abs.replace('/', "%2F");
    // (request path, the key a valid signature is made for, expected status and code)
    let cases: Vec<(String, String, u16, &str)> = vec![
        // `..` as the task: `<root>/../secret.wav`.
        (
            "/files/../secret.wav".into(),
            "../secret.wav".into(),
            404,
            "file_not_found",
        ),
        (
            "/files/%2e%2e/secret.wav".into(),
            "../secret.wav".into(),
            404,
            "file_not_found",
        ),
        (
            "/files/%2E%2E/secret.wav".into(),
            "../secret.wav".into(),
            404,
            "file_not_found",
        ),
        (
            "/files/.%2e/secret.wav".into(),
            "../secret.wav".into(),
            404,
            "file_not_found",
        ),
        // `..` in the name, encoded slashes: `<root>/<task>/../secret.wav` and further up.
        (
            format!("/files/{task}/..%2Fsecret.wav"),
            format!("{task}/../secret.wav"),
            404,
            "file_not_found",
        ),
        (
            format!("/files/{task}/..%2F..%2Fsecret.wav"),
            format!("{task}/../../secret.wav"),
            404,
            "file_not_found",
        ),
        (
            format!("/files/{task}/%2e%2e%2f%2e%2e%2fsecret.wav"),
            format!("{task}/../../secret.wav"),
            404,
            "file_not_found",
        ),
        // Raw `..` segments: more segments than the route has.
        (
            format!("/files/{task}/../../secret.wav"),
            format!("{task}/../../secret.wav"),
            404,
            "not_found",
        ),
        (
            format!("/files/{task}/../secret.wav"),
            format!("{task}/../secret.wav"),
            404,
            "not_found",
        ),
        // Absolute paths, as the name (joining replaces the root) and as the task.
        (
            format!("/files/{task}/{abs_encoded}"),
            format!("{task}/{abs}"),
            404,
            "file_not_found",
        ),
        (
            format!(
                "/files/{}/secret.wav",
                outside.display().to_string().replace('/', "%2F")
            ),
            abs.clone(),
            404,
            "file_not_found",
        ),
        (format!("/files{abs}"), abs.clone(), 404, "not_found"),
        // Backslashes, raw and encoded.
        (
            format!("/files/{task}/..\\..\\secret.wav"),
            format!("{task}/..\\..\\secret.wav"),
            404,
            "file_not_found",
        ),
        (
            format!("/files/{task}/..%5C..%5Csecret.wav"),
            format!("{task}/..\\..\\secret.wav"),
            404,
            "file_not_found",
        ),
        (
            "/files/..%5Csecret.wav/vocals.wav".into(),
            "..\\secret.wav/vocals.wav".into(),
            404,
            "file_not_found",
        ),
    ];
    for (path, key, want_status, want_code) in &cases {
        let target = format!("{path}?{}", signed(key));
        let (status, body) = raw_get(&app.base, &target).await;
        assert!(
            !body.windows(BAIT.len()).any(|w| w == BAIT),
            "{target}: the bait outside the root was served"
        );
        let err: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("{target}: {status} {}", String::from_utf8_lossy(&body)));
        assert_eq!(
            (status, err["error"]["code"].as_str().unwrap_or_default()),
            (*want_status, *want_code),
            "{target}: {err}"
        );
        if *want_code == "file_not_found" {
            // Refused by the validation of the path, before any file is opened.
            assert_eq!(err["error"]["message"], "no such file", "{target}: {err}");
        }
    }

    // A valid signature for one file opens no other: not another stem of the task, not the
    // same stem of another task, not the same stem under another expiry.
    let vocals = format!("{task}/vocals.wav");
    let sig = sign_link(secret, &vocals, expires);
    for target in [
        format!("/files/{task}/instrumental.wav?expires={expires}&sig={sig}"),
        format!("/files/{other}/vocals.wav?expires={expires}&sig={sig}"),
        format!("/files/{task}/vocals.wav?expires={}&sig={sig}", expires + 1),
        format!("/files/{task}/secret.wav?expires={expires}&sig={sig}"),
    ] {
        let (status, body) = raw_get(&app.base, &target).await;
        let err: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("{target}: {status} {}", String::from_utf8_lossy(&body)));
        assert_eq!(
            (status, err["error"]["code"].as_str().unwrap_or_default()),
            (403, "link_invalid"),
            "{target}: {err}"
        );
    }
}

/// Two `Authorization` headers are refused with 400 whichever comes first; nothing is queued.
#[actix_rt::test]
async fn two_authorization_headers_are_refused() {
    use base64::Engine;
    let app = spawn_app(&[]).await;
    let anonymous = ApiClient::for_app(&app.base).with_auth(Auth::None);
    let good = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    for pair in [
        [good.as_str(), "Basic Zm9vOmJhcg=="],
        ["Basic Zm9vOmJhcg==", &good],
        [&good, &good],
    ] {
        let mut headers = reqwest::header::HeaderMap::new();
        for v in pair {
            headers.append("authorization", v.parse().unwrap());
        }
        let resp = anonymous
            .request(Method::POST, "/generate")
            .headers(headers)
            .json(&seed_body(3))
            .send()
            .await
            .unwrap();
        let (s, code, _) = error_of(resp).await;
        assert_eq!((s, code.as_str()), (400, "ambiguous_authorization"));
    }
    assert_eq!(app.stored_tasks(), (0, 0));
}

/// After `AUTH_FAILURES_PER_MINUTE` wrong passwords an address gets 429 with `Retry-After`,
/// the right password included; requests without credentials do not count; the throttled
/// address is counted in the metrics.
#[actix_rt::test]
async fn failed_logins_throttle_the_address() {
    let app = spawn_app(&[("AUTH_FAILURES_PER_MINUTE", "5")]).await;
    let client = ApiClient::for_app(&app.base);
    let post = |password: Option<&str>| {
        let auth = match password {
            Some(p) => Auth::basic(USER, p),
            None => Auth::None,
        };
        client
            .with_auth(auth)
            .request(Method::POST, "/generate")
            .json(&seed_body(3))
            .send()
    };
    for _ in 0..10 {
        assert_eq!(post(None).await.unwrap().status(), 401, "no credentials");
    }
    for i in 0..5 {
        let (s, code, _) = error_of(post(Some("wrong-password")).await.unwrap()).await;
        assert_eq!((s, code.as_str()), (401, "unauthorized"), "guess {i}");
    }
    let resp = post(Some(PASSWORD)).await.unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(error_of(resp).await.1, "too_many_auth_failures");
    // Every route that takes credentials is closed to the address.
    assert_eq!(client.get("/queue").await.status(), 429);
    assert_eq!(app.stored_tasks(), (0, 0));
    let metrics = client
        .with_auth(Auth::None)
        .get("/metrics")
        .await
        .text()
        .await
        .unwrap();
    // The recorder is shared by the apps of this test binary: at least this address.
    let throttled = metrics
        .lines()
        .find_map(|l| l.strip_prefix("uvr_auth_throttled_addresses_total "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(throttled.is_some_and(|n| n >= 1.0), "{metrics}");
    // Control: a server with throttling off takes the right password after the same guesses.
    let open = spawn_app(&[("AUTH_FAILURES_PER_MINUTE", "0")]).await;
    let open_client = ApiClient::for_app(&open.base);
    for _ in 0..8 {
        let r = open_client
            .with_auth(Auth::basic(USER, "wrong-password"))
            .generate(&seed_body(3))
            .await;
        assert_eq!(r.status(), 401);
    }
    assert_eq!(open_client.generate(&seed_body(3)).await.status(), 202);
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

/// `METRICS_TOKEN` closes `/metrics` to anyone without `Authorization: Bearer <token>`.
#[actix_rt::test]
async fn metrics_token_guards_metrics() {
    let token = "scrape-token-0123456789abcdef";
    let app = spawn_app(&[("METRICS_TOKEN", token)]).await;
    let client = ApiClient::for_app(&app.base);
    let none = client.with_auth(Auth::None).get("/metrics").await;
    assert_eq!(none.status(), 401);
    assert!(
        none.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let wrong = client.with_auth(Auth::bearer("nope")).get("/metrics").await;
    assert_eq!(wrong.status(), 401);
    let basic = client.get("/metrics").await;
    assert_eq!(
        basic.status(),
        401,
        "the API password is not the metrics token"
    );
    let ok = client.with_auth(Auth::bearer(token)).get("/metrics").await;
    assert_eq!(ok.status(), 200);
    assert!(ok.text().await.unwrap().contains("uvr_http_requests_total"));
}

/// An `Idempotency-Key` names one request: sent again with the same request it replays the
/// task, with another request it is refused with 409 and nothing is queued.
#[actix_rt::test]
async fn an_idempotency_key_reused_with_another_body_is_refused() {
    let app = spawn_app(&[]).await;
    let client = ApiClient::for_app(&app.base);
    let send = |body: Value| {
        client
            .request(Method::POST, "/generate")
            .header("Idempotency-Key", "order-7")
            .json(&body)
            .send()
    };
    let first: Value = send(seed_body(4)).await.unwrap().json().await.unwrap();
    // The same request, spelled differently (key order, defaults): the same task.
    let same = json!({"priority": 4, "hook_url": "https://93.184.215.14/webhook",
                      "audio": "https://93.184.215.14/audio.wav"});
    let again = send(same).await.unwrap();
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["task_id"], first["task_id"]);
    for other in [seed_body(5), {
        let mut b = seed_body(4);
        b["audio"] = json!("https://93.184.215.14/other.wav");
        b
    }] {
        let (s, code, body) = error_of(send(other).await.unwrap()).await;
        assert_eq!(
            (s, code.as_str()),
            (409, "idempotency_key_reused"),
            "{body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(first["task_id"].as_str().unwrap())
        );
    }
    assert_eq!(app.stored_tasks(), (1, 1));
}

/// URLs are shown without user info or query values; the stored request keeps them whole
/// for the fetch and the webhook.
#[actix_rt::test]
async fn task_views_show_urls_without_their_secrets() {
    let app = spawn_app(&[]).await;
    let client = ApiClient::for_app(&app.base);
    let body = json!({
        "audio": "https://user:hunter2@93.184.215.14/a.wav?token=s3cret&v=2",
        "hook_url": "https://93.184.215.14/hook?sig=hook-secret#frag",
    });
    let accepted: Value = client.generate(&body).await.json().await.unwrap();
    let id = accepted["task_id"].as_str().unwrap();
    let view = client
        .get(&format!("/tasks/{id}"))
        .await
        .text()
        .await
        .unwrap();
    for secret in ["hunter2", "s3cret", "hook-secret", "user:"] {
        assert!(!view.contains(secret), "{secret} shown: {view}");
    }
    let view: Value = serde_json::from_str(&view).unwrap();
    assert_eq!(
        view["request"]["audio"],
        "https://93.184.215.14/a.wav?token=REDACTED&v=REDACTED"
    );
    assert_eq!(
        view["request"]["hook_url"],
        "https://93.184.215.14/hook?sig=REDACTED"
    );
    let stored = app
        .redis
        .cli(&["HGET", &format!("uvr_tasks:task:{id}"), "request"])
        .unwrap();
    assert!(stored.contains("token=s3cret"), "{stored}");
}

/// `POST /admin/dead/{id}/requeue`: a dead letter goes back to the separation queue from
/// scratch (attempts and error cleared, the pending failure notice dropped); anything else
/// is refused.
#[actix_rt::test]
async fn a_dead_letter_is_requeued_from_scratch() {
    use uvr::actors::scheduler::{Claim, Fail};
    use uvr::queue::Failure;
    use uvr::task::Stage;
    let app = spawn_app(&[]).await;
    let client = ApiClient::for_app(&app.base);
    let accepted: Value = client.generate(&seed_body(4)).await.json().await.unwrap();
    let id = accepted["task_id"].as_str().unwrap().to_string();
    let requeue = |id: String| {
        client
            .request(Method::POST, &format!("/admin/dead/{id}/requeue"))
            .send()
    };
    // Not dead yet.
    let (s, code, _) = error_of(requeue(id.clone()).await.unwrap()).await;
    assert_eq!((s, code.as_str()), (409, "not_dead_lettered"));
    let claimed = app
        .scheduler
        .ask(Claim {
            stage: Stage::Separate,
            worker: "test".into(),
            wait: Duration::ZERO,
        })
        .await
        .unwrap()
        .expect("the task");
    app.scheduler
        .ask(Fail {
            claimed,
            failure: Failure {
                code: "audio_corrupt".into(),
                message: "broken".into(),
                retryable: false,
                delay: None,
            },
        })
        .await
        .unwrap();
    let stats: Value = client.get("/queue").await.json().await.unwrap();
    assert_eq!(stats["separate"]["dead"], 1, "{stats}");
    assert_eq!(
        stats["deliver"]["waiting"], 1,
        "the failure notice waits: {stats}"
    );
    let t: Value = client
        .get(&format!("/tasks/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(t["status"], "failed");
    let resp = requeue(id.clone()).await.unwrap();
    assert_eq!(resp.status(), 202);
    let t: Value = client
        .get(&format!("/tasks/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(t["status"], "queued", "{t}");
    assert_eq!(t["stage"], "separate");
    assert_eq!(t["attempts"], 0);
    assert!(t["error"].is_null(), "{t}");
    assert_eq!(t["priority"], 4);
    let stats: Value = client.get("/queue").await.json().await.unwrap();
    assert_eq!(stats["separate"]["dead"], 0, "{stats}");
    assert_eq!(stats["separate"]["waiting"], 1);
    assert_eq!(
        stats["deliver"]["waiting"], 0,
        "the notice was dropped: {stats}"
    );
    let ttl = app
        .redis
        .cli(&["PTTL", &format!("uvr_tasks:task:{id}")])
        .unwrap();
    assert_eq!(ttl.trim(), "-1", "the record no longer expires");
    // Once is enough; unknown ids and non-ids are not found.
    let (s, code, _) = error_of(requeue(id.clone()).await.unwrap()).await;
    assert_eq!((s, code.as_str()), (409, "not_dead_lettered"));
    let (s, code, _) = error_of(
        requeue("0190a2b4-0000-7000-8000-000000000000".into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, code.as_str()), (404, "task_not_found"));
    let anonymous = client
        .with_auth(Auth::None)
        .request(Method::POST, &format!("/admin/dead/{id}/requeue"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

/// Client keys (README "Client keys"): a client's key submits under the client's name and
/// sees only its own tasks (another client's task is `404 task_not_found`, as if it did not
/// exist, for reading, cancelling and stem links); the administrator sees every task; the
/// administrator's routes and health details are not a key's; a key deleted from the file
/// stops working without a restart, and the other keys go on.
#[actix_rt::test]
async fn client_keys_see_only_their_tasks_and_are_revoked_by_editing_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    let (alpha, alpha_line) = uvr::api::keys::generate("alpha");
    let (beta, beta_line) = uvr::api::keys::generate("beta");
    let (gamma, gamma_line) = uvr::api::keys::generate("gamma");
    std::fs::write(
        &file,
        format!("{alpha_line}\n{beta_line}\n{gamma_line} rate=0.01 burst=1 max_priority=2\n"),
    )
    .unwrap();
    let app = spawn_app(&[("API_KEYS_FILE", file.to_str().unwrap())]).await;
    let client = ApiClient::for_app(&app.base);
    let send = |method: reqwest::Method, path: &str, key: &str| {
        client.with_auth(Auth::bearer(key)).request(method, path)
    };
    let submit = |key: &str| {
        send(reqwest::Method::POST, "/generate", key)
            .json(&seed_body(3))
            .send()
    };
    let mut ids = Vec::new();
    for key in [&alpha, &beta] {
        let resp = submit(key).await.unwrap();
        assert_eq!(resp.status(), 202);
        let body: Value = resp.json().await.unwrap();
        ids.push(body["task_id"].as_str().unwrap().to_string());
    }
    let (a, b) = (&ids[0], &ids[1]);
    // Gamma's own limits: priorities up to 2, one submission per 100 s; the others keep the
    // service's (alpha submits again at once).
    let mut urgent = seed_body(3);
    let (code, error, _) = error_of(
        send(reqwest::Method::POST, "/generate", &gamma)
            .json(&urgent)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((code, error.as_str()), (422, "priority_not_allowed"));
    urgent["priority"] = json!(2);
    for expected in [202, 429] {
        let resp = send(reqwest::Method::POST, "/generate", &gamma)
            .json(&urgent)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), expected);
    }
    assert_eq!(submit(&alpha).await.unwrap().status(), 202);
    let status = |method: reqwest::Method, path: String, key: String| {
        let req = send(method, &path, &key);
        async move { req.send().await.unwrap() }
    };
    // Each client sees its own task, and not the other's.
    let own = status(reqwest::Method::GET, format!("/tasks/{a}"), alpha.clone()).await;
    assert_eq!(own.status(), 200);
    let own: Value = own.json().await.unwrap();
    assert_eq!(own["task_id"], a.as_str());
    for (method, path) in [
        (reqwest::Method::GET, format!("/tasks/{b}")),
        (reqwest::Method::DELETE, format!("/tasks/{b}")),
        (reqwest::Method::GET, format!("/tasks/{b}/stems/vocals")),
    ] {
        let resp = status(method.clone(), path.clone(), alpha.clone()).await;
        let (code, error, _) = error_of(resp).await;
        assert_eq!(
            (code, error.as_str()),
            (404, "task_not_found"),
            "{method} {path}"
        );
    }
    let (rec, _) = app
        .scheduler
        .ask(uvr::actors::scheduler::GetTask(b.parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(
        rec.status,
        uvr::task::Status::Queued,
        "not cancelled by alpha"
    );
    assert_eq!(rec.request.owner.as_deref(), Some("beta"));
    // HTTP Basic with the client's name and key works too; another name with it does not.
    let basic = client
        .with_auth(Auth::basic("beta", &beta))
        .get(&format!("/tasks/{b}"))
        .await;
    assert_eq!(basic.status(), 200);
    let wrong = client
        .with_auth(Auth::basic("alpha", &beta))
        .get(&format!("/tasks/{b}"))
        .await;
    assert_eq!(wrong.status(), 401);
    // The administrator sees both.
    for id in [a, b] {
        assert_eq!(client.get(&format!("/tasks/{id}")).await.status(), 200);
    }
    // The administrator's routes are not a key's; /health shows a key the public view.
    let requeue = status(
        reqwest::Method::POST,
        format!("/admin/dead/{a}/requeue"),
        alpha.clone(),
    )
    .await;
    let (code, error, _) = error_of(requeue).await;
    assert_eq!((code, error.as_str()), (403, "forbidden"));
    let health: Value = status(reqwest::Method::GET, "/health".into(), alpha.clone())
        .await
        .json()
        .await
        .unwrap();
    assert!(health.get("workers").is_none(), "{health}");
    let admin_health: Value = client.get("/health").await.json().await.unwrap();
    assert!(admin_health.get("workers").is_some(), "{admin_health}");
    // Revoke beta by deleting its line: refused within seconds, alpha goes on.
    std::fs::write(&file, format!("{alpha_line}\n")).unwrap();
    let revoked = common::eventually(Duration::from_secs(5), || {
        let req = send(reqwest::Method::GET, &format!("/tasks/{b}"), &beta);
        async move { req.send().await.unwrap().status() == 401 }
    })
    .await;
    assert!(revoked, "beta's key still works after its line was deleted");
    let after = status(reqwest::Method::GET, format!("/tasks/{a}"), alpha.clone()).await;
    assert_eq!(after.status(), 200);
    let wrong_key = status(
        reqwest::Method::GET,
        format!("/tasks/{a}"),
        format!("{alpha}x"),
    )
    .await;
    assert_eq!(wrong_key.status(), 401);
}

/// A keys file that does not parse, or names the administrator as a client, stops the
/// start-up with the variable and the line.
#[actix_rt::test]
async fn a_bad_keys_file_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    let (_, line) = uvr::api::keys::generate("admin");
    for (text, why) in [
        (
            "alpha not-a-digest\n".to_string(),
            "line 1: the digest must start with sha256:",
        ),
        (format!("{line}\n"), "administrator"),
    ] {
        std::fs::write(&file, &text).unwrap();
        let env = uvr::config::Env::from_pairs([
            ("API_PASSWORD", PASSWORD),
            ("API_USERNAME", USER),
            ("API_KEYS_FILE", file.to_str().unwrap()),
            ("MODELS_DIR", "/nonexistent"),
            ("STORAGE_URL", "file:///tmp/uvr-test-unused-storage"),
            ("LINK_SIGNING_KEY", "test-link-signing-key-0123456789abcdef"),
        ]);
        let err = uvr::settings::Settings::from_env(&env, Some(&[uvr::settings::Role::Api]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("API_KEYS_FILE") && err.contains(why), "{err}");
    }
}

/// A model copied into `MODELS_DIR` while the API runs is offered within the rescan interval,
/// without a restart, and refused again once removed (README "Models").
#[actix_rt::test]
async fn models_added_to_the_models_dir_are_offered_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(&[
        ("MODELS_DIR", dir.path().to_str().unwrap()),
        ("MODELS_RESCAN_SECONDS", "0.2"),
    ])
    .await;
    let client = ApiClient::for_app(&app.base);
    let with_model = || {
        let mut body = seed_body(3);
        body["model"] = json!("tiny");
        body
    };
    let (code, error, _) = error_of(client.generate(&with_model()).await).await;
    assert_eq!((code, error.as_str()), (422, "unknown_model"));
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mdx");
    for f in ["tiny.onnx", "tiny.json"] {
        std::fs::copy(fixtures.join(f), dir.path().join(f)).unwrap();
    }
    let offered = common::eventually(Duration::from_secs(5), || async {
        let models: Value = client.get("/models").await.json().await.unwrap();
        models.to_string().contains("\"tiny\"")
    })
    .await;
    assert!(offered, "the new model is not listed");
    assert_eq!(client.generate(&with_model()).await.status(), 202);
    for f in ["tiny.onnx", "tiny.json"] {
        std::fs::remove_file(dir.path().join(f)).unwrap();
    }
    let withdrawn = common::eventually(Duration::from_secs(5), || async {
        client.generate(&with_model()).await.status() == 422
    })
    .await;
    assert!(withdrawn, "the removed model is still accepted");
}

/// `GET /tasks` lists the caller's own tasks, newest first, a page at a time, by status; each
/// client sees its own, the administrator its own too.
#[actix_rt::test]
async fn get_tasks_lists_the_callers_own_tasks_in_pages() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    let (alpha, alpha_line) = uvr::api::keys::generate("alpha");
    let (beta, beta_line) = uvr::api::keys::generate("beta");
    std::fs::write(&file, format!("{alpha_line}\n{beta_line}\n")).unwrap();
    let app = spawn_app(&[("API_KEYS_FILE", file.to_str().unwrap())]).await;
    let client = ApiClient::for_app(&app.base);
    let call = |method: reqwest::Method, path: &str, key: &str| {
        client.with_auth(Auth::bearer(key)).request(method, path)
    };
    let mut mine = Vec::new();
    for _ in 0..3 {
        let resp = call(reqwest::Method::POST, "/generate", &alpha)
            .json(&seed_body(3))
            .send()
            .await
            .unwrap();
        let body: Value = resp.json().await.unwrap();
        mine.push(body["task_id"].as_str().unwrap().to_string());
    }
    let resp = call(reqwest::Method::POST, "/generate", &beta)
        .json(&seed_body(3))
        .send()
        .await
        .unwrap();
    let theirs: Value = resp.json().await.unwrap();
    let cancelled = call(
        reqwest::Method::DELETE,
        &format!("/tasks/{}", mine[1]),
        &alpha,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(cancelled.status(), 202);
    let list = |path: String, key: String| {
        let req = call(reqwest::Method::GET, &path, &key);
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            let body: Value = resp.json().await.unwrap();
            let ids: Vec<String> = body["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["task_id"].as_str().unwrap().to_string())
                .collect();
            (ids, body["next"].as_str().map(str::to_string))
        }
    };
    let newest_first: Vec<String> = mine.iter().rev().cloned().collect();
    assert_eq!(
        list("/tasks".into(), alpha.clone()).await,
        (newest_first.clone(), None)
    );
    // Pages of two: the cursor carries on where the page ended, skipping nothing.
    let (page, next) = list("/tasks?limit=2".into(), alpha.clone()).await;
    assert_eq!(page, newest_first[..2]);
    let next = next.expect("a next page");
    let (rest, end) = list(format!("/tasks?limit=2&before={next}"), alpha.clone()).await;
    assert_eq!((rest, end), (newest_first[2..].to_vec(), None));
    // By status.
    let (ids, _) = list("/tasks?status=cancelled".into(), alpha.clone()).await;
    assert_eq!(ids, vec![mine[1].clone()]);
    let (ids, _) = list("/tasks?status=queued".into(), alpha.clone()).await;
    assert_eq!(ids, vec![mine[2].clone(), mine[0].clone()]);
    // Each sees its own.
    let (ids, _) = list("/tasks".into(), beta.clone()).await;
    assert_eq!(ids, vec![theirs["task_id"].as_str().unwrap().to_string()]);
    let admin: Value = client.get("/tasks").await.json().await.unwrap();
    assert_eq!(admin["tasks"], json!([]), "{admin}");
    // Bad parameters.
    for path in [
        "/tasks?limit=0",
        "/tasks?limit=101",
        "/tasks?status=nope",
        "/tasks?before=x",
        "/tasks?page=2",
        "/tasks?limit=1&limit=2",
    ] {
        let (code, error, _) = error_of(
            call(reqwest::Method::GET, path, &alpha)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((code, error.as_str()), (422, "invalid_query"), "{path}");
    }
}

/// Named ensembles (README "Ensembles"): `"preset"` stands for the preset's models and
/// algorithm, `GET /models` lists the presets, and a bad use is a stable 422.
#[actix_rt::test]
async fn a_preset_is_submitted_as_its_models_and_ensemble() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mdx");
    for name in ["a", "b"] {
        for ext in ["onnx", "json"] {
            std::fs::copy(
                fixtures.join(format!("tiny.{ext}")),
                models.join(format!("{name}.{ext}")),
            )
            .unwrap();
        }
    }
    let presets = dir.path().join("presets.json");
    std::fs::write(
        &presets,
        r#"{"pair": {"models": ["a", "b"], "ensemble": "max_spec"}}"#,
    )
    .unwrap();
    let app = spawn_app(&[
        ("MODELS_DIR", models.to_str().unwrap()),
        ("ENSEMBLE_PRESETS_FILE", presets.to_str().unwrap()),
    ])
    .await;
    let client = ApiClient::for_app(&app.base);
    let listed: Value = client.get("/models").await.json().await.unwrap();
    assert_eq!(
        listed["presets"],
        json!({"pair": {"models": ["a", "b"], "ensemble": "max_spec"}})
    );
    let mut body = seed_body(3);
    body["preset"] = json!("pair");
    let resp = client.generate(&body).await;
    assert_eq!(resp.status(), 202);
    let accepted: Value = resp.json().await.unwrap();
    let task: Value = client
        .get(&format!("/tasks/{}", accepted["task_id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(task["request"]["models"], json!(["a", "b"]));
    assert_eq!(task["request"]["ensemble"], "max_spec");
    for (extra, code) in [
        (json!({"preset": "nope"}), "unknown_preset"),
        (json!({"preset": 1}), "invalid_type"),
        (json!({"preset": "pair", "model": "a"}), "invalid_body"),
    ] {
        let mut body = seed_body(3);
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, error, full) = error_of(client.generate(&body).await).await;
        assert_eq!((status, error.as_str()), (422, code), "{extra}");
        assert_eq!(full["error"]["field"], "preset");
    }
}
