//! Models and presets: a model copied into `MODELS_DIR` offered without a restart, and a named
//! ensemble preset submitted as its models and algorithm.

use std::time::Duration;

use serde_json::{Value, json};

use super::error_of;
use crate::common;
use crate::common::client::ApiClient;
use crate::common::{seed_body, spawn_app};

/// A model copied into `MODELS_DIR` while the API runs is offered within the rescan interval,
/// without a restart, and refused again once removed (README "Models").
#[actix_rt::test]
async fn models_added_to_the_models_dir_are_offered_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(&[
        ("MODELS_DIR", dir.path().to_str().unwrap()),
        ("MODELS_RESCAN_SECONDS", "0.2"),
    ])
    .await;
    let client = ApiClient::for_app(&app.base);
    let with_model = || {
        let mut body = seed_body(3);
        body["model"] = json!("tiny");
        body
    };
    let (code, error, _) = error_of(client.generate(&with_model()).await).await;
    assert_eq!((code, error.as_str()), (422, "unknown_model"));
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mdx");
    for f in ["tiny.onnx", "tiny.json"] {
        std::fs::copy(fixtures.join(f), dir.path().join(f)).unwrap();
    }
    let offered = common::eventually(Duration::from_secs(5), || async {
        let models: Value = client.get("/models").await.json().await.unwrap();
        models.to_string().contains("\"tiny\"")
    })
    .await;
    assert!(offered, "the new model is not listed");
    assert_eq!(client.generate(&with_model()).await.status(), 202);
    for f in ["tiny.onnx", "tiny.json"] {
        std::fs::remove_file(dir.path().join(f)).unwrap();
    }
    let withdrawn = common::eventually(Duration::from_secs(5), || async {
        client.generate(&with_model()).await.status() == 422
    })
    .await;
    assert!(withdrawn, "the removed model is still accepted");
}

/// Named ensembles (README "Ensembles"): `"preset"` stands for the preset's models and
/// algorithm, `GET /models` lists the presets, and a bad use is a stable 422.
#[actix_rt::test]
async fn a_preset_is_submitted_as_its_models_and_ensemble() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mdx");
    for name in ["a", "b"] {
        for ext in ["onnx", "json"] {
            std::fs::copy(
                fixtures.join(format!("tiny.{ext}")),
                models.join(format!("{name}.{ext}")),
            )
            .unwrap();
        }
    }
    let presets = dir.path().join("presets.json");
    std::fs::write(
        &presets,
        r#"{"pair": {"models": ["a", "b"], "ensemble": "max_spec"}}"#,
    )
    .unwrap();
    let app = spawn_app(&[
        ("MODELS_DIR", models.to_str().unwrap()),
        ("ENSEMBLE_PRESETS_FILE", presets.to_str().unwrap()),
    ])
    .await;
    let client = ApiClient::for_app(&app.base);
    let listed: Value = client.get("/models").await.json().await.unwrap();
    assert_eq!(
        listed["presets"],
        json!({"pair": {"models": ["a", "b"], "ensemble": "max_spec"}})
    );
    let mut body = seed_body(3);
    body["preset"] = json!("pair");
    let resp = client.generate(&body).await;
    assert_eq!(resp.status(), 202);
    let accepted: Value = resp.json().await.unwrap();
    let task: Value = client
        .get(&format!("/tasks/{}", accepted["task_id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(task["request"]["models"], json!(["a", "b"]));
    assert_eq!(task["request"]["ensemble"], "max_spec");
    for (extra, code) in [
        (json!({"preset": "nope"}), "unknown_preset"),
        (json!({"preset": 1}), "invalid_type"),
        (json!({"preset": "pair", "model": "a"}), "invalid_body"),
    ] {
        let mut body = seed_body(3);
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, error, full) = error_of(client.generate(&body).await).await;
        assert_eq!((status, error.as_str()), (422, code), "{extra}");
        assert_eq!(full["error"]["field"], "preset");
    }
}
