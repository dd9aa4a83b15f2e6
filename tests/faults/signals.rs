//! Signals: SIGTERM lets the uploader finish the webhook in hand and exit 0; a second signal
//! stops at once and the lease brings the interrupted task back.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{SERIAL, SETTLE, api_of, wait_task};
use crate::common::client::ApiClient;
use crate::common::e2e::{Deployment, HookAction, HookReceiver, Peer, Service, test_wav};
use crate::common::eventually;

/// Sends SIGTERM to `svc` (without waiting).
fn sigterm(svc: &Service) {
    let pid = svc.child.as_ref().expect("running").id();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -TERM {pid}");
}

/// Waits (without blocking the test's own servers) until `svc` exits; its status, or `None`
/// when it is still running after `timeout`.
async fn exit_within(svc: &mut Service, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    let child = svc.child.as_mut().expect("running");
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            svc.child = None;
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One task whose first webhook is open at the receiver (handled per `plan`): the
/// deployment (API and processor in one process, `extra` settings), the receiver, an
/// uploader named `uploader`, the API client and the task id.
async fn webhook_in_hand(
    plan: HookAction,
    extra: &[(&str, &str)],
    uploader: &str,
) -> (
    Peer,
    HookReceiver,
    Deployment,
    Service,
    Service,
    ApiClient,
    String,
) {
    let peer = Peer::start();
    let hooks = HookReceiver::start();
    hooks.set_plan(vec![plan]);
    let dep = Deployment::new(extra);
    let api_svc = dep.spawn("api,processor", "api");
    let up = dep.spawn("uploader", uploader);
    let api = api_of(&dep);
    let audio = peer.put("t.wav", test_wav(1.0, 44_100));
    let id = api
        .submit_id(&json!({"audio": audio, "hook_url": hooks.url()}))
        .await;
    let open = eventually(Duration::from_secs(60), || async {
        !hooks.hits().is_empty()
    })
    .await;
    assert!(open, "the webhook never arrived");
    (peer, hooks, dep, api_svc, up, api, id)
}

#[actix_rt::test]
async fn sigterm_lets_the_uploader_finish_the_webhook_in_hand_then_exit_0() {
    let _one = SERIAL.lock().await;
    // The receiver takes the delivery and answers 200 two seconds later.
    let (_peer, hooks, _dep, _api, mut uploader, api, id) = webhook_in_hand(
        HookAction::Slow(Duration::from_secs(2), 200),
        &[("WEBHOOK_TIMEOUT_SECONDS", "30")],
        "uploader",
    )
    .await;
    let signalled = Instant::now();
    sigterm(&uploader);
    // It does not stop while the request is open...
    assert!(
        exit_within(&mut uploader, Duration::from_millis(1200))
            .await
            .is_none(),
        "exited with a webhook in hand: {}",
        uploader.log_text()
    );
    // ...and stops once the answer came and the outcome is recorded.
    let status = exit_within(&mut uploader, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("never exited: {}", uploader.log_text()));
    assert!(status.success(), "{status:?}: {}", uploader.log_text());
    assert!(signalled.elapsed() >= Duration::from_millis(1500));
    let t = api.try_task(&id).await.unwrap().expect("task");
    assert_eq!(t["status"], "succeeded", "{t}");
    assert_eq!(t["result"]["webhook"]["state"], "delivered", "{t}");
    assert_eq!(hooks.hits().len(), 1, "delivered once, not again");
    let log = uploader.log_text();
    assert!(log.contains("draining"), "{log}");
}

#[actix_rt::test]
async fn a_second_sigterm_stops_at_once_and_the_lease_brings_the_task_back() {
    let _one = SERIAL.lock().await;
    // The first delivery stalls (no answer for ten minutes); later ones get 200.
    let (_peer, hooks, dep, _api, mut first, api, id) = webhook_in_hand(
        HookAction::Slow(Duration::from_secs(600), 200),
        &[("LEASE_SECONDS", "1.5"), ("WEBHOOK_TIMEOUT_SECONDS", "120")],
        "uploader-1",
    )
    .await;
    sigterm(&first);
    assert!(
        exit_within(&mut first, Duration::from_millis(800))
            .await
            .is_none(),
        "the first signal drains: it waits for the stalled request"
    );
    let second = Instant::now();
    sigterm(&first);
    let status = exit_within(&mut first, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("a second signal stops at once: {}", first.log_text()));
    assert!(status.success(), "{status:?}: {}", first.log_text());
    assert!(second.elapsed() < Duration::from_secs(5));
    assert!(first.log_text().contains("second signal"));
    // The task was interrupted in the deliver stage; its lease runs out and a new uploader
    // delivers it.
    let _second = dep.spawn("uploader", "uploader-2");
    let done = wait_task(&api, &id, SETTLE, |t| t["status"] == "succeeded").await;
    assert!(done, "{:?}", api.try_task(&id).await);
    let hits = hooks.hits();
    assert_eq!(
        hits.len(),
        2,
        "the interrupted delivery is sent again, once"
    );
    assert!(hits.iter().all(|h| h.id() == id));
    let t = api.try_task(&id).await.unwrap().unwrap();
    assert_eq!(t["result"]["webhook"]["state"], "delivered", "{t}");
}
