//! The services the pipeline stands on, gone for a while: Redis SIGKILLed and restarted from
//! its AOF during a stream of submissions (`appendfsync always` and `everysec`), and
//! SeaweedFS stopped and restarted while tasks are in the deliver stage.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{
    Figures, SERIAL, SETTLE, api_of, check_aftermath, check_hooks, check_stems, conclude, is_final,
    pairs, record, s3_env, settle, submit_all, task_count, wait_task,
};
use crate::common::client::ApiClient;
use crate::common::e2e::{Deployment, HookReceiver, Peer, Seaweed, test_wav};
use crate::common::{RedisServer, eventually};

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
