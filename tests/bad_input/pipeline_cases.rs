//! The pipeline case table: where a case's audio comes from ([`Source`]) and how its task must
//! end ([`End`]); [`run_pipeline_table`] submits every case to a deployment of the real `uvr`
//! binary and checks the record, the one signed webhook, staging and storage, and that the
//! service is still up.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::e2e::{Deployment, Peer, Received, Silence, WEBHOOK_SECRET, verify_signature};

/// Where a case's audio comes from.
#[derive(Clone)]
pub(crate) enum Source {
    /// These bytes, at `/audio/{case}`.
    File(Vec<u8>),
    /// Nothing there: 404.
    Missing,
    /// Generated silence at `/stream/{case}`.
    Stream(Silence),
    /// A WAV header, then one byte every this many milliseconds, at `/trickle/{case}`.
    Trickle(u64),
    /// `hops` relative redirects, then a redirect to `then` (absolute or relative; `None`: a
    /// redirect without `Location`). In `then`, `{port}` is the origin's port and `{self}` the
    /// redirect's own path.
    Redirects { hops: usize, then: Option<String> },
}

/// How a case must end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum End {
    /// Succeeded, with about this many seconds of audio.
    Ok(f64),
    /// Failed with this code.
    Fail(&'static str),
}

pub(crate) struct PipeCase {
    name: String,
    source: Source,
    end: End,
}

pub(crate) fn pipe(name: impl Into<String>, source: Source, end: End) -> PipeCase {
    PipeCase {
        name: name.into(),
        source,
        end,
    }
}

pub(crate) fn file(name: impl Into<String>, bytes: Vec<u8>, end: End) -> PipeCase {
    pipe(name, Source::File(bytes), end)
}

fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// Serves a case's source from `origin`; returns the path to ask for.
fn install(origin: &Peer, key: &str, source: &Source) -> String {
    match source {
        Source::File(bytes) => {
            origin.put(key, bytes.clone());
            format!("/audio/{key}")
        }
        Source::Missing => format!("/audio/{key}"),
        Source::Stream(s) => origin.stream(key, *s),
        Source::Trickle(every) => origin.trickle(key, *every),
        Source::Redirects { hops, then } => {
            for i in 0..*hops {
                origin.redirect(
                    &format!("{key}-{i}"),
                    Some(format!("/redirect/{key}-{}", i + 1)),
                );
            }
            let last = then.as_ref().map(|t| {
                t.replace("{port}", &origin.port.to_string())
                    .replace("{self}", &format!("/redirect/{key}-{hops}"))
            });
            origin.redirect(&format!("{key}-{hops}"), last);
            format!("/redirect/{key}-0")
        }
    }
}

fn dir_entries(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Submits every case to a deployment (all roles in one `uvr`), waits for their webhooks, and
/// checks each: state and code on the record and in the one signed webhook, no staging files,
/// stems in storage only for successes. Then the service must still be up and still separate
/// a valid song. `audio_base` is where the audio URLs point (the origin, or a name reached
/// through the proxy); hooks go to `hook_base`.
pub(crate) async fn run_pipeline_table(
    dep: &Deployment,
    origin: &Peer,
    audio_base: &str,
    hook_base: &str,
    cases: Vec<PipeCase>,
) {
    let mut svc = dep.spawn("api,processor,uploader", "all");
    let api = dep.client();
    let started = Instant::now();
    let mut ids = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let key = format!("{i:02}-{}", slug(&c.name));
        let path = install(origin, &key, &c.source);
        let resp = api
            .generate(&json!({"audio": format!("{audio_base}{path}"), "hook_url": format!("{hook_base}/hook")}))
            .await;
        assert_eq!(resp.status(), 202, "{}: {:?}", c.name, resp.text().await);
        let body: Value = resp.json().await.unwrap();
        ids.push(body["task_id"].as_str().unwrap().to_string());
    }
    // Every task ends with a webhook.
    origin
        .wait_hooks(cases.len(), Duration::from_secs(150))
        .await;
    // And no task sends a second one: nothing is left to claim.
    dep.redis.settled(Duration::from_secs(60)).await;
    let hooks = origin.hooks();
    let mut failures = Vec::new();
    let mut lines = Vec::new();
    let staging = dep.path("staging");
    let stems = dep.path("stems");
    for (c, id) in cases.iter().zip(&ids) {
        let mut problems = Vec::new();
        let (_, t) = api.get_json(&format!("/tasks/{id}")).await;
        let status = t["status"].as_str().unwrap_or("?").to_string();
        let code = t["error"]["code"].as_str().map(str::to_string);
        let mine: Vec<&Received> = hooks
            .iter()
            .filter(|h| h.body["task_id"] == id.as_str())
            .collect();
        let got = match (status.as_str(), &code) {
            ("succeeded", _) => End::Ok(
                mine.first()
                    .and_then(|h| h.body["duration_seconds"].as_f64())
                    .unwrap_or(-1.0),
            ),
            ("failed", Some(code)) => End::Fail(Box::leak(code.clone().into_boxed_str())),
            _ => End::Fail(Box::leak(format!("<{status}>").into_boxed_str())),
        };
        let matches = match (c.end, got) {
            (End::Ok(want), End::Ok(have)) => (want - have).abs() < 0.06,
            (a, b) => a == b,
        };
        if !matches {
            problems.push(format!(
                "expected {:?}, got {:?} (attempts {})",
                c.end, got, t["attempts"]
            ));
        }
        if mine.len() != 1 {
            problems.push(format!("{} webhooks", mine.len()));
        }
        if let Some(h) = mine.first() {
            if !verify_signature(WEBHOOK_SECRET, h) {
                problems.push("webhook signature does not verify".into());
            }
            let want_status = if matches!(c.end, End::Ok(_)) {
                "succeeded"
            } else {
                "failed"
            };
            if h.body["status"] != want_status {
                problems.push(format!("webhook status {}", h.body["status"]));
            }
            if let End::Fail(want) = c.end
                && h.body["error"]["code"] != want
            {
                problems.push(format!("webhook code {}", h.body["error"]["code"]));
            }
        }
        if let End::Fail(_) = c.end
            && t["attempts"] != 1
        {
            problems.push(format!(
                "{} attempts for a permanent failure",
                t["attempts"]
            ));
        }
        if staging.join(id).exists() {
            problems.push(format!(
                "staging left behind: {:?}",
                dir_entries(&staging.join(id))
            ));
        }
        let stored = dir_entries(&stems.join(id));
        match c.end {
            End::Fail(_) if !stored.is_empty() => {
                problems.push(format!("stems stored for a failed task: {stored:?}"))
            }
            End::Ok(_) if stored != ["instrumental.wav", "vocals.wav"] => {
                problems.push(format!("stored stems {stored:?}"))
            }
            _ => {}
        }
        let outcome = if problems.is_empty() {
            "ok"
        } else {
            "MISMATCH"
        };
        let message = t["error"]["message"].as_str().unwrap_or_default();
        lines.push(format!("  {outcome:8} {:64} {got:?} {message}", c.name));
        if !problems.is_empty() {
            failures.push(format!("{}: {}", c.name, problems.join("; ")));
        }
    }
    eprintln!(
        "{} cases in {:.1} s:\n{}",
        cases.len(),
        started.elapsed().as_secs_f64(),
        lines.join("\n")
    );
    // Nothing at all is left in the staging directory.
    let left = dir_entries(&staging);
    if !left.is_empty() {
        failures.push(format!("staging directory not empty: {left:?}"));
    }
    // Storage holds only the successes' stems.
    let succeeded: Vec<&String> = cases
        .iter()
        .zip(&ids)
        .filter(|(c, _)| matches!(c.end, End::Ok(_)))
        .map(|(_, id)| id)
        .collect();
    for d in dir_entries(&stems) {
        if !succeeded.iter().any(|id| **id == d) {
            failures.push(format!("unexpected entry in storage: {d}"));
        }
    }
    // The service is still up and still separates.
    let alive = svc
        .child
        .as_mut()
        .is_some_and(|c| c.try_wait().is_ok_and(|s| s.is_none()));
    if !alive {
        failures.push("the service exited".into());
    }
    let (h, _) = api.get_json("/health").await;
    if h != 200 {
        failures.push(format!("/health answers {h}"));
    }
    // Panics inside the third-party demuxers are contained by the decoder (their message
    // still reaches the log); any other panic is a bug.
    let log = svc.log_text();
    for line in log.lines().filter(|l| {
        l.contains("the separator panicked")
            || (l.contains("panicked at") && !l.contains("/symphonia-"))
    }) {
        failures.push(format!("a panic in the log: {line}"));
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}\n\nlog tail:\n{}",
        failures.len(),
        failures.join("\n"),
        tail(&log, 40)
    );
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Deployment settings shared by the pipeline tables: two attempts (a retried failure would
/// show), a 20 s duration cap and a 64 MiB download cap, so the hour-long cases are refused
/// quickly, for a reason the test chooses.
pub(crate) const LIMITS: [(&str, &str); 5] = [
    ("MAX_ATTEMPTS", "2"),
    ("PROCESSOR_CONCURRENCY", "2"),
    ("UPLOADER_CONCURRENCY", "2"),
    ("MAX_AUDIO_SECONDS", "20"),
    ("MAX_AUDIO_BYTES", "67108864"),
];
