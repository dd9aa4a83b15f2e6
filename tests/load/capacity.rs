//! The capacity probe: a burst that saturates the pipeline, the end-to-end completion rate,
//! and 70% of it as a sustainable `LOAD_RATE` for this machine.

use std::time::{Duration, Instant};

use super::{Outcome, Pipeline, hook_count, hooks_by_task, knob, submit};
use crate::common::e2e::{Peer, test_wav};

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
    let client = p.client();
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
