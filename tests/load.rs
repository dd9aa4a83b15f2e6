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

mod common;

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::client::ApiClient;
use common::e2e::{Deployment, Peer, Service, test_wav};
use common::{redis_used_memory, rss_bytes};
use serde_json::{Value, json};

/// Default submission rate. `capacity_probe` measured 4.0-6.6 tasks/s end to end on the
/// 2-core development machine (debug build, 3 processors, 2 uploaders, 1 s WAV) while other
/// builds and test suites shared it; 4/s is about 70% of the better figure. 20/s is far past
/// that machine's capacity: the backlog grows by the difference, nothing is lost.
const DEFAULT_RATE: f64 = 4.0;
/// A send that starts this much after its scheduled time counts as late.
const LATE_AFTER: Duration = Duration::from_millis(20);
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

// ---------------------------------------------------------------------------------------
// Capacity probe
// ---------------------------------------------------------------------------------------

#[actix_rt::test]
#[ignore = "load run: make load"]
async fn capacity_probe() {
    let tasks: usize = knob("CAPACITY_TASKS", 120);
    let processors: usize = knob("LOAD_PROCESSORS", 3);
    let uploaders: usize = knob("LOAD_UPLOADERS", 2);
    let audio_seconds: f32 = knob("LOAD_AUDIO_SECONDS", 1.0);
    let peer = Peer::start();
    let audio = peer.put("load.wav", test_wav(audio_seconds, 44_100));
    let p = Pipeline::start(processors, uploaders, 60.0);
    let client = p.dep.client().with_http(
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    );
    let warm = p.warm_up(&client, &peer, &audio).await;

    // A burst: the queue holds the backlog, so every processor is busy until it drains.
    let start = Instant::now();
    let hook = peer.hook_url();
    let mut handles = Vec::new();
    for i in 0..tasks {
        let (client, audio, hook) = (client.clone(), audio.clone(), hook.clone());
        handles.push(actix_rt::spawn(async move {
            submit(&client, &audio, &hook, (i % 5) as u8 + 1).await
        }));
    }
    let mut accepted = Vec::new();
    for h in handles {
        match h.await.unwrap() {
            Outcome::Accepted { id, .. } => accepted.push(id),
            other => panic!("probe submission failed: {other:?}"),
        }
    }
    let submitted_in = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(knob("CAPACITY_TIMEOUT_SECONDS", 600));
    while hook_count(&peer) < tasks + 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hooks = hooks_by_task(&peer, &warm);
    let mut times: Vec<f64> = hooks
        .values()
        .flatten()
        .map(|(at, _)| at.duration_since(start).as_secs_f64())
        .collect();
    times.sort_by(f64::total_cmp);
    assert_eq!(
        times.len(),
        tasks,
        "every probe task announced once\n{}",
        p.logs()
    );
    // The steady part: from the 20th to the 80th percentile of completions.
    let (lo, hi) = (tasks / 5, tasks * 4 / 5);
    let capacity = (hi - lo) as f64 / (times[hi] - times[lo]);
    println!("\n=== capacity probe ===");
    println!(
        "{tasks} tasks ({audio_seconds} s WAV, priorities 1-5) submitted in {:.2} s; \
         {processors} processors, {uploaders} uploaders",
        submitted_in.as_secs_f64()
    );
    println!(
        "first completion {:.2} s, last {:.2} s after the burst",
        times[0],
        times[tasks - 1]
    );
    println!(
        "end-to-end capacity (completions {lo}..{hi}): {capacity:.2} tasks/s; \
         70% of it: LOAD_RATE={:.1}",
        capacity * 0.7
    );
    let all_ok = hooks.values().flatten().all(|(_, s)| s == "succeeded");
    assert!(all_ok, "every probe task succeeded");
}

// ---------------------------------------------------------------------------------------
// Sustained load
// ---------------------------------------------------------------------------------------

#[actix_rt::test]
#[ignore = "load run: make load"]
async fn sustained_load() {
    let rate: f64 = knob("LOAD_RATE", DEFAULT_RATE);
    let secs: f64 = knob("LOAD_SECONDS", 120.0);
    assert!(rate > 0.0 && rate <= 1000.0, "LOAD_RATE in (0, 1000]");
    assert!(secs > 0.0 && secs <= 3600.0, "LOAD_SECONDS in (0, 3600]");
    let processors: usize = knob("LOAD_PROCESSORS", 3);
    let uploaders: usize = knob("LOAD_UPLOADERS", 2);
    let audio_seconds: f32 = knob("LOAD_AUDIO_SECONDS", 1.0);
    // Finished records expire after this, so Redis reaches a steady state within the run
    // (the service default keeps them 7 days, which would be growth by design).
    let retention: f64 = knob("LOAD_RETENTION_SECONDS", 10.0);
    let every = Duration::from_secs_f64(knob("LOAD_SAMPLE_SECONDS", 5.0));
    let max_growth: f64 = knob("LOAD_MAX_GROWTH", 1.5);
    // The drain ends when every task is announced, when no webhook arrived for
    // `LOAD_STALL_SECONDS` (the rest is lost), or after `LOAD_DRAIN_SECONDS` at most.
    let stall = Duration::from_secs_f64(knob("LOAD_STALL_SECONDS", 30.0));
    let drain_cap = Duration::from_secs_f64(knob("LOAD_DRAIN_SECONDS", 600.0));

    let peer = Peer::start();
    let audio = peer.put("load.wav", test_wav(audio_seconds, 44_100));
    let hook = peer.hook_url();
    let p = Pipeline::start(processors, uploaders, retention);
    let client = p.dep.client().with_http(
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    );
    let warm = p.warm_up(&client, &peer, &audio).await;
    let names = p.names();

    let total = (rate * secs).round() as usize;
    let submitted = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let sampler = {
        let state = peer.state.clone();
        Sampler::start(
            every,
            start,
            p.dep.redis.port,
            p.pids(),
            submitted.clone(),
            move || state.lock().unwrap().hooks.len().saturating_sub(1),
        )
    };

    // Open loop: each send starts at its scheduled time, whatever the earlier ones are doing.
    let mut late = 0usize;
    let mut worst_lag = Duration::ZERO;
    let mut handles = Vec::with_capacity(total);
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let sent = Instant::now();
        let lag = sent.saturating_duration_since(due);
        worst_lag = worst_lag.max(lag);
        if lag > LATE_AFTER {
            late += 1;
        }
        let (client, audio, hook) = (client.clone(), audio.clone(), hook.clone());
        handles.push(actix_rt::spawn(async move {
            let out = submit(&client, &audio, &hook, (i % 5) as u8 + 1).await;
            (sent, out)
        }));
        submitted.fetch_add(1, Ordering::SeqCst);
    }
    let generated_in = start.elapsed().as_secs_f64();
    let mut sent_at: HashMap<String, Instant> = HashMap::new();
    let mut accept_latency = Vec::new();
    let mut refused: BTreeMap<u16, (usize, String)> = BTreeMap::new();
    let mut failed: Vec<String> = Vec::new();
    for h in handles {
        let (sent, out) = h.await.unwrap();
        match out {
            Outcome::Accepted { id, latency } => {
                accept_latency.push(latency.as_secs_f64() * 1e3);
                sent_at.insert(id, sent);
            }
            Outcome::Refused { status, body } => {
                let e = refused.entry(status).or_insert((0, body));
                e.0 += 1;
            }
            Outcome::Failed(e) => failed.push(e),
        }
    }
    let accepted = sent_at.len();

    // Drain: wait for every accepted task's webhook, then a little longer for duplicates.
    let drain_deadline = Instant::now() + drain_cap;
    let (mut seen, mut progress_at) = (hook_count(&peer), Instant::now());
    while seen < accepted + 1 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = hook_count(&peer);
        if now > seen {
            (seen, progress_at) = (now, Instant::now());
        } else if progress_at.elapsed() > stall {
            break;
        }
    }
    let drained_at = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let samples = sampler.finish();

    let hooks = hooks_by_task(&peer, &warm);
    let mut missing = Vec::new();
    let mut duplicated = Vec::new();
    let mut not_succeeded = Vec::new();
    let mut e2e = Vec::new();
    let mut done_in_window = 0usize;
    let mut last_done = start;
    for (id, sent) in &sent_at {
        match hooks.get(id).map(Vec::as_slice) {
            None | Some([]) => missing.push(id.clone()),
            Some(list) => {
                if list.len() > 1 {
                    duplicated.push((id.clone(), list.len()));
                }
                let (at, status) = &list[0];
                if status != "succeeded" {
                    not_succeeded.push((id.clone(), status.clone()));
                }
                e2e.push(at.duration_since(*sent).as_secs_f64() * 1e3);
                if at.duration_since(start).as_secs_f64() <= secs {
                    done_in_window += 1;
                }
                last_done = last_done.max(*at);
            }
        }
    }
    let unknown: Vec<&String> = hooks
        .keys()
        .filter(|id| !sent_at.contains_key(*id))
        .collect();

    println!("\n=== sustained load ===");
    println!(
        "offered {rate}/s for {secs} s ({total} submissions, {audio_seconds} s WAV, \
         priorities 1-5); {processors} processors, {uploaders} uploaders, 1 API; \
         record retention {retention} s"
    );
    println!(
        "generator: {total} sent in {generated_in:.1} s; late (> {} ms behind schedule): \
         {late}; worst lag {:.1} ms",
        LATE_AFTER.as_millis(),
        worst_lag.as_secs_f64() * 1e3
    );
    println!(
        "submissions: accepted {accepted}, refused {}, failed {}",
        refused.values().map(|(n, _)| n).sum::<usize>(),
        failed.len()
    );
    for (status, (n, body)) in &refused {
        println!("  refused {status} x{n}: {body}");
    }
    for f in failed.iter().take(5) {
        println!("  failed: {f}");
    }
    println!(
        "POST /generate latency (accepted): {}",
        dist(&accept_latency)
    );
    println!(
        "completed: {} of {accepted} ({} missing, {} duplicated, {} not succeeded, \
         {} unknown); drained {:.1} s after the start",
        e2e.len(),
        missing.len(),
        duplicated.len(),
        not_succeeded.len(),
        unknown.len(),
        drained_at
    );
    println!(
        "throughput: {:.2} completed/s within the {secs} s window; {:.2}/s overall \
         (start to last webhook, {:.1} s)",
        done_in_window as f64 / secs,
        e2e.len() as f64 / last_done.duration_since(start).as_secs_f64().max(1e-9),
        last_done.duration_since(start).as_secs_f64()
    );
    println!("end-to-end latency (submit -> webhook): {}", dist(&e2e));
    // Whether the offered rate was sustainable: the backlog left when the generator stopped.
    let backlog = samples
        .iter()
        .rfind(|s| s.t <= secs + 0.5)
        .map_or(0, |s| s.waiting.0 + s.waiting.1);
    if (backlog as f64) < (rate * 2.0).max(5.0) {
        println!("capacity: held {rate}/s (backlog {backlog} at the end of the window)");
    } else {
        println!(
            "capacity: NOT held: {backlog} tasks waiting at the end of the window; completions \
             ran at {:.2}/s against {rate}/s offered (latency is queueing time)",
            done_in_window as f64 / secs
        );
    }
    for id in missing.iter().take(5) {
        let record = match client
            .request(reqwest::Method::GET, &format!("/tasks/{id}"))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        println!("  missing {id}: {record}");
    }
    print_samples(&samples, &names, secs);
    let over = growth_report(&samples, secs, &names, max_growth);

    // End state: queues empty, staging empty, finished records gone after their retention.
    let port = p.dep.redis.port;
    tokio::time::sleep(Duration::from_secs_f64(retention + 2.0)).await;
    let mut leftovers = Vec::new();
    for q in ["uvr_tasks", "uvr_results"] {
        for suffix in ["", ":inflight", ":delayed", ":dead"] {
            let key = format!("{q}{suffix}");
            let n = zcard(port, &key);
            if n != 0 {
                leftovers.push(format!("{key}={n}"));
            }
        }
    }
    let records = count_keys(port, "uvr_tasks:task:*");
    let dbsize = redis_cli(port, &["DBSIZE"]);
    let staging: Vec<String> = std::fs::read_dir(p.dep.path("staging"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    println!(
        "after drain + retention: records {records}, DBSIZE {dbsize}, non-empty queues {:?}, \
         staging entries {}, redis used_memory {} MiB",
        leftovers,
        staging.len(),
        mib(redis_used_memory(port))
    );

    assert!(
        refused.is_empty() && failed.is_empty(),
        "errors under load: refused {refused:?}, failed {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(accepted == total, "every submission accepted");
    assert!(
        missing.is_empty() && duplicated.is_empty() && not_succeeded.is_empty(),
        "exactly once: missing {:?}, duplicated {:?}, not succeeded {:?}\n{}",
        &missing[..missing.len().min(5)],
        &duplicated[..duplicated.len().min(5)],
        &not_succeeded[..not_succeeded.len().min(5)],
        p.logs()
    );
    assert!(
        unknown.is_empty(),
        "webhooks for unknown tasks: {unknown:?}"
    );
    assert!(
        over.is_empty(),
        "memory grew more than {max_growth}x: {over:?}"
    );
    assert!(leftovers.is_empty(), "queues not empty: {leftovers:?}");
    assert!(staging.is_empty(), "staging left behind: {staging:?}");
    assert_eq!(records, 0, "finished records outlived their retention");
}

// ---------------------------------------------------------------------------------------
// Overload
// ---------------------------------------------------------------------------------------

/// One request of a hammering client.
#[derive(Debug)]
struct Hit {
    status: Option<u16>,
    code: String,
    ms: f64,
    retry_after: Option<u64>,
    timeout: bool,
}

/// `clients` closed-loop clients POSTing as fast as the API answers for `secs`.
async fn hammer(dep: &Deployment, clients: usize, secs: f64, timeout: Duration) -> Vec<Hit> {
    let client = dep.client().with_http(
        reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(clients)
            .build()
            .unwrap(),
    );
    let body = json!({
        "audio": "http://127.0.0.1:9/never-fetched.wav",
        "hook_url": "http://127.0.0.1:9/hook",
    });
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut handles = Vec::new();
    for _ in 0..clients {
        let (client, body) = (client.clone(), body.clone());
        handles.push(actix_rt::spawn(async move {
            let mut hits = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let resp = client
                    .request(reqwest::Method::POST, "/generate")
                    .json(&body)
                    .send()
                    .await;
                let hit = match resp {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let retry_after = r
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok());
                        let text = r.text().await;
                        let timeout = text.as_ref().is_err_and(reqwest::Error::is_timeout);
                        let code = text
                            .ok()
                            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                            .and_then(|v| v["error"]["code"].as_str().map(String::from))
                            .unwrap_or_default();
                        Hit {
                            status: Some(status),
                            code,
                            ms: t.elapsed().as_secs_f64() * 1e3,
                            retry_after,
                            timeout,
                        }
                    }
                    Err(e) => Hit {
                        status: None,
                        code: if e.is_timeout() {
                            "client timeout".into()
                        } else if e.is_connect() {
                            "connect error".into()
                        } else {
                            format!("error: {e}")
                        },
                        ms: t.elapsed().as_secs_f64() * 1e3,
                        retry_after: None,
                        timeout: e.is_timeout(),
                    },
                };
                hits.push(hit);
            }
            hits
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all
}

/// What an overload run saw.
struct OverloadSummary {
    by_status: BTreeMap<(Option<u16>, String), usize>,
    timeouts: usize,
    missing_retry_after: usize,
    accepted: usize,
}

fn overload_report(hits: &[Hit], secs: f64, clients: usize) -> OverloadSummary {
    let mut by_status: BTreeMap<(Option<u16>, String), usize> = BTreeMap::new();
    let mut latency: BTreeMap<Option<u16>, Vec<f64>> = BTreeMap::new();
    let mut missing_retry_after = 0;
    for h in hits {
        *by_status.entry((h.status, h.code.clone())).or_default() += 1;
        latency.entry(h.status).or_default().push(h.ms);
        if matches!(h.status, Some(429 | 503)) && h.retry_after.is_none_or(|s| s < 1) {
            missing_retry_after += 1;
        }
    }
    let timeouts = hits.iter().filter(|h| h.timeout).count();
    let accepted = hits.iter().filter(|h| h.status == Some(202)).count();
    println!(
        "{} requests from {clients} clients in {secs} s ({:.0} req/s); client timeouts {timeouts}; \
         429/503 without Retry-After {missing_retry_after}",
        hits.len(),
        hits.len() as f64 / secs
    );
    for ((status, code), n) in &by_status {
        let status = status.map_or_else(|| "---".into(), |s| s.to_string());
        println!("  {status} {code:<16} x{n}");
    }
    for (status, ms) in &latency {
        let status = status.map_or_else(|| "---".into(), |s| s.to_string());
        println!("  latency {status}: {}", dist(ms));
    }
    let retry_afters: BTreeMap<u64, usize> =
        hits.iter()
            .filter_map(|h| h.retry_after)
            .fold(BTreeMap::new(), |mut m, s| {
                *m.entry(s).or_default() += 1;
                m
            });
    println!("  Retry-After values (s -> count): {retry_afters:?}");
    OverloadSummary {
        by_status,
        timeouts,
        missing_retry_after,
        accepted,
    }
}

/// Starts an API alone (no workers, so nothing drains the queue), hammers it, prints what
/// it saw and the API's memory, and checks the shared expectations.
async fn overload(title: &str, extra: &[(&str, &str)], shed_status: u16) -> OverloadSummary {
    let clients: usize = knob("OVERLOAD_CLIENTS", 64);
    let secs: f64 = knob("OVERLOAD_SECONDS", 15.0);
    let timeout = Duration::from_secs_f64(knob("OVERLOAD_CLIENT_TIMEOUT_SECONDS", 5.0));
    let max_growth: f64 = knob("LOAD_MAX_GROWTH", 1.5);
    let mut env = vec![("API_WORKERS", "2")];
    env.extend_from_slice(extra);
    let dep = Deployment::new(&env);
    let api = dep.spawn("api", "api");
    let api_pid = pid(&api);
    // Warm the server (and its allocator) without taking a queue slot.
    let probe = reqwest::Client::new();
    for _ in 0..20 {
        let r = probe.get(format!("{}/livez", dep.base())).send().await;
        assert!(r.is_ok_and(|r| r.status() == 200));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_bytes(api_pid);
    let redis_before = dep.redis.used_memory();

    let start = Instant::now();
    let sampler = Sampler::start(
        Duration::from_secs(1),
        start,
        dep.redis.port,
        vec![api_pid],
        Arc::new(AtomicUsize::new(0)),
        || 0,
    );
    let hits = hammer(&dep, clients, secs, timeout).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let samples = sampler.finish();
    let rss_after = rss_bytes(api_pid);
    let redis_after = dep.redis.used_memory();
    let peak = samples.iter().filter_map(|s| s.rss[0]).max();

    println!("\n=== {title} ===");
    println!("settings: {extra:?}, API_WORKERS=2, no workers; {clients} clients, {secs} s");
    let summary = overload_report(&hits, secs, clients);
    println!(
        "API RSS: before {} MiB, peak {} MiB, after {} MiB; redis used_memory before {} MiB, \
         after {} MiB",
        mib(rss_before),
        mib(peak),
        mib(rss_after),
        mib(redis_before),
        mib(redis_after)
    );
    let over = growth_report(&samples, secs, &["api".to_string()], max_growth);
    let log = || log_tail("api", &api, 20);
    assert_eq!(
        summary.timeouts,
        0,
        "client timeouts under overload\n{}",
        log()
    );
    let unexpected: Vec<_> = summary
        .by_status
        .iter()
        .filter(|((s, _), _)| !matches!(s, Some(202)) && *s != Some(shed_status))
        .collect();
    assert!(
        unexpected.is_empty(),
        "only 202 and {shed_status}: {unexpected:?}\n{}",
        log()
    );
    assert_eq!(
        summary.missing_retry_after, 0,
        "every {shed_status} carries Retry-After"
    );
    assert!(over.is_empty(), "API memory grew: {over:?}");
    let (before, after) = (rss_before.unwrap_or(0), rss_after.unwrap_or(0));
    assert!(
        after < before * 2 + (64 << 20),
        "API RSS {before} -> {after} bytes"
    );
    let depth = zcard(dep.redis.port, "uvr_tasks");
    let records = count_keys(dep.redis.port, "uvr_tasks:task:*");
    println!("after: uvr_tasks depth {depth}, task records {records}");
    assert_eq!(
        records as u64, depth,
        "nothing stored for a refused request"
    );
    assert_eq!(
        depth as usize, summary.accepted,
        "every 202 is in the queue"
    );
    summary
}

#[actix_rt::test]
#[ignore = "load run: make load"]
async fn overload_queue_full() {
    let depth: u64 = knob("OVERLOAD_QUEUE_DEPTH", 50);
    let depth_s = depth.to_string();
    let summary = overload(
        "overload: MAX_QUEUE_DEPTH, no rate limit",
        &[
            ("MAX_QUEUE_DEPTH", depth_s.as_str()),
            ("RATE_LIMIT_PER_SECOND", "0"),
        ],
        503,
    )
    .await;
    assert_eq!(
        summary.accepted as u64, depth,
        "exactly MAX_QUEUE_DEPTH accepted, even with concurrent submissions"
    );
    let full = summary
        .by_status
        .get(&(Some(503), "queue_full".to_string()))
        .copied()
        .unwrap_or(0);
    assert!(full > 0, "the rest refused as queue_full");
}

#[actix_rt::test]
#[ignore = "load run: make load"]
async fn overload_rate_limited() {
    let rate: f64 = knob("OVERLOAD_RATE_LIMIT", 5.0);
    let burst: f64 = knob("OVERLOAD_RATE_BURST", 10.0);
    let secs: f64 = knob("OVERLOAD_SECONDS", 15.0);
    let (rate_s, burst_s) = (rate.to_string(), burst.to_string());
    let summary = overload(
        "overload: per-credential rate limit",
        &[
            ("RATE_LIMIT_PER_SECOND", rate_s.as_str()),
            ("RATE_LIMIT_BURST", burst_s.as_str()),
        ],
        429,
    )
    .await;
    // One credential: the bucket's burst, then `rate` a second for the run.
    let expected = burst + rate * secs;
    let got = summary.accepted as f64;
    println!("accepted {got} for an expected burst + rate * seconds = {expected}");
    assert!(
        got >= expected - rate - 1.0 && got <= expected + rate + 1.0,
        "accepted {got}, expected about {expected}"
    );
}
