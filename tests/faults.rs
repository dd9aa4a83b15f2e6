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

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::client::ApiClient;
use common::e2e::{
    Deployment, HookAction, HookHit, HookReceiver, Peer, Proxy, S3_KEY, S3_SECRET, Seaweed,
    Service, WEBHOOK_SECRET, test_wav, verify_signature,
};
use common::{RedisServer, eventually};
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

// ---------------------------------------------------------------------------------------
// 1. A processor SIGKILLed mid-separation.
// ---------------------------------------------------------------------------------------

/// Long enough that separation (debug build) spans several heartbeats.
const LONG_AUDIO_SECONDS: f32 = 20.0;

#[actix_rt::test]
async fn processor_sigkilled_mid_separation_is_replaced() {
    let _one = SERIAL.lock().await;
    let n = task_count(3);
    let peer = Peer::start();
    let hooks = HookReceiver::start();
    let dep = Deployment::new(&[("LEASE_SECONDS", "1.5"), ("PROCESSOR_CONCURRENCY", "1")]);
    let _api = dep.spawn("api,uploader", "api");
    let api = api_of(&dep);
    let long = peer.put("long.wav", test_wav(LONG_AUDIO_SECONDS, 44_100));
    let short = peer.put("short.wav", test_wav(1.0, 44_100));
    // The long task first: the processor is separating it when it dies.
    let mut audio = vec![long];
    audio.extend((1..n).map(|_| short.clone()));
    let ids = submit_all(&api, &audio, &hooks.url()).await;
    let victim = ids[0].clone();

    let mut first = dep.spawn("processor", "processor-1");
    // Mid-separation, watched on disk (finer than the heartbeat): the attempt's directory
    // still holds the downloaded source (removed when separation ends) and the vocal stem
    // being written has passed a quarter of its final size.
    let stem_size = 44 + 4 * (LONG_AUDIO_SECONDS * 44_100.0) as u64;
    let written = || -> u64 {
        let dir = dep.path("staging").join(&victim);
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|attempt| attempt.path())
            .filter(|a| a.join("source.audio").exists())
            .filter_map(|a| std::fs::metadata(a.join("vocals.wav")).ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0)
    };
    let mid = eventually(Duration::from_secs(120), || async {
        written() >= stem_size / 4
    })
    .await;
    assert!(
        mid,
        "never saw the separation under way: {:?}",
        api.try_task(&victim).await
    );
    first.kill();
    let at_kill = written();
    let before_replacement = hooks.hits().len();
    let _second = dep.spawn("processor", "processor-2");

    let (records, _, f) =
        conclude("processor SIGKILL mid-separation", &api, &dep, &ids, &hooks).await;
    println!(
        "FAULT-DETAIL | processor SIGKILL mid-separation | killed with {at_kill} of {stem_size} bytes of the vocal stem written"
    );
    assert_eq!(
        before_replacement, 0,
        "nothing announced before the takeover"
    );
    assert_eq!(f.lost, 0, "{records:?}");
    assert_eq!(f.completed, n, "{records:?}");
    // The killed attempt never acked, so the task went through one deliver stage: one webhook.
    assert_eq!(f.duplicated, 0, "{:?}", f.accepted);
    assert!(ids.iter().all(|id| f.accepted.get(id) == Some(&1)));
    // The replacement separated the whole song again: full-length stems, not the remains
    // of the killed attempt (16-bit stereo WAV: 44-byte header, 4 bytes a frame).
    let t = record(&records, &victim);
    assert_eq!(
        t["result"]["duration_seconds"].as_f64(),
        Some(f64::from(LONG_AUDIO_SECONDS))
    );
    let frames = (LONG_AUDIO_SECONDS * 44_100.0) as u64;
    for stem in ["vocals", "instrumental"] {
        assert_eq!(
            t["result"]["stems"][stem]["bytes"].as_u64(),
            Some(44 + 4 * frames),
            "{t}"
        );
    }
    for id in &ids {
        assert!(
            !dep.path("staging").join(id).exists(),
            "staging of {id} (the killed attempt's directory included) removed"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2. An uploader SIGKILLed mid-upload and mid-webhook.
// ---------------------------------------------------------------------------------------

#[actix_rt::test]
async fn uploader_sigkilled_mid_upload_is_replaced() {
    let _one = SERIAL.lock().await;
    let n = task_count(3);
    let s3 = Seaweed::start();
    // Uploads go through a throttled proxy, so the kill lands while the PUT bodies flow.
    let proxy = Proxy::start(s3.port);
    proxy.set_rate(Some(256 * 1024));
    let peer = Peer::start();
    let hooks = HookReceiver::start();
    let mut env = s3_env(&proxy.endpoint());
    env.push(("LEASE_SECONDS", "1.5".into()));
    let dep = Deployment::new(&pairs(&env));
    let _api = dep.spawn("api,processor", "api");
    let api = api_of(&dep);
    // 8 s of audio: two stems of 1.4 MB each, single PUTs.
    let audio: Vec<String> = (0..n)
        .map(|i| peer.put(&format!("u{i}.wav"), test_wav(8.0, 44_100)))
        .collect();
    let ids = submit_all(&api, &audio, &hooks.url()).await;
    let mut first = dep.spawn("uploader", "uploader-1");
    let mid = eventually(Duration::from_secs(120), || async {
        proxy.up_bytes() > 256 * 1024
    })
    .await;
    assert!(mid, "no upload started");
    let mut in_flight = 0;
    for id in &ids {
        if let Ok(Some(t)) = api.try_task(id).await
            && t["status"] == "uploading"
        {
            in_flight += 1;
        }
    }
    first.kill();
    let sent_at_kill = proxy.up_bytes();
    let announced_before_kill = hooks.hits().len();
    proxy.set_rate(None);
    let _second = dep.spawn("uploader", "uploader-2");

    let (records, _, f) =
        conclude("uploader SIGKILL mid-upload (S3)", &api, &dep, &ids, &hooks).await;
    println!(
        "FAULT-DETAIL | uploader SIGKILL mid-upload | {in_flight} task(s) held by the killed uploader, {sent_at_kill} bytes on their way to S3 at the kill"
    );
    assert!(in_flight >= 1, "the kill landed while a task was held");
    assert_eq!(
        announced_before_kill, 0,
        "no webhook before the stems are stored"
    );
    assert_eq!(f.lost, 0, "{records:?}");
    assert_eq!(f.completed, n, "{records:?}");
    // Killed before any webhook went out: one webhook per task.
    assert_eq!(f.duplicated, 0, "{:?}", f.accepted);
    for id in &ids {
        check_stems(record(&records, id)).await;
    }
}

#[actix_rt::test]
async fn uploader_sigkilled_mid_webhook_is_replaced() {
    let _one = SERIAL.lock().await;
    let n = task_count(3);
    let peer = Peer::start();
    let hooks = HookReceiver::start();
    // The receiver takes the first delivery of each task and then stalls (no answer).
    hooks.set_plan(vec![HookAction::Slow(Duration::from_secs(600), 200)]);
    let concurrency = n.to_string();
    let dep = Deployment::new(&[
        ("LEASE_SECONDS", "1.5"),
        ("UPLOADER_CONCURRENCY", concurrency.as_str()),
        ("WEBHOOK_TIMEOUT_SECONDS", "120"),
    ]);
    let _api = dep.spawn("api,processor", "api");
    let api = api_of(&dep);
    let audio: Vec<String> = (0..n)
        .map(|i| peer.put(&format!("w{i}.wav"), test_wav(1.0, 44_100)))
        .collect();
    let ids = submit_all(&api, &audio, &hooks.url()).await;
    let mut first = dep.spawn("uploader", "uploader-1");
    // Every task's webhook request is open at the receiver.
    let open = eventually(Duration::from_secs(120), || async {
        hooks.hits().len() >= n
    })
    .await;
    assert!(open, "webhooks never arrived: {:?}", hooks.hits().len());
    first.kill();
    let open_at_kill = hooks.hits().len();
    let _second = dep.spawn("uploader", "uploader-2");

    let (records, _, f) = conclude("uploader SIGKILL mid-webhook", &api, &dep, &ids, &hooks).await;
    println!(
        "FAULT-DETAIL | uploader SIGKILL mid-webhook | {open_at_kill} webhook request(s) open at the kill; each is delivered again (at-least-once, same webhook-id)"
    );
    assert_eq!(f.lost, 0, "{records:?}");
    assert_eq!(f.completed, n, "{records:?}");
    // Every task's first delivery was open at the receiver when the uploader died (the
    // webhook timeout is far away, so none had been retried yet): exactly one request each.
    assert_eq!(open_at_kill, n, "one open request per task at the kill");
    // At-least-once: the killed uploader never learnt the outcome of those requests (the
    // receiver had decided 200 for each), so its successor delivers each of them once more.
    // No task is delivered a third time, and none is skipped.
    assert_eq!(f.duplicated, open_at_kill, "{:?}", f.accepted);
    assert!(
        ids.iter().all(|id| f.accepted.get(id) == Some(&2)),
        "exactly one extra delivery per open request: {:?}",
        f.accepted
    );
    for id in &ids {
        let t = record(&records, id);
        assert_eq!(t["result"]["webhook"]["state"], "delivered", "{t}");
        assert_eq!(outcomes(t).last().map(String::as_str), Some("delivered"));
    }
}

// ---------------------------------------------------------------------------------------
// 3. Redis SIGKILLed and restarted during a stream of submissions.
// ---------------------------------------------------------------------------------------

/// One acknowledged submission.
#[derive(Debug, Clone)]
struct Acked {
    id: String,
    at: Instant,
    created: bool,
}

/// What the submitting clients saw.
#[derive(Debug, Default)]
struct Stream {
    next: usize,
    acked: Vec<Option<Acked>>,
    /// 503s, 429s and connection errors (each retried with the same Idempotency-Key).
    refused: usize,
    killed_at: Option<Instant>,
    restarted_at: Option<Instant>,
}

/// Submits logical submission after logical submission, retrying each on 503/429 and
/// connection errors with its own `Idempotency-Key`, until all are acknowledged.
async fn submitter(
    api: &ApiClient,
    body: &Value,
    run: &str,
    stream: &Mutex<Stream>,
    pace: Duration,
    deadline: Instant,
) {
    loop {
        let i = {
            let mut s = stream.lock().unwrap();
            if s.next >= s.acked.len() {
                return;
            }
            s.next += 1;
            s.next - 1
        };
        let key = format!("{run}-{i}");
        loop {
            assert!(
                Instant::now() < deadline,
                "submission {i} never acknowledged"
            );
            let resp = api
                .request(reqwest::Method::POST, "/generate")
                .header("Idempotency-Key", &key)
                .json(body)
                .send()
                .await;
            match resp {
                Ok(r) if r.status().is_success() => {
                    let v: Value = r.json().await.unwrap();
                    let ack = Acked {
                        id: v["task_id"].as_str().unwrap().to_string(),
                        at: Instant::now(),
                        created: v["created"] == true,
                    };
                    stream.lock().unwrap().acked[i] = Some(ack);
                    break;
                }
                Ok(r) if r.status() == 503 || r.status() == 429 => {
                    stream.lock().unwrap().refused += 1;
                }
                Ok(r) => panic!(
                    "unexpected answer {}: {:?}",
                    r.status(),
                    r.text().await.ok()
                ),
                Err(_) => stream.lock().unwrap().refused += 1,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A stream, not a burst: the part before the kill spans a few seconds, longer than
        // the fsync window of `everysec`.
        tokio::time::sleep(pace).await;
    }
}

async fn redis_killed_during_submissions(fsync: &'static str) {
    let _one = SERIAL.lock().await;
    let n = task_count(3) * 10;
    let scenario = format!("redis SIGKILL+restart, appendfsync {fsync}");
    let peer = Peer::start();
    let hooks = HookReceiver::start();
    let mut dep = Deployment::on(
        RedisServer::start_with(Some(fsync)),
        &[
            ("LEASE_SECONDS", "2"),
            ("REDIS_TIMEOUT", "1"),
            ("PROCESSOR_CONCURRENCY", "2"),
            ("WEBHOOK_RETRY_MAX_SECONDS", "1"),
        ],
    );
    let _api = dep.spawn("api", "api");
    let _workers = dep.spawn("processor,uploader", "workers");
    let api = api_of(&dep);
    let body = json!({
        "audio": peer.put("r.wav", test_wav(0.3, 44_100)),
        "hook_url": hooks.url(),
    });
    let stream = Mutex::new(Stream {
        acked: vec![None; n],
        ..Default::default()
    });
    let run = format!("faults-{fsync}-{}", std::process::id());
    let deadline = Instant::now() + Duration::from_secs(120);
    let redis = &mut dep.redis;
    let chaos = async {
        // Kill Redis once half the stream is acknowledged...
        let half = eventually(Duration::from_secs(60), || async {
            stream.lock().unwrap().acked.iter().flatten().count() >= n / 2
        })
        .await;
        assert!(half, "the stream did not get going");
        redis.kill();
        let refused_before = stream.lock().unwrap().refused;
        stream.lock().unwrap().killed_at = Some(Instant::now());
        // ...and bring it back (same port, same AOF) once submitters have been refused for a
        // while (about 100 refused attempts: a second or two, so that heartbeats, acks and
        // claims of the workers fail too and leases run out).
        let felt = eventually(Duration::from_secs(60), || async {
            stream.lock().unwrap().refused >= refused_before + 100
        })
        .await;
        assert!(felt, "no submission noticed the outage");
        redis.restart();
        stream.lock().unwrap().restarted_at = Some(Instant::now());
    };
    // Four clients, about 24 s of submissions in all whatever the count.
    let pace = (Duration::from_secs(24) / n as u32)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let clients = futures_util::future::join_all(
        (0..4).map(|_| submitter(&api, &body, &run, &stream, pace, deadline)),
    );
    futures_util::future::join(chaos, clients).await;
    let s = stream.into_inner().unwrap();
    let killed_at = s.killed_at.unwrap();
    let acked: Vec<Acked> = s.acked.iter().flatten().cloned().collect();
    assert_eq!(acked.len(), n, "every submission acknowledged in the end");
    let ids: Vec<String> = acked.iter().map(|a| a.id.clone()).collect();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        distinct.len(),
        n,
        "two logical submissions mapped to one task"
    );

    let records = settle(&api, &ids, SETTLE).await;
    let hits = hooks.hits();
    let f = Figures::compute(
        &s.acked
            .iter()
            .map(|a| a.as_ref().map(|a| a.id.clone()))
            .collect::<Vec<_>>(),
        &records,
        &hits,
    );
    f.print(&scenario);
    let lost: Vec<&Acked> = acked
        .iter()
        .filter(|a| {
            !records
                .get(&a.id)
                .is_some_and(|t| t.as_ref().is_some_and(is_final))
        })
        .collect();
    let window: Vec<f64> = lost
        .iter()
        .map(|a| killed_at.duration_since(a.at).as_secs_f64())
        .collect();
    let replays = acked.iter().filter(|a| !a.created).count();
    println!(
        "FAULT-DETAIL | {scenario} | {} retried attempts (503/connection refused), {replays} acknowledged as Idempotency-Key replays, {} acked in the 2 s before the kill; lost acks were acknowledged {window:?} s before the kill",
        s.refused,
        acked
            .iter()
            .filter(
                |a| a.at <= killed_at && killed_at.duration_since(a.at) <= Duration::from_secs(2)
            )
            .count(),
    );
    check_hooks(&hits);
    check_aftermath(&api, &dep).await;
    // No task that nobody (still) knows about: a retried submission is not a duplicate.
    let records_in_redis: HashSet<String> = dep
        .redis
        .cli(&["--scan", "--pattern", "uvr_tasks:task:*"])
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("uvr_tasks:task:"))
        .map(str::to_string)
        .collect();
    let unknown: Vec<&String> = records_in_redis
        .iter()
        .filter(|id| !distinct.contains(id))
        .collect();
    assert!(
        unknown.is_empty(),
        "tasks created by retried submissions: {unknown:?}"
    );
    assert_eq!(f.strangers, 0, "webhooks for tasks nobody submitted");
    if fsync == "always" {
        // Every acknowledged write was fsynced before the reply: nothing acknowledged is lost.
        assert_eq!(f.acked_lost, 0, "{lost:?}");
        assert_eq!(f.lost, 0);
        assert_eq!(f.completed, n, "{records:?}");
    } else {
        // everysec: up to about a second of acknowledged writes may be lost by design — only
        // those acknowledged shortly before the kill.
        assert!(
            lost.iter()
                .all(|a| a.at <= killed_at
                    && killed_at.duration_since(a.at) <= Duration::from_secs(2)),
            "lost acks outside the fsync window: {window:?}"
        );
        assert_eq!(f.completed, n - f.acked_lost, "{records:?}");
    }
}

#[actix_rt::test]
async fn redis_sigkilled_during_submissions_appendfsync_always() {
    redis_killed_during_submissions("always").await;
}

#[actix_rt::test]
async fn redis_sigkilled_during_submissions_appendfsync_everysec() {
    redis_killed_during_submissions("everysec").await;
}

// ---------------------------------------------------------------------------------------
// 4. SeaweedFS stopped and restarted while tasks are in the deliver stage.
// ---------------------------------------------------------------------------------------

#[actix_rt::test]
async fn s3_outage_during_delivery_is_ridden_out() {
    let _one = SERIAL.lock().await;
    let n = task_count(3);
    let mut s3 = Seaweed::start();
    let peer = Peer::start();
    let hooks = HookReceiver::start();
    let mut env = s3_env(&s3.endpoint());
    env.push(("WEBHOOK_MAX_ATTEMPTS", "100".into()));
    env.push(("WEBHOOK_RETRY_MAX_SECONDS", "2".into()));
    let dep = Deployment::new(&pairs(&env));
    let _api = dep.spawn("api,processor", "api");
    let api = api_of(&dep);
    let audio: Vec<String> = (0..n)
        .map(|i| peer.put(&format!("s{i}.wav"), test_wav(2.0, 44_100)))
        .collect();
    let ids = submit_all(&api, &audio, &hooks.url()).await;
    // All separated and waiting in the deliver stage.
    for id in &ids {
        let ok = wait_task(&api, id, Duration::from_secs(120), |t| {
            t["status"] == "separated"
        })
        .await;
        assert!(ok, "{id} not separated: {:?}", api.try_task(id).await);
    }
    s3.stop();
    let _uploader = dep.spawn("uploader", "uploader");
    // Every uploader slot (UPLOADER_CONCURRENCY, default 4) holds a task it cannot store;
    // the others wait their turn in the deliver queue.
    let slots = n.min(4);
    let tried = eventually(Duration::from_secs(60), || async {
        let mut tried = 0;
        for id in &ids {
            if matches!(api.try_task(id).await, Ok(Some(t)) if t["attempts"].as_u64() >= Some(1)) {
                tried += 1;
            }
        }
        tried >= slots
    })
    .await;
    assert!(tried, "the uploader never tried");
    let announced_during_outage = hooks.hits().len();
    s3.restart();

    let (records, _, f) = conclude(
        "seaweedfs stop+restart during delivery",
        &api,
        &dep,
        &ids,
        &hooks,
    )
    .await;
    let attempts: Vec<u64> = ids
        .iter()
        .map(|id| record(&records, id)["attempts"].as_u64().unwrap_or(0))
        .collect();
    println!("FAULT-DETAIL | seaweedfs stop+restart | delivery attempts per task: {attempts:?}");
    assert_eq!(
        announced_during_outage, 0,
        "no webhook while the stems cannot be stored"
    );
    assert_eq!(f.lost, 0, "{records:?}");
    assert_eq!(f.completed, n, "{records:?}");
    assert_eq!(f.duplicated, 0, "{:?}", f.accepted);
    for id in &ids {
        check_stems(record(&records, id)).await;
    }
}

// ---------------------------------------------------------------------------------------
// 5. The webhook receiver: down, failing, slow, gone.
// ---------------------------------------------------------------------------------------

/// One all-roles process with fast webhook retries; `extra` on top.
fn webhook_deployment(extra: &[(&str, &str)]) -> Deployment {
    let mut env = vec![
        ("WEBHOOK_RETRY_MAX_SECONDS", "0.5"),
        ("WEBHOOK_MAX_ATTEMPTS", "100"),
    ];
    env.extend_from_slice(extra);
    Deployment::new(&env)
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

// ---------------------------------------------------------------------------------------
// 6. Signals: SIGTERM drains the task in hand; a second signal stops at once and the lease
//    brings the interrupted task back.
// ---------------------------------------------------------------------------------------

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
