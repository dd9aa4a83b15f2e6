//! `POST /generate`: a request accepted and queued, priorities and queue positions, bad input
//! refused with a stable code, private targets when allowed, `Idempotency-Key` replays and
//! conflicts, the per-credential rate limit and backpressure at `MAX_QUEUE_DEPTH`.

use reqwest::Method;
use serde_json::{Value, json};

use super::error_of;
use crate::common::client::ApiClient;
use crate::common::{seed_body, spawn_app};

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
async fn rate_limit_per_credential_answers_429_with_retry_after() {
    let app = spawn_app(&[("RATE_LIMIT_PER_SECOND", "0.5"), ("RATE_LIMIT_BURST", "2")]).await;
    let client = ApiClient::for_app(&app.base);
    assert_eq!(client.generate(&seed_body(3)).await.status(), 202);
    assert_eq!(client.generate(&seed_body(3)).await.status(), 202);
    let resp = client.generate(&seed_body(3)).await;
    assert_eq!(resp.status(), 429);
    let retry = crate::common::retry_after(&resp);
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
