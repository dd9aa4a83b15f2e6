//! The API's request bodies: malformed JSON, content types, sizes, the JSON shape, the
//! `Idempotency-Key` header, and every field with wrong types, missing, out of range or unknown.

use serde_json::{Value, json};

use super::api_cases::{AUDIO, Answer, ApiCase, Body, HOOK, case, reject422, run_api_table, with};
use crate::common::spawn_app;

/// Malformed bodies, content types, sizes and the JSON shape.
#[actix_rt::test]
async fn api_rejects_malformed_bodies_with_stable_codes() {
    let app = spawn_app(&[]).await;
    let valid = serde_json::to_vec(&with("priority", None)).unwrap();
    let malformed = |name: &str, bytes: &[u8]| {
        case(
            format!("malformed JSON: {name}"),
            Body::Raw(Some("application/json"), bytes.to_vec()),
            Answer::Reject(400, "malformed_json", None),
        )
    };
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(&valid);
    let mut invalid_utf8 = br#"{"audio": "https://93.184.215.14/a"#.to_vec();
    invalid_utf8
        .extend_from_slice(b"\xC3\x28\xFF.wav\", \"hook_url\": \"https://93.184.215.14/h\"}");
    let padded = |pad: usize| {
        let mut body = with("priority", None);
        body["padding"] = json!("x".repeat(pad));
        serde_json::to_vec(&body).unwrap()
    };
    let many_keys: serde_json::Map<String, Value> = (0..4000)
        .map(|i| (format!("k{i}"), json!(i)))
        .chain([
            ("audio".to_string(), json!(AUDIO)),
            ("hook_url".to_string(), json!(HOOK)),
        ])
        .collect();
    let cases = vec![
        malformed("truncated", br#"{"audio": "#),
        malformed("empty body", b""),
        malformed("whitespace only", b"   \n\t "),
        malformed("trailing garbage", &[valid.as_slice(), b" x"].concat()),
        malformed("two objects", &[valid.as_slice(), valid.as_slice()].concat()),
        malformed("single quotes", b"{'audio': 'https://93.184.215.14/a.wav'}"),
        malformed("NaN literal", br#"{"audio": "https://93.184.215.14/a.wav", "priority": NaN}"#),
        malformed("trailing comma", br#"{"audio": "https://93.184.215.14/a.wav",}"#),
        malformed("comment", br#"{"audio": "https://93.184.215.14/a.wav" /* x */}"#),
        malformed("UTF-8 byte order mark", &bom),
        malformed("invalid UTF-8 in a string", &invalid_utf8),
        malformed("lone surrogate escape", br#"{"audio": "https://93.184.215.14/\ud800", "hook_url": "x"}"#),
        malformed("raw NUL in a string", b"{\"audio\": \"https://93.184.215.14/a\x00.wav\"}"),
        malformed("number out of range", br#"{"audio": "x", "hook_url": "y", "priority": 1e400}"#),
        malformed("nesting 30000 deep", &[vec![b'['; 30_000], vec![b']'; 30_000]].concat()),
        malformed("nesting 200 deep in an extra field", format!(r#"{{"audio": "{AUDIO}", "hook_url": "{HOOK}", "x": {}{}}}"#, "[".repeat(200), "]".repeat(200)).as_bytes()),
        case("JSON array", Body::Raw(Some("application/json"), b"[1, 2]".to_vec()), Answer::Reject(422, "invalid_body", Some("body"))),
        case("JSON string", Body::Raw(Some("application/json"), br#""https://93.184.215.14/a.wav""#.to_vec()), Answer::Reject(422, "invalid_body", Some("body"))),
        case("JSON number", Body::Raw(Some("application/json"), b"42".to_vec()), Answer::Reject(422, "invalid_body", Some("body"))),
        case("JSON null", Body::Raw(Some("application/json"), b"null".to_vec()), Answer::Reject(422, "invalid_body", Some("body"))),
        case("JSON true", Body::Raw(Some("application/json"), b"true".to_vec()), Answer::Reject(422, "invalid_body", Some("body"))),
        case("content type text/plain", Body::Raw(Some("text/plain"), valid.clone()), Answer::Reject(415, "unsupported_media_type", None)),
        case("no content type", Body::Raw(None, valid.clone()), Answer::Reject(415, "unsupported_media_type", None)),
        case("form body", Body::Raw(Some("application/x-www-form-urlencoded"), b"audio=x&hook_url=y".to_vec()), Answer::Reject(415, "unsupported_media_type", None)),
        case("multipart body with a part that names no field", Body::Raw(Some("multipart/form-data; boundary=x"), b"--x\r\n\r\n--x--".to_vec()), Answer::Reject(400, "malformed_body", None)),
        case("multipart body without a boundary", Body::Raw(Some("multipart/form-data"), b"--x--".to_vec()), Answer::Reject(400, "malformed_body", None)),
        case("content type application/jsonp", Body::Raw(Some("application/jsonp"), valid.clone()), Answer::Reject(415, "unsupported_media_type", None)),
        case("content type json with charset", Body::Raw(Some("application/json; charset=utf-8"), valid.clone()), Answer::Accept),
        case("content type application/vnd.api+json", Body::Raw(Some("application/vnd.api+json"), valid.clone()), Answer::Accept),
        case("a 60 KB extra field under the 64 KiB limit", Body::Raw(Some("application/json"), padded(60_000)), Answer::Accept),
        case("4000 extra keys under the limit", Body::Json(Value::Object(many_keys)), Answer::Accept),
        case("a 200 KB extra field, with Content-Length", Body::Raw(Some("application/json"), padded(200_000)), Answer::Reject(413, "payload_too_large", None)),
        case("a 100 KB body, chunked without Content-Length", Body::Chunked(padded(100_000)), Answer::Reject(413, "payload_too_large", None)),
        case(
            "duplicate key: the last one (private) wins",
            Body::Raw(Some("application/json"), format!(r#"{{"audio": "{AUDIO}", "audio": "http://127.0.0.1/a.wav", "hook_url": "{HOOK}"}}"#).into_bytes()),
            reject422("private_address", "audio"),
        ),
        ApiCase {
            name: "Idempotency-Key empty".into(),
            body: Body::Json(with("priority", None)),
            headers: vec![("idempotency-key", b"".to_vec())],
            answer: reject422("invalid_idempotency_key", "Idempotency-Key"),
        },
        ApiCase {
            name: "Idempotency-Key of 256 bytes".into(),
            body: Body::Json(with("priority", None)),
            headers: vec![("idempotency-key", vec![b'k'; 256])],
            answer: reject422("invalid_idempotency_key", "Idempotency-Key"),
        },
        ApiCase {
            name: "Idempotency-Key with a space".into(),
            body: Body::Json(with("priority", None)),
            headers: vec![("idempotency-key", b"order 1".to_vec())],
            answer: reject422("invalid_idempotency_key", "Idempotency-Key"),
        },
        ApiCase {
            name: "Idempotency-Key with non-ASCII bytes".into(),
            body: Body::Json(with("priority", None)),
            headers: vec![("idempotency-key", b"caf\xE9".to_vec())],
            answer: Answer::Reject(422, "invalid_idempotency_key", None),
        },
    ];
    run_api_table(&app, cases).await;
}

/// Every field with every wrong JSON type, missing fields, out-of-range and unknown values.
#[actix_rt::test]
async fn api_rejects_wrong_types_missing_fields_and_bad_priorities() {
    let app = spawn_app(&[]).await;
    let mut cases = vec![
        case(
            "empty object",
            Body::Json(json!({})),
            reject422("missing_field", "audio"),
        ),
        case(
            "audio missing",
            Body::Json(with("audio", None)),
            reject422("missing_field", "audio"),
        ),
        case(
            "hook_url missing: accepted, the client polls",
            Body::Json(with("hook_url", None)),
            Answer::Accept,
        ),
        case(
            "audio null",
            Body::Json(with("audio", Some(Value::Null))),
            reject422("missing_field", "audio"),
        ),
        case(
            "hook_url null: accepted, the client polls",
            Body::Json(with("hook_url", Some(Value::Null))),
            Answer::Accept,
        ),
        case(
            "field names are case-sensitive",
            Body::Json(json!({"Audio": AUDIO, "hook_url": HOOK})),
            reject422("missing_field", "audio"),
        ),
    ];
    let wrong_types = [
        ("number", json!(42)),
        ("float", json!(1.5)),
        ("bool", json!(true)),
        ("array", json!([AUDIO])),
        ("object", json!({"url": AUDIO})),
    ];
    for field in ["audio", "hook_url"] {
        for (kind, v) in &wrong_types {
            cases.push(case(
                format!("{field} as {kind}"),
                Body::Json(with(field, Some(v.clone()))),
                reject422(
                    "invalid_type",
                    if field == "audio" {
                        "audio"
                    } else {
                        "hook_url"
                    },
                ),
            ));
        }
    }
    for (kind, v) in [
        ("string \"3\"", json!("3")),
        ("float 3.5", json!(3.5)),
        ("float 3.0", json!(3.0)),
        ("exponent 1e0", json!(1e0)),
        ("bool", json!(true)),
        ("array", json!([3])),
        ("object", json!({"value": 3})),
    ] {
        cases.push(case(
            format!("priority as {kind}"),
            Body::Json(with("priority", Some(v))),
            reject422("invalid_type", "priority"),
        ));
    }
    for (kind, v) in [
        ("0", json!(0)),
        ("6", json!(6)),
        ("-1", json!(-1)),
        ("255", json!(255)),
        ("256", json!(256)),
        ("u64::MAX", json!(u64::MAX)),
        ("i64::MIN", json!(i64::MIN)),
    ] {
        cases.push(case(
            format!("priority {kind}"),
            Body::Json(with("priority", Some(v))),
            reject422("out_of_range", "priority"),
        ));
    }
    cases.push(case(
        "priority 2^64 (parsed as a float)",
        Body::Raw(
            Some("application/json"),
            format!(
                r#"{{"audio": "{AUDIO}", "hook_url": "{HOOK}", "priority": 18446744073709551616}}"#
            )
            .into_bytes(),
        ),
        reject422("invalid_type", "priority"),
    ));
    for p in [1, 5] {
        cases.push(case(
            format!("priority {p} (valid bound)"),
            Body::Json(with("priority", Some(json!(p)))),
            Answer::Accept,
        ));
    }
    cases.push(case(
        "priority null (default)",
        Body::Json(with("priority", Some(Value::Null))),
        Answer::Accept,
    ));
    for (kind, v) in [
        ("number", json!(1)),
        ("bool", json!(false)),
        ("array", json!(["dsp-centre"])),
        ("object", json!({})),
    ] {
        cases.push(case(
            format!("model as {kind}"),
            Body::Json(with("model", Some(v))),
            reject422("invalid_type", "model"),
        ));
    }
    for m in [
        "",
        "nope",
        "../../etc/passwd",
        "dsp-centre\u{0}",
        "DSP-CENTRE",
        "dsp-centre ",
    ] {
        cases.push(case(
            format!("model {m:?}"),
            Body::Json(with("model", Some(json!(m)))),
            reject422("unknown_model", "model"),
        ));
    }
    for (kind, v, code) in [
        ("a string", json!("vocals"), "invalid_type"),
        ("an object", json!({"vocals": true}), "invalid_type"),
        ("[1]", json!([1]), "invalid_type"),
        ("[null]", json!([null]), "invalid_type"),
        ("[]", json!([]), "out_of_range"),
        ("[\"drums\"]", json!(["drums"]), "unknown_stem"),
        (
            "[\"vocals\", \"../x\"]",
            json!(["vocals", "../x"]),
            "unknown_stem",
        ),
    ] {
        cases.push(case(
            format!("stems {kind}"),
            Body::Json(with("stems", Some(v))),
            reject422(code, "stems"),
        ));
    }
    for (kind, v, code) in [
        ("number", json!(16), "invalid_type"),
        ("array", json!(["wav"]), "invalid_type"),
        ("bool", json!(true), "invalid_type"),
        ("\"ogg\"", json!("ogg"), "unsupported_format"),
        ("\"\"", json!(""), "unsupported_format"),
        ("\"wav8\"", json!("wav8"), "unsupported_format"),
        ("\"flac32\"", json!("flac32"), "unsupported_format"),
    ] {
        cases.push(case(
            format!("output_format {kind}"),
            Body::Json(with("output_format", Some(v))),
            reject422(code, "output_format"),
        ));
    }
    let format = |extra: Value| {
        let mut b = json!({"audio": AUDIO, "hook_url": HOOK});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        Body::Json(b)
    };
    for (kind, extra, code, field) in [
        (
            "bitrate with wav",
            json!({"bitrate": 320}),
            "unsupported_format",
            "bitrate",
        ),
        (
            "bitrate with flac",
            json!({"output_format": "flac", "bitrate": 320}),
            "unsupported_format",
            "bitrate",
        ),
        (
            "mp3 bitrate 96",
            json!({"output_format": "mp3", "bitrate": 96}),
            "out_of_range",
            "bitrate",
        ),
        (
            "mp3 bitrate -1",
            json!({"output_format": "mp3", "bitrate": -1}),
            "out_of_range",
            "bitrate",
        ),
        (
            "mp3 bitrate 2.5",
            json!({"output_format": "mp3", "bitrate": 2.5}),
            "out_of_range",
            "bitrate",
        ),
        (
            "mp3 bitrate \"320\"",
            json!({"output_format": "mp3", "bitrate": "320"}),
            "invalid_type",
            "bitrate",
        ),
        (
            "opus bitrate 320",
            json!({"output_format": "opus", "bitrate": 320}),
            "out_of_range",
            "bitrate",
        ),
        (
            "opus at 44.1 kHz",
            json!({"output_format": "opus", "sample_rate": 44100}),
            "unsupported_format",
            "sample_rate",
        ),
        (
            "opus at the source rate",
            json!({"output_format": "opus", "sample_rate": "source"}),
            "unsupported_format",
            "sample_rate",
        ),
        (
            "sample_rate 96000",
            json!({"sample_rate": 96000}),
            "out_of_range",
            "sample_rate",
        ),
        (
            "sample_rate 0",
            json!({"sample_rate": 0}),
            "out_of_range",
            "sample_rate",
        ),
        (
            "sample_rate \"48000\"",
            json!({"sample_rate": "48000"}),
            "invalid_type",
            "sample_rate",
        ),
        (
            "sample_rate true",
            json!({"sample_rate": true}),
            "invalid_type",
            "sample_rate",
        ),
    ] {
        cases.push(case(kind, format(extra), reject422(code, field)));
    }
    for (kind, extra, code, field) in [
        (
            "models: one model",
            json!({"models": ["dsp-centre"], "ensemble": "average"}),
            "out_of_range",
            "models",
        ),
        (
            "models: twice the same",
            json!({"models": ["dsp-centre", "dsp-centre"], "ensemble": "average"}),
            "out_of_range",
            "models",
        ),
        (
            "models: unknown",
            json!({"models": ["dsp-centre", "nope"], "ensemble": "average"}),
            "unknown_model",
            "models",
        ),
        (
            "models: not names",
            json!({"models": [1, 2], "ensemble": "average"}),
            "invalid_type",
            "models",
        ),
        (
            "models: a string",
            json!({"models": "dsp-centre", "ensemble": "average"}),
            "invalid_type",
            "models",
        ),
        (
            "models and model",
            json!({"model": "dsp-centre", "models": ["dsp-centre", "x"], "ensemble": "average"}),
            "invalid_body",
            "models",
        ),
        (
            "ensemble without models",
            json!({"ensemble": "average"}),
            "missing_field",
            "models",
        ),
        (
            "five models",
            json!({"models": ["a", "b", "c", "d", "e"], "ensemble": "average"}),
            "out_of_range",
            "models",
        ),
    ] {
        cases.push(case(kind, format(extra), reject422(code, field)));
    }
    for (kind, extra) in [
        (
            "mp3 at 128 kbps, 48 kHz",
            json!({"output_format": "mp3", "bitrate": 128, "sample_rate": 48000}),
        ),
        (
            "flac24 at the source rate",
            json!({"output_format": "FLAC24", "sample_rate": "source"}),
        ),
        (
            "opus at 64 kbps, 48 kHz",
            json!({"output_format": "Opus", "bitrate": 64, "sample_rate": 48000}),
        ),
    ] {
        cases.push(case(
            format!("{kind}: accepted"),
            format(extra),
            Answer::Accept,
        ));
    }
    for field in ["audio", "hook_url"] {
        let long = format!("https://93.184.215.14/{}", "a".repeat(5000));
        cases.push(case(
            format!("{field} of 5000 bytes"),
            Body::Json(with(field, Some(json!(long)))),
            reject422(
                "field_too_long",
                if field == "audio" {
                    "audio"
                } else {
                    "hook_url"
                },
            ),
        ));
    }
    run_api_table(&app, cases).await;
}
