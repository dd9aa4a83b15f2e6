//! Who may call: HTTP Basic and its failures, two `Authorization` headers, failed-login
//! throttling per address, the metrics token, client keys (their own tasks, limits and
//! revocation by editing the file) and a keys file that does not parse.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::error_of;
use crate::common;
use crate::common::client::{ApiClient, Auth};
use crate::common::{PASSWORD, USER, seed_body, spawn_app};

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
    let retry = common::retry_after(&resp);
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
