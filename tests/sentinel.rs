//! Redis Sentinel: the queue finds the master through a real `redis-sentinel` on loopback
//! and keeps going through two failovers during a stream of tasks, one coordinated
//! (`SENTINEL FAILOVER`: the old master lives on as a replica and answers `READONLY`) and
//! one after the master is SIGKILLed. Every acknowledged submission completes.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, free_port, redis_cli as cli};
use uvr::actors::scheduler::{Ack, Claim, Enqueue, GetTask, SchedulerHandle};
use uvr::config::{Config, Env};
use uvr::queue::{NewTask, Queue, QueueError};
use uvr::task::{Stage, Status, TaskId, TaskRequest};

/// A `redis-server` (or sentinel) process on loopback; killed on drop.
struct Node {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    fn spawn(port: u16, dir: &Path, args: &[&str]) -> Self {
        let mut node = Self {
            port,
            dir: dir.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        node.start();
        node
    }

    /// Starts the process (again: same port, data directory and arguments).
    fn start(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).is_none_or(|o| o.trim() != "PONG") {
            assert!(
                Instant::now() < deadline,
                "redis on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A data node; `replica_of` makes it a replica of that port.
    fn data(dir: &Path, replica_of: Option<u16>) -> Self {
        let port = free_port();
        let dir = dir.join(port.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let master = replica_of.map(|p| p.to_string());
        let mut args = vec!["--appendonly", "yes", "--appendfsync", "everysec"];
        args.extend(["--save", ""]);
        if let Some(m) = &master {
            args.extend(["--replicaof", "127.0.0.1", m.as_str()]);
        }
        Self::spawn(port, &dir, &args)
    }

    /// A sentinel monitoring `mymaster` at `master_port`, quick to act.
    fn sentinel(dir: &Path, master_port: u16) -> Self {
        let port = free_port();
        let conf = dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "sentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 2000\n\
                 sentinel parallel-syncs mymaster 1\n"
            ),
        )
        .unwrap();
        Self::spawn(port, dir, &[conf.to_str().unwrap(), "--sentinel"])
    }

    fn cli(&self, args: &[&str]) -> Option<String> {
        cli(self.port, args)
    }

    /// Whether this replica's link to its master is up.
    fn replica_synced(&self) -> bool {
        self.cli(&["INFO", "replication"])
            .is_some_and(|i| i.contains("master_link_status:up"))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The port the sentinel on `sentinel` names as master now.
fn master_at(sentinel: u16) -> Option<u16> {
    let out = cli(
        sentinel,
        &["SENTINEL", "get-master-addr-by-name", "mymaster"],
    )?;
    out.lines().nth(1)?.trim().parse().ok()
}

/// The port the sentinel names as master now.
fn master_port(sentinel: &Node) -> Option<u16> {
    master_at(sentinel.port)
}

/// Whether the sentinel names `master` and every other node is its synced replica.
fn all_follow(sentinel: &Node, nodes: &[Node], master: u16) -> bool {
    let known = sentinel
        .cli(&["SENTINEL", "replicas", "mymaster"])
        .unwrap_or_default();
    master_port(sentinel) == Some(master)
        && nodes.iter().filter(|n| n.port != master).all(|n| {
            known.contains(&n.port.to_string())
                && n.replica_synced()
                && n.cli(&["INFO", "replication"])
                    .is_some_and(|i| i.contains(&format!("master_port:{master}")))
        })
}

fn request() -> TaskRequest {
    common::task_request("https://example.com/a.wav", 3)
}

/// One Sentinel scenario at a time: the sentinels act on a master silent for 1 s, so a
/// second set of Redis processes starving this 2-core machine can trigger a failover the
/// scenario did not ask for.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Takes tasks through both stages until told to stop; returns the ids finished.
async fn consume(s: SchedulerHandle, stop: Arc<Mutex<bool>>) -> HashSet<TaskId> {
    let mut finished = HashSet::new();
    loop {
        let mut idle = true;
        for stage in [Stage::Deliver, Stage::Separate] {
            let claim = Claim {
                stage,
                worker: "w".into(),
                wait: Duration::ZERO,
            };
            let claimed = match s.ask(claim).await {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) if e.is_unavailable() => continue,
                Err(e) => panic!("claim: {e}"),
            };
            idle = false;
            let ack = Ack {
                claimed: claimed.clone(),
                result: None,
                failed: false,
            };
            match s.ask(ack).await {
                Ok(_) if stage == Stage::Deliver => {
                    finished.insert(claimed.id().clone());
                }
                // A lost or stale ack: the lease runs out and the task comes back.
                Ok(_) | Err(QueueError::StaleLease(_)) => {}
                Err(e) if e.is_unavailable() => {}
                Err(e) => panic!("ack: {e}"),
            }
        }
        if idle {
            if *stop.lock().unwrap() {
                return finished;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[actix_rt::test]
async fn failovers_during_a_stream_of_tasks_lose_none() {
    let _one = SERIAL.lock().await;
    const TASKS: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    // One master and one replica, and REDIS_WAIT_REPLICAS=1: an acknowledged task is on
    // both, so whichever the sentinel promotes has it.
    let first = Node::data(dir.path(), None);
    let master = first.port;
    let mut nodes = vec![first, Node::data(dir.path(), Some(master))];
    let sentinel = Node::sentinel(dir.path(), master);
    assert!(
        eventually(Duration::from_secs(20), || async {
            all_follow(&sentinel, &nodes, master)
        })
        .await,
        "the replicas sync and the sentinel discovers them"
    );

    let cfg = Config::from(&Env::from_pairs([
        ("REDIS_SENTINELS", format!("127.0.0.1:{}", sentinel.port)),
        ("REDIS_SENTINEL_MASTER", "mymaster".into()),
        ("REDIS_TIMEOUT", "2".into()),
        ("REDIS_WAIT_REPLICAS", "1".into()),
        ("LEASE_SECONDS", "2".into()),
        ("REAPER_INTERVAL_SECONDS", "0.2".into()),
    ]))
    .unwrap();
    let s = SchedulerHandle::start(Queue::connect(&cfg).unwrap());
    let stop = Arc::new(Mutex::new(false));
    let consumer = actix_rt::spawn(consume(s.clone(), stop.clone()));

    // The producer: one logical submission per key, retried until acknowledged, as a
    // client retries a 503. The idempotency key keeps a retry from making a second task.
    let mut acked: HashMap<usize, TaskId> = HashMap::new();
    let mut retries = 0u32;
    let mut failovers = Vec::new();
    let mut killed = None;
    let mut restarted = None;
    for i in 0..TASKS {
        if i == TASKS / 3 {
            // Coordinated failover: the old master lives on as a replica (READONLY).
            assert!(
                sentinel
                    .cli(&["SENTINEL", "FAILOVER", "mymaster"])
                    .is_some_and(|o| o.contains("OK"))
            );
            failovers.push("SENTINEL FAILOVER".to_string());
        }
        if i == 2 * TASKS / 3 {
            // Crash: once the topology has settled, SIGKILL the master.
            let mut current = None;
            assert!(
                eventually(Duration::from_secs(30), || {
                    current = master_port(&sentinel).filter(|m| *m != master);
                    let settled = current.is_some_and(|m| all_follow(&sentinel, &nodes, m));
                    async move { settled }
                })
                .await,
                "the old master follows the promoted replica"
            );
            let victim = current.unwrap();
            let mut node = nodes.remove(nodes.iter().position(|n| n.port == victim).unwrap());
            node.kill();
            failovers.push("SIGKILL of the master, restarted after the promotion".to_string());
            killed = Some(victim);
            // The crashed node comes back once a replica is promoted, and the sentinel makes
            // it a replica. Until then the lone master cannot confirm new tasks
            // (REDIS_WAIT_REPLICAS=1) and submissions are refused and retried.
            let sentinel_port = sentinel.port;
            restarted = Some(std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                while master_at(sentinel_port).is_none_or(|m| m == victim) {
                    assert!(Instant::now() < deadline, "no replica promoted");
                    std::thread::sleep(Duration::from_millis(50));
                }
                node.start();
                node
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let task = NewTask {
                request: request(),
                idempotency_key: Some(format!("submission-{i}")),
                max_depth: 0,
            };
            match s.ask(Enqueue(task)).await {
                Ok(e) => {
                    acked.insert(i, e.id);
                    break;
                }
                Err(e) if e.is_unavailable() => {
                    assert!(Instant::now() < deadline, "no master for a minute: {e}");
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("enqueue {i}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _back = restarted.map(|t| t.join().expect("the crashed node restarts"));
    // The sentinel's answer settles once the restarted node has rejoined as a replica:
    // polled, with a bound, rather than read once in the middle of that.
    assert!(
        eventually(Duration::from_secs(20), || async {
            let last = master_port(&sentinel);
            last.is_some() && last != killed
        })
        .await,
        "a survivor is master after the crash (sentinel says {:?}, the crashed node was {killed:?})",
        master_port(&sentinel)
    );

    // Every acknowledged task reaches the end, through the master the sentinel names now.
    let want: HashSet<TaskId> = acked.values().cloned().collect();
    assert_eq!(
        want.len(),
        TASKS,
        "one task per submission, retries included"
    );
    let all_done = eventually(Duration::from_secs(60), || async {
        for id in &want {
            match s.ask(GetTask(id.clone())).await {
                Ok((rec, _)) if rec.status == Status::Succeeded => {}
                _ => return false,
            }
        }
        true
    })
    .await;
    *stop.lock().unwrap() = true;
    let finished = consumer.await.unwrap();
    let mut missing = Vec::new();
    for id in &want {
        match s.ask(GetTask(id.clone())).await {
            Ok((rec, _)) if rec.status == Status::Succeeded => {}
            other => missing.push(format!("{id}: {other:?}")),
        }
    }
    println!(
        "SENTINEL | failovers {failovers:?} | submitted {TASKS} | acknowledged {} | \
         enqueue retries {retries} | finished by consumer {} | lost {}",
        want.len(),
        finished.len(),
        missing.len()
    );
    assert!(all_done && missing.is_empty(), "lost: {missing:#?}");
}

/// The value of the counter `name` in the Prometheus text `text` (0 when absent).
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A demoted master that keeps its clients answers writes with `READONLY`. The queue's pool
/// replays the command on a fresh connection to the master the sentinel names now: the
/// write lands there, once, and the replay is counted. The demotion is done by hand (the
/// sentinel is re-pointed at the new master at once) so that the pooled connection is
/// certain to reach the old master after it became a replica.
#[actix_rt::test]
async fn a_write_answered_readonly_is_replayed_on_the_new_master() {
    let _one = SERIAL.lock().await;
    let metrics = uvr::metrics::install();
    let dir = tempfile::tempdir().unwrap();
    let old = Node::data(dir.path(), None);
    let nodes = vec![Node::data(dir.path(), Some(old.port))];
    let new = &nodes[0];
    let sentinel = Node::sentinel(dir.path(), old.port);
    assert!(
        eventually(Duration::from_secs(20), || async {
            all_follow(&sentinel, &nodes, old.port)
        })
        .await,
        "the replica syncs and the sentinel discovers it"
    );
    let cfg = Config::from(&Env::from_pairs([
        ("REDIS_SENTINELS", format!("127.0.0.1:{}", sentinel.port)),
        ("REDIS_SENTINEL_MASTER", "mymaster".into()),
        ("REDIS_TIMEOUT", "2".into()),
    ]))
    .unwrap();
    let s = SchedulerHandle::start(Queue::connect(&cfg).unwrap());
    let task = |key: &str| NewTask {
        request: request(),
        idempotency_key: Some(key.into()),
        max_depth: 0,
    };
    let first = s.ask(Enqueue(task("before"))).await.unwrap().id;
    assert!(
        eventually(Duration::from_secs(10), || async {
            new.cli(&["ZCARD", "uvr_tasks"])
                .is_some_and(|n| n.trim() == "1")
        })
        .await,
        "the first task reached the replica"
    );
    let replays_before = counter(&metrics.render(), "uvr_redis_readonly_replays_total");

    // The replica takes over; the old master follows it, keeping its client connections.
    assert_eq!(new.cli(&["REPLICAOF", "NO", "ONE"]).unwrap().trim(), "OK");
    let port = new.port.to_string();
    assert_eq!(
        old.cli(&["REPLICAOF", "127.0.0.1", &port]).unwrap().trim(),
        "OK"
    );
    assert!(
        old.cli(&["SET", "probe", "1"])
            .is_some_and(|o| o.contains("READONLY")),
        "the old master refuses writes now"
    );
    sentinel.cli(&["SENTINEL", "REMOVE", "mymaster"]).unwrap();
    sentinel
        .cli(&["SENTINEL", "MONITOR", "mymaster", "127.0.0.1", &port, "1"])
        .unwrap();
    assert_eq!(master_port(&sentinel), Some(new.port));

    // The next write goes out on the pooled connection to the old master.
    let second = s.ask(Enqueue(task("after"))).await.unwrap().id;
    let replays = counter(&metrics.render(), "uvr_redis_readonly_replays_total") - replays_before;
    assert!(
        replays >= 1.0,
        "the READONLY answer was replayed ({replays})"
    );
    let record = format!("uvr_tasks:task:{second}");
    assert_eq!(new.cli(&["EXISTS", &record]).unwrap().trim(), "1");
    assert_eq!(
        new.cli(&["ZCARD", "uvr_tasks"]).unwrap().trim(),
        "2",
        "both tasks wait on the new master, the replayed one once"
    );
    assert_ne!(first, second);
    let (rec, _) = s.ask(GetTask(second)).await.unwrap();
    assert_eq!(rec.status, Status::Queued);
}
