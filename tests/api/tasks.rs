//! Tasks once submitted: cancelling and unknown ids, queue statistics, task views without the
//! URLs' secrets, requeueing a dead letter, and `GET /tasks` listing the caller's own tasks
//! in pages.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::error_of;
use crate::common::client::{ApiClient, Auth};
use crate::common::{seed_body, spawn_app};

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
    let t = client.task(&id).await;
    assert_eq!(t["status"], "failed");
    let resp = requeue(id.clone()).await.unwrap();
    assert_eq!(resp.status(), 202);
    let t = client.task(&id).await;
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
