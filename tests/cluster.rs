//! The queue against a real Redis Cluster: three masters started here and joined with
//! `redis-cli --cluster create`. README "Cluster": with `REDIS_KEY_HASH_TAG` every key of the
//! deployment hashes to one slot, so each multi-key Lua script is legal on a cluster and runs
//! on the node owning that slot. Every script runs here (enqueue, claim, heartbeat, ack,
//! fail, promote, reap, cancel, requeue), with the reads and writes beside them; a script
//! touching a key outside the slot would fail with `CROSSSLOT` or `MOVED`. The control
//! without the hash tag shows that it does.

mod common;

use std::time::{Duration, Instant};

use common::RedisServer;
use uvr::actors::scheduler::{
    Ack, AppendLog, Cancel, Claim, Enqueue, Fail, GetTask, Heartbeat, LiveWorkers, Maintain,
    RegisterWorker, RequeueDead, SaveResult, SchedulerHandle, Stats,
};
use uvr::queue::{CancelOutcome, Claimed, Failure, LeaseState, NewTask, Outcome, Queue};
use uvr::task::{Stage, Status};

/// Three masters sharing the 16384 slots.
struct Cluster {
    nodes: Vec<RedisServer>,
}

impl Cluster {
    fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_cluster_node()).collect();
        let mut create = std::process::Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !nodes.iter().all(|n| {
            n.cli(&["CLUSTER", "INFO"])
                .is_some_and(|i| i.contains("cluster_state:ok"))
        }) {
            assert!(Instant::now() < deadline, "the cluster never became ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { nodes }
    }

    /// The node serving `slot` (from each node's own line in `CLUSTER NODES`).
    fn owner(&self, slot: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| {
                let nodes = n.cli(&["CLUSTER", "NODES"]).unwrap();
                let mine = nodes.lines().find(|l| l.contains("myself")).unwrap();
                mine.split_whitespace().skip(8).any(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    (a.parse::<u16>().unwrap()..=b.parse::<u16>().unwrap()).contains(&slot)
                })
            })
            .expect("some node serves every slot")
    }

    fn slot(&self, key: &str) -> u16 {
        self.nodes[0]
            .cli(&["CLUSTER", "KEYSLOT", key])
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

fn new_task(priority: u8, key: Option<&str>) -> NewTask {
    NewTask {
        request: common::task_request("https://example.com/a.wav", priority),
        idempotency_key: key.map(str::to_string),
        max_depth: 100,
    }
}

async fn claim(s: &SchedulerHandle, stage: Stage) -> Option<Claimed> {
    s.ask(Claim {
        stage,
        worker: "w".into(),
        wait: Duration::ZERO,
    })
    .await
    .unwrap()
}

fn failure(retryable: bool) -> Failure {
    Failure {
        code: "audio_unreachable".into(),
        message: "connection refused".into(),
        retryable,
        delay: Some(Duration::from_millis(200)),
    }
}

#[actix_rt::test]
async fn every_queue_script_runs_in_one_slot_of_a_real_cluster() {
    let cluster = Cluster::start();
    let slot = cluster.slot("{uvr}");
    let owner = cluster.owner(slot);
    let s = SchedulerHandle::start(
        Queue::connect(&owner.config(&[
            ("REDIS_KEY_HASH_TAG", "uvr"),
            ("LEASE_SECONDS", "1"),
            ("MAX_ATTEMPTS", "2"),
            ("REAPER_INTERVAL_SECONDS", "3600"),
        ]))
        .unwrap(),
    );

    // Enqueue (with and without an idempotency key) and the priority order.
    let low = s.ask(Enqueue(new_task(1, Some("k-1")))).await.unwrap().id;
    let again = s.ask(Enqueue(new_task(1, Some("k-1")))).await.unwrap();
    assert_eq!(again.id, low, "the idempotency key is honoured");
    let high = s.ask(Enqueue(new_task(5, None))).await.unwrap().id;
    let cancelled = s.ask(Enqueue(new_task(2, None))).await.unwrap().id;
    assert_eq!(
        s.ask(Cancel(cancelled.clone())).await.unwrap(),
        CancelOutcome::Cancelled
    );

    // Claim, heartbeat, the result, the delivery log, ack into the deliver stage and out.
    let c = claim(&s, Stage::Separate).await.unwrap();
    assert_eq!(c.id(), &high);
    let held = s
        .ask(Heartbeat {
            claimed: c.clone(),
            progress: Some(40),
        })
        .await
        .unwrap();
    assert_eq!(held, LeaseState::Held);
    s.ask(SaveResult {
        id: high.clone(),
        result: Default::default(),
    })
    .await
    .unwrap();
    s.ask(AppendLog {
        id: high.clone(),
        field: "webhook_deliveries",
        entry: serde_json::json!({"outcome": "delivered"}),
    })
    .await
    .unwrap();
    let ack = |c: Claimed| Ack {
        claimed: c,
        result: None,
        failed: false,
    };
    assert_eq!(s.ask(ack(c)).await.unwrap(), Outcome::Advanced);
    let d = claim(&s, Stage::Deliver).await.unwrap();
    assert_eq!(s.ask(ack(d)).await.unwrap(), Outcome::Finished);
    assert_eq!(
        s.ask(GetTask(high.clone())).await.unwrap().0.status,
        Status::Succeeded
    );

    // Fail with a retry, promotion when due, a lease that runs out, the dead letter and
    // its requeue.
    let c = claim(&s, Stage::Separate).await.unwrap();
    assert_eq!(c.id(), &low);
    let out = s
        .ask(Fail {
            claimed: c,
            failure: failure(true),
        })
        .await
        .unwrap();
    assert_eq!(out, Outcome::Retrying);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.ask(Maintain).await.unwrap().promoted == 0 {
        assert!(Instant::now() < deadline, "never promoted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = claim(&s, Stage::Separate).await.unwrap();
    assert_eq!(second.record.attempts, 2);
    // The second attempt was the last: its lease running out dead-letters the task.
    while s.ask(Maintain).await.unwrap().dead_lettered == 0 {
        assert!(Instant::now() < deadline, "the lease never ran out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = s.ask(Stats).await.unwrap();
    assert_eq!(stats.separate.dead, 1, "{stats:?}");
    s.ask(RequeueDead(low.clone())).await.unwrap();
    let third = claim(&s, Stage::Separate).await.unwrap();
    assert_eq!(third.id(), &low);
    s.ask(RegisterWorker {
        worker: "w".into(),
        info: serde_json::json!({"role": "processor"}),
    })
    .await
    .unwrap();
    assert_eq!(
        s.ask(LiveWorkers(Duration::from_secs(60)))
            .await
            .unwrap()
            .len(),
        1
    );

    // Every key is on the owner, in the one slot; the other nodes hold nothing.
    let keys = owner.cli(&["KEYS", "*"]).unwrap();
    let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
    assert!(keys.len() >= 5, "{keys:?}");
    for k in &keys {
        assert!(k.starts_with("{uvr}:"), "{k}");
        assert_eq!(cluster.slot(k), slot, "{k}");
    }
    for n in cluster.nodes.iter().filter(|n| n.port != owner.port) {
        assert_eq!(n.cli(&["DBSIZE"]).unwrap().trim(), "0");
    }
}

/// The control: without the hash tag the queue's keys spread over slots, and the first
/// multi-key script is refused by the cluster.
#[actix_rt::test]
async fn without_the_hash_tag_the_cluster_refuses_the_scripts() {
    let cluster = Cluster::start();
    let s = SchedulerHandle::start(Queue::connect(&cluster.nodes[0].config(&[])).unwrap());
    let err = s.ask(Enqueue(new_task(3, None))).await.unwrap_err();
    let text = err.to_string().to_ascii_lowercase();
    assert!(
        text.contains("crossslot") || text.contains("moved"),
        "refused by the cluster: {text}"
    );
}
