//! Load and overload runs against the real `uvr` binary, a real Redis and a loopback peer
//! that serves the audio and receives the webhooks. Every test here is `#[ignore]`d: plain
//! `cargo test` skips them; `make load` runs them one at a time:
//!
//! ```text
//! CUBECL_AUTOTUNE_LEVEL=minimal cargo test --test load -- --ignored --nocapture --test-threads=1
//! ```
//!
//! - `capacity_probe`: saturates the pipeline with a burst and reports the end-to-end
//!   completion rate, and 70% of it as a sustainable `LOAD_RATE` for this machine.
//! - `sustained_load`: one API, `LOAD_PROCESSORS` processors, `LOAD_UPLOADERS` uploaders,
//!   local storage. An open-loop generator submits a short WAV at `LOAD_RATE` per second for
//!   `LOAD_SECONDS` (scheduled by the wall clock, never waiting for responses; sends that
//!   start late are counted). Reports submissions, throughput, submit-to-webhook latency
//!   percentiles, and every `LOAD_SAMPLE_SECONDS` Redis `used_memory` and the RSS of every
//!   `uvr` process. Asserts behaviour, not speed: no errors, every accepted task announced
//!   exactly once and succeeded, queues and staging empty afterwards, finished records
//!   expired after their retention, and no memory series whose mean over the last third of
//!   the run exceeds `LOAD_MAX_GROWTH` times its mean over the middle third.
//! - `overload_queue_full`: `OVERLOAD_CLIENTS` closed-loop clients without a rate limit
//!   against `MAX_QUEUE_DEPTH=OVERLOAD_QUEUE_DEPTH` and no workers: exactly that many
//!   accepted, every other answer 503 `queue_full` with `Retry-After`, no client timeouts,
//!   API memory flat.
//! - `overload_rate_limited`: the same clients against a per-credential token bucket
//!   (`RATE_LIMIT_PER_SECOND` / `RATE_LIMIT_BURST`): the bucket's worth accepted, every
//!   other answer 429 with `Retry-After`, no client timeouts, API memory flat.
//!
//! The knobs are read from the test process's environment; the defaults fit a 2-core
//! machine running Redis, the peer and every `uvr` process at once (debug build).
//!
//! Layout: this file is the crate root, with what the runs share (the knobs, statistics and
//! memory sampling, the pipeline deployment and its submissions); its modules live in
//! `tests/load/` (declared with `#[path]`, since a crate root's `mod x;` would look for
//! `tests/x.rs`): `capacity` (`capacity_probe`), `sustained` (`sustained_load`) and
//! `overload` (`overload_queue_full`, `overload_rate_limited`).

mod common;

#[path = "load/capacity.rs"]
mod capacity;
#[path = "load/overload.rs"]
mod overload;
#[path = "load/sustained.rs"]
mod sustained;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::client::ApiClient;
use common::e2e::{Deployment, Peer, Service};
use common::{redis_used_memory, rss_bytes};
use serde_json::{Value, json};

const MIB: f64 = 1024.0 * 1024.0;

/// A knob from the environment, or its default.
fn knob<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
        _ => default,
    }
}

// ---------------------------------------------------------------------------------------
// Statistics and sampling
// ---------------------------------------------------------------------------------------

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `n=.. p50=.. p90=.. p99=.. max=..` of millisecond values.
fn dist(values: &[f64]) -> String {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    format!(
        "n={} p50={:.1}ms p90={:.1}ms p99={:.1}ms max={:.1}ms",
        v.len(),
        percentile(&v, 50.0),
        percentile(&v, 90.0),
        percentile(&v, 99.0),
        v.last().copied().unwrap_or(f64::NAN)
    )
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".into(), |b| format!("{:.1}", b as f64 / MIB))
}

/// `redis-cli -p port args...`, trimmed stdout.
fn redis_cli(port: u16, args: &[&str]) -> String {
    std::process::Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn zcard(port: u16, key: &str) -> u64 {
    redis_cli(port, &["ZCARD", key]).parse().unwrap_or(u64::MAX)
}

/// Keys matching `pattern` (SCAN, so it does not block the server).
fn count_keys(port: u16, pattern: &str) -> usize {
    redis_cli(port, &["--scan", "--pattern", pattern])
        .lines()
        .filter(|l| !l.is_empty())
        .count()
}

/// One periodic sample.
#[derive(Debug, Clone)]
struct Sample {
    /// Seconds since the start of the run.
    t: f64,
    submitted: usize,
    completed: usize,
    /// Waiting in `uvr_tasks` and `uvr_results`.
    waiting: (u64, u64),
    redis: Option<u64>,
    /// RSS per process, in the order of the sampler's pids.
    rss: Vec<Option<u64>>,
}

/// A background thread sampling memory and progress at a fixed period.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    fn start(
        every: Duration,
        start: Instant,
        redis_port: u16,
        pids: Vec<u32>,
        submitted: Arc<AtomicUsize>,
        completed: impl Fn() -> usize + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut next = start;
            while !flag.load(Ordering::SeqCst) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_millis(50)));
                    continue;
                }
                samples.push(Sample {
                    t: now.duration_since(start).as_secs_f64(),
                    submitted: submitted.load(Ordering::SeqCst),
                    completed: completed(),
                    waiting: (
                        zcard(redis_port, "uvr_tasks"),
                        zcard(redis_port, "uvr_results"),
                    ),
                    redis: redis_used_memory(redis_port),
                    rss: pids.iter().map(|&p| rss_bytes(p)).collect(),
                });
                next += every;
            }
            samples
        });
        Self { stop, thread }
    }

    fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("sampler thread")
    }
}

/// Growth of one series over a window of `window` seconds: mean of the samples in its
/// middle third, mean of those in its last third, and their ratio.
fn growth(samples: &[Sample], window: f64, f: impl Fn(&Sample) -> Option<u64>) -> Option<Growth> {
    let mean = |lo: f64, hi: f64| {
        let v: Vec<f64> = samples
            .iter()
            .filter(|s| s.t >= lo && s.t <= hi)
            .filter_map(|s| f(s).map(|x| x as f64))
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let middle = mean(window / 3.0, 2.0 * window / 3.0)?;
    let last = mean(2.0 * window / 3.0 + 1e-9, window)?;
    Some(Growth {
        middle,
        last,
        ratio: last / middle,
    })
}

#[derive(Debug, Clone, Copy)]
struct Growth {
    middle: f64,
    last: f64,
    ratio: f64,
}

fn verdict(ratio: f64, bound: f64) -> &'static str {
    if ratio >= bound {
        "GROWING"
    } else if ratio >= 1.1 {
        "mild growth"
    } else {
        "flat"
    }
}

/// Prints the growth table of every memory series; returns the series over `bound`.
fn growth_report(
    samples: &[Sample],
    window: f64,
    names: &[String],
    bound: f64,
) -> Vec<(String, f64)> {
    println!("memory growth (mean of the last third vs the middle third of {window:.0} s):");
    let mut series: Vec<(String, Option<Growth>)> = vec![(
        "redis used_memory".into(),
        growth(samples, window, |s| s.redis),
    )];
    for (i, name) in names.iter().enumerate() {
        series.push((
            format!("rss {name}"),
            growth(samples, window, |s| s.rss.get(i).copied().flatten()),
        ));
    }
    let mut over = Vec::new();
    for (name, g) in series {
        match g {
            Some(g) => {
                println!(
                    "  {name:<24} middle {:>8.2} MiB  last {:>8.2} MiB  ratio {:.3}  {}",
                    g.middle / MIB,
                    g.last / MIB,
                    g.ratio,
                    verdict(g.ratio, bound)
                );
                if g.ratio >= bound {
                    over.push((name, g.ratio));
                }
            }
            None => println!("  {name:<24} (not enough samples)"),
        }
    }
    over
}

fn print_samples(samples: &[Sample], names: &[String], window: f64) {
    print!(
        "{:>7} {:>9} {:>9} {:>8} {:>8} {:>10}",
        "t(s)", "submitted", "completed", "w_tasks", "w_result", "redis MiB"
    );
    for n in names {
        print!(" {:>11}", n);
    }
    println!("   (RSS MiB per process)");
    for s in samples {
        print!(
            "{:>7.1} {:>9} {:>9} {:>8} {:>8} {:>10}",
            s.t,
            s.submitted,
            s.completed,
            s.waiting.0,
            s.waiting.1,
            mib(s.redis)
        );
        for r in &s.rss {
            print!(" {:>11}", mib(*r));
        }
        println!("{}", if s.t > window + 0.5 { "  (drain)" } else { "" });
    }
}

fn pid(svc: &Service) -> u32 {
    svc.child.as_ref().expect("running").id()
}

fn log_tail(name: &str, svc: &Service, lines: usize) -> String {
    let text = svc.log_text();
    let all: Vec<&str> = text.lines().collect();
    if all.is_empty() {
        return String::new();
    }
    let from = all.len().saturating_sub(lines);
    format!(
        "--- {name} (last {lines} log lines)\n{}",
        all[from..].join("\n")
    )
}

// ---------------------------------------------------------------------------------------
// The pipeline deployment
// ---------------------------------------------------------------------------------------

/// A deployment of one API, `processors` processors and `uploaders` uploaders.
struct Pipeline {
    dep: Deployment,
    procs: Vec<(String, Service)>,
}

impl Pipeline {
    /// A client of the deployment's API whose requests give up after 30 s.
    fn client(&self) -> ApiClient {
        self.dep.client().with_http(
            reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        )
    }

    fn start(processors: usize, uploaders: usize, retention: f64) -> Self {
        let retention = retention.to_string();
        let dep = Deployment::new(&[
            ("RESULT_RETENTION_SECONDS", retention.as_str()),
            // The limiter is overload_rate_limited's subject, not this one's.
            ("RATE_LIMIT_PER_SECOND", "0"),
            ("API_WORKERS", "2"),
        ]);
        let mut procs = vec![("api".to_string(), dep.spawn("api", "api"))];
        for i in 0..processors {
            let name = format!("processor-{i}");
            let svc = dep.spawn("processor", &name);
            procs.push((name, svc));
        }
        for i in 0..uploaders {
            let name = format!("uploader-{i}");
            let svc = dep.spawn("uploader", &name);
            procs.push((name, svc));
        }
        Self { dep, procs }
    }

    fn names(&self) -> Vec<String> {
        self.procs.iter().map(|(n, _)| n.clone()).collect()
    }

    fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|(_, s)| pid(s)).collect()
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|(n, s)| log_tail(n, s, 15))
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Submits one task and waits for its webhook, so every role is up before the clock
    /// starts; returns its id (to leave out of the counts).
    async fn warm_up(&self, client: &ApiClient, peer: &Peer, audio: &str) -> String {
        let out = submit(client, audio, &peer.hook_url(), 3).await;
        let Outcome::Accepted { id, .. } = out else {
            panic!("warm-up submission refused: {out:?}\n{}", self.logs());
        };
        let hooks = peer.wait_hooks(1, Duration::from_secs(60)).await;
        assert_eq!(hooks.len(), 1, "warm-up task announced\n{}", self.logs());
        id
    }
}

/// What became of one submission.
#[derive(Debug)]
enum Outcome {
    Accepted { id: String, latency: Duration },
    Refused { status: u16, body: String },
    Failed(String),
}

async fn submit(client: &ApiClient, audio: &str, hook: &str, priority: u8) -> Outcome {
    let sent = Instant::now();
    let resp = client
        .request(reqwest::Method::POST, "/generate")
        .json(&json!({"audio": audio, "hook_url": hook, "priority": priority}))
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("{e:?}")),
    };
    let status = resp.status().as_u16();
    let body = match resp.text().await {
        Ok(b) => b,
        Err(e) => return Outcome::Failed(format!("reading the body: {e:?}")),
    };
    let latency = sent.elapsed();
    if status != 202 {
        return Outcome::Refused { status, body };
    }
    match serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["task_id"].as_str().map(String::from))
    {
        Some(id) => Outcome::Accepted { id, latency },
        None => Outcome::Failed(format!("202 without a task id: {body}")),
    }
}

/// Webhooks received after `skip`, grouped by task id: (received at, status).
fn hooks_by_task(peer: &Peer, skip: &str) -> HashMap<String, Vec<(Instant, String)>> {
    let mut map: HashMap<String, Vec<(Instant, String)>> = HashMap::new();
    for h in peer.state.lock().unwrap().hooks.iter() {
        let id = h.body["task_id"].as_str().unwrap_or("<none>").to_string();
        if id == skip {
            continue;
        }
        let status = h.body["status"].as_str().unwrap_or("<none>").to_string();
        map.entry(id).or_default().push((h.at, status));
    }
    map
}

fn hook_count(peer: &Peer) -> usize {
    peer.state.lock().unwrap().hooks.len()
}
