//! `POST /generate` before anything is enqueued: the Content-Type check, the JSON body and
//! the Intake's validation (fields, URL policy, catalogue, `Idempotency-Key`).
//!
//! Input: an optional header block, then the body, as in HTTP:
//! `Content-Type: ...\nIdempotency-Key: ...\n\n{"audio": ...}`. Without a blank line the
//! whole input is the body, sent as `application/json` without a key.
//!
//! Beyond "no panic", an accepted request must survive what happens to it next: its URLs,
//! stored as text, parse back to the same URLs under the same policy (a later fetch or
//! webhook call sees the host that was checked), and the stored request round-trips.
//!
//! Shared by the fuzz target (`fuzz/fuzz_targets/request.rs`) and the corpus replay in
//! `cargo test` (`tests/fuzz_corpus.rs`).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use uvr::actors::intake::{IntakeConfig, validate};
use uvr::api::{check_json_content_type, parse_json_body};
use uvr::models::{BUILTIN_DSP, Catalog, Library, ModelInfo, STEMS};
use uvr::net::UrlPolicy;
use uvr::task::{Priority, TaskRequest};

/// The production policy and the `ALLOW_PRIVATE_NETWORKS=true` one, over a catalogue with
/// the built-in separator and one MDX model.
fn configs() -> &'static [IntakeConfig; 2] {
    static CONFIGS: OnceLock<[IntakeConfig; 2]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let stems: Vec<String> = STEMS.iter().map(|s| s.to_string()).collect();
        let catalog = Arc::new(Library::fixed(Catalog {
            default: BUILTIN_DSP.to_string(),
            models: vec![
                ModelInfo::builtin(),
                ModelInfo {
                    name: "UVR-MDX-NET-Voc_FT".to_string(),
                    family: "mdx-net",
                    stems,
                    params: serde_json::Value::Null,
                    files: vec![PathBuf::from("/nonexistent/UVR-MDX-NET-Voc_FT.onnx")],
                },
            ],
        }));
        [false, true].map(|allow_private| IntakeConfig {
            default_priority: Priority::new(3).expect("3 is a priority"),
            url_policy: UrlPolicy { allow_private },
            rate_per_second: 0.0,
            rate_burst: 1.0,
            max_queue_depth: 0,
            catalog: catalog.clone(),
            presets: Default::default(),
        })
    })
}

/// Splits the input into (Content-Type, Idempotency-Key, body).
fn split(data: &[u8]) -> (Option<&str>, Option<&str>, &[u8]) {
    let Some(at) = data.windows(2).position(|w| w == b"\n\n") else {
        return (Some("application/json"), None, data);
    };
    let (head, body) = (&data[..at], &data[at + 2..]);
    let (mut content_type, mut key) = (None, None);
    // Header values that are not text are dropped, as the handler does (`to_str().ok()`).
    for line in head.split(|b| *b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value);
        } else if name.eq_ignore_ascii_case("idempotency-key") {
            key = Some(value);
        }
    }
    (content_type, key, body)
}

/// Runs `data` through the request checks; returns whether some policy accepted it.
pub fn check(data: &[u8]) -> bool {
    let (content_type, key, body) = split(data);
    if check_json_content_type(content_type.unwrap_or("")).is_err() {
        return false;
    }
    let Ok(value) = parse_json_body(body) else {
        return false;
    };
    let mut accepted = false;
    for cfg in configs() {
        let Ok(v) = validate(cfg, &value, key) else {
            continue;
        };
        accepted = true;
        for (field, url) in &v.urls {
            let again = cfg
                .url_policy
                .parse(url.as_str())
                .unwrap_or_else(|e| panic!("{field} {url} accepted, then refused: {e}"));
            assert_eq!(&again, url, "{field} does not parse back to itself");
            assert_eq!(again.host(), url.host(), "{field} changes host");
        }
        assert_eq!(v.request.audio, v.urls[0].1.as_str());
        let hook = v.urls.iter().find(|(f, _)| *f == "hook_url");
        assert_eq!(
            v.request.hook_url.as_deref(),
            hook.map(|(_, u)| u.as_str()),
            "hook_url stored as checked"
        );
        let stored = serde_json::to_string(&v.request).expect("a request serialises");
        let back: TaskRequest = serde_json::from_str(&stored).expect("a stored request parses");
        assert_eq!(back, v.request);
    }
    accepted
}
