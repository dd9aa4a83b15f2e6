//! Where the audio comes from: songs uploaded with the request or to `POST /uploads`, bad
//! uploads that leave nothing behind, and a URL whose name is rebound to loopback after the
//! submission, refused when the processor connects.

use std::time::Duration;

use serde_json::{Value, json};
use uvr::settings::{Role, Settings};

use crate::common;
use crate::common::client::ApiClient;
use crate::common::e2e::{Deployment, Peer, test_wav};
use crate::common::eventually;

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
