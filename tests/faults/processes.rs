//! Processes SIGKILLed mid-work and replaced: a processor mid-separation, an uploader
//! mid-upload (S3) and mid-webhook.

use std::time::Duration;

use super::{
    SERIAL, api_of, check_stems, conclude, outcomes, pairs, record, s3_env, submit_all, task_count,
};
use crate::common::e2e::{Deployment, HookAction, HookReceiver, Peer, Proxy, Seaweed, test_wav};
use crate::common::eventually;

/// Long enough that separation (debug build) spans several heartbeats.
const LONG_AUDIO_SECONDS: f32 = 20.0;

#[actix_rt::test]
async fn processor_sigkilled_mid_separation_is_replaced() {
    let _one = SERIAL.lock().await;
    let n = task_count(3);
    let peer = Peer::start();
    let hooks = HookReceiver::start();
    let dep = Deployment::new(&[("LEASE_SECONDS", "1.5"), ("PROCESSOR_CONCURRENCY", "1")]);
    let _api = dep.spawn("api,uploader", "api");
    let api = api_of(&dep);
    let long = peer.put("long.wav", test_wav(LONG_AUDIO_SECONDS, 44_100));
    let short = peer.put("short.wav", test_wav(1.0, 44_100));
    // The long task first: the processor is separating it when it dies.
    let mut audio = vec![long];
    audio.extend((1..n).map(|_| short.clone()));
    let ids = submit_all(&api, &audio, &hooks.url()).await;
    let victim = ids[0].clone();

    let mut first = dep.spawn("processor", "processor-1");
    // Mid-separation, watched on disk (finer than the heartbeat): the attempt's directory
    // still holds the downloaded source (removed when separation ends) and the vocal stem
    // being written has passed a quarter of its final size.
    let stem_size = 44 + 4 * (LONG_AUDIO_SECONDS * 44_100.0) as u64;
    let written = || -> u64 {
        let dir = dep.path("staging").join(&victim);
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|attempt| attempt.path())
            .filter(|a| a.join("source.audio").exists())
            .filter_map(|a| std::fs::metadata(a.join("vocals.wav")).ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0)
    };
    let mid = eventually(Duration::from_secs(120), || async {
        written() >= stem_size / 4
    })
    .await;
    assert!(
        mid,
        "never saw the separation under way: {:?}",
        api.try_task(&victim).await
    );
    first.kill();
    let at_kill = written();
    let before_replacement = hooks.hits().len();
    let _second = dep.spawn("processor", "processor-2");

    let (records, _, f) =
        conclude("processor SIGKILL mid-separation", &api, &dep, &ids, &hooks).await;
    println!(
        "FAULT-DETAIL | processor SIGKILL mid-separation | killed with {at_kill} of {stem_size} bytes of the vocal stem written"
    );
    assert_eq!(
        before_replacement, 0,
        "nothing announced before the takeover"
    );
    assert_eq!(f.lost, 0, "{records:?}");
    assert_eq!(f.completed, n, "{records:?}");
    // The killed attempt never acked, so the task went through one deliver stage: one webhook.
    assert_eq!(f.duplicated, 0, "{:?}", f.accepted);
    assert!(ids.iter().all(|id| f.accepted.get(id) == Some(&1)));
    // The replacement separated the whole song again: full-length stems, not the remains
    // of the killed attempt (16-bit stereo WAV: 44-byte header, 4 bytes a frame).
    let t = record(&records, &victim);
    assert_eq!(
        t["result"]["duration_seconds"].as_f64(),
        Some(f64::from(LONG_AUDIO_SECONDS))
    );
    let frames = (LONG_AUDIO_SECONDS * 44_100.0) as u64;
    for stem in ["vocals", "instrumental"] {
        assert_eq!(
            t["result"]["stems"][stem]["bytes"].as_u64(),
            Some(44 + 4 * frames),
            "{t}"
        );
    }
    for id in &ids {
        assert!(
            !dep.path("staging").join(id).exists(),
            "staging of {id} (the killed attempt's directory included) removed"
        );
    }
}

#[actix_rt::test]
async fn uploader_sigkilled_mid_upload_is_replaced() {
    let _one = SERIAL.lock().await;
    let n = task_count(3);
    let s3 = Seaweed::start();
    // Uploads go through a throttled proxy, so the kill lands while the PUT bodies flow.
    let proxy = Proxy::start(s3.port);
    proxy.set_rate(Some(256 * 1024));
    let peer = Peer::start();
    let hooks = HookReceiver::start();
    let mut env = s3_env(&proxy.endpoint());
    env.push(("LEASE_SECONDS", "1.5".into()));
    let dep = Deployment::new(&pairs(&env));
    let _api = dep.spawn("api,processor", "api");
    let api = api_of(&dep);
    // 8 s of audio: two stems of 1.4 MB each, single PUTs.
    let audio: Vec<String> = (0..n)
        .map(|i| peer.put(&format!("u{i}.wav"), test_wav(8.0, 44_100)))
        .collect();
    let ids = submit_all(&api, &audio, &hooks.url()).await;
    let mut first = dep.spawn("uploader", "uploader-1");
    let mid = eventually(Duration::from_secs(120), || async {
        proxy.up_bytes() > 256 * 1024
    })
    .await;
    assert!(mid, "no upload started");
    let mut in_flight = 0;
    for id in &ids {
        if let Ok(Some(t)) = api.try_task(id).await
            && t["status"] == "uploading"
        {
            in_flight += 1;
        }
    }
    first.kill();
    let sent_at_kill = proxy.up_bytes();
    let announced_before_kill = hooks.hits().len();
    proxy.set_rate(None);
    let _second = dep.spawn("uploader", "uploader-2");

    let (records, _, f) =
        conclude("uploader SIGKILL mid-upload (S3)", &api, &dep, &ids, &hooks).await;
    println!(
        "FAULT-DETAIL | uploader SIGKILL mid-upload | {in_flight} task(s) held by the killed uploader, {sent_at_kill} bytes on their way to S3 at the kill"
    );
    assert!(in_flight >= 1, "the kill landed while a task was held");
    assert_eq!(
        announced_before_kill, 0,
        "no webhook before the stems are stored"
    );
    assert_eq!(f.lost, 0, "{records:?}");
    assert_eq!(f.completed, n, "{records:?}");
    // Killed before any webhook went out: one webhook per task.
    assert_eq!(f.duplicated, 0, "{:?}", f.accepted);
    for id in &ids {
        check_stems(record(&records, id)).await;
    }
}

#[actix_rt::test]
async fn uploader_sigkilled_mid_webhook_is_replaced() {
    let _one = SERIAL.lock().await;
    let n = task_count(3);
    let peer = Peer::start();
    let hooks = HookReceiver::start();
    // The receiver takes the first delivery of each task and then stalls (no answer).
    hooks.set_plan(vec![HookAction::Slow(Duration::from_secs(600), 200)]);
    let concurrency = n.to_string();
    let dep = Deployment::new(&[
        ("LEASE_SECONDS", "1.5"),
        ("UPLOADER_CONCURRENCY", concurrency.as_str()),
        ("WEBHOOK_TIMEOUT_SECONDS", "120"),
    ]);
    let _api = dep.spawn("api,processor", "api");
    let api = api_of(&dep);
    let audio: Vec<String> = (0..n)
        .map(|i| peer.put(&format!("w{i}.wav"), test_wav(1.0, 44_100)))
        .collect();
    let ids = submit_all(&api, &audio, &hooks.url()).await;
    let mut first = dep.spawn("uploader", "uploader-1");
    // Every task's webhook request is open at the receiver.
    let open = eventually(Duration::from_secs(120), || async {
        hooks.hits().len() >= n
    })
    .await;
    assert!(open, "webhooks never arrived: {:?}", hooks.hits().len());
    first.kill();
    let open_at_kill = hooks.hits().len();
    let _second = dep.spawn("uploader", "uploader-2");

    let (records, _, f) = conclude("uploader SIGKILL mid-webhook", &api, &dep, &ids, &hooks).await;
    println!(
        "FAULT-DETAIL | uploader SIGKILL mid-webhook | {open_at_kill} webhook request(s) open at the kill; each is delivered again (at-least-once, same webhook-id)"
    );
    assert_eq!(f.lost, 0, "{records:?}");
    assert_eq!(f.completed, n, "{records:?}");
    // Every task's first delivery was open at the receiver when the uploader died (the
    // webhook timeout is far away, so none had been retried yet): exactly one request each.
    assert_eq!(open_at_kill, n, "one open request per task at the kill");
    // At-least-once: the killed uploader never learnt the outcome of those requests (the
    // receiver had decided 200 for each), so its successor delivers each of them once more.
    // No task is delivered a third time, and none is skipped.
    assert_eq!(f.duplicated, open_at_kill, "{:?}", f.accepted);
    assert!(
        ids.iter().all(|id| f.accepted.get(id) == Some(&2)),
        "exactly one extra delivery per open request: {:?}",
        f.accepted
    );
    for id in &ids {
        let t = record(&records, id);
        assert_eq!(t["result"]["webhook"]["state"], "delivered", "{t}");
        assert_eq!(outcomes(t).last().map(String::as_str), Some("delivered"));
    }
}
