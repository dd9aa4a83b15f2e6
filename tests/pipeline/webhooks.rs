//! Webhook delivery: retries logged, a receiver's `Retry-After`, giving up after
//! `WEBHOOK_MAX_ATTEMPTS`, redirects neither followed nor retried, and the links on the task
//! before the webhook is delivered.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common;
use crate::common::client::ApiClient;
use crate::common::e2e::{Deployment, Peer, WEBHOOK_SECRET, read_wav, test_wav};

#[actix_rt::test]
async fn a_failing_webhook_is_retried_and_logged() {
    let peer = Peer::start();
    peer.state.lock().unwrap().hook_statuses = vec![500, 503];
    let dep = Deployment::new(&[
        ("RETRY_BASE_SECONDS", "0.1"),
        ("WEBHOOK_RETRY_MAX_SECONDS", "0.3"),
    ]);
    let _svc = dep.spawn("api,processor,uploader", "all");
    let client = dep.client();
    let audio = peer.put("r.wav", test_wav(0.3, 44_100));
    let a = client
        .submit(&json!({"audio": audio, "hook_url": peer.hook_url()}))
        .await;
    let id = a["task_id"].as_str().unwrap();
    let hooks = peer.wait_hooks(3, Duration::from_secs(60)).await;
    assert_eq!(hooks.len(), 3, "two failures, then delivered");
    assert!(
        hooks.iter().all(|h| h.headers["webhook-id"] == id),
        "same id on every retry"
    );
    dep.redis.settled(Duration::from_secs(30)).await;
    let t = client.task(id).await;
    assert_eq!(t["status"], "succeeded");
    let log = t["webhook_deliveries"].as_array().unwrap();
    let outcomes: Vec<&str> = log.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, vec!["retry", "retry", "delivered"]);
}

/// A status and the headers to send with it.
type Answer = (u16, Vec<(&'static str, String)>);

/// What [`Receiver`] answers the n-th request on one path with (200 once the plan is used
/// up), and every request it got.
#[derive(Default)]
struct ReceiverState {
    plans: std::collections::HashMap<String, Vec<Answer>>,
    hits: Vec<(String, std::time::Instant)>,
}

/// A loopback HTTP server that records every request (any method, any path) and answers by
/// plan.
#[derive(Clone)]
struct Receiver {
    base: String,
    state: std::sync::Arc<std::sync::Mutex<ReceiverState>>,
}

impl Receiver {
    fn start() -> Self {
        use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
        type St = std::sync::Arc<std::sync::Mutex<ReceiverState>>;
        async fn answer(req: HttpRequest, st: web::Data<St>) -> HttpResponse {
            let path = req.path().to_string();
            let mut s = st.lock().unwrap();
            let n = s.hits.iter().filter(|(p, _)| *p == path).count();
            s.hits.push((path.clone(), std::time::Instant::now()));
            let (status, headers) = s
                .plans
                .get(&path)
                .and_then(|p| p.get(n).cloned())
                .unwrap_or((200, Vec::new()));
            let mut resp =
                HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
            for (k, v) in headers {
                resp.insert_header((k, v));
            }
            resp.finish()
        }
        let state = St::default();
        let data = web::Data::new(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(answer))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        actix_rt::spawn(server);
        Self { base, state }
    }

    /// Plans the answers for `path` and returns its URL.
    fn plan(&self, path: &str, answers: Vec<Answer>) -> String {
        self.state
            .lock()
            .unwrap()
            .plans
            .insert(path.to_string(), answers);
        format!("{}{path}", self.base)
    }

    /// When each request for `path` arrived.
    fn hits(&self, path: &str) -> Vec<std::time::Instant> {
        self.state
            .lock()
            .unwrap()
            .hits
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, at)| *at)
            .collect()
    }

    fn all_hits(&self) -> usize {
        self.state.lock().unwrap().hits.len()
    }
}

/// The API, a separator and an uploader in this process on a throwaway Redis, with loopback
/// targets allowed, local storage and fast retries; `extra` on top.
struct InProcess {
    app: common::TestApp,
    client: ApiClient,
    peer: Peer,
    _dir: tempfile::TempDir,
}

impl InProcess {
    async fn start(extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("staging").display().to_string();
        let storage = format!("file://{}", dir.path().join("stems").display());
        let mut pairs: Vec<(&str, &str)> = vec![
            ("UVR_ROLES", "api,processor,uploader"),
            ("ALLOW_PRIVATE_NETWORKS", "true"),
            ("STAGING_DIR", &staging),
            ("STORAGE_URL", &storage),
            ("LINK_SIGNING_KEY", "test-link-signing-key-0123456789abcdef"),
            ("WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("REAPER_INTERVAL_SECONDS", "0.1"),
            ("CLAIM_POLL_SECONDS", "0.1"),
        ];
        pairs.extend_from_slice(extra);
        let app = common::spawn_app(&pairs).await;
        Self {
            client: ApiClient::for_app(&app.base),
            app,
            peer: Peer::start(),
            _dir: dir,
        }
    }

    /// Submits a short song with `hook_url`; the task id.
    async fn submit(&self, hook_url: &str) -> String {
        let audio = self.peer.put("song.wav", test_wav(0.3, 44_100));
        self.client
            .submit_id(&json!({"audio": audio, "hook_url": hook_url}))
            .await
    }

    /// The task once it has ended (succeeded or failed); fails after 30 s.
    async fn ended(&self, id: &str) -> Value {
        let ended = |s: &str| s == "succeeded" || s == "failed";
        self.client
            .wait_status(id, ended, Duration::from_secs(30))
            .await
    }
}

/// Webhooks follow no redirect (README "Delivery", SECURITY.md rule 3): a receiver answering
/// 302 or 307 with a `Location` on a second loopback server gets that server no request.
/// The uploader treats the redirect as a refusal for good: one attempt, logged as `failed`
/// with its status, no retry, and the task ends `succeeded` with its links and
/// `webhook.state` `refused`.
#[actix_rt::test]
async fn a_redirecting_webhook_receiver_is_not_followed_nor_retried() {
    let sys =
        InProcess::start(&[("RETRY_BASE_SECONDS", "0.1"), ("WEBHOOK_MAX_ATTEMPTS", "5")]).await;
    let receiver = Receiver::start();
    let target = Receiver::start();
    for status in [302u16, 307] {
        let path = format!("/hook-{status}");
        let location = format!("{}/stolen-{status}", target.base);
        let hook = receiver.plan(&path, vec![(status, vec![("Location", location)])]);
        let id = sys.submit(&hook).await;
        let t = sys.ended(&id).await;
        assert_eq!(target.all_hits(), 0, "{status}: the redirect was followed");
        assert_eq!(t["status"], "succeeded", "{t}");
        assert_eq!(
            t["result"]["webhook"],
            json!({"state": "refused", "attempts": 1}),
            "{t}"
        );
        assert!(t["result"]["stems"]["vocals"]["url"].is_string(), "{t}");
        let log = t["webhook_deliveries"].as_array().unwrap();
        assert_eq!(log.len(), 1, "{t}");
        assert_eq!(log[0]["status"], status, "{t}");
        assert_eq!(log[0]["outcome"], "failed", "{t}");
        assert_eq!(
            log[0]["error"],
            format!("receiver answered {status}; redirects are not followed")
        );
        assert_eq!(receiver.hits(&path).len(), 1, "{status}: one request");
    }
    // Nothing is left to claim: still one request each, none at the target.
    sys.app.redis.settled(Duration::from_secs(30)).await;
    assert_eq!(receiver.hits("/hook-302").len(), 1);
    assert_eq!(receiver.hits("/hook-307").len(), 1);
    assert_eq!(target.all_hits(), 0, "the redirect target got a request");
}

/// README "Delivery": a failed webhook is retried no sooner than the receiver's
/// `Retry-After` (in seconds), even when the backoff is far shorter.
#[actix_rt::test]
async fn a_webhook_retry_waits_for_the_receivers_retry_after() {
    let sys = InProcess::start(&[
        ("RETRY_BASE_SECONDS", "0.05"),
        ("WEBHOOK_RETRY_MAX_SECONDS", "0.1"),
    ])
    .await;
    let receiver = Receiver::start();
    let hook = receiver.plan("/busy", vec![(503, vec![("Retry-After", "3".into())])]);
    let id = sys.submit(&hook).await;
    let t = sys.ended(&id).await;
    assert_eq!(t["result"]["webhook"]["state"], "delivered", "{t}");
    let outcomes: Vec<&str> = t["webhook_deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["retry", "delivered"], "{t}");
    let hits = receiver.hits("/busy");
    assert_eq!(hits.len(), 2);
    let gap = hits[1] - hits[0];
    assert!(
        gap >= Duration::from_secs(3) && gap < Duration::from_secs(8),
        "retried after {gap:?}, not after the 3 s the receiver asked for"
    );
}

/// README "Delivery": a webhook that keeps failing is tried `WEBHOOK_MAX_ATTEMPTS` times,
/// then given up; the task keeps its links and ends `succeeded` with `webhook.state`
/// `gave_up`.
#[actix_rt::test]
async fn a_failing_webhook_is_given_up_after_webhook_max_attempts() {
    let sys = InProcess::start(&[
        ("RETRY_BASE_SECONDS", "0.05"),
        ("WEBHOOK_RETRY_MAX_SECONDS", "0.1"),
        ("WEBHOOK_MAX_ATTEMPTS", "3"),
    ])
    .await;
    let receiver = Receiver::start();
    let hook = receiver.plan("/down", vec![(500, Vec::new()); 10]);
    let id = sys.submit(&hook).await;
    let t = sys.ended(&id).await;
    assert_eq!(t["status"], "succeeded", "{t}");
    assert_eq!(
        t["result"]["webhook"],
        json!({"state": "gave_up", "attempts": 3}),
        "{t}"
    );
    assert!(t["result"]["stems"]["vocals"]["url"].is_string(), "{t}");
    let log = t["webhook_deliveries"].as_array().unwrap();
    assert_eq!(log.len(), 3, "{t}");
    assert!(log.iter().all(|e| e["status"] == 500), "{t}");
    // Nothing is left to claim: no fourth attempt.
    sys.app.redis.settled(Duration::from_secs(30)).await;
    assert_eq!(receiver.hits("/down").len(), 3);
}

/// The links are on the task as soon as the stems are stored, while the webhook receiver is
/// still down and the delivery retried.
#[actix_rt::test]
async fn links_are_on_the_task_before_the_webhook_is_delivered() {
    let peer = Peer::start();
    let receiver = common::e2e::HookReceiver::start_down();
    let dep = Deployment::new(&[("RETRY_BASE_SECONDS", "30")]);
    let _svc = dep.spawn("api,processor,uploader", "all");
    let client = dep.client();
    let audio = peer.put("song.wav", test_wav(1.0, 44_100));
    let accepted = client
        .submit(&json!({"audio": audio, "hook_url": receiver.url()}))
        .await;
    let id = accepted["task_id"].as_str().unwrap().to_string();
    let t = client
        .poll_task(&id, Duration::from_secs(60), |t| {
            t["result"]["stems"]["vocals"]["url"].is_string()
        })
        .await;
    let url = t["result"]["stems"]["vocals"]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no link on the task: {t}"));
    assert_ne!(
        t["status"], "succeeded",
        "the webhook is still pending: {t}"
    );
    let log = t["webhook_deliveries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(log.iter().all(|a| a["outcome"] != "delivered"), "{log:?}");
    let resp = client.http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        read_wav(&resp.bytes().await.unwrap()).1.len(),
        44_100,
        "the stem is downloadable"
    );
}
