//! The OpenAPI document against the types that produce the JSON it describes: the task
//! view, its stage result and the webhook payload. Each type is filled in completely and
//! serialised; every property it produces must be documented, every documented property
//! produced, nested objects alike.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::tasks::{RequestView, TaskView};
use crate::pipeline::webhook::{Payload, PayloadTimings};
use crate::task::result::{
    DeliveryAttempt, DeliveryOutcome, StageResult, Stem, TaskError, Timings, WebhookOutcome,
    WebhookState,
};
use crate::task::{Priority, Stage, Status, TaskId};

fn document() -> Value {
    serde_json::from_str(include_str!("openapi.json")).expect("openapi.json is JSON")
}

/// `schema` with `$ref`s followed and a nullable `oneOf` reduced to its non-null branch.
fn resolve<'a>(doc: &'a Value, mut schema: &'a Value) -> &'a Value {
    loop {
        if let Some(r) = schema["$ref"].as_str() {
            let name = r.trim_start_matches("#/components/schemas/");
            schema = &doc["components"]["schemas"][name];
        } else if let Some(branches) = schema["oneOf"].as_array() {
            match branches.iter().find(|b| b["type"] != "null") {
                Some(b) => schema = b,
                None => return schema,
            }
        } else {
            return schema;
        }
    }
}

/// Every difference between what `value` holds and what `schema` documents.
fn differences(doc: &Value, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(props) = schema["properties"].as_object() {
        let Some(obj) = value.as_object() else {
            out.push(format!("{at}: documented as an object, produced {value}"));
            return;
        };
        for key in obj.keys().filter(|k| !props.contains_key(*k)) {
            out.push(format!("{at}.{key}: produced but not documented"));
        }
        for key in props.keys().filter(|k| !obj.contains_key(*k)) {
            out.push(format!("{at}.{key}: documented but never produced"));
        }
        for (key, sub) in props {
            if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
                differences(doc, sub, v, &format!("{at}.{key}"), out);
            }
        }
    } else if let (Some(_), Some(items)) = (schema["items"].as_object(), value.as_array()) {
        for (i, v) in items.iter().enumerate() {
            differences(doc, &schema["items"], v, &format!("{at}[{i}]"), out);
        }
    } else if let (Some(each), Some(obj)) = (
        schema["additionalProperties"]
            .as_object()
            .map(|_| &schema["additionalProperties"]),
        value.as_object(),
    ) {
        for (key, v) in obj {
            differences(doc, each, v, &format!("{at}[{key:?}]"), out);
        }
    }
}

fn stored_stem() -> Stem {
    Stem {
        file: None,
        url: Some("https://stems.example/t/vocals.wav".into()),
        expires_at: Some("2026-12-07T12:00:00Z".into()),
        bytes: 10,
        sha256: "ab".repeat(32),
        key: Some("t/vocals.wav".into()),
    }
}

/// A result with every field set (a stem both staged and stored, to show every field).
fn full_result() -> StageResult {
    StageResult {
        model: Some("Kim_Vocal_2".into()),
        family: Some("mdx".into()),
        stems: BTreeMap::from([(
            "vocals".to_string(),
            Stem {
                file: Some("t/1/vocals.wav".into()),
                ..stored_stem()
            },
        )]),
        format: Some("flac".into()),
        sample_rate: Some(44100),
        bitrate: Some(160),
        duration_seconds: Some(1.5),
        source_sample_rate: Some(48000),
        timings: Timings {
            model_seconds: Some(0.1),
            separation_seconds: Some(0.2),
            processing_seconds: Some(0.3),
            upload_seconds: Some(0.4),
        },
        realtime_factor: Some(0.1),
        models: Some(vec!["a".into(), "b".into()]),
        ensemble: Some("average".into()),
        webhook: Some(WebhookOutcome {
            state: WebhookState::Delivered,
            attempts: 1,
        }),
    }
}

fn error() -> Option<TaskError> {
    Some(TaskError {
        code: Some("audio_corrupt".into()),
        message: Some("the audio is damaged".into()),
    })
}

fn check(schema: &str, value: Value) {
    let doc = document();
    let mut out = Vec::new();
    differences(
        &doc,
        &json!({"$ref": format!("#/components/schemas/{schema}")}),
        &value,
        schema,
        &mut out,
    );
    assert!(
        out.is_empty(),
        "openapi.json and the code differ:\n{}",
        out.join("\n")
    );
}

#[test]
fn the_task_schema_matches_the_task_view() {
    let view = TaskView {
        task_id: TaskId::generate(),
        status: Status::Succeeded,
        stage: Stage::Deliver,
        priority: Priority::HIGHEST,
        position: Some(0),
        progress: 100,
        attempts: 1,
        max_attempts: 5,
        worker: Some("host-1-uploader".into()),
        cancel_requested: false,
        created_at: "2026-11-30T12:00:00.000Z".into(),
        updated_at: "2026-11-30T12:00:01.000Z".into(),
        started_at: Some("2026-11-30T12:00:00.500Z".into()),
        finished_at: Some("2026-11-30T12:00:01.000Z".into()),
        error: error(),
        result: Some(full_result()),
        webhook_deliveries: vec![DeliveryAttempt {
            at: "2026-11-30T12:00:01Z".into(),
            status: Some(503),
            duration_ms: 12,
            outcome: DeliveryOutcome::Retry,
            error: Some("receiver answered 503".into()),
        }],
        request: RequestView {
            audio: "https://audio.example/song.wav".into(),
            hook_url: Some("https://hooks.example/uvr".into()),
            model: Some("Kim_Vocal_2".into()),
            models: Some(vec!["a".into()]),
            ensemble: Some("average".into()),
            stems: Some(vec!["vocals".into()]),
            output_format: Some("flac".into()),
        },
    };
    check("Task", serde_json::to_value(view).unwrap());
}

#[test]
fn the_webhook_schema_matches_the_payload() {
    let payload = Payload {
        task_id: TaskId::generate(),
        status: Status::Failed,
        priority: Priority::HIGHEST,
        model: Some("Kim_Vocal_2".into()),
        family: Some("mdx".into()),
        stems: BTreeMap::from([("vocals".to_string(), stored_stem())]),
        duration_seconds: Some(1.5),
        timings: PayloadTimings {
            time_to_separated_seconds: Some(0.5),
            separation_seconds: Some(0.2),
            upload_seconds: Some(0.4),
        },
        error: error(),
    };
    check("WebhookPayload", serde_json::to_value(payload).unwrap());
}

/// The check itself notices an undocumented field and a documented one never produced.
#[test]
fn a_difference_is_reported() {
    let doc = json!({"components": {"schemas": {"S": {"type": "object",
        "properties": {"a": {"type": "object", "properties": {"x": {}}}, "b": {}}}}}});
    let mut out = Vec::new();
    let value = json!({"a": {"y": 1}, "c": 2});
    differences(
        &doc,
        &json!({"$ref": "#/components/schemas/S"}),
        &value,
        "S",
        &mut out,
    );
    out.sort();
    assert_eq!(
        out,
        [
            "S.a.x: documented but never produced",
            "S.a.y: produced but not documented",
            "S.b: documented but never produced",
            "S.c: produced but not documented",
        ]
    );
}
