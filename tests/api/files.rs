//! The local download route, `/files/<task>/<stem>`: signed links, and every spelling of a
//! path out of the storage root refused, sent byte for byte.

use std::time::Duration;

use serde_json::Value;

use crate::common::spawn_app;

/// One GET sent byte for byte as given (no client normalises `..` or percent escapes on the
/// way): the status and the body.
async fn raw_get(base: &str, target: &str) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut resp))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let head_end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{target}: no response head: {resp:?}"));
    let head = String::from_utf8_lossy(&resp[..head_end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{target}: {head}"));
    (status, resp[head_end + 4..].to_vec())
}

/// SECURITY.md: local stems are served under `/files/<task>/<stem>.wav` with a signature,
/// and file names are validated so no path traversal reaches the disk. Every spelling of a
/// path out of the storage root is refused with its stable code even when it carries a
/// valid signature for exactly that path (as if the signing key had leaked), and a valid
/// signature for one file opens no other. A bait file sits where each escape would land.
#[actix_rt::test]
async fn local_download_paths_outside_the_storage_root_are_refused() {
    use uvr::pipeline::storage::sign_link;
    const BAIT: &[u8] = b"BAIT: outside the storage root";
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().canonicalize().unwrap();
    let root = outside.join("stems");
    let task = "0190f5a2-7b3c-7d4e-8f5a-6b7c8d9e0f1a";
    let other = "0190f5a2-7b3c-7d4e-8f5a-000000000000";
    for t in [task, other] {
        std::fs::create_dir_all(root.join(t)).unwrap();
        for stem in ["vocals", "instrumental"] {
            std::fs::write(
                root.join(t).join(format!("{stem}.wav")),
                format!("{t}/{stem}"),
            )
            .unwrap();
        }
    }
    // Where `<root>/../secret.wav`, `<root>/<task>/../../secret.wav` and the absolute path
    // land, and a bait inside the task directory's parent for one level of `..`.
    std::fs::write(outside.join("secret.wav"), BAIT).unwrap();
    std::fs::write(root.join("secret.wav"), BAIT).unwrap();
    let storage_url = format!("file://{}", root.display());
    let app = spawn_app(&[("STORAGE_URL", storage_url.as_str())]).await;
    let secret = b"test-link-signing-key-0123456789abcdef"; // spawn_app's LINK_SIGNING_KEY
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let signed = |key: &str| format!("expires={expires}&sig={}", sign_link(secret, key, expires));

    // The control: a valid link for a stored stem serves exactly that file.
    let (status, body) = raw_get(
        &app.base,
        &format!(
            "/files/{task}/vocals.wav?{}",
            signed(&format!("{task}/vocals.wav"))
        ),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, format!("{task}/vocals").as_bytes());

    let abs = format!("{}/secret.wav", outside.display());
    let abs_encoded = abs.replace('/', "%2F");
    // (request path, the key a valid signature is made for, expected status and code)
    let cases: Vec<(String, String, u16, &str)> = vec![
        // `..` as the task: `<root>/../secret.wav`.
        (
            "/files/../secret.wav".into(),
            "../secret.wav".into(),
            404,
            "file_not_found",
        ),
        (
            "/files/%2e%2e/secret.wav".into(),
            "../secret.wav".into(),
            404,
            "file_not_found",
        ),
        (
            "/files/%2E%2E/secret.wav".into(),
            "../secret.wav".into(),
            404,
            "file_not_found",
        ),
        (
            "/files/.%2e/secret.wav".into(),
            "../secret.wav".into(),
            404,
            "file_not_found",
        ),
        // `..` in the name, encoded slashes: `<root>/<task>/../secret.wav` and further up.
        (
            format!("/files/{task}/..%2Fsecret.wav"),
            format!("{task}/../secret.wav"),
            404,
            "file_not_found",
        ),
        (
            format!("/files/{task}/..%2F..%2Fsecret.wav"),
            format!("{task}/../../secret.wav"),
            404,
            "file_not_found",
        ),
        (
            format!("/files/{task}/%2e%2e%2f%2e%2e%2fsecret.wav"),
            format!("{task}/../../secret.wav"),
            404,
            "file_not_found",
        ),
        // Raw `..` segments: more segments than the route has.
        (
            format!("/files/{task}/../../secret.wav"),
            format!("{task}/../../secret.wav"),
            404,
            "not_found",
        ),
        (
            format!("/files/{task}/../secret.wav"),
            format!("{task}/../secret.wav"),
            404,
            "not_found",
        ),
        // Absolute paths, as the name (joining replaces the root) and as the task.
        (
            format!("/files/{task}/{abs_encoded}"),
            format!("{task}/{abs}"),
            404,
            "file_not_found",
        ),
        (
            format!(
                "/files/{}/secret.wav",
                outside.display().to_string().replace('/', "%2F")
            ),
            abs.clone(),
            404,
            "file_not_found",
        ),
        (format!("/files{abs}"), abs.clone(), 404, "not_found"),
        // Backslashes, raw and encoded.
        (
            format!("/files/{task}/..\\..\\secret.wav"),
            format!("{task}/..\\..\\secret.wav"),
            404,
            "file_not_found",
        ),
        (
            format!("/files/{task}/..%5C..%5Csecret.wav"),
            format!("{task}/..\\..\\secret.wav"),
            404,
            "file_not_found",
        ),
        (
            "/files/..%5Csecret.wav/vocals.wav".into(),
            "..\\secret.wav/vocals.wav".into(),
            404,
            "file_not_found",
        ),
    ];
    for (path, key, want_status, want_code) in &cases {
        let target = format!("{path}?{}", signed(key));
        let (status, body) = raw_get(&app.base, &target).await;
        assert!(
            !body.windows(BAIT.len()).any(|w| w == BAIT),
            "{target}: the bait outside the root was served"
        );
        let err: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("{target}: {status} {}", String::from_utf8_lossy(&body)));
        assert_eq!(
            (status, err["error"]["code"].as_str().unwrap_or_default()),
            (*want_status, *want_code),
            "{target}: {err}"
        );
        if *want_code == "file_not_found" {
            // Refused by the validation of the path, before any file is opened.
            assert_eq!(err["error"]["message"], "no such file", "{target}: {err}");
        }
    }

    // A valid signature for one file opens no other: not another stem of the task, not the
    // same stem of another task, not the same stem under another expiry.
    let vocals = format!("{task}/vocals.wav");
    let sig = sign_link(secret, &vocals, expires);
    for target in [
        format!("/files/{task}/instrumental.wav?expires={expires}&sig={sig}"),
        format!("/files/{other}/vocals.wav?expires={expires}&sig={sig}"),
        format!("/files/{task}/vocals.wav?expires={}&sig={sig}", expires + 1),
        format!("/files/{task}/secret.wav?expires={expires}&sig={sig}"),
    ] {
        let (status, body) = raw_get(&app.base, &target).await;
        let err: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("{target}: {status} {}", String::from_utf8_lossy(&body)));
        assert_eq!(
            (status, err["error"]["code"].as_str().unwrap_or_default()),
            (403, "link_invalid"),
            "{target}: {err}"
        );
    }
}
