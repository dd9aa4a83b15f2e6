//! Reading `multipart/form-data` bodies: the `audio` file part is streamed to the uploads
//! directory under `MAX_AUDIO_BYTES` (never held whole in memory); the other parts are the
//! request's fields as text. On any error nothing is left on disk.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, web};
use futures_util::StreamExt;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use super::ApiError;
use crate::pipeline::uploads::{SCHEME, Uploads};

/// Longest text field of a form.
const MAX_FIELD_BYTES: usize = 16 << 10;
/// Most parts in a form.
const MAX_PARTS: usize = 32;

/// A form as read: its fields as a JSON object (as `POST /generate`'s JSON body would carry
/// them) and the upload, when it had a file.
#[derive(Debug)]
pub struct Form {
    /// The fields; `audio` is `upload://<id>` when a file was sent.
    pub fields: Map<String, Value>,
    /// The stored upload: its id and size.
    pub upload: Option<(String, u64)>,
}

/// Whether a `Content-Type` is `multipart/form-data`.
pub fn is_multipart(req: &HttpRequest) -> bool {
    req.headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("multipart/form-data"))
}

fn malformed(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "malformed_body",
        format!("could not read the multipart body: {e}"),
    )
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the upload is larger than {limit} bytes (MAX_AUDIO_BYTES)"),
    )
}

/// A text field's JSON value: integers for the numeric fields when they are integers,
/// a list for `stems` (comma-separated), text otherwise (so a wrong type is still reported
/// by the request's validation).
fn field_value(name: &str, text: String) -> Value {
    match name {
        "priority" | "bitrate" | "sample_rate" => text
            .trim()
            .parse::<u64>()
            .map(Value::from)
            .unwrap_or(Value::String(text)),
        "stems" => Value::Array(
            text.split(',')
                .map(|s| Value::String(s.trim().to_string()))
                .collect(),
        ),
        _ => Value::String(text),
    }
}

/// Reads a form, storing its `audio` file under `uploads`.
pub async fn read_form(
    req: &HttpRequest,
    payload: web::Payload,
    uploads: &Uploads,
) -> Result<Form, ApiError> {
    let boundary = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("boundary="));
    if !boundary {
        // Nothing can be parsed; read (a bounded part of) the body so the answer arrives.
        drain_body(payload).await;
        return Err(malformed("the Content-Type has no boundary"));
    }
    let mut written: Option<(String, std::path::PathBuf, u64)> = None;
    let mut form = actix_multipart::Multipart::new(req.headers(), payload);
    let result = read_parts(&mut form, uploads, &mut written).await;
    if result.is_err() {
        // Read the rest of a refused form (up to a bound) so that the client gets the
        // answer instead of a reset connection.
        drain(&mut form, uploads.max_bytes.saturating_add(DRAIN_SLACK)).await;
    }
    match result {
        Ok(mut fields) => {
            let upload = match written {
                None => None,
                Some((id, part, bytes)) => {
                    let done = uploads.path(&id);
                    if let Err(e) = tokio::fs::rename(&part, &done).await {
                        let _ = tokio::fs::remove_file(&part).await;
                        return Err(ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "internal_error",
                            format!("cannot store the upload: {e}"),
                        ));
                    }
                    fields.insert("audio".into(), Value::String(format!("{SCHEME}{id}")));
                    Some((id, bytes))
                }
            };
            Ok(Form { fields, upload })
        }
        Err(e) => {
            if let Some((_, part, _)) = written {
                let _ = tokio::fs::remove_file(&part).await;
            }
            Err(e)
        }
    }
}

/// Reads and drops (at most 1 MiB of) a body that is refused unread, so that the client gets
/// the answer on a connection that is not reset under it.
pub async fn drain_body(mut payload: web::Payload) {
    let mut budget: usize = 1 << 20;
    while let Some(Ok(chunk)) = payload.next().await {
        budget = budget.saturating_sub(chunk.len());
        if budget == 0 {
            break;
        }
    }
}

/// How much of a refused form is read beyond `MAX_AUDIO_BYTES` before the connection is
/// simply closed.
const DRAIN_SLACK: u64 = 16 << 20;

async fn drain(form: &mut actix_multipart::Multipart, mut budget: u64) {
    while let Some(Ok(mut field)) = form.next().await {
        while let Some(Ok(chunk)) = field.next().await {
            budget = budget.saturating_sub(chunk.len() as u64);
            if budget == 0 {
                return;
            }
        }
    }
}

async fn read_parts(
    form: &mut actix_multipart::Multipart,
    uploads: &Uploads,
    written: &mut Option<(String, std::path::PathBuf, u64)>,
) -> Result<Map<String, Value>, ApiError> {
    let mut fields = Map::new();
    let mut parts = 0;
    while let Some(field) = form.next().await {
        let mut field = field.map_err(malformed)?;
        parts += 1;
        if parts > MAX_PARTS {
            return Err(malformed(format!("more than {MAX_PARTS} parts")));
        }
        let name = field.name().unwrap_or_default().to_string();
        let is_file = field
            .content_disposition()
            .and_then(|d| d.get_filename())
            .is_some();
        if name == "audio" && is_file {
            if written.is_some() || fields.contains_key("audio") {
                return Err(ApiError::invalid(
                    "audio",
                    "duplicate_field",
                    "send one audio file (or one audio URL) per request",
                ));
            }
            tokio::fs::create_dir_all(uploads.dir())
                .await
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal_error",
                        format!("cannot store the upload: {e}"),
                    )
                })?;
            let (id, part) = uploads.allocate();
            let mut file = tokio::fs::File::create(&part).await.map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    format!("cannot store the upload: {e}"),
                )
            })?;
            *written = Some((id, part, 0));
            let mut bytes: u64 = 0;
            while let Some(chunk) = field.next().await {
                let chunk = chunk.map_err(malformed)?;
                bytes += chunk.len() as u64;
                if bytes > uploads.max_bytes {
                    return Err(too_large(uploads.max_bytes));
                }
                file.write_all(&chunk).await.map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal_error",
                        format!("cannot store the upload: {e}"),
                    )
                })?;
            }
            file.flush().await.map_err(malformed)?;
            if bytes == 0 {
                return Err(ApiError::invalid(
                    "audio",
                    "empty_upload",
                    "the audio file is empty",
                ));
            }
            if let Some(w) = written.as_mut() {
                w.2 = bytes;
            }
            continue;
        }
        let mut text = Vec::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(malformed)?;
            if text.len() + chunk.len() > MAX_FIELD_BYTES {
                return Err(malformed(format!(
                    "field {name:?} is longer than {MAX_FIELD_BYTES} bytes"
                )));
            }
            text.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(text)
            .map_err(|_| malformed(format!("field {name:?} is not UTF-8 text")))?;
        if name == "audio" && (written.is_some() || fields.contains_key("audio")) {
            return Err(ApiError::invalid(
                "audio",
                "duplicate_field",
                "send one audio file (or one audio URL) per request",
            ));
        }
        if !name.is_empty() {
            fields.insert(name.clone(), field_value(&name, text));
        }
    }
    Ok(fields)
}
