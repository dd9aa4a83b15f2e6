//! The webhook receiver: down then up, answering 500 a few times, slower than the timeout,
//! and answering 410.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use super::{
    Figures, SERIAL, api_of, conclude, outcomes, record, submit_all, task_count, wait_task,
};
use crate::common::client::ApiClient;
use crate::common::e2e::{Deployment, HookAction, HookHit, HookReceiver, Peer, Service, test_wav};

/// One all-roles process with fast webhook retries; `extra` on top.
fn webhook_deployment(extra: &[(&str, &str)]) -> Deployment {
    let mut env = vec![
        ("WEBHOOK_RETRY_MAX_SECONDS", "0.5"),
        ("WEBHOOK_MAX_ATTEMPTS", "100"),
    ];
    env.extend_from_slice(extra);
    Deployment::new(&env)
}

fn short_audio(peer: &Peer, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| peer.put(&format!("h{i}.wav"), test_wav(0.5, 44_100)))
        .collect()
}

/// A webhook scenario: one all-roles process, `n` short songs, webhooks to `hooks`.
struct WebhookScenario {
    n: usize,
    ids: Vec<String>,
    api: ApiClient,
    hooks: HookReceiver,
    _svc: Service,
    dep: Deployment,
    _peer: Peer,
}

impl WebhookScenario {
    /// Starts the deployment (with `extra` settings) and submits the songs.
    async fn start(hooks: HookReceiver, extra: &[(&str, &str)]) -> Self {
        let n = task_count(3);
        let peer = Peer::start();
        let dep = webhook_deployment(extra);
        let svc = dep.spawn("api,processor,uploader", "all");
        let api = api_of(&dep);
        let ids = submit_all(&api, &short_audio(&peer, n), &hooks.url()).await;
        Self {
            n,
            ids,
            api,
            hooks,
            _svc: svc,
            dep,
            _peer: peer,
        }
    }

    /// Waits for every task to settle, prints the figures, checks the signatures, the empty
    /// queues and that every task completed.
    async fn finish(&self, name: &str) -> (HashMap<String, Option<Value>>, Vec<HookHit>, Figures) {
        let (records, hits, f) = conclude(name, &self.api, &self.dep, &self.ids, &self.hooks).await;
        assert_eq!(f.lost, 0, "{records:?}");
        assert_eq!(f.completed, self.n, "{records:?}");
        (records, hits, f)
    }
}

#[actix_rt::test]
async fn webhook_receiver_down_then_up() {
    let _one = SERIAL.lock().await;
    let mut sc = WebhookScenario::start(HookReceiver::start_down(), &[]).await;
    let (api, ids) = (&sc.api, &sc.ids);
    // Down until every task has failed at least twice with "connection refused".
    for id in ids {
        let refused = wait_task(api, id, Duration::from_secs(120), |t| {
            outcomes(t).iter().filter(|o| *o == "retry").count() >= 2
        })
        .await;
        assert!(refused, "{id}: {:?}", api.try_task(id).await);
    }
    sc.hooks.up();

    let (records, _, f) = sc
        .finish("webhook receiver down (connection refused), then up")
        .await;
    assert_eq!(f.duplicated, 0, "{:?}", f.accepted);
    for id in &sc.ids {
        let t = record(&records, id);
        let o = outcomes(t);
        assert_eq!(o.last().map(String::as_str), Some("delivered"), "{t}");
        assert!(o[..o.len() - 1].iter().all(|x| x == "retry"), "{o:?}");
        assert!(
            t["webhook_deliveries"][0]["status"].is_null(),
            "refused connections have no status: {t}"
        );
        assert_eq!(f.accepted.get(id), Some(&1));
        assert_eq!(t["result"]["webhook"]["state"], "delivered");
    }
}

#[actix_rt::test]
async fn webhook_receiver_answering_500_a_few_times() {
    let _one = SERIAL.lock().await;
    let hooks = HookReceiver::start();
    hooks.set_plan(vec![
        HookAction::Answer(500),
        HookAction::Answer(500),
        HookAction::Answer(500),
    ]);
    let sc = WebhookScenario::start(hooks, &[]).await;
    let (records, hits, f) = sc.finish("webhook receiver answers 500 three times").await;
    assert_eq!(f.duplicated, 0, "{:?}", f.accepted);
    for id in &sc.ids {
        let t = record(&records, id);
        assert_eq!(outcomes(t), ["retry", "retry", "retry", "delivered"], "{t}");
        let statuses: Vec<u16> = hits
            .iter()
            .filter(|h| h.id() == *id)
            .map(|h| h.status)
            .collect();
        assert_eq!(statuses, [500, 500, 500, 200]);
    }
}

#[actix_rt::test]
async fn webhook_receiver_slower_than_the_timeout() {
    let _one = SERIAL.lock().await;
    let hooks = HookReceiver::start();
    // The first delivery of each task is answered 200 after 3 s; the sender gives up at 1 s.
    hooks.set_plan(vec![HookAction::Slow(Duration::from_secs(3), 200)]);
    let sc = WebhookScenario::start(hooks, &[("WEBHOOK_TIMEOUT_SECONDS", "1")]).await;
    let (records, hits, f) = sc
        .finish("webhook receiver slower than WEBHOOK_TIMEOUT_SECONDS")
        .await;
    let (n, ids) = (sc.n, &sc.ids);
    println!(
        "FAULT-DETAIL | webhook receiver slow | the receiver took {} slow deliveries whose answer came after the sender's timeout; each was sent again (at-least-once, same webhook-id)",
        hits.iter()
            .filter(|h| h.accepted())
            .count()
            .saturating_sub(n)
    );
    // A delivery that timed out is retried (the sender cannot know the receiver took it):
    // one extra per slow answer, never more.
    assert!(f.accepted.values().all(|c| *c <= 2), "{:?}", f.accepted);
    for id in ids {
        let t = record(&records, id);
        assert_eq!(outcomes(t), ["retry", "delivered"], "{t}");
        let first = &t["webhook_deliveries"][0];
        assert!(first["status"].is_null(), "timed out, no status: {first}");
        assert!(
            first["error"]
                .as_str()
                .is_some_and(|e| e.contains("timed out") || e.contains("timeout")),
            "{first}"
        );
    }
}

#[actix_rt::test]
async fn webhook_receiver_answering_410_stops_delivery() {
    let _one = SERIAL.lock().await;
    let hooks = HookReceiver::start();
    hooks.set_plan(vec![HookAction::Answer(410)]);
    let sc = WebhookScenario::start(hooks, &[]).await;
    // 410 stops delivery for good; the stems stay on the task ("links stay on the task
    // whatever happens to the webhook").
    let (records, hits, _) = sc.finish("webhook receiver answers 410 Gone").await;
    for id in &sc.ids {
        let t = record(&records, id);
        assert_eq!(t["status"], "succeeded", "{t}");
        assert_eq!(t["result"]["webhook"]["state"], "gone", "{t}");
        assert_eq!(outcomes(t), ["gone"], "{t}");
        assert_eq!(t["webhook_deliveries"][0]["status"], 410);
        assert!(t["result"]["stems"]["vocals"]["url"].is_string());
        // The task is final: no delivery can follow. Exactly one attempt reached the receiver.
        assert_eq!(hits.iter().filter(|h| h.id() == *id).count(), 1, "{id}");
    }
}
