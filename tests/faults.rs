//! Fault injection: the real `uvr` binary, a real Redis, real SeaweedFS, and faults injected
//! for real — processes SIGKILLed mid-work and replaced, Redis SIGKILLed and restarted from
//! its AOF during a stream of submissions, SeaweedFS stopped and restarted while tasks are
//! being delivered, a webhook receiver that is down, fails, answers past the timeout or
//! answers 410.
//!
//! Every scenario prints one line
//!
//! ```text
//! FAULT | <scenario> | submitted N | completed C | duplicated D | lost L | acked-lost A
//! ```
//!
//! - submitted: logical submissions (each acknowledged with a 2xx in the end);
//! - completed: tasks that ended `succeeded` (stems stored, webhook settled);
//! - duplicated: tasks for which the receiver took (decided a 2xx for) more than one webhook.
//!   Webhooks are at-least-once by design: every retry carries the same `webhook-id` (the
//!   task id) so receivers can de-duplicate, and a delivery whose outcome the sender never
//!   learnt (killed mid-request, timed out, Redis gone before the ack) is sent again. The
//!   tests assert duplicates only where the design rules them out;
//! - lost: submitted tasks that never reached a final state (`succeeded`, `failed`,
//!   `cancelled`), a vanished record included;
//! - acked-lost: of those, the ones whose submission had been acknowledged.
//!
//! `FAULT_TASKS` scales the task counts (default 3; the Redis stream submits ten times as
//! many). The tests take a lock so that they run one at a time: they kill processes on
//! purpose, and on a small machine parallel scenarios would only measure each other.
//!
//! Layout: this file is the crate root, with the harness every scenario shares (the lock,
//! submitting, settling, the figures and the checks afterwards); its modules live in
//! `tests/faults/` (declared with `#[path]`, since a crate root's `mod x;` would look for
//! `tests/x.rs`), one kind of fault each:
//!
//! - `processes`: a processor SIGKILLed mid-separation, an uploader mid-upload and
//!   mid-webhook;
//! - `outages`: Redis SIGKILLed and restarted during a stream of submissions, SeaweedFS
//!   stopped and restarted during delivery;
//! - `webhooks`: the webhook receiver down, failing, slow and gone;
//! - `signals`: SIGTERM drains the webhook in hand; a second signal stops at once and the
//!   lease brings the task back.

mod common;

#[path = "faults/outages.rs"]
mod outages;
#[path = "faults/processes.rs"]
mod processes;
#[path = "faults/signals.rs"]
mod signals;
#[path = "faults/webhooks.rs"]
mod webhooks;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::client::ApiClient;
use common::e2e::{
    Deployment, HookHit, HookReceiver, S3_KEY, S3_SECRET, WEBHOOK_SECRET, verify_signature,
};
use common::eventually;
use serde_json::{Value, json};

/// One scenario at a time (see the module documentation).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long any scenario may take to settle; generous, for slow CI machines.
const SETTLE: Duration = Duration::from_secs(240);

/// Tasks per scenario: `FAULT_TASKS` or `default`.
fn task_count(default: usize) -> usize {
    std::env::var("FAULT_TASKS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n: &usize| *n > 0)
        .unwrap_or(default)
}

/// The API as a client sees it: the administrator, each request given up after 15 s.
fn api_of(dep: &Deployment) -> ApiClient {
    dep.client().with_http(
        reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap(),
    )
}

/// Submits a task per song, all accepted at once; their ids.
async fn submit_all(api: &ApiClient, audio: &[String], hook_url: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for a in audio {
        ids.push(
            api.submit_id(&json!({"audio": a, "hook_url": hook_url}))
                .await,
        );
    }
    ids
}

fn is_final(t: &Value) -> bool {
    matches!(
        t["status"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

/// Polls every task until all are final or `timeout` passes; returns the last view of each
/// (`None`: the record does not exist).
async fn settle(
    api: &ApiClient,
    ids: &[String],
    timeout: Duration,
) -> HashMap<String, Option<Value>> {
    let deadline = Instant::now() + timeout;
    let mut seen: HashMap<String, Option<Value>> = HashMap::new();
    let mut done: HashSet<String> = HashSet::new();
    loop {
        for id in ids {
            if done.contains(id) {
                continue;
            }
            if let Ok(t) = api.try_task(id).await {
                if t.as_ref().is_some_and(is_final) {
                    done.insert(id.clone());
                }
                seen.insert(id.clone(), t);
            }
        }
        if done.len() == ids.len() || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `pred` holds for the current view of task `id`.
async fn wait_task(
    api: &ApiClient,
    id: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> bool {
    eventually(timeout, || async {
        matches!(api.try_task(id).await, Ok(Some(t)) if pred(&t))
    })
    .await
}

/// The figures of one scenario.
#[derive(Debug, Default)]
struct Figures {
    submitted: usize,
    completed: usize,
    duplicated: usize,
    lost: usize,
    acked_lost: usize,
    /// Accepted webhooks per task id.
    accepted: HashMap<String, usize>,
    /// Webhooks for ids nobody submitted.
    strangers: usize,
}

impl Figures {
    /// `submitted`: every logical submission's task id (`None`: never acknowledged);
    /// `records`: the settled views; `hits`: what the receiver got.
    fn compute(
        submitted: &[Option<String>],
        records: &HashMap<String, Option<Value>>,
        hits: &[HookHit],
    ) -> Self {
        let mut f = Figures {
            submitted: submitted.len(),
            ..Default::default()
        };
        for h in hits.iter().filter(|h| h.accepted()) {
            *f.accepted.entry(h.id()).or_default() += 1;
        }
        let known: HashSet<&str> = submitted.iter().flatten().map(String::as_str).collect();
        f.strangers = f
            .accepted
            .keys()
            .filter(|id| !known.contains(id.as_str()))
            .count();
        f.duplicated = f.accepted.values().filter(|n| **n > 1).count();
        for s in submitted {
            let Some(id) = s else {
                f.lost += 1;
                continue;
            };
            match records.get(id) {
                Some(Some(t)) if is_final(t) => {
                    if t["status"] == "succeeded" {
                        f.completed += 1;
                    }
                }
                _ => {
                    f.lost += 1;
                    f.acked_lost += 1;
                }
            }
        }
        f
    }

    fn print(&self, scenario: &str) {
        println!(
            "FAULT | {scenario} | submitted {} | completed {} | duplicated {} | lost {} | acked-lost {}",
            self.submitted, self.completed, self.duplicated, self.lost, self.acked_lost
        );
    }
}

/// Every webhook received is validly signed, names the task of its `webhook-id`, and all
/// deliveries of one task carry the same id (so receivers can de-duplicate).
fn check_hooks(hits: &[HookHit]) {
    for h in hits {
        assert!(
            verify_signature(WEBHOOK_SECRET, &h.received),
            "a webhook with a bad signature: {:?}",
            h.received.headers
        );
        assert_eq!(
            h.received.body["task_id"].as_str(),
            Some(h.id().as_str()),
            "webhook-id is the task id"
        );
    }
}

/// What a fault must not leave behind: nothing waiting, held (a stuck lease), delayed or
/// dead-lettered in either stage once every task is final, and no panic in any process of
/// the deployment (their stderr; the logs themselves go to stdout).
async fn check_aftermath(api: &ApiClient, dep: &Deployment) {
    let stats: Value = api.get("/queue").await.json().await.unwrap();
    for stage in ["separate", "deliver"] {
        for what in ["waiting", "in_flight", "delayed", "dead"] {
            assert_eq!(stats[stage][what], 0, "{stage} {what}: {stats}");
        }
    }
    for entry in std::fs::read_dir(dep.dir.path()).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(!text.contains("panicked"), "{}: {text}", path.display());
        }
    }
}

/// The delivery log of a task: the outcome of each attempt.
fn outcomes(t: &Value) -> Vec<String> {
    t["webhook_deliveries"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["outcome"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn record<'a>(records: &'a HashMap<String, Option<Value>>, id: &str) -> &'a Value {
    records
        .get(id)
        .and_then(Option::as_ref)
        .unwrap_or_else(|| panic!("task {id} has no record"))
}

fn s3_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("STORAGE_URL", "s3://stems/faults".into()),
        ("S3_ENDPOINT", endpoint.into()),
        ("S3_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", S3_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET.into()),
        ("RESULT_URL_TTL", "600".into()),
    ]
}

fn pairs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Downloads every stem linked from the task's result and checks size and SHA-256 against
/// what the processor recorded: the store holds whole stems, not the remains of a killed
/// upload.
async fn check_stems(t: &Value) {
    use sha2::Digest;
    let stems = t["result"]["stems"]
        .as_object()
        .expect("stems on the result");
    assert!(!stems.is_empty(), "no stems: {t}");
    let client = reqwest::Client::new();
    for (name, info) in stems {
        let url = info["url"].as_str().unwrap();
        let resp = client.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{name}: {url}");
        let bytes = resp.bytes().await.unwrap();
        assert_eq!(Some(bytes.len() as u64), info["bytes"].as_u64(), "{name}");
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            info["sha256"].as_str().unwrap(),
            "{name}: stored bytes differ from the staged stem"
        );
    }
}

/// The end of a scenario: waits for every task to settle, prints the figures, checks the
/// webhook signatures and that the queues are empty and nothing panicked.
async fn conclude(
    name: &str,
    api: &ApiClient,
    dep: &Deployment,
    ids: &[String],
    hooks: &HookReceiver,
) -> (HashMap<String, Option<Value>>, Vec<HookHit>, Figures) {
    let records = settle(api, ids, SETTLE).await;
    let hits = hooks.hits();
    let f = Figures::compute(
        &ids.iter().cloned().map(Some).collect::<Vec<_>>(),
        &records,
        &hits,
    );
    f.print(name);
    check_hooks(&hits);
    check_aftermath(api, dep).await;
    (records, hits, f)
}
