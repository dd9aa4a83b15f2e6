//! Test helpers: a throwaway `redis-server` on a free port, and configuration pointing at it.
#![allow(dead_code)]

pub mod client;
pub mod e2e;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use uvr::config::{Config, Env};

/// A `redis-server` process owned by one test; killed on drop.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    aof: Option<&'static str>,
    /// A Redis Cluster node (its cluster bus on a port of its own).
    cluster: bool,
    /// Whether it has run once (a restart keeps the port).
    started: bool,
}

/// Runs `redis-cli` against the server on `port` (loopback); `None` when it fails.
pub fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Starts a server without persistence.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a server with AOF persistence (`appendfsync` = `fsync`), so a restart keeps data.
    pub fn start_with(fsync: Option<&'static str>) -> Self {
        let mut s = Self {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            aof: fsync,
            cluster: false,
            started: false,
        };
        s.spawn();
        s
    }

    /// Starts a node with Redis Cluster enabled and no slots yet (`redis-cli --cluster
    /// create` joins nodes into a cluster).
    pub fn start_cluster_node() -> Self {
        let mut s = Self {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            aof: None,
            cluster: true,
            started: false,
        };
        s.spawn();
        s
    }

    /// Starts `redis-server` and waits until this very process answers (its `process_id` in
    /// `INFO`, so a server another test left on the port is never taken for ours). A first
    /// start whose port was taken between [`free_port`] and the bind moves to another port;
    /// a restart keeps its port (the data directory and the clients' URL depend on it).
    fn spawn(&mut self) {
        let first = self.child.is_none() && !self.started;
        for _ in 0..5 {
            let mut cmd = Command::new("redis-server");
            cmd.arg("--port")
                .arg(self.port.to_string())
                .arg("--bind")
                .arg("127.0.0.1")
                .arg("--save")
                .arg("")
                .arg("--dir")
                .arg(self.dir.path())
                .arg("--daemonize")
                .arg("no")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            match self.aof {
                Some(fsync) => cmd
                    .arg("--appendonly")
                    .arg("yes")
                    .arg("--appendfsync")
                    .arg(fsync),
                None => cmd.arg("--appendonly").arg("no"),
            };
            if self.cluster {
                cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
                    .arg("--cluster-config-file")
                    .arg(self.dir.path().join("nodes.conf"))
                    .arg("--cluster-port")
                    .arg(free_port().to_string());
            }
            let mut child = cmd
                .spawn()
                .expect("redis-server is installed (apt install redis-server)");
            let ours = format!("process_id:{}", child.id());
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if self
                    .cli(&["INFO", "server"])
                    .is_some_and(|i| i.contains(&ours))
                {
                    self.child = Some(child);
                    self.started = true;
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            if first {
                self.port = free_port();
            } else {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    /// Kills the server with SIGKILL (no chance to flush anything).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The data directory.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Runs `redis-cli` against this server; `None` when it fails.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        redis_cli(self.port, args)
    }

    /// The URL of this server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A configuration pointing at this server, with `extra` variables on top.
    pub fn config(&self, extra: &[(&str, &str)]) -> Config {
        let mut pairs: Vec<(String, String)> = vec![
            ("REDIS_URL".into(), self.url()),
            ("REDIS_TIMEOUT".into(), "2".into()),
        ];
        pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Config::from(&Env::from_pairs(pairs)).unwrap()
    }
}

impl RedisServer {
    /// Waits until no task of the deployment on this server is waiting, claimed or due for
    /// a retry, in either stage. From then on its workers can send nothing more: every
    /// download and webhook happens while its task is claimed, and nothing is left to claim.
    /// This, not a pause, is what the suites' "and nothing else happens" checks rest on.
    /// Panics after `timeout`.
    pub async fn settled(&self, timeout: Duration) {
        let queue = uvr::queue::Queue::connect(&self.config(&[])).unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            let st = queue.stats().await.unwrap();
            let open = [&st.separate, &st.deliver]
                .iter()
                .map(|s| s.waiting + s.in_flight + s.delayed)
                .sum::<u64>();
            if open == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "{open} tasks still open: {st:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A running API on port 0 with its own Redis.
pub struct TestApp {
    pub redis: RedisServer,
    pub base: String,
    pub scheduler: uvr::actors::scheduler::SchedulerHandle,
    /// Stops the service: drains, as a first SIGTERM does.
    pub stopper: uvr::service::Stopper,
    /// The running service; ends once stopped and drained.
    pub running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub const USER: &str = "admin";
pub const PASSWORD: &str = "test-password-0123";

/// A request for `audio` with the given priority, a webhook and the administrator as
/// owner; every other field at its default.
pub fn task_request(audio: &str, priority: u8) -> uvr::task::TaskRequest {
    uvr::task::TaskRequest {
        audio: audio.into(),
        hook_url: Some("https://example.com/hook".into()),
        priority: uvr::task::Priority::new(priority).unwrap(),
        model: None,
        stems: None,
        output_format: None,
        bitrate: None,
        sample_rate: None,
        models: None,
        ensemble: None,
        owner: Some("admin".into()),
    }
}

/// Starts the real app (API + Scheduler) on a free port against a throwaway Redis.
pub async fn spawn_app(extra: &[(&str, &str)]) -> TestApp {
    spawn_app_on(RedisServer::start(), extra).await
}

/// Starts the real app against `redis`: the API role, assembled as the binaries assemble
/// it, or the roles `UVR_ROLES` in `extra` names.
pub async fn spawn_app_on(redis: RedisServer, extra: &[(&str, &str)]) -> TestApp {
    let mut pairs: Vec<(String, String)> = vec![
        ("REDIS_URL".into(), redis.url()),
        ("REDIS_TIMEOUT".into(), "2".into()),
        ("API_HOST".into(), "127.0.0.1".into()),
        ("API_PORT".into(), "0".into()),
        ("API_WORKERS".into(), "2".into()),
        ("API_USERNAME".into(), USER.into()),
        ("API_PASSWORD".into(), PASSWORD.into()),
        ("SHUTDOWN_GRACE_SECONDS".into(), "0.5".into()),
        ("MODELS_DIR".into(), "/nonexistent".into()),
        (
            "LINK_SIGNING_KEY".into(),
            "test-link-signing-key-0123456789abcdef".into(),
        ),
        (
            "STORAGE_URL".into(),
            "file:///tmp/uvr-test-unused-storage".into(),
        ),
    ];
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let env = Env::from_pairs(pairs);
    let roles = env
        .get("UVR_ROLES")
        .is_none()
        .then_some(&[uvr::settings::Role::Api][..]);
    let settings = uvr::settings::Settings::from_env(&env, roles).unwrap();
    let service = uvr::service::Service::start_as(settings, "in-process")
        .await
        .unwrap();
    let base = format!("http://{}", service.api_addr.expect("the API role"));
    let (scheduler, stopper) = (service.scheduler.clone(), service.stopper());
    TestApp {
        redis,
        base,
        scheduler,
        stopper,
        running: actix_rt::spawn(service.run()),
    }
}

impl TestApp {
    /// Number of tasks waiting in `uvr_tasks` plus task records stored.
    pub fn stored_tasks(&self) -> (usize, usize) {
        let depth = self
            .redis
            .cli(&["ZCARD", "uvr_tasks"])
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let records = self
            .redis
            .cli(&["--scan", "--pattern", "uvr_tasks:task:*"])
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .count();
        (depth, records)
    }
}

/// The `Retry-After` seconds of a response (which must carry one).
pub fn retry_after(resp: &reqwest::Response) -> u64 {
    resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The seed's request body, with public (IP literal) URLs.
pub fn seed_body(priority: u8) -> serde_json::Value {
    serde_json::json!({
        "audio": "https://93.184.215.14/audio.wav",
        "hook_url": "https://93.184.215.14/webhook",
        "priority": priority,
    })
}

/// Resident set size of process `pid` in bytes (`VmRSS` in `/proc/<pid>/status`); `None`
/// when the process is gone or `/proc` is unavailable.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `used_memory` from `INFO memory` of the Redis on `port` (bytes).
pub fn redis_used_memory(port: u16) -> Option<u64> {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(["INFO", "memory"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
}

impl RedisServer {
    /// `used_memory` from `INFO memory` (bytes).
    pub fn used_memory(&self) -> Option<u64> {
        redis_used_memory(self.port)
    }
}
