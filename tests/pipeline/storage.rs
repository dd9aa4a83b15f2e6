//! Storage: stems in S3 with presigned links, a stem over 8 MiB uploaded in parts, and the
//! retention sweeps that delete local stems, staging leftovers and S3 objects past their
//! time.

use std::time::Duration;

use serde_json::json;

use crate::common;
use crate::common::e2e::{Deployment, Peer, read_wav, test_wav};

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
