//! End to end: the real `uvr` binary, a real Redis, a loopback server that serves audio and
//! receives webhooks.

mod common;

use std::time::Duration;

use common::client::{ApiClient, Auth, no_redirects};
use common::e2e::{Deployment, Peer, WEBHOOK_SECRET, read_wav, test_wav, verify_signature};
use common::eventually;
use serde_json::{Value, json};
use uvr::settings::{Role, Settings};

/// The centred voice of [`song_wav`] at time `t` (seconds): four harmonics of 220 Hz.
fn song_voice(t: f64) -> f64 {
    (1..5)
        .map(|h| (2.0 * std::f64::consts::PI * 220.0 * f64::from(h) * t).sin() / f64::from(h))
        .sum::<f64>()
        * 0.25
}

/// The accompaniment of [`song_wav`] in channel `c`: two tones of their own on each side,
/// so no frequency is shared between the channels (nothing of it is centred).
fn song_side(c: usize, t: f64) -> f64 {
    let tones: [(f64, f64); 2] = if c == 0 {
        [(331.7, 0.12), (1_851.3, 0.08)]
    } else {
        [(523.9, 0.12), (2_937.1, 0.08)]
    };
    tones
        .iter()
        .map(|(f, a)| a * (2.0 * std::f64::consts::PI * f * t).sin())
        .sum()
}

/// A stereo 16-bit WAV of `seconds` at `rate` whose every sample is known in closed form:
/// [`song_voice`] in both channels plus [`song_side`] in each.
fn song_wav(seconds: f64, rate: u32) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut cur = std::io::Cursor::new(Vec::new());
    let mut w = hound::WavWriter::new(&mut cur, spec).unwrap();
    for i in 0..(seconds * f64::from(rate)) as usize {
        let t = i as f64 / f64::from(rate);
        for c in 0..2 {
            let x = song_voice(t) + song_side(c, t);
            w.write_sample((x * 32767.0).round() as i16).unwrap();
        }
    }
    w.finalize().unwrap();
    cur.into_inner()
}

#[actix_rt::test]
async fn a_submitted_song_is_separated_stored_and_announced() {
    let peer = Peer::start();
    let dep = Deployment::new(&[]);
    let _svc = dep.spawn("api,processor,uploader", "all");
    let client = dep.client();
    let audio = peer.put("song.wav", song_wav(3.0, 48_000));
    let accepted = client
        .submit(&json!({"audio": audio, "hook_url": peer.hook_url(), "priority": 4}))
        .await;
    let id = accepted["task_id"].as_str().unwrap().to_string();

    let hooks = peer.wait_hooks(1, Duration::from_secs(60)).await;
    assert_eq!(hooks.len(), 1, "one webhook");
    let hook = &hooks[0];
    assert!(
        verify_signature(WEBHOOK_SECRET, hook),
        "valid Standard Webhooks signature"
    );
    assert_eq!(hook.headers["webhook-id"], id);
    assert_eq!(hook.body["task_id"], id);
    assert_eq!(hook.body["status"], "succeeded");
    assert_eq!(hook.body["priority"], 4);
    assert_eq!(hook.body["model"], "dsp-centre");
    assert!(hook.body["error"].is_null());
    assert!((hook.body["duration_seconds"].as_f64().unwrap() - 3.0).abs() < 0.01);

    // Download both stems through their signed links.
    let mut stems = Vec::new();
    for stem in ["vocals", "instrumental"] {
        let url = hook.body["stems"][stem]["url"].as_str().unwrap();
        let bytes = client
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let (spec, frames) = read_wav(&bytes);
        assert_eq!((spec.channels, spec.sample_rate), (2, 44_100));
        assert_eq!(
            frames.len(),
            3 * 44_100,
            "{stem}: the length of the mix at 44.1 kHz"
        );
        stems.push(frames);
        // A tampered link is refused.
        let bad = url.replace("sig=", "sig=00");
        assert_eq!(client.http.get(&bad).send().await.unwrap().status(), 403);
    }
    // Expected audio in closed form, independent of the service's decoder and resampler:
    // the 48 kHz source is band-limited, so at 44.1 kHz it is the same functions sampled at
    // the new rate. The first and last 100 ms are left out (the resampler's filter sees
    // silence beyond the ends).
    let edge = 4_410;
    let inner = edge..3 * 44_100 - edge;
    let t = |i: usize| i as f64 / 44_100.0;
    let (mut mix_err, mut v_sig, mut v_err, mut a_sig, mut a_err) = (0.0f64, 0.0, 0.0, 0.0, 0.0);
    for i in inner.clone() {
        let (v, a) = (&stems[0][i], &stems[1][i]);
        for c in 0..2 {
            let (voice, side) = (song_voice(t(i)), song_side(c, t(i)));
            let mix = f64::from(v[c]) + f64::from(a[c]);
            mix_err = mix_err.max((mix - voice - side).abs());
            v_sig += voice * voice;
            v_err += (f64::from(v[c]) - voice).powi(2);
            a_sig += side * side;
            a_err += (f64::from(a[c]) - side).powi(2);
        }
    }
    // The two stems together are the mix, resampled: 16-bit rounding of source and stems
    // plus the resampler's passband error.
    assert!(
        mix_err < 5e-4,
        "vocals + instrumental against the mix at 44.1 kHz: worst error {mix_err:.2e}"
    );
    // The centred voice went to the vocals and the one-sided tones to the instrumental.
    let (v_snr, a_snr) = (
        10.0 * (v_sig / v_err).log10(),
        10.0 * (a_sig / a_err).log10(),
    );
    eprintln!("mix worst error {mix_err:.2e}, vocals {v_snr:.1} dB, instrumental {a_snr:.1} dB");
    assert!(v_snr > 40.0, "vocals against the voice: {v_snr:.1} dB");
    assert!(
        a_snr > 35.0,
        "instrumental against the tones: {a_snr:.1} dB"
    );

    let t = client.task(&id).await;
    assert_eq!(t["status"], "succeeded");
    assert_eq!(t["progress"], 100);
    assert!(t["result"]["stems"]["vocals"]["url"].is_string());
    assert_eq!(t["result"]["webhook"]["state"], "delivered");
    assert_eq!(t["webhook_deliveries"].as_array().unwrap().len(), 1);
    assert!(
        !dep.path("staging").join(&id).exists(),
        "staging cleaned after upload"
    );
}

#[actix_rt::test]
async fn failures_are_announced_with_their_code() {
    let peer = Peer::start();
    let dep = Deployment::new(&[("MAX_ATTEMPTS", "2")]);
    let _svc = dep.spawn("api,processor,uploader", "all");
    let client = dep.client();
    let missing = format!("{}/audio/missing.wav", peer.base);
    let corrupt = peer.put(
        "corrupt.wav",
        b"RIFF\x10\x00\x00\x00WAVEfmt garbage garbage".to_vec(),
    );
    let text = peer.put(
        "notes.txt",
        b"this is not audio at all, just text".repeat(100),
    );
    let mut ids = Vec::new();
    for url in [&missing, &corrupt, &text] {
        let a = client
            .submit(&json!({"audio": url, "hook_url": peer.hook_url()}))
            .await;
        ids.push(a["task_id"].as_str().unwrap().to_string());
    }
    let hooks = peer.wait_hooks(3, Duration::from_secs(60)).await;
    assert_eq!(hooks.len(), 3);
    for (id, code) in ids
        .iter()
        .zip(["audio_http_status", "audio_corrupt", "audio_unsupported"])
    {
        let h = hooks
            .iter()
            .find(|h| h.body["task_id"] == id.as_str())
            .expect("a webhook per task");
        assert!(verify_signature(WEBHOOK_SECRET, h));
        assert_eq!(h.body["status"], "failed");
        assert_eq!(h.body["error"]["code"], code, "{}", h.body);
        assert_eq!(h.body["model"], "dsp-centre", "the webhook names the model");
        let t = client.task(id).await;
        assert_eq!(t["status"], "failed");
        assert_eq!(t["error"]["code"], code);
    }
}

#[actix_rt::test]
async fn priorities_are_honoured_end_to_end() {
    let peer = Peer::start();
    let dep = Deployment::new(&[
        ("PROCESSOR_CONCURRENCY", "1"),
        ("UPLOADER_CONCURRENCY", "1"),
    ]);
    let _api = dep.spawn("api", "api");
    let client = dep.client();
    let audio = peer.put("short.wav", test_wav(0.3, 44_100));
    let mut expected = Vec::new();
    for p in [1, 3, 5, 1, 3, 5] {
        let a = client
            .submit(&json!({"audio": audio, "hook_url": peer.hook_url(), "priority": p}))
            .await;
        expected.push((p, a["task_id"].as_str().unwrap().to_string()));
    }
    expected.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
    let _workers = dep.spawn("processor,uploader", "workers");
    let hooks = peer.wait_hooks(6, Duration::from_secs(60)).await;
    let got: Vec<(u8, String)> = hooks
        .iter()
        .map(|h| {
            (
                h.body["priority"].as_u64().unwrap() as u8,
                h.body["task_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, expected, "5, 3, 1 and FIFO within each");
}

#[actix_rt::test]
async fn cancel_before_processing_means_no_work_and_no_webhook() {
    let peer = Peer::start();
    let dep = Deployment::new(&[]);
    let _api = dep.spawn("api", "api");
    let client = dep.client();
    let audio = peer.put("c.wav", test_wav(0.5, 44_100));
    let a = client
        .submit(&json!({"audio": audio, "hook_url": peer.hook_url()}))
        .await;
    let keep = client
        .submit(&json!({"audio": audio, "hook_url": peer.hook_url()}))
        .await;
    let id = a["task_id"].as_str().unwrap();
    let resp = client.delete(&format!("/tasks/{id}")).await;
    assert_eq!(resp.status(), 202);
    let _workers = dep.spawn("processor,uploader", "workers");
    let hooks = peer.wait_hooks(1, Duration::from_secs(60)).await;
    dep.redis.settled(Duration::from_secs(30)).await;
    let hooks_after = peer.hooks();
    assert_eq!(hooks_after.len(), 1, "only the other task is announced");
    assert_eq!(hooks[0].body["task_id"], keep["task_id"]);
    assert_eq!(client.task(id).await["status"], "cancelled");
}

#[actix_rt::test]
async fn a_processor_killed_mid_task_is_replaced_and_the_task_completes_once() {
    let peer = Peer::start();
    let dep = Deployment::new(&[("LEASE_SECONDS", "1.5")]);
    let _api = dep.spawn("api,uploader", "api");
    let client = dep.client();
    let wav = test_wav(2.0, 44_100);
    let audio = peer.put("slow.wav", wav.clone());
    // Drip the download so the processor is mid-task when it dies.
    peer.state
        .lock()
        .unwrap()
        .drip
        .insert("slow.wav".into(), wav.len() / 2);
    let a = client
        .submit(&json!({"audio": audio, "hook_url": peer.hook_url()}))
        .await;
    let id = a["task_id"].as_str().unwrap().to_string();
    let mut first = dep.spawn("processor", "processor-1");
    // Wait until it holds the task.
    client
        .wait_status(&id, |s| s == "processing", Duration::from_secs(20))
        .await;
    first.kill();
    // The download no longer needs to be slow for the second processor.
    peer.state.lock().unwrap().drip.clear();
    let _second = dep.spawn("processor", "processor-2");
    let hooks = peer.wait_hooks(1, Duration::from_secs(60)).await;
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].body["status"], "succeeded");
    dep.redis.settled(Duration::from_secs(30)).await;
    assert_eq!(peer.hooks().len(), 1, "exactly one success webhook");
    let t = client.task(&id).await;
    assert_eq!(t["status"], "succeeded");
}

#[actix_rt::test]
async fn a_failing_webhook_is_retried_and_logged() {
    let peer = Peer::start();
    peer.state.lock().unwrap().hook_statuses = vec![500, 503];
    let dep = Deployment::new(&[
        ("RETRY_BASE_SECONDS", "0.1"),
        ("WEBHOOK_RETRY_MAX_SECONDS", "0.3"),
    ]);
    let _svc = dep.spawn("api,processor,uploader", "all");
    let client = dep.client();
    let audio = peer.put("r.wav", test_wav(0.3, 44_100));
    let a = client
        .submit(&json!({"audio": audio, "hook_url": peer.hook_url()}))
        .await;
    let id = a["task_id"].as_str().unwrap();
    let hooks = peer.wait_hooks(3, Duration::from_secs(60)).await;
    assert_eq!(hooks.len(), 3, "two failures, then delivered");
    assert!(
        hooks.iter().all(|h| h.headers["webhook-id"] == id),
        "same id on every retry"
    );
    dep.redis.settled(Duration::from_secs(30)).await;
    let t = client.task(id).await;
    assert_eq!(t["status"], "succeeded");
    let log = t["webhook_deliveries"].as_array().unwrap();
    let outcomes: Vec<&str> = log.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, vec!["retry", "retry", "delivered"]);
}

#[actix_rt::test]
async fn stems_go_to_s3_with_presigned_links() {
    let s3 = common::e2e::Seaweed::start();
    let peer = Peer::start();
    let endpoint = s3.endpoint();
    let dep = Deployment::new(&[
        ("STORAGE_URL", "s3://stems/results"),
        ("S3_ENDPOINT", endpoint.as_str()),
        ("S3_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", common::e2e::S3_KEY),
        ("AWS_SECRET_ACCESS_KEY", common::e2e::S3_SECRET),
        ("RESULT_URL_TTL", "600"),
    ]);
    let _svc = dep.spawn("api,processor,uploader", "all");
    let client = dep.client();
    let audio = peer.put("s3.wav", test_wav(1.0, 44_100));
    let a = client
        .submit(&json!({"audio": audio, "hook_url": peer.hook_url(), "output_format": "wav24"}))
        .await;
    let hooks = peer.wait_hooks(1, Duration::from_secs(60)).await;
    assert_eq!(hooks.len(), 1, "{}", _svc.log_text());
    assert_eq!(hooks[0].body["task_id"], a["task_id"]);
    assert_eq!(hooks[0].body["status"], "succeeded");
    for stem in ["vocals", "instrumental"] {
        let url = hooks[0].body["stems"][stem]["url"].as_str().unwrap();
        assert!(url.starts_with(&endpoint), "{url}");
        assert!(url.contains("X-Amz-Signature="), "presigned: {url}");
        let resp = client.http.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"],
            "audio/wav",
            "the object's media type"
        );
        let (spec, frames) = read_wav(&resp.bytes().await.unwrap());
        assert_eq!(spec.bits_per_sample, 24);
        assert_eq!(frames.len(), 44_100);
        let tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0");
        assert_eq!(
            client.http.get(&tampered).send().await.unwrap().status(),
            403
        );
    }
}

/// Polls the task record until `pred` holds; fails after 30 s.
async fn wait_task(
    scheduler: &uvr::actors::scheduler::SchedulerHandle,
    id: &uvr::task::TaskId,
    what: &str,
    pred: impl Fn(&uvr::task::TaskRecord) -> bool,
) -> uvr::task::TaskRecord {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (rec, _) = scheduler
            .ask(uvr::actors::scheduler::GetTask(id.clone()))
            .await
            .unwrap();
        if pred(&rec) {
            return rec;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {rec:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn a_restarted_separator_comes_back_and_loses_no_task() {
    use uvr::actors::scheduler::{Enqueue, SchedulerHandle};
    use uvr::actors::separator::{Restart, SeparatorActor};
    use uvr::config::Env;
    use uvr::task::Status;
    let metrics = uvr::metrics::install();
    let redis = common::RedisServer::start();
    let peer = Peer::start();
    let dir = tempfile::tempdir().unwrap();
    let env = Env::from_pairs([
        ("REDIS_URL", redis.url()),
        ("LEASE_SECONDS", "1".into()),
        ("REAPER_INTERVAL_SECONDS", "0.2".into()),
        ("ALLOW_PRIVATE_NETWORKS", "true".into()),
        ("STAGING_DIR", dir.path().display().to_string()),
        ("MODELS_DIR", "/nonexistent".into()),
    ]);
    let settings = Settings::from_env(&env, Some(&[Role::Processor])).unwrap();
    let scheduler = SchedulerHandle::start(uvr::queue::Queue::connect(&settings.base).unwrap());
    let pcfg = settings.processor.unwrap();
    let sep = SeparatorActor::new(scheduler.clone(), pcfg, "sup-test".into()).start_supervised();
    let restarts = || {
        metrics
            .render()
            .lines()
            .find(|l| l.starts_with("uvr_actor_restarts_total") && l.contains("separator"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let requeued = || {
        metrics
            .render()
            .lines()
            .find(|l| l.starts_with("uvr_queue_maintenance_total") && l.contains("requeued"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let (restarts_before, requeued_before) = (restarts(), requeued());
    // Every download of the song drips for about two seconds.
    let wav = test_wav(1.0, 44_100);
    let audio = peer.put("sup.wav", wav.clone());
    peer.state
        .lock()
        .unwrap()
        .drip
        .insert("sup.wav".into(), wav.len() / 2);
    let request = uvr::task::TaskRequest {
        hook_url: Some(peer.hook_url()),
        owner: None,
        ..common::task_request(&audio, 3)
    };
    let id = scheduler
        .ask(Enqueue(uvr::queue::NewTask {
            request,
            idempotency_key: None,
            max_depth: 0,
        }))
        .await
        .unwrap()
        .id;
    // Restart it while the first attempt is downloading.
    wait_task(&scheduler, &id, "first attempt downloading", |r| {
        r.status == Status::Processing && r.attempts == 1
    })
    .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            !peer.state.lock().unwrap().audio_requests.is_empty()
        })
        .await,
        "the download started"
    );
    sep.send(Restart).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            restarts() - restarts_before >= 1.0
        })
        .await,
        "the restart is counted"
    );
    assert_eq!(restarts() - restarts_before, 1.0, "one restart");
    // The restart dropped the attempt in hand: its lease runs out, the reaper puts the task
    // back, and the restarted actor claims it again (its download drips as well).
    let rec = wait_task(
        &scheduler,
        &id,
        "second attempt after the lease expired",
        |r| r.status == Status::Processing && r.attempts == 2,
    )
    .await;
    assert_eq!(rec.error_code.as_deref(), Some("lease_expired"), "{rec:?}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            requeued() - requeued_before >= 1.0
        })
        .await,
        "the reaper's requeue is counted"
    );
    assert_eq!(requeued() - requeued_before, 1.0, "requeued once");
    // And that attempt completes: the task is not lost.
    wait_task(&scheduler, &id, "separated after the restart", |r| {
        r.status == Status::Separated
    })
    .await;
    assert_eq!(
        peer.state.lock().unwrap().audio_requests,
        ["sup.wav", "sup.wav"],
        "one download per attempt"
    );
    assert_eq!(restarts() - restarts_before, 1.0, "no further restart");
}

/// Answers every host name with one address and records the names asked: a DNS answer that
/// changed after the submission (DNS rebinding).
struct PointsAt {
    ip: std::net::IpAddr,
    asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl reqwest::dns::Resolve for PointsAt {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        self.asked.lock().unwrap().push(name.as_str().to_string());
        let addr = std::net::SocketAddr::new(self.ip, 0);
        Box::pin(async move { Ok(Box::new(std::iter::once(addr)) as reqwest::dns::Addrs) })
    }
}

/// The connect-time check, end to end and without a proxy: with the policy on
/// (`ALLOW_PRIVATE_NETWORKS=false`), the real API accepts a name that resolves nowhere at
/// submission; by the time a processor fetches it the name points at 127.0.0.1, where the
/// song is served. The processor refuses to connect: the task fails with `private_address`
/// and the loopback server never sees a request.
#[actix_rt::test]
async fn a_name_rebound_to_loopback_after_submission_is_refused_at_connect_time() {
    use uvr::actors::separator::SeparatorActor;
    use uvr::audio::fetch::Lookup;
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        // Through a proxy the connect-time check is the proxy's job (SECURITY.md).
        assert!(
            std::env::var_os(var).is_none(),
            "{var} is set: this test needs direct connections"
        );
    }
    let peer = Peer::start();
    let served = peer.put("song.wav", test_wav(1.0, 44_100));
    let port = url::Url::parse(&served).unwrap().port().unwrap();
    let audio = format!("http://media.rebind.invalid:{port}/audio/song.wav");

    let app = common::spawn_app(&[("ALLOW_PRIVATE_NETWORKS", "false")]).await;
    let client = ApiClient::for_app(&app.base);
    let resp = client
        .generate(&json!({"audio": audio, "hook_url": "https://93.184.215.14/webhook"}))
        .await;
    assert_eq!(resp.status(), 202, "accepted at submission");
    let id = resp.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();

    // A processor with the policy on, whose resolver now answers 127.0.0.1.
    let staging = tempfile::tempdir().unwrap();
    let env = uvr::config::Env::from_pairs([
        ("ALLOW_PRIVATE_NETWORKS", "false".to_string()),
        ("STAGING_DIR", staging.path().display().to_string()),
        ("MODELS_DIR", "/nonexistent".into()),
    ]);
    let mut pcfg = Settings::from_env(&env, Some(&[Role::Processor]))
        .unwrap()
        .processor
        .unwrap();
    assert!(!pcfg.fetch.policy.allow_private);
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    pcfg.fetch.lookup = Lookup::Custom(std::sync::Arc::new(PointsAt {
        ip: std::net::Ipv4Addr::LOCALHOST.into(),
        asked: asked.clone(),
    }));
    let _sep = SeparatorActor::new(app.scheduler.clone(), pcfg, "rebind".into()).start_supervised();

    // Attempted: neither queued nor processing any more.
    let attempted = |s: &str| s != "queued" && s != "processing";
    let t = client
        .wait_status(&id, attempted, Duration::from_secs(30))
        .await;
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["error"]["code"], "private_address", "{t}");
    let message = t["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("media.rebind.invalid") && message.contains("127.0.0.1"),
        "{message}"
    );
    // Not worth retrying: dead-lettered from the separation stage at the first attempt.
    assert!(
        app.redis
            .cli(&["ZSCORE", "uvr_tasks:dead", &id])
            .is_some_and(|s| !s.trim().is_empty()),
        "dead-lettered"
    );
    assert_eq!(
        app.redis
            .cli(&["ZCARD", "uvr_tasks:delayed"])
            .unwrap()
            .trim(),
        "0"
    );
    assert_eq!(
        asked.lock().unwrap().as_slice(),
        ["media.rebind.invalid"],
        "looked up once, at connect time"
    );
    assert!(
        peer.audio_requests().is_empty(),
        "nothing fetched: {:?}",
        peer.audio_requests()
    );
}

/// A status and the headers to send with it.
type Answer = (u16, Vec<(&'static str, String)>);

/// What [`Receiver`] answers the n-th request on one path with (200 once the plan is used
/// up), and every request it got.
#[derive(Default)]
struct ReceiverState {
    plans: std::collections::HashMap<String, Vec<Answer>>,
    hits: Vec<(String, std::time::Instant)>,
}

/// A loopback HTTP server that records every request (any method, any path) and answers by
/// plan.
#[derive(Clone)]
struct Receiver {
    base: String,
    state: std::sync::Arc<std::sync::Mutex<ReceiverState>>,
}

impl Receiver {
    fn start() -> Self {
        use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
        type St = std::sync::Arc<std::sync::Mutex<ReceiverState>>;
        async fn answer(req: HttpRequest, st: web::Data<St>) -> HttpResponse {
            let path = req.path().to_string();
            let mut s = st.lock().unwrap();
            let n = s.hits.iter().filter(|(p, _)| *p == path).count();
            s.hits.push((path.clone(), std::time::Instant::now()));
            let (status, headers) = s
                .plans
                .get(&path)
                .and_then(|p| p.get(n).cloned())
                .unwrap_or((200, Vec::new()));
            let mut resp =
                HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
            for (k, v) in headers {
                resp.insert_header((k, v));
            }
            resp.finish()
        }
        let state = St::default();
        let data = web::Data::new(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(answer))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        actix_rt::spawn(server);
        Self { base, state }
    }

    /// Plans the answers for `path` and returns its URL.
    fn plan(&self, path: &str, answers: Vec<Answer>) -> String {
        self.state
            .lock()
            .unwrap()
            .plans
            .insert(path.to_string(), answers);
        format!("{}{path}", self.base)
    }

    /// When each request for `path` arrived.
    fn hits(&self, path: &str) -> Vec<std::time::Instant> {
        self.state
            .lock()
            .unwrap()
            .hits
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, at)| *at)
            .collect()
    }

    fn all_hits(&self) -> usize {
        self.state.lock().unwrap().hits.len()
    }
}

/// The API, a separator and an uploader in this process on a throwaway Redis, with loopback
/// targets allowed, local storage and fast retries; `extra` on top.
struct InProcess {
    app: common::TestApp,
    client: ApiClient,
    peer: Peer,
    _dir: tempfile::TempDir,
}

impl InProcess {
    async fn start(extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("staging").display().to_string();
        let storage = format!("file://{}", dir.path().join("stems").display());
        let mut pairs: Vec<(&str, &str)> = vec![
            ("UVR_ROLES", "api,processor,uploader"),
            ("ALLOW_PRIVATE_NETWORKS", "true"),
            ("STAGING_DIR", &staging),
            ("STORAGE_URL", &storage),
            ("LINK_SIGNING_KEY", "test-link-signing-key-0123456789abcdef"),
            ("WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("REAPER_INTERVAL_SECONDS", "0.1"),
            ("CLAIM_POLL_SECONDS", "0.1"),
        ];
        pairs.extend_from_slice(extra);
        let app = common::spawn_app(&pairs).await;
        Self {
            client: ApiClient::for_app(&app.base),
            app,
            peer: Peer::start(),
            _dir: dir,
        }
    }

    /// Submits a short song with `hook_url`; the task id.
    async fn submit(&self, hook_url: &str) -> String {
        let audio = self.peer.put("song.wav", test_wav(0.3, 44_100));
        self.client
            .submit_id(&json!({"audio": audio, "hook_url": hook_url}))
            .await
    }

    /// The task once it has ended (succeeded or failed); fails after 30 s.
    async fn ended(&self, id: &str) -> Value {
        let ended = |s: &str| s == "succeeded" || s == "failed";
        self.client
            .wait_status(id, ended, Duration::from_secs(30))
            .await
    }
}

/// Webhooks follow no redirect (README "Delivery", SECURITY.md rule 3): a receiver answering
/// 302 or 307 with a `Location` on a second loopback server gets that server no request.
/// The uploader treats the redirect as a refusal for good: one attempt, logged as `failed`
/// with its status, no retry, and the task ends `succeeded` with its links and
/// `webhook.state` `refused`.
#[actix_rt::test]
async fn a_redirecting_webhook_receiver_is_not_followed_nor_retried() {
    let sys =
        InProcess::start(&[("RETRY_BASE_SECONDS", "0.1"), ("WEBHOOK_MAX_ATTEMPTS", "5")]).await;
    let receiver = Receiver::start();
    let target = Receiver::start();
    for status in [302u16, 307] {
        let path = format!("/hook-{status}");
        let location = format!("{}/stolen-{status}", target.base);
        let hook = receiver.plan(&path, vec![(status, vec![("Location", location)])]);
        let id = sys.submit(&hook).await;
        let t = sys.ended(&id).await;
        assert_eq!(target.all_hits(), 0, "{status}: the redirect was followed");
        assert_eq!(t["status"], "succeeded", "{t}");
        assert_eq!(
            t["result"]["webhook"],
            json!({"state": "refused", "attempts": 1}),
            "{t}"
        );
        assert!(t["result"]["stems"]["vocals"]["url"].is_string(), "{t}");
        let log = t["webhook_deliveries"].as_array().unwrap();
        assert_eq!(log.len(), 1, "{t}");
        assert_eq!(log[0]["status"], status, "{t}");
        assert_eq!(log[0]["outcome"], "failed", "{t}");
        assert_eq!(
            log[0]["error"],
            format!("receiver answered {status}; redirects are not followed")
        );
        assert_eq!(receiver.hits(&path).len(), 1, "{status}: one request");
    }
    // Nothing is left to claim: still one request each, none at the target.
    sys.app.redis.settled(Duration::from_secs(30)).await;
    assert_eq!(receiver.hits("/hook-302").len(), 1);
    assert_eq!(receiver.hits("/hook-307").len(), 1);
    assert_eq!(target.all_hits(), 0, "the redirect target got a request");
}

/// README "Delivery": a failed webhook is retried no sooner than the receiver's
/// `Retry-After` (in seconds), even when the backoff is far shorter.
#[actix_rt::test]
async fn a_webhook_retry_waits_for_the_receivers_retry_after() {
    let sys = InProcess::start(&[
        ("RETRY_BASE_SECONDS", "0.05"),
        ("WEBHOOK_RETRY_MAX_SECONDS", "0.1"),
    ])
    .await;
    let receiver = Receiver::start();
    let hook = receiver.plan("/busy", vec![(503, vec![("Retry-After", "3".into())])]);
    let id = sys.submit(&hook).await;
    let t = sys.ended(&id).await;
    assert_eq!(t["result"]["webhook"]["state"], "delivered", "{t}");
    let outcomes: Vec<&str> = t["webhook_deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["retry", "delivered"], "{t}");
    let hits = receiver.hits("/busy");
    assert_eq!(hits.len(), 2);
    let gap = hits[1] - hits[0];
    assert!(
        gap >= Duration::from_secs(3) && gap < Duration::from_secs(8),
        "retried after {gap:?}, not after the 3 s the receiver asked for"
    );
}

/// README "Delivery": a webhook that keeps failing is tried `WEBHOOK_MAX_ATTEMPTS` times,
/// then given up; the task keeps its links and ends `succeeded` with `webhook.state`
/// `gave_up`.
#[actix_rt::test]
async fn a_failing_webhook_is_given_up_after_webhook_max_attempts() {
    let sys = InProcess::start(&[
        ("RETRY_BASE_SECONDS", "0.05"),
        ("WEBHOOK_RETRY_MAX_SECONDS", "0.1"),
        ("WEBHOOK_MAX_ATTEMPTS", "3"),
    ])
    .await;
    let receiver = Receiver::start();
    let hook = receiver.plan("/down", vec![(500, Vec::new()); 10]);
    let id = sys.submit(&hook).await;
    let t = sys.ended(&id).await;
    assert_eq!(t["status"], "succeeded", "{t}");
    assert_eq!(
        t["result"]["webhook"],
        json!({"state": "gave_up", "attempts": 3}),
        "{t}"
    );
    assert!(t["result"]["stems"]["vocals"]["url"].is_string(), "{t}");
    let log = t["webhook_deliveries"].as_array().unwrap();
    assert_eq!(log.len(), 3, "{t}");
    assert!(log.iter().all(|e| e["status"] == 500), "{t}");
    // Nothing is left to claim: no fourth attempt.
    sys.app.redis.settled(Duration::from_secs(30)).await;
    assert_eq!(receiver.hits("/down").len(), 3);
}

/// Retention: stored stems and staging leftovers older than `RESULT_URL_TTL` are deleted by
/// the uploader's sweep; the task record stays (it expires with `RESULT_RETENTION_SECONDS`).
#[actix_rt::test]
async fn stored_stems_and_staging_leftovers_are_deleted_after_their_ttl() {
    let peer = Peer::start();
    // Stems are kept for the TTL after the last delivery attempt that can still sign links:
    // one attempt, at most a second of backoff.
    let dep = Deployment::new(&[
        ("RESULT_URL_TTL", "3"),
        ("WEBHOOK_MAX_ATTEMPTS", "1"),
        ("WEBHOOK_RETRY_MAX_SECONDS", "1"),
        ("RETENTION_SWEEP_SECONDS", "0.5"),
    ]);
    // A leftover of an attempt that died with its process, a day old.
    let leftover = dep
        .path("staging")
        .join("0190a2b4-0000-7000-8000-00000000dead");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("source.audio"), b"partial").unwrap();
    for p in [leftover.join("source.audio"), leftover.clone()] {
        std::fs::File::open(&p)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(86_400))
            .unwrap();
    }
    // Not uvr's: stays, however old.
    let foreign = [
        dep.path("stems").join("README.txt"),
        dep.path("staging").join("not-a-task"),
    ];
    std::fs::create_dir_all(dep.path("stems")).unwrap();
    std::fs::create_dir_all(&foreign[1]).unwrap();
    std::fs::write(&foreign[0], b"operator's notes").unwrap();
    for p in &foreign {
        std::fs::File::open(p)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(86_400))
            .unwrap();
    }
    let _svc = dep.spawn("api,processor,uploader", "all");
    let client = dep.client();
    let audio = peer.put("song.wav", test_wav(1.0, 44_100));
    let accepted = client
        .submit(&json!({"audio": audio, "hook_url": peer.hook_url()}))
        .await;
    let id = accepted["task_id"].as_str().unwrap().to_string();
    let hooks = peer.wait_hooks(1, Duration::from_secs(60)).await;
    assert_eq!(hooks.len(), 1);
    let stored = dep.path("stems").join(&id);
    assert!(
        stored.join("vocals.wav").exists(),
        "stored when the webhook went out"
    );
    let swept = common::eventually(Duration::from_secs(30), || {
        let (stored, leftover) = (stored.clone(), leftover.clone());
        async move { !stored.exists() && !leftover.exists() }
    })
    .await;
    assert!(
        swept,
        "stems {:?} / leftover {:?} still there",
        stored.exists(),
        leftover.exists()
    );
    let t = client.task(&id).await;
    assert_eq!(t["status"], "succeeded", "the record is kept");
    for p in &foreign {
        assert!(p.exists(), "{} was deleted", p.display());
    }
}

/// The retention sweep against a real S3 store (SeaweedFS): stems under the storage prefix
/// written before the cutoff go, a multipart one (over 8 MiB) included; with a cutoff in the
/// past nothing goes; objects under another prefix, and objects not shaped like a task's
/// stem, are never touched.
#[actix_rt::test]
async fn the_s3_retention_sweep_deletes_only_its_own_objects_past_the_cutoff() {
    use std::time::SystemTime;
    use uvr::pipeline::storage::Storage;
    let s3 = common::e2e::Seaweed::start();
    let endpoint = s3.endpoint();
    let open = |url: &str| {
        let env = uvr::config::Env::from_pairs([
            ("STORAGE_URL", url),
            ("S3_ENDPOINT", endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", common::e2e::S3_KEY),
            ("AWS_SECRET_ACCESS_KEY", common::e2e::S3_SECRET),
        ]);
        Storage::open(&s3_storage(&env)).unwrap()
    };
    let mine = open("s3://stems/sweep");
    let theirs = open("s3://stems/elsewhere");
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.wav");
    let big = dir.path().join("big.wav");
    std::fs::write(&small, test_wav(0.5, 44_100)).unwrap();
    std::fs::write(&big, vec![7u8; 9 << 20]).unwrap();
    let (t1, t2) = (
        "0190a2b4-0000-7000-8000-000000000001",
        "0190a2b4-0000-7000-8000-000000000002",
    );
    mine.put_file(&format!("{t1}/vocals.wav"), &small)
        .await
        .unwrap();
    mine.put_file(&format!("{t1}/instrumental.wav"), &big)
        .await
        .unwrap();
    mine.put_file("notes/readme.wav", &small).await.unwrap();
    theirs
        .put_file(&format!("{t2}/vocals.wav"), &small)
        .await
        .unwrap();
    let hour = Duration::from_secs(3600);
    assert_eq!(
        mine.delete_older_than(SystemTime::now() - hour)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        mine.delete_older_than(SystemTime::now() + Duration::from_secs(5))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        mine.delete_older_than(SystemTime::now() + Duration::from_secs(5))
            .await
            .unwrap(),
        0,
        "nothing left under the prefix"
    );
    assert_eq!(
        theirs
            .delete_older_than(SystemTime::now() + Duration::from_secs(5))
            .await
            .unwrap(),
        1,
        "the other prefix kept its object"
    );
}

/// A stem over 8 MiB goes to S3 as a multipart upload (8 MiB parts): here two full parts and
/// a short last one, of bytes that differ everywhere, so a lost, repeated or reordered part
/// would show. The object read back through its presigned link is the file, byte for byte,
/// and its ETag is a multipart one (`"<md5 of the parts' md5s>-3"`).
#[actix_rt::test]
async fn a_stem_over_8_mib_goes_to_s3_in_parts_and_comes_back_whole() {
    use uvr::pipeline::storage::Storage;
    let s3 = common::e2e::Seaweed::start();
    let endpoint = s3.endpoint();
    let env = uvr::config::Env::from_pairs([
        ("STORAGE_URL", "s3://stems/big"),
        ("S3_ENDPOINT", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", common::e2e::S3_KEY),
        ("AWS_SECRET_ACCESS_KEY", common::e2e::S3_SECRET),
    ]);
    let storage = Storage::open(&s3_storage(&env)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("instrumental.wav");
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..(16 << 20) + 123_457)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect();
    std::fs::write(&file, &data).unwrap();
    let key = "0190a2b4-0000-7000-8000-000000000003/instrumental.wav";
    assert_eq!(
        storage.put_file(key, &file).await.unwrap(),
        data.len() as u64
    );
    let link = storage.link(key).await.unwrap();
    let resp = reqwest::get(&link.url).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "audio/wav");
    let etag = resp.headers()["etag"].to_str().unwrap().to_string();
    assert!(
        etag.trim_matches('"').ends_with("-3"),
        "multipart ETag: {etag}"
    );
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), data.len());
    let first_difference = body.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "the object differs from the file");
}

/// Polling is first-class: a task without `hook_url` is separated, stored and finished with
/// no webhook; its links are on the task, and `GET /tasks/{id}/stems/{name}` redirects to a
/// freshly signed link to the same bytes.
#[actix_rt::test]
async fn a_task_without_a_webhook_is_polled_to_its_stems_and_links_are_refreshed() {
    use sha2::Digest;
    let peer = Peer::start();
    let dep = Deployment::new(&[]);
    let _svc = dep.spawn("api,processor,uploader", "all");
    let client = dep.client().with_http(no_redirects());
    let audio = peer.put("song.wav", test_wav(2.0, 44_100));
    let accepted = client.submit(&json!({"audio": audio})).await;
    let id = accepted["task_id"].as_str().unwrap().to_string();
    let t = client
        .poll_task(&id, Duration::from_secs(60), |t| t["status"] == "succeeded")
        .await;
    assert_eq!(t["status"], "succeeded", "{t}");
    assert!(t["request"]["hook_url"].is_null(), "{t}");
    assert_eq!(t["result"]["webhook"]["state"], "none");
    assert_eq!(t["webhook_deliveries"], json!([]));
    for stem in ["vocals", "instrumental"] {
        let info = &t["result"]["stems"][stem];
        let bytes = client
            .http
            .get(info["url"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(read_wav(&bytes).1.len(), 2 * 44_100, "{stem}");
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            info["sha256"].as_str().unwrap()
        );
        let fresh = client.get(&format!("/tasks/{id}/stems/{stem}")).await;
        assert_eq!(fresh.status(), 302, "{stem}");
        let location = fresh.headers()["location"].to_str().unwrap().to_string();
        let body: Value = fresh.json().await.unwrap();
        assert_eq!(body["url"], location.as_str());
        let again = client.http.get(&location).send().await.unwrap();
        assert_eq!(again.status(), 200);
        assert_eq!(again.bytes().await.unwrap(), bytes, "{stem}: the same file");
    }
    let r = client.get(&format!("/tasks/{id}/stems/drums")).await;
    assert_eq!(r.status(), 404);
    let r: Value = r.json().await.unwrap();
    assert_eq!(r["error"]["code"], "stem_not_found");
    let r = client
        .get("/tasks/0190a2b4-0000-7000-8000-000000000000/stems/vocals")
        .await;
    assert_eq!(r.status(), 404);
    let anonymous = client
        .with_auth(Auth::None)
        .get(&format!("/tasks/{id}/stems/vocals"))
        .await;
    assert_eq!(anonymous.status(), 401);
    assert!(peer.hooks().is_empty(), "no webhook was sent");
}

/// The links are on the task as soon as the stems are stored, while the webhook receiver is
/// still down and the delivery retried.
#[actix_rt::test]
async fn links_are_on_the_task_before_the_webhook_is_delivered() {
    let peer = Peer::start();
    let receiver = common::e2e::HookReceiver::start_down();
    let dep = Deployment::new(&[("RETRY_BASE_SECONDS", "30")]);
    let _svc = dep.spawn("api,processor,uploader", "all");
    let client = dep.client();
    let audio = peer.put("song.wav", test_wav(1.0, 44_100));
    let accepted = client
        .submit(&json!({"audio": audio, "hook_url": receiver.url()}))
        .await;
    let id = accepted["task_id"].as_str().unwrap().to_string();
    let t = client
        .poll_task(&id, Duration::from_secs(60), |t| {
            t["result"]["stems"]["vocals"]["url"].is_string()
        })
        .await;
    let url = t["result"]["stems"]["vocals"]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no link on the task: {t}"));
    assert_ne!(
        t["status"], "succeeded",
        "the webhook is still pending: {t}"
    );
    let log = t["webhook_deliveries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(log.iter().all(|a| a["outcome"] != "delivered"), "{log:?}");
    let resp = client.http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        read_wav(&resp.bytes().await.unwrap()).1.len(),
        44_100,
        "the stem is downloadable"
    );
}

/// FLAC at 48 kHz, MP3 at 128 kbps and Opus at 96 kbps through the whole service: the
/// stems carry their format's extension, and the download route serves them with their
/// content type, `Range`, `ETag` (a conditional request gets 304) and `HEAD`; decoded back
/// they have the song's length at their rate.
#[actix_rt::test]
async fn stems_in_flac_mp3_and_opus_are_stored_and_served_with_ranges() {
    let peer = Peer::start();
    let dep = Deployment::new(&[]);
    let _svc = dep.spawn("api,processor,uploader", "all");
    let client = dep.client();
    let audio = peer.put("song.wav", test_wav(2.0, 44_100));
    for (format, extra, ext, content_type, rate) in [
        (
            "flac",
            json!({"sample_rate": 48000}),
            "flac",
            "audio/flac",
            48_000u32,
        ),
        ("mp3", json!({"bitrate": 128}), "mp3", "audio/mpeg", 44_100),
        (
            "opus",
            json!({"bitrate": 96}),
            "opus",
            "audio/ogg; codecs=opus",
            48_000,
        ),
    ] {
        let mut body = json!({"audio": audio, "output_format": format, "stems": ["vocals"]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let accepted = client.submit(&body).await;
        let id = accepted["task_id"].as_str().unwrap().to_string();
        let t = client
            .poll_task(&id, Duration::from_secs(60), |t| t["status"] == "succeeded")
            .await;
        assert_eq!(t["status"], "succeeded", "{t}");
        assert_eq!(t["result"]["sample_rate"], rate, "{t}");
        let url = t["result"]["stems"]["vocals"]["url"].as_str().unwrap();
        assert!(url.contains(&format!("/vocals.{ext}?")), "{url}");
        let full = client.http.get(url).send().await.unwrap();
        assert_eq!(full.status(), 200);
        assert_eq!(full.headers()["content-type"], content_type);
        assert!(full.headers()["accept-ranges"] == "bytes");
        let etag = full.headers()["etag"].to_str().unwrap().to_string();
        let bytes = full.bytes().await.unwrap();
        // Range: the middle 100 bytes.
        let part = client
            .http
            .get(url)
            .header("range", "bytes=100-199")
            .send()
            .await
            .unwrap();
        assert_eq!(part.status(), 206);
        assert_eq!(part.bytes().await.unwrap(), bytes.slice(100..200));
        let cached = client
            .http
            .get(url)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(cached.status(), 304);
        let head = client.http.head(url).send().await.unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(
            head.headers()["content-length"].to_str().unwrap(),
            bytes.len().to_string()
        );
        assert!(head.bytes().await.unwrap().is_empty());
        // Decoded back at its own rate: the song's length (MP3: within a frame; Opus: exact
        // through its pre-skip and end trimming).
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("vocals.{ext}"));
        std::fs::write(&file, &bytes).unwrap();
        let mut reader = uvr::audio::AudioReader::open(&file, 0).unwrap();
        assert_eq!(reader.source_rate(), rate, "{format}");
        let mut frames = 0;
        while let Some(block) = reader.read(8192).unwrap() {
            frames += block.len();
        }
        assert!(
            frames.abs_diff(2 * 44_100) <= 1152,
            "{format}: {frames} frames"
        );
    }
}

/// One part of a hand-built `multipart/form-data` body.
enum Part<'a> {
    Text(&'a str, &'a str),
    File(&'a str, &'a str, &'a [u8]),
}

const BOUNDARY: &str = "uvr-test-boundary-7d1f";

/// A `multipart/form-data` body of `parts`; `closed: false` leaves out the final boundary (a
/// truncated upload).
fn form(parts: &[Part<'_>], closed: bool) -> Vec<u8> {
    let mut body = Vec::new();
    for p in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match p {
            Part::Text(name, value) => {
                body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                        .as_bytes(),
                );
            }
            Part::File(name, filename, bytes) => {
                body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n\
                         Content-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(bytes);
                body.extend_from_slice(b"\r\n");
            }
        }
    }
    if closed {
        body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    }
    body
}

/// POSTs a `multipart/form-data` body to `path`: the status and the JSON answer.
async fn post_form(client: &ApiClient, path: &str, body: Vec<u8>) -> (u16, Value) {
    let r = client
        .request(reqwest::Method::POST, path)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn upload_files(dep: &Deployment) -> Vec<String> {
    std::fs::read_dir(dep.path("staging").join("uploads"))
        .map(|it| {
            it.map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Uploads: a song sent with the request (`multipart/form-data`), or first to `POST /uploads`
/// and then named `upload://<id>`, is separated like a URL's, and its upload is removed when
/// the task ends. Bad forms get a stable code each, and neither a task nor a file is left.
#[actix_rt::test]
async fn uploaded_songs_are_separated_and_bad_uploads_leave_nothing() {
    let dep = Deployment::new(&[("MAX_AUDIO_BYTES", "400000")]);
    let _svc = dep.spawn("api,processor,uploader", "all");
    let client = dep.client();
    let song = test_wav(1.0, 44_100);
    // 1. In the request itself, with other fields as form fields.
    let (s, accepted) = post_form(
        &client,
        "/generate",
        form(
            &[
                Part::Text("output_format", "flac"),
                Part::File("audio", "my song.wav", &song),
                Part::Text("stems", "vocals"),
            ],
            true,
        ),
    )
    .await;
    assert_eq!(s, 202, "{accepted}");
    let id = accepted["task_id"].as_str().unwrap().to_string();
    let t = client
        .poll_task(&id, Duration::from_secs(60), |t| t["status"] == "succeeded")
        .await;
    assert_eq!(t["status"], "succeeded", "{t}");
    assert!(
        t["request"]["audio"]
            .as_str()
            .unwrap()
            .starts_with("upload://")
    );
    assert!((t["result"]["duration_seconds"].as_f64().unwrap() - 1.0).abs() < 0.01);
    assert_eq!(t["result"]["format"], "flac16");
    assert!(t["result"]["stems"]["vocals"]["url"].is_string());
    assert!(t["result"]["stems"]["instrumental"].is_null(), "{t}");
    // 2. Uploaded first, then named.
    let (s, up) = post_form(
        &client,
        "/uploads",
        form(&[Part::File("audio", "song.wav", &song)], true),
    )
    .await;
    assert_eq!(s, 201, "{up}");
    assert_eq!(up["bytes"], song.len());
    let reference = up["upload"].as_str().unwrap().to_string();
    let accepted = client.submit(&json!({"audio": reference})).await;
    let id2 = accepted["task_id"].as_str().unwrap().to_string();
    let t = client
        .poll_task(&id2, Duration::from_secs(60), |t| {
            t["status"] == "succeeded"
        })
        .await;
    assert_eq!(t["status"], "succeeded", "{t}");
    let gone = eventually(Duration::from_secs(10), || {
        let dep = &dep;
        async move { upload_files(dep).is_empty() }
    })
    .await;
    assert!(gone, "uploads left: {:?}", upload_files(&dep));
    // The upload went with its task.
    let r = client.generate(&json!({"audio": reference})).await;
    assert_eq!(r.status(), 422);
    let r: Value = r.json().await.unwrap();
    assert_eq!(r["error"]["code"], "unknown_upload");
    // 3. Bad uploads.
    let big = vec![0u8; 500_000];
    for (name, url, body, status, code) in [
        (
            "no file",
            "generate",
            form(&[Part::Text("priority", "3")], true),
            422,
            "missing_field",
        ),
        (
            "two files",
            "generate",
            form(
                &[
                    Part::File("audio", "a.wav", &song),
                    Part::File("audio", "b.wav", &song),
                ],
                true,
            ),
            422,
            "duplicate_field",
        ),
        (
            "truncated",
            "generate",
            form(&[Part::File("audio", "a.wav", &song)], false),
            400,
            "malformed_body",
        ),
        (
            "over MAX_AUDIO_BYTES",
            "uploads",
            form(&[Part::File("audio", "big.wav", &big)], true),
            413,
            "payload_too_large",
        ),
        (
            "empty file",
            "uploads",
            form(&[Part::File("audio", "empty.wav", b"")], true),
            422,
            "empty_upload",
        ),
        (
            "an upload form without the file",
            "uploads",
            form(&[Part::Text("audio", "https://example.com/a.wav")], true),
            422,
            "missing_field",
        ),
        (
            "a bad field beside the file",
            "generate",
            form(
                &[
                    Part::File("audio", "a.wav", &song),
                    Part::Text("priority", "9"),
                ],
                true,
            ),
            422,
            "out_of_range",
        ),
    ] {
        let (s, body) = post_form(&client, &format!("/{url}"), body).await;
        assert_eq!(
            (s, body["error"]["code"].as_str().unwrap_or_default()),
            (status, code),
            "{name}: {body}"
        );
    }
    for (audio, code) in [
        (
            "upload://0190a2b4-0000-7000-8000-000000000000",
            "unknown_upload",
        ),
        ("upload://../../etc/passwd", "invalid_url"),
    ] {
        let r = client.generate(&json!({"audio": audio})).await;
        assert_eq!(r.status(), 422, "{audio}");
        let r: Value = r.json().await.unwrap();
        assert_eq!(r["error"]["code"], code, "{audio}");
    }
    let wrong_type = client
        .request(reqwest::Method::POST, "/uploads")
        .header("content-type", "audio/wav")
        .body(song.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), 415);
    assert_eq!(
        upload_files(&dep),
        Vec::<String>::new(),
        "nothing left on disk"
    );
    let q: Value = client.get("/queue").await.json().await.unwrap();
    assert_eq!(q["separate"]["waiting"], 0, "nothing queued: {q}");
    assert_eq!(q["separate"]["in_flight"], 0, "{q}");
}

/// Ensembles through the whole service: `dsp-centre` and a small MDX-Net model, combined by
/// each algorithm. Every stem of an ensemble task is exactly the combination (the same code
/// the numpy reference checks, `src/separation/ensemble.rs`) of what the two models give
/// alone, in 32-bit float, so each model ran once on the same input.
#[actix_rt::test]
async fn an_ensemble_is_the_combination_of_its_models_outputs() {
    use uvr::separation::ensemble::{Algorithm, combine};
    let peer = Peer::start();
    let dep = Deployment::new(&[("SEPARATOR_DEVICE", "cpu")]);
    let models = dep.path("models");
    std::fs::create_dir_all(&models).unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mdx");
    for ext in ["onnx", "json"] {
        std::fs::copy(
            fixtures.join(format!("small5.{ext}")),
            models.join(format!("small5.{ext}")),
        )
        .unwrap();
    }
    let _svc = dep.spawn("api,processor,uploader", "all");
    let client = dep.client();
    let audio = peer.put("song.wav", test_wav(1.5, 44_100));
    let run = |body: Value| {
        let client = client.clone();
        async move {
            let accepted = client.submit(&body).await;
            let id = accepted["task_id"].as_str().unwrap().to_string();
            let t = client
                .poll_task(&id, Duration::from_secs(120), |t| {
                    t["status"] == "succeeded" || t["status"] == "failed"
                })
                .await;
            assert_eq!(t["status"], "succeeded", "{t}");
            let mut stems = std::collections::BTreeMap::new();
            for stem in ["vocals", "instrumental"] {
                let url = t["result"]["stems"][stem]["url"].as_str().unwrap();
                let bytes = client
                    .http
                    .get(url)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                let mut r = hound::WavReader::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
                let s: Vec<f32> = r.samples::<f32>().map(Result::unwrap).collect();
                stems.insert(stem, s);
            }
            (t, stems)
        }
    };
    let alone: Vec<_> = [
        json!({"audio": audio, "model": "dsp-centre", "output_format": "wav32f"}),
        json!({"audio": audio, "model": "small5", "output_format": "wav32f"}),
    ]
    .into_iter()
    .map(run)
    .collect();
    let mut outputs = Vec::new();
    for f in alone {
        outputs.push(f.await.1);
    }
    let dir = tempfile::tempdir().unwrap();
    for algorithm in [Algorithm::Average, Algorithm::MaxSpec, Algorithm::MinSpec] {
        let (t, got) = run(json!({
            "audio": audio,
            "models": ["dsp-centre", "small5"],
            "ensemble": algorithm.name(),
            "output_format": "wav32f",
        }))
        .await;
        assert_eq!(t["result"]["ensemble"], algorithm.name(), "{t}");
        assert_eq!(t["result"]["models"], json!(["dsp-centre", "small5"]));
        assert_eq!(t["request"]["ensemble"], algorithm.name());
        for stem in ["vocals", "instrumental"] {
            let mut inputs = Vec::new();
            for (i, out) in outputs.iter().enumerate() {
                let p = dir.path().join(format!("{i}-{stem}.f32"));
                let bytes: Vec<u8> = out[stem].iter().flat_map(|s| s.to_le_bytes()).collect();
                std::fs::write(&p, bytes).unwrap();
                inputs.push(p);
            }
            let frames = (outputs[0][stem].len() / 2) as u64;
            let mut want: Vec<f32> = Vec::new();
            combine(algorithm, &inputs, frames, &mut |b| {
                want.extend(b.iter().flatten());
                Ok(())
            })
            .unwrap();
            assert_eq!(got[stem].len(), want.len(), "{algorithm:?} {stem}");
            let max = got[stem]
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(max < 1e-6, "{algorithm:?} {stem}: max difference {max:e}");
        }
    }
    // The combination differs from either model alone.
    let (_, avg) = run(json!({
        "audio": audio, "models": ["dsp-centre", "small5"], "ensemble": "average",
        "output_format": "wav32f",
    }))
    .await;
    assert!(
        avg["vocals"]
            .iter()
            .zip(&outputs[0]["vocals"])
            .any(|(a, b)| (a - b).abs() > 1e-4)
    );
}

/// The S3 store `env` names, as an uploader reads it.
fn s3_storage(env: &uvr::config::Env) -> uvr::pipeline::storage::StorageConfig {
    let api = uvr::config::Listen {
        host: "127.0.0.1".into(),
        port: 8000,
    };
    uvr::pipeline::storage::StorageConfig::from_env(env, &api, Default::default(), true)
        .unwrap()
        .expect("S3 credentials")
}
