//! Overload far past capacity: closed-loop clients against a full queue and against the
//! per-credential rate limit; every answer refused with its status and `Retry-After`, no
//! client timeouts, API memory flat.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Sampler, count_keys, dist, growth_report, knob, log_tail, mib, pid, zcard};
use crate::common::e2e::Deployment;
use crate::common::rss_bytes;

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
