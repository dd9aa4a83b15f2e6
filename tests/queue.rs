//! The queue through the Scheduler actor, against a real throwaway `redis-server`.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{RedisServer, eventually};
use uvr::actors::scheduler::{
    Ack, Cancel, Claim, Enqueue, Fail, GetTask, Heartbeat, Maintain, SchedulerHandle, Stats,
};
use uvr::config::Config;
use uvr::queue::{
    CancelOutcome, Claimed, Failure, LeaseState, NewTask, Outcome, Queue, QueueError,
};
use uvr::task::{Stage, Status, TaskId, TaskRequest};

fn request(priority: u8) -> TaskRequest {
    common::task_request("https://example.com/a.wav", priority)
}

fn new_task(priority: u8) -> NewTask {
    NewTask {
        request: request(priority),
        idempotency_key: None,
        max_depth: 0,
    }
}

fn scheduler(cfg: &Config) -> SchedulerHandle {
    SchedulerHandle::start(Queue::connect(cfg).unwrap())
}

async fn enqueue(s: &SchedulerHandle, priority: u8) -> TaskId {
    s.ask(Enqueue(new_task(priority))).await.unwrap().id
}

async fn claim(s: &SchedulerHandle, stage: Stage, worker: &str) -> Option<Claimed> {
    s.ask(Claim {
        stage,
        worker: worker.into(),
        wait: Duration::ZERO,
    })
    .await
    .unwrap()
}

async fn ack(s: &SchedulerHandle, c: &Claimed) -> Result<Outcome, QueueError> {
    s.ask(Ack {
        claimed: c.clone(),
        result: None,
        failed: false,
    })
    .await
}

#[actix_rt::test]
async fn priorities_order_and_fifo_within_a_priority() {
    let redis = RedisServer::start();
    let s = scheduler(&redis.config(&[]));
    let mut expected: Vec<(u8, TaskId)> = Vec::new();
    for _ in 0..4 {
        for p in [1, 3, 5, 2, 4] {
            expected.push((p, enqueue(&s, p).await));
        }
    }
    // Most urgent first; within one priority, submission order.
    expected.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
    let mut got = Vec::new();
    while let Some(c) = claim(&s, Stage::Separate, "w1").await {
        got.push((c.record.request.priority.get(), c.id().clone()));
    }
    assert_eq!(got, expected);
    // Every task was claimed: the queue is empty. (The score formula is checked below.)
    let scores = redis
        .cli(&["ZRANGE", "uvr_tasks", "0", "-1", "WITHSCORES"])
        .unwrap();
    assert!(scores.trim().is_empty(), "all claimed: {scores}");
}

#[actix_rt::test]
async fn score_is_the_seeds_formula_and_unique_within_a_millisecond() {
    let redis = RedisServer::start();
    let s = scheduler(&redis.config(&[]));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut scores = Vec::new();
    for _ in 0..200 {
        scores.push(s.ask(Enqueue(new_task(2))).await.unwrap().score);
    }
    for w in scores.windows(2) {
        assert!(w[0] < w[1], "strictly increasing within a priority");
    }
    let t = scores[0] / 4.0;
    assert!(
        (t - before).abs() < 5.0,
        "score/4 is the enqueue time: {t} vs {before}"
    );
    let p5 = s.ask(Enqueue(new_task(5))).await.unwrap();
    let first = redis.cli(&["ZRANGE", "uvr_tasks", "0", "0"]).unwrap();
    assert_eq!(first.trim(), p5.id.as_str(), "priority 5 jumps the queue");
}

/// Runs reaper passes until one requeues a task; returns when. Fails after `timeout`.
async fn requeued_within(s: &SchedulerHandle, timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        let requeued = s.ask(Maintain).await.unwrap().requeued;
        if requeued > 0 {
            assert_eq!(requeued, 1);
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "no lease ran out within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn a_worker_that_dies_is_redelivered_after_its_lease_and_its_token_goes_stale() {
    let redis = RedisServer::start();
    let lease = Duration::from_secs(2);
    let s =
        scheduler(&redis.config(&[("LEASE_SECONDS", "2"), ("REAPER_INTERVAL_SECONDS", "3600")]));
    let id = enqueue(&s, 3).await;
    let claimed_at = Instant::now();
    let dead = claim(&s, Stage::Separate, "dies").await.unwrap();
    assert_eq!(dead.record.attempts, 1);
    assert!(claim(&s, Stage::Separate, "other").await.is_none());
    // Before the lease runs out the reaper leaves it alone (checked well inside the lease).
    assert_eq!(s.ask(Maintain).await.unwrap().requeued, 0);
    assert!(
        claimed_at.elapsed() < lease / 2,
        "the check ran inside the lease"
    );
    // Once it has run out, the reaper takes the task back: not before the lease, and
    // within a few passes after it.
    let requeued_at = requeued_within(&s, lease + Duration::from_secs(10)).await;
    assert!(
        requeued_at.duration_since(claimed_at) >= lease,
        "requeued after {:?}, inside the {lease:?} lease",
        requeued_at.duration_since(claimed_at)
    );
    let (rec, pos) = s.ask(GetTask(id.clone())).await.unwrap();
    assert_eq!(rec.status, Status::Queued);
    assert_eq!(rec.error_code.as_deref(), Some("lease_expired"));
    assert_eq!(pos, Some(0));
    let again = claim(&s, Stage::Separate, "other").await.unwrap();
    assert_eq!(again.id(), &id);
    assert_eq!(again.record.attempts, 2);
    assert!(again.token > dead.token);
    // The dead worker wakes up: every write with its old token is refused.
    assert!(matches!(
        ack(&s, &dead).await,
        Err(QueueError::StaleLease(_))
    ));
    let hb = s
        .ask(Heartbeat {
            claimed: dead.clone(),
            progress: Some(50),
        })
        .await;
    assert!(matches!(hb, Err(QueueError::StaleLease(_))));
    let fail = s
        .ask(Fail {
            claimed: dead,
            failure: Failure {
                code: "x".into(),
                message: "x".into(),
                retryable: true,
                delay: None,
            },
        })
        .await;
    assert!(matches!(fail, Err(QueueError::StaleLease(_))));
    assert_eq!(ack(&s, &again).await.unwrap(), Outcome::Advanced);
}

#[actix_rt::test]
async fn heartbeats_keep_the_lease_and_record_progress() {
    let redis = RedisServer::start();
    let lease = Duration::from_secs(1);
    let s =
        scheduler(&redis.config(&[("LEASE_SECONDS", "1"), ("REAPER_INTERVAL_SECONDS", "3600")]));
    let id = enqueue(&s, 3).await;
    let claimed_at = Instant::now();
    let c = claim(&s, Stage::Separate, "w").await.unwrap();
    // Heartbeats every 400 ms keep the task past its lease. Each reaper pass runs right
    // after a heartbeat, so it sees a renewed lease however late the timer fires.
    for p in [10, 30, 50, 70] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let st = s
            .ask(Heartbeat {
                claimed: c.clone(),
                progress: Some(p),
            })
            .await
            .unwrap();
        assert_eq!(st, LeaseState::Held);
        assert_eq!(s.ask(Maintain).await.unwrap().requeued, 0);
    }
    assert!(claimed_at.elapsed() > lease, "held past the first lease");
    let (rec, _) = s.ask(GetTask(id)).await.unwrap();
    assert_eq!(rec.progress, 70);
    assert_eq!(rec.status, Status::Processing);
    assert_eq!(rec.worker.as_deref(), Some("w"));
    // Without heartbeats the lease runs out: what kept it was the heartbeats.
    let last = Instant::now();
    let requeued_at = requeued_within(&s, lease + Duration::from_secs(10)).await;
    assert!(requeued_at.duration_since(last) >= lease / 2);
}

#[actix_rt::test]
async fn failures_retry_with_backoff_then_dead_letter() {
    let redis = RedisServer::start();
    let base = Duration::from_secs(1);
    let s = scheduler(&redis.config(&[
        ("MAX_ATTEMPTS", "3"),
        ("RETRY_BASE_SECONDS", "1"),
        ("RETRY_MAX_SECONDS", "2"),
        ("REAPER_INTERVAL_SECONDS", "3600"),
    ]));
    let id = enqueue(&s, 4).await;
    let failure = Failure {
        code: "audio_unreachable".into(),
        message: "connection refused".into(),
        retryable: true,
        delay: None,
    };
    for attempt in 1..=3u32 {
        let c = claim(&s, Stage::Separate, "w").await.unwrap();
        assert_eq!(c.record.attempts, attempt);
        let failed_at = Instant::now();
        let out = s
            .ask(Fail {
                claimed: c,
                failure: failure.clone(),
            })
            .await
            .unwrap();
        if attempt < 3 {
            assert_eq!(out, Outcome::Retrying);
            let stats = s.ask(Stats).await.unwrap();
            assert_eq!((stats.separate.delayed, stats.separate.waiting), (1, 0));
            // The backoff is between half and all of base * 2^(attempt-1), capped at the
            // maximum: not due at once, due within the cap.
            let least = base * (1 << (attempt - 1)) / 2;
            assert_eq!(s.ask(Maintain).await.unwrap().promoted, 0);
            assert!(claim(&s, Stage::Separate, "w").await.is_none());
            assert!(
                failed_at.elapsed() < least,
                "the checks ran inside the backoff"
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if s.ask(Maintain).await.unwrap().promoted == 1 {
                    break;
                }
                assert!(Instant::now() < deadline, "never promoted");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(failed_at.elapsed() >= least, "promoted before its backoff");
        } else {
            assert_eq!(out, Outcome::DeadLettered);
        }
    }
    let stats = s.ask(Stats).await.unwrap();
    assert_eq!(stats.separate.dead, 1);
    assert_eq!(stats.separate.waiting + stats.separate.delayed, 0);
    // The failure still has to be notified: the task waits in the deliver stage, failed.
    assert_eq!(stats.deliver.waiting, 1);
    let notice = claim(&s, Stage::Deliver, "u").await.unwrap();
    assert_eq!(notice.id(), &id);
    assert_eq!(notice.record.status, Status::Failed);
    let out = s
        .ask(Ack {
            claimed: notice,
            result: None,
            failed: true,
        })
        .await
        .unwrap();
    assert_eq!(out, Outcome::Finished);
    let (rec, _) = s.ask(GetTask(id.clone())).await.unwrap();
    assert_eq!(rec.status, Status::Failed);
    assert_eq!(rec.error_code.as_deref(), Some("audio_unreachable"));
    assert!(rec.finished_at_ms.is_some());
    let ttl: i64 = redis
        .cli(&["PTTL", &format!("uvr_tasks:task:{id}")])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 0, "finished records expire after the retention");

    // A permanent error dead-letters at once.
    let id2 = enqueue(&s, 4).await;
    let c = claim(&s, Stage::Separate, "w").await.unwrap();
    let out = s
        .ask(Fail {
            claimed: c,
            failure: Failure {
                code: "audio_corrupt".into(),
                message: "not audio".into(),
                retryable: false,
                delay: None,
            },
        })
        .await
        .unwrap();
    assert_eq!(out, Outcome::DeadLettered);
    assert_eq!(
        s.ask(GetTask(id2)).await.unwrap().0.attempts,
        0,
        "reset for the deliver stage"
    );
}

#[actix_rt::test]
async fn cancel_while_queued_and_while_in_flight() {
    let redis = RedisServer::start();
    let s = scheduler(&redis.config(&[]));
    let queued = enqueue(&s, 3).await;
    assert_eq!(
        s.ask(Cancel(queued.clone())).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        s.ask(GetTask(queued.clone())).await.unwrap().0.status,
        Status::Cancelled
    );
    assert!(claim(&s, Stage::Separate, "w").await.is_none());
    assert!(matches!(
        s.ask(Cancel(queued)).await,
        Err(QueueError::AlreadyFinished {
            status: Status::Cancelled,
            ..
        })
    ));

    let running = enqueue(&s, 3).await;
    let c = claim(&s, Stage::Separate, "w").await.unwrap();
    assert_eq!(
        s.ask(Cancel(running.clone())).await.unwrap(),
        CancelOutcome::Requested
    );
    let hb = s
        .ask(Heartbeat {
            claimed: c.clone(),
            progress: None,
        })
        .await
        .unwrap();
    assert_eq!(hb, LeaseState::CancelRequested, "the worker sees the flag");
    assert_eq!(ack(&s, &c).await.unwrap(), Outcome::Cancelled);
    let rec = s.ask(GetTask(running)).await.unwrap().0;
    assert_eq!(rec.status, Status::Cancelled);
    assert!(
        claim(&s, Stage::Deliver, "u").await.is_none(),
        "not forwarded"
    );

    let unknown = TaskId::generate();
    assert!(matches!(
        s.ask(Cancel(unknown)).await,
        Err(QueueError::NotFound(_))
    ));
}

#[actix_rt::test]
async fn idempotency_keys_return_the_same_task() {
    let redis = RedisServer::start();
    let s = scheduler(&redis.config(&[("IDEMPOTENCY_TTL_SECONDS", "60")]));
    let task = NewTask {
        idempotency_key: Some("admin:order-42".into()),
        ..new_task(3)
    };
    let a = s.ask(Enqueue(task.clone())).await.unwrap();
    let b = s.ask(Enqueue(task.clone())).await.unwrap();
    assert!(a.created);
    assert!(!b.created);
    assert_eq!(a.id, b.id);
    let other = NewTask {
        idempotency_key: Some("admin:order-43".into()),
        ..new_task(3)
    };
    assert_ne!(s.ask(Enqueue(other)).await.unwrap().id, a.id);
    assert_eq!(s.ask(Stats).await.unwrap().separate.waiting, 2);
    // The same key with another request is refused, naming the key's task; nothing is queued.
    let changed = NewTask {
        idempotency_key: Some("admin:order-42".into()),
        ..new_task(4)
    };
    match s.ask(Enqueue(changed)).await {
        Err(QueueError::IdempotencyKeyReused(id)) => assert_eq!(id, a.id),
        other => panic!("expected idempotency_key_reused, got {other:?}"),
    }
    assert_eq!(s.ask(Stats).await.unwrap().separate.waiting, 2);
    // A key written before requests were fingerprinted (the bare task id) still replays.
    redis
        .cli(&["SET", "uvr_tasks:idem:admin:order-44", a.id.as_str()])
        .unwrap();
    let old = NewTask {
        idempotency_key: Some("admin:order-44".into()),
        ..new_task(5)
    };
    let replay = s.ask(Enqueue(old)).await.unwrap();
    assert_eq!((replay.id, replay.created), (a.id.clone(), false));
}

#[actix_rt::test]
async fn full_queue_refuses_with_a_typed_error() {
    let redis = RedisServer::start();
    let s = scheduler(&redis.config(&[]));
    let bounded = |p| NewTask {
        max_depth: 2,
        ..new_task(p)
    };
    s.ask(Enqueue(bounded(3))).await.unwrap();
    s.ask(Enqueue(bounded(3))).await.unwrap();
    let err = s.ask(Enqueue(bounded(3))).await.unwrap_err();
    assert!(matches!(err, QueueError::Full { depth: 2 }));
    assert_eq!(err.code(), "queue_full");
}

#[actix_rt::test]
async fn two_stages_keep_the_priority_and_finish_as_succeeded() {
    let redis = RedisServer::start();
    let s = scheduler(&redis.config(&[]));
    let low = enqueue(&s, 1).await;
    let high = enqueue(&s, 5).await;
    // Separate the low one first: it still waits behind the high one in uvr_results.
    let c_high = claim(&s, Stage::Separate, "p").await.unwrap();
    let c_low = claim(&s, Stage::Separate, "p").await.unwrap();
    assert_eq!(c_low.id(), &low);
    let stems: uvr::task::result::StageResult = serde_json::from_value(serde_json::json!({
        "stems": {"vocals": {"file": "staging/vocals.wav", "bytes": 1, "sha256": "ab"}},
    }))
    .unwrap();
    let out = s
        .ask(Ack {
            claimed: c_low,
            result: Some(stems.clone()),
            failed: false,
        })
        .await
        .unwrap();
    assert_eq!(out, Outcome::Advanced);
    assert_eq!(ack(&s, &c_high).await.unwrap(), Outcome::Advanced);
    let rec = s.ask(GetTask(low.clone())).await.unwrap().0;
    assert_eq!((rec.status, rec.stage), (Status::Separated, Stage::Deliver));
    assert_eq!(rec.result, Some(stems));
    assert_eq!(redis.cli(&["ZCARD", "uvr_results"]).unwrap().trim(), "2");

    let d1 = claim(&s, Stage::Deliver, "u").await.unwrap();
    assert_eq!(d1.id(), &high, "priority kept in the result stage");
    assert_eq!(d1.record.status, Status::Uploading);
    let d2 = claim(&s, Stage::Deliver, "u").await.unwrap();
    assert_eq!(ack(&s, &d1).await.unwrap(), Outcome::Finished);
    assert_eq!(ack(&s, &d2).await.unwrap(), Outcome::Finished);
    let rec = s.ask(GetTask(low)).await.unwrap().0;
    assert_eq!(rec.status, Status::Succeeded);
    assert_eq!(rec.progress, 100);
    let stats = s.ask(Stats).await.unwrap();
    assert_eq!(stats.deliver.waiting + stats.deliver.in_flight, 0);
}

#[actix_rt::test]
async fn stats_break_depth_down_by_priority() {
    let redis = RedisServer::start();
    let s = scheduler(&redis.config(&[]));
    for p in [1, 1, 2, 5, 5, 5] {
        enqueue(&s, p).await;
    }
    let c = claim(&s, Stage::Separate, "w").await.unwrap();
    assert_eq!(c.record.request.priority.get(), 5);
    let st = s.ask(Stats).await.unwrap().separate;
    assert_eq!(st.waiting, 5);
    assert_eq!(st.in_flight, 1);
    let by: Vec<(String, u64)> = st.waiting_by_priority.into_iter().collect();
    assert_eq!(
        by,
        vec![
            ("1".into(), 2),
            ("2".into(), 1),
            ("3".into(), 0),
            ("4".into(), 0),
            ("5".into(), 2)
        ]
    );
    assert!(st.oldest_wait_seconds >= 0.0 && st.oldest_wait_seconds < 60.0);
}

#[actix_rt::test]
async fn eight_concurrent_claimers_see_every_task_exactly_once() {
    const TASKS: usize = 10_000;
    let redis = RedisServer::start();
    let cfg = redis.config(&[("REDIS_POOL_SIZE", "16")]);
    let s = scheduler(&cfg);
    let mut submitted = HashSet::new();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    use futures_util::StreamExt;
    for i in 0..TASKS {
        let s = s.clone();
        pending.push(async move { s.ask(Enqueue(new_task((i % 5 + 1) as u8))).await });
        if pending.len() >= 64 {
            submitted.insert(pending.next().await.unwrap().unwrap().id);
        }
    }
    while let Some(r) = pending.next().await {
        submitted.insert(r.unwrap().id);
    }
    assert_eq!(submitted.len(), TASKS);

    let mut workers = Vec::new();
    for w in 0..8 {
        let s = s.clone();
        workers.push(actix_rt::spawn(async move {
            let name = format!("worker-{w}");
            let mut seen = Vec::new();
            while let Some(c) = claim(&s, Stage::Separate, &name).await {
                assert_eq!(ack(&s, &c).await.unwrap(), Outcome::Advanced);
                seen.push(c.id().clone());
            }
            seen
        }));
    }
    let mut all = Vec::new();
    let mut per_worker = Vec::new();
    for w in workers {
        let seen = w.await.unwrap();
        per_worker.push(seen.len());
        all.extend(seen);
    }
    let unique: HashSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), TASKS, "no duplicates");
    assert_eq!(unique, submitted, "every task exactly once");
    assert!(
        per_worker.iter().filter(|n| **n > 0).count() > 1,
        "{per_worker:?}"
    );
    assert_eq!(
        redis.cli(&["ZCARD", "uvr_results"]).unwrap().trim(),
        TASKS.to_string()
    );
}

#[actix_rt::test]
async fn idle_claimers_wake_when_work_arrives() {
    let redis = RedisServer::start();
    // A long poll interval: only the wake-up can deliver the task promptly.
    let s = scheduler(&redis.config(&[("CLAIM_POLL_SECONDS", "30")]));
    let waiter = {
        let s = s.clone();
        actix_rt::spawn(async move {
            let c = s
                .ask(Claim {
                    stage: Stage::Separate,
                    worker: "idle".into(),
                    wait: Duration::from_secs(20),
                })
                .await
                .unwrap();
            (c, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = enqueue(&s, 3).await;
    let enqueued_at = Instant::now();
    let (c, picked_at) = waiter.await.unwrap();
    assert_eq!(c.unwrap().id(), &id);
    assert!(
        picked_at.duration_since(enqueued_at) < Duration::from_secs(5),
        "woken by the enqueue, not by the 30 s poll"
    );
}

#[actix_rt::test]
async fn hash_tag_puts_every_key_in_one_slot() {
    let redis = RedisServer::start();
    let s = scheduler(&redis.config(&[("REDIS_KEY_HASH_TAG", "uvr")]));
    let id = enqueue(&s, 3).await;
    let keys = redis.cli(&["KEYS", "*"]).unwrap();
    for k in keys.lines().filter(|k| !k.is_empty()) {
        assert!(k.starts_with("{uvr}:"), "{k}");
    }
    let c = claim(&s, Stage::Separate, "w").await.unwrap();
    assert_eq!(c.id(), &id);
    assert_eq!(ack(&s, &c).await.unwrap(), Outcome::Advanced);
    assert_eq!(
        redis.cli(&["ZCARD", "{uvr}:uvr_results"]).unwrap().trim(),
        "1"
    );
}

#[actix_rt::test]
async fn redis_restarting_mid_run_loses_nothing_and_errors_are_typed() {
    let mut redis = RedisServer::start_with(Some("always"));
    let s = scheduler(&redis.config(&[]));
    let mut ids = HashSet::new();
    for i in 0..100 {
        ids.insert(enqueue(&s, (i % 5 + 1) as u8).await);
    }
    // Process a few, then Redis dies.
    let mut done = HashSet::new();
    for _ in 0..10 {
        let c = claim(&s, Stage::Separate, "w").await.unwrap();
        ack(&s, &c).await.unwrap();
        done.insert(c.id().clone());
    }
    redis.kill();
    let start = Instant::now();
    let err = s.ask(Enqueue(new_task(3))).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert_eq!(err.code(), "queue_unavailable");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "fails fast, does not hang"
    );
    let health = s.health().clone();
    assert!(eventually(Duration::from_secs(5), || async { !health.is_healthy() }).await);

    redis.restart();
    let health2 = s.health().clone();
    assert!(
        eventually(Duration::from_secs(15), || async { health2.is_healthy() }).await,
        "the scheduler reconnects by itself"
    );
    // Everything acknowledged before the crash is still there (appendfsync always).
    let mut rest = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match s
            .ask(Claim {
                stage: Stage::Separate,
                worker: "w".into(),
                wait: Duration::ZERO,
            })
            .await
        {
            Ok(Some(c)) => {
                ack(&s, &c).await.unwrap();
                rest.insert(c.id().clone());
            }
            Ok(None) => break,
            Err(e) if e.is_unavailable() => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let processed: HashSet<_> = done.union(&rest).cloned().collect();
    assert_eq!(processed, ids, "no task lost across the restart");
    assert_eq!(redis.cli(&["ZCARD", "uvr_results"]).unwrap().trim(), "100");
}
