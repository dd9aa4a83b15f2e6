//! Queue benchmark: enqueue rate, two-stage lifecycle rate with no-op work, and idle pickup
//! latency, through the Scheduler actor against a throwaway `redis-server`, printed beside
//! `redis-benchmark`'s plain ZADD / ZPOPMIN figures taken in the same run on the same server.
//!
//! Run with `make bench` (or `cargo bench --bench queue`). Sizes: `BENCH_TASKS` (default
//! 50000), `BENCH_CONCURRENCY` (default 64), `BENCH_WORKERS` (default 8).

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use uvr::actors::scheduler::{Ack, Claim, Enqueue, SchedulerHandle};
use uvr::config::{Config, Env};
use uvr::queue::{NewTask, Queue};
use uvr::task::{Priority, Stage, TaskRequest};

fn env_usize(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Server {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis() -> Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server installed");
    for _ in 0..500 {
        let ok = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "PING"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG");
        if ok {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Server {
        port,
        child,
        _dir: dir,
    }
}

fn redis_benchmark(port: u16, n: usize) -> String {
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-q",
            "-c",
            "50",
            "-n",
            &n.to_string(),
        ])
        .args(["-t", "zadd,zpopmin"])
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.rsplit('\r').next().unwrap_or(l).trim().to_string())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n    "),
        Err(e) => format!("redis-benchmark unavailable: {e}"),
    }
}

fn task(i: usize) -> NewTask {
    NewTask {
        request: TaskRequest {
            audio: "https://example.com/song.flac".into(),
            hook_url: Some("https://example.com/hook".into()),
            priority: Priority::new((i % 5 + 1) as u8).unwrap(),
            model: None,
            stems: None,
            output_format: None,
            bitrate: None,
            sample_rate: None,
            models: None,
            ensemble: None,
            owner: Some("bench".into()),
        },
        idempotency_key: None,
        max_depth: 0,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and wants a quick run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let tasks = if quick {
        500
    } else {
        env_usize("BENCH_TASKS", 50_000)
    };
    let concurrency = env_usize("BENCH_CONCURRENCY", 64);
    let workers = env_usize("BENCH_WORKERS", 8);
    let server = start_redis();
    let cfg = Config::from(&Env::from_pairs([
        ("REDIS_URL", format!("redis://127.0.0.1:{}/0", server.port)),
        ("REDIS_POOL_SIZE", "16".to_string()),
    ]))
    .unwrap();

    actix_rt::System::new().block_on(async move {
        let s = SchedulerHandle::start(Queue::connect(&cfg).unwrap());

        // 1. Enqueue rate.
        let start = Instant::now();
        let mut pending = FuturesUnordered::new();
        for i in 0..tasks {
            let s = s.clone();
            pending.push(async move { s.ask(Enqueue(task(i))).await });
            if pending.len() >= concurrency {
                pending.next().await.unwrap().unwrap();
            }
        }
        while let Some(r) = pending.next().await {
            r.unwrap();
        }
        let enqueue_rate = tasks as f64 / start.elapsed().as_secs_f64();

        // 2. Two-stage lifecycle: claim -> ack -> result claim -> ack, no-op work.
        let start = Instant::now();
        let mut handles = Vec::new();
        for w in 0..workers {
            let s = s.clone();
            handles.push(actix_rt::spawn(async move {
                let name = format!("bench-{w}");
                let mut n = 0usize;
                loop {
                    let claim = |stage| Claim {
                        stage,
                        worker: name.clone(),
                        wait: Duration::ZERO,
                    };
                    let Some(c) = s.ask(claim(Stage::Separate)).await.unwrap() else {
                        break;
                    };
                    s.ask(Ack { claimed: c, result: None, failed: false }).await.unwrap();
                    let d = s.ask(claim(Stage::Deliver)).await.unwrap().expect("result queued");
                    s.ask(Ack { claimed: d, result: None, failed: false }).await.unwrap();
                    n += 1;
                }
                n
            }));
        }
        let mut lifecycles = 0;
        for h in handles {
            lifecycles += h.await.unwrap();
        }
        assert_eq!(lifecycles, tasks);
        let lifecycle_rate = lifecycles as f64 / start.elapsed().as_secs_f64();

        // 3. Idle pickup latency: a waiting claimer, one enqueue every 5 ms.
        let samples = if quick { 50 } else { 1000 };
        let waiter = {
            let s = s.clone();
            actix_rt::spawn(async move {
                let mut got = Vec::with_capacity(samples);
                while got.len() < samples {
                    let c = s
                        .ask(Claim {
                            stage: Stage::Separate,
                            worker: "idle".into(),
                            wait: Duration::from_secs(5),
                        })
                        .await
                        .unwrap();
                    if let Some(c) = c {
                        got.push((c.id().clone(), Instant::now()));
                        s.ask(Ack { claimed: c, result: None, failed: false }).await.unwrap();
                    }
                }
                got
            })
        };
        let mut sent = std::collections::HashMap::new();
        for i in 0..samples {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let t = Instant::now();
            let id = s.ask(Enqueue(task(i))).await.unwrap().id;
            sent.insert(id, t);
        }
        let mut lat: Vec<Duration> = waiter
            .await
            .unwrap()
            .into_iter()
            .map(|(id, at)| at.duration_since(sent[&id]))
            .collect();
        lat.sort();

        println!("uvr queue benchmark ({tasks} tasks, {concurrency} concurrent enqueuers, {workers} workers)");
        println!("  enqueue (Scheduler -> Lua)        {enqueue_rate:>10.0} tasks/s");
        println!("  two-stage lifecycle (no-op work)  {lifecycle_rate:>10.0} lifecycles/s");
        println!(
            "  idle pickup latency               p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3,
            lat.last().unwrap().as_secs_f64() * 1e3,
            lat.len()
        );
    });

    let n = if quick { 1000 } else { 200_000 };
    println!("  redis-benchmark, same server, -c 50 -n {n}:");
    println!("    {}", redis_benchmark(server.port, n));
}
