use super::*;
use crate::models::{BUILTIN_DSP, Catalog, ModelInfo};
use serde_json::json;

fn cfg(allow_private: bool) -> IntakeConfig {
    IntakeConfig {
        default_priority: Priority::new(3).unwrap(),
        url_policy: UrlPolicy { allow_private },
        rate_per_second: 0.0,
        rate_burst: 1.0,
        max_queue_depth: 0,
        catalog: Arc::new(Library::fixed(Catalog {
            default: BUILTIN_DSP.into(),
            models: vec![ModelInfo::builtin()],
        })),
        presets: Default::default(),
    }
}

fn code(body: Value, key: Option<&str>) -> &'static str {
    validate(&cfg(false), &body, key).unwrap_err().code()
}

#[test]
fn a_valid_body_is_normalised() {
    let body = json!({"audio": "https://Example.com/a b.wav", "hook_url": "https://h.example/",
        "stems": ["vocals", "vocals"], "output_format": "WAV24", "priority": 5});
    let v = validate(&cfg(false), &body, Some("k-1")).unwrap();
    assert_eq!(v.request.audio, "https://example.com/a%20b.wav");
    assert_eq!(v.request.model.as_deref(), Some(BUILTIN_DSP));
    assert_eq!(v.request.stems, Some(vec!["vocals".to_string()]));
    assert_eq!(v.request.output_format.as_deref(), Some("wav24"));
    assert_eq!(v.request.priority, Priority::HIGHEST);
    assert_eq!(v.idempotency_key.as_deref(), Some("k-1"));
    assert_eq!(v.urls[0].0, "audio");
}

#[test]
fn invalid_bodies_have_stable_codes() {
    let ok = |extra: Value| {
        let mut b = json!({"audio": "https://a.example/x.wav", "hook_url": "https://b.example/"});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    assert_eq!(code(json!([1, 2]), None), "invalid_body");
    assert_eq!(
        code(json!({"hook_url": "https://b.example/"}), None),
        "missing_field"
    );
    assert_eq!(code(ok(json!({"hook_url": 7})), None), "invalid_type");
    assert_eq!(code(ok(json!({"hook_url": ""})), None), "invalid_url");
    // No webhook: the client polls.
    for hook in [json!(null), json!("absent")] {
        let mut body = ok(json!({}));
        if hook.is_null() {
            body["hook_url"] = hook;
        } else {
            body.as_object_mut().unwrap().remove("hook_url");
        }
        let v = validate(&cfg(false), &body, None).unwrap();
        assert_eq!(v.request.hook_url, None);
        assert_eq!(v.urls.len(), 1);
    }
    assert_eq!(code(ok(json!({"audio": 7})), None), "invalid_type");
    assert_eq!(
        code(ok(json!({"audio": "file:///etc/passwd"})), None),
        "unsupported_scheme"
    );
    assert_eq!(
        code(ok(json!({"hook_url": "http://127.0.0.1/"})), None),
        "private_address"
    );
    for p in [json!(0), json!(6), json!(-1), json!(256), json!(u64::MAX)] {
        assert_eq!(code(ok(json!({"priority": p})), None), "out_of_range");
    }
    for p in [json!(2.5), json!("5"), json!(true)] {
        assert_eq!(code(ok(json!({"priority": p})), None), "invalid_type");
    }
    assert_eq!(code(ok(json!({"model": "nope"})), None), "unknown_model");
    assert_eq!(code(ok(json!({"stems": []})), None), "out_of_range");
    assert_eq!(code(ok(json!({"stems": ["drums"]})), None), "unknown_stem");
    assert_eq!(
        code(ok(json!({"output_format": "aiff"})), None),
        "unsupported_format"
    );
    assert_eq!(
        code(ok(json!({"output_format": "flac", "bitrate": 320})), None),
        "unsupported_format"
    );
    assert_eq!(
        code(ok(json!({"output_format": "mp3", "bitrate": 100})), None),
        "out_of_range"
    );
    assert_eq!(code(ok(json!({"bitrate": "320"})), None), "invalid_type");
    assert_eq!(
        code(ok(json!({"output_format": "opus", "bitrate": 320})), None),
        "out_of_range"
    );
    for rate in [json!(44100), json!("source")] {
        assert_eq!(
            code(
                ok(json!({"output_format": "opus", "sample_rate": rate})),
                None
            ),
            "unsupported_format",
            "opus at {rate}"
        );
    }
    let v = validate(
        &cfg(false),
        &ok(json!({"output_format": "opus", "sample_rate": 48000})),
        None,
    )
    .unwrap();
    assert_eq!(v.request.output_format.as_deref(), Some("opus"));
    assert_eq!(
        code(ok(json!({"sample_rate": 22050})), None),
        "out_of_range"
    );
    assert_eq!(
        code(ok(json!({"sample_rate": "48k"})), None),
        "invalid_type"
    );
    let v = validate(
        &cfg(false),
        &ok(json!({"output_format": "MP3", "bitrate": 192, "sample_rate": 48000})),
        None,
    )
    .unwrap();
    assert_eq!(
        (
            v.request.output_format.as_deref(),
            v.request.bitrate,
            v.request.sample_rate
        ),
        (Some("mp3"), Some(192), Some(OutputRate::Hz(48_000)))
    );
    let v = validate(&cfg(false), &ok(json!({"sample_rate": "source"})), None).unwrap();
    assert_eq!(
        v.request.sample_rate,
        Some(OutputRate::Source(SourceRate::Source))
    );
    assert_eq!(code(ok(json!({})), Some("")), "invalid_idempotency_key");
    assert_eq!(code(ok(json!({})), Some("a b")), "invalid_idempotency_key");
    let long = "k".repeat(MAX_IDEMPOTENCY_KEY_LEN + 1);
    assert_eq!(code(ok(json!({})), Some(&long)), "invalid_idempotency_key");
    let url = format!("https://a.example/{}", "x".repeat(MAX_URL_LEN));
    assert_eq!(code(ok(json!({"audio": url})), None), "field_too_long");
    // The private-network switch lifts the address rule only.
    let body = ok(json!({"hook_url": "http://127.0.0.1:9000/"}));
    assert!(validate(&cfg(true), &body, None).is_ok());
}

#[test]
fn a_default_model_missing_from_the_catalogue_is_an_error_not_a_panic() {
    let mut c = cfg(false);
    c.catalog = Arc::new(Library::fixed(Catalog {
        default: "gone".into(),
        models: vec![ModelInfo::builtin()],
    }));
    let body = json!({"audio": "https://a.example/x.wav", "hook_url": "https://b.example/"});
    let err = validate(&c, &body, None).unwrap_err();
    assert_eq!(err.code(), "unknown_model");
}
