//! Supervision: a processor killed mid-task is replaced and the task completes once; a
//! separator restarted in process comes back and loses no task; workers driven one task at
//! a time.

use std::time::Duration;

use serde_json::json;
use uvr::settings::{Role, Settings};

use crate::common;
use crate::common::client::ApiClient;
use crate::common::e2e::{Deployment, Peer, WEBHOOK_SECRET, test_wav};
use crate::common::eventually;

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

/// A worker driven a step at a time: each step claims the one waiting task and returns once
/// its outcome is on the record, so the test reads each state right after the step that
/// made it, with no loop running and nothing to wait for.
#[actix_rt::test]
async fn workers_can_be_driven_one_task_at_a_time() {
    use uvr::actors::separator::Separation;
    use uvr::actors::uploader::Delivery;
    use uvr::actors::worker::{Ended, step};
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("staging").display().to_string();
    let storage = format!("file://{}", dir.path().join("stems").display());
    let app = common::spawn_app(&[
        ("ALLOW_PRIVATE_NETWORKS", "true"),
        ("STAGING_DIR", &staging),
        ("STORAGE_URL", &storage),
    ])
    .await;
    let redis_url = app.redis.url();
    let env = uvr::config::Env::from_pairs([
        ("REDIS_URL", redis_url.as_str()),
        ("MODELS_DIR", "/nonexistent"),
        ("ALLOW_PRIVATE_NETWORKS", "true"),
        ("STAGING_DIR", &staging),
        ("STORAGE_URL", &storage),
        ("LINK_SIGNING_KEY", "test-link-signing-key-0123456789abcdef"),
        ("WEBHOOK_SECRET", WEBHOOK_SECRET),
    ]);
    let settings = Settings::from_env(&env, Some(&[Role::Processor, Role::Uploader])).unwrap();
    let (pcfg, ucfg) = (settings.processor.unwrap(), settings.uploader.unwrap());
    let store = uvr::pipeline::storage::Storage::open(&ucfg.storage).unwrap();
    let separation = Separation::new(app.scheduler.clone(), pcfg);
    let delivery = Delivery::new(app.scheduler.clone(), ucfg, store);

    let peer = Peer::start();
    let client = ApiClient::for_app(&app.base);
    let audio = peer.put("song.wav", test_wav(0.3, 44_100));
    let id = client
        .submit_id(&json!({"audio": audio, "hook_url": peer.hook_url()}))
        .await;
    assert_eq!(client.task(&id).await["status"], "queued");

    // Nothing waits to be delivered yet.
    assert_eq!(step(&delivery, "step-u").await.unwrap(), None);
    assert_eq!(
        step(&separation, "step-p").await.unwrap(),
        Some(Ended::Done)
    );
    let t = client.task(&id).await;
    assert_eq!(t["status"], "separated", "{t}");
    assert_eq!(t["worker"], "step-p", "{t}");
    assert!(t["result"]["stems"]["vocals"]["file"].is_string(), "{t}");
    assert_eq!(
        step(&separation, "step-p").await.unwrap(),
        None,
        "one task, one step"
    );
    assert!(peer.hooks().is_empty(), "no webhook before delivery");

    assert_eq!(step(&delivery, "step-u").await.unwrap(), Some(Ended::Done));
    let t = client.task(&id).await;
    assert_eq!(t["status"], "succeeded", "{t}");
    assert_eq!(t["result"]["webhook"]["state"], "delivered", "{t}");
    assert!(t["result"]["stems"]["vocals"]["url"].is_string(), "{t}");
    let hooks = peer.hooks();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].body["task_id"], id.as_str());
    assert_eq!(step(&delivery, "step-u").await.unwrap(), None);
}
