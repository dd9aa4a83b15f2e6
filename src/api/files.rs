//! Files: uploads in (`POST /uploads`), stems out (`GET /files/...` through signed links, and
//! `GET /tasks/{id}/stems/{name}` for a fresh link).

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::handlers::{authenticate, unavailable};
use super::tasks::owned_task;
use super::{ApiError, AppState};
use crate::task::TaskId;

/// `POST /uploads`: stores one audio file (a `multipart/form-data` body whose `audio` part is
/// the file) for a later `POST /generate` with `"audio": "upload://<id>"`.
pub async fn upload(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authenticate(&req, &st)?;
    if !super::upload::is_multipart(&req) {
        super::upload::drain_body(payload).await;
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the file as multipart/form-data, in a part named audio",
        ));
    }
    let form = super::upload::read_form(&req, payload, &st.uploads).await?;
    let Some((id, bytes)) = form.upload else {
        return Err(ApiError::invalid(
            "audio",
            "missing_field",
            "the form has no audio file (a part named audio with a file name)",
        ));
    };
    Ok(HttpResponse::Created().json(json!({
        "upload": format!("{}{id}", crate::pipeline::uploads::SCHEME),
        "bytes": bytes,
        "message": "use it as the audio of POST /generate; it is removed when its task ends",
    })))
}

/// A fresh signed link to one stored stem of a task, as a redirect: links in the task and
/// the webhook expire, this route signs a new one for as long as the task is retained and
/// the stem stored.
pub async fn stem_link(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (raw_id, name) = path.into_inner();
    let (id, rec, _) = owned_task(&req, &st, &raw_id).await?;
    let stem = rec
        .result
        .as_ref()
        .and_then(|r| r.stems.get(&name))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "stem_not_found",
                format!("task {id} has no stem {name:?} (see result.stems of the task)"),
            )
        })?;
    if stem.url.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "stems_not_stored",
            "the stems are separated but not stored yet; retry shortly",
        )
        .retry_after(Duration::from_secs(2)));
    }
    let Some(storage) = &st.storage else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "links_unavailable",
            "this API has no access to the stem store (S3 credentials are not set for it)",
        ));
    };
    let key = stem
        .key
        .clone()
        .unwrap_or_else(|| format!("{id}/{name}.wav"));
    let stored = storage.exists(&key).await.map_err(|e| {
        tracing::warn!(task = %id, error = %e, "stem store unreachable");
        unavailable("the stem store")
    })?;
    if !stored {
        return Err(ApiError::new(
            StatusCode::GONE,
            "stem_expired",
            "the stem was deleted after RESULT_URL_TTL",
        ));
    }
    let link = storage.link(&key).await.map_err(|e| {
        tracing::warn!(task = %id, error = %e, "cannot sign a link");
        unavailable("the stem store")
    })?;
    Ok(HttpResponse::Found()
        .insert_header((header::LOCATION, link.url.clone()))
        .json(json!({"url": link.url, "expires_at": link.expires_at})))
}

/// The signature of a download link.
#[derive(serde::Deserialize)]
pub struct LinkQuery {
    expires: Option<u64>,
    sig: Option<String>,
}

/// Serves a stored stem through a signed, expiring link (local storage only), with its
/// content type, `Range`, `ETag`/`Last-Modified` (conditional requests) and `HEAD`.
pub async fn download(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<LinkQuery>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Some(files) = &st.files else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no local storage here",
        ));
    };
    let (task, name) = path.into_inner();
    let no_such_file = || ApiError::new(StatusCode::NOT_FOUND, "file_not_found", "no such file");
    let content_type = name
        .rsplit_once('.')
        .filter(|(stem, _)| {
            !stem.is_empty()
                && name.len() <= 64
                && stem
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .and_then(|(_, ext)| crate::audio::encode::media_type(ext))
        .ok_or_else(no_such_file)?;
    let task: TaskId = task.parse().map_err(|_| no_such_file())?;
    let key = format!("{task}/{name}");
    let (Some(expires), Some(sig)) = (query.expires, query.sig.as_deref()) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "link_invalid",
            "the link is not signed",
        ));
    };
    if !crate::pipeline::storage::verify_link(&files.key, &key, expires, sig) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "link_invalid",
            "the link signature is wrong or the link has expired",
        ));
    }
    let file_path = files.root.join(task.as_str()).join(&name);
    let file = web::block(move || actix_files::NamedFile::open(file_path))
        .await
        .map_err(|_| unavailable("the file store"))?
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "file_not_found", "the file is gone"))?
        .set_content_type(content_type.parse().expect("a valid media type"))
        .set_content_disposition(header::ContentDisposition {
            disposition: header::DispositionType::Attachment,
            parameters: vec![header::DispositionParam::Filename(name.clone())],
        });
    let mut resp = file.into_response(&req);
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("private, max-age=3600"),
    );
    Ok(resp)
}
