//! Photos uploaded by the browser straight to S3.
//!
//! `POST /api/uploads?content_type=image/jpeg` hands out a presigned POST
//! policy for one object key: the S3 endpoint itself enforces the key, the
//! declared type and the size bound, so the photo never passes through the
//! gateway. `POST /api/uploads/{id}/people` checks what arrived (content, not
//! the declared type) and has a worker find the people in it, with a preview
//! of each to pick from. `POST /api/video/generate` then takes `upload_id`
//! in place of the `image` file.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use chrono::Utc;
use redis::AsyncCommands;
use serde::Deserialize;
use serde_json::json;
use shared::catalog_task::{CatalogTaskKind, CatalogTaskResult};
use shared::keys::{self, objects};
use shared::storage::StorageError;

use crate::admission::{Limit, Scope};
use crate::error::{AppError, AppResult};
use crate::intake::{ImageKind, check_image_file, check_task_id};
use crate::state::AppState;

/// How long a client has to start the upload once it has the policy.
const POLICY_TTL: Duration = Duration::from_secs(15 * 60);
/// How long an upload can wait for its job.
const RECORD_TTL: Duration = Duration::from_secs(60 * 60);

pub fn router() -> Router<AppState> {
    Router::new().route("/api/uploads", post(create)).route("/api/uploads/{upload_id}/people", post(people))
}

#[derive(Deserialize)]
struct CreateQuery {
    content_type: Option<String>,
}

async fn create(
    State(state): State<AppState>,
    ip: crate::admission::ClientIp,
    q: Result<Query<CreateQuery>, QueryRejection>,
) -> AppResult<impl IntoResponse> {
    let q = q.map_err(|e| AppError::bad_request("invalid-query", e.body_text()))?;
    let declared = q.content_type.as_deref().map(str::trim).unwrap_or_default();
    let kind = [ImageKind::Jpeg, ImageKind::Png, ImageKind::Webp]
        .into_iter()
        .find(|k| k.mime() == declared)
        .ok_or_else(|| {
            AppError::client(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-image-type",
                "The photo must be a JPEG, PNG or WebP image (content_type=image/jpeg, image/png or image/webp).",
            )
        })?;
    Limit::new(&state, &ip, Scope::Uploads).take().await?;

    let upload_id = uuid::Uuid::new_v4().to_string();
    let key = objects::upload_original(&upload_id, kind.ext());
    let _: () = state.redis.clone().set_ex(keys::upload(&upload_id), &key, RECORD_TTL.as_secs()).await?;
    let post = state.storage.presign_post(&key, kind.mime(), state.cfg.max_upload_bytes, POLICY_TTL);
    let fields: serde_json::Map<String, serde_json::Value> =
        post.fields.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "upload_id": upload_id,
            "url": post.url,
            "fields": fields,
            "file_field": "file",
            "max_bytes": state.cfg.max_upload_bytes,
            "expires_at": post.expires_at,
            "people_url": format!("/api/uploads/{upload_id}/people"),
        })),
    ))
}

/// The photo of an upload, fetched and checked like a photo sent to
/// `/api/video/generate`: a file that is not a usable photo is deleted and
/// refused with the same 4xx. What was checked is this local copy (cut at
/// the image's end); the caller stores it under a key of the server's own,
/// which no upload policy can write, so a second POST to the policy after
/// the check cannot change what a worker reads.
pub struct CheckedUpload {
    pub file: tempfile::TempPath,
    pub kind: ImageKind,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
}

/// The checked copy of an upload that `/people` looked at (and a job then uses).
fn checked_key(policy_key: &str) -> String {
    policy_key.replacen("/original.", "/checked.", 1)
}

/// A valid upload id with a live record: the policy's object key.
async fn policy_key(state: &AppState, upload_id: &str) -> AppResult<String> {
    let upload_id = check_task_id(upload_id)
        .map_err(|_| AppError::bad_request("invalid-upload-id", "That is not a valid upload id."))?;
    let key: Option<String> = state.redis.clone().get(keys::upload(&upload_id)).await?;
    key.ok_or_else(|| {
        AppError::not_found(
            "upload-not-found",
            "No such upload (upload links are kept for one hour); please upload the photo again.",
        )
    })
}

/// Fetch the object at `key` and check it as a photo; `policy_key` is the
/// uploaded original, deleted if the photo is refused.
async fn fetch_checked(state: &AppState, key: &str, policy_key: &str) -> AppResult<CheckedUpload> {
    let too_big =
        || AppError::client(StatusCode::PAYLOAD_TOO_LARGE, "image-too-large", "The photo is larger than 10 MB.");
    match state.storage.head(key).await? {
        None => {
            return Err(AppError::client(
                StatusCode::CONFLICT,
                "upload-missing",
                "The photo has not arrived in storage: upload it with the policy first.",
            ));
        }
        Some(n) if n > state.cfg.max_upload_bytes => {
            let _ = state.storage.delete(policy_key).await;
            return Err(too_big());
        }
        Some(_) => {}
    }
    let file = tempfile::Builder::new()
        .prefix("tayori-upload-")
        .tempfile_in(&state.cfg.tmp_dir)
        .map_err(|e| AppError::Internal(format!("temp file: {e}")))?
        .into_temp_path();
    let bytes = match state.storage.get_to_file(key, &file).await {
        Ok(n) => n,
        Err(StorageError::NotFound { .. }) => {
            return Err(AppError::client(StatusCode::CONFLICT, "upload-missing", "The photo is no longer in storage."));
        }
        Err(e) => return Err(e.into()),
    };
    if bytes > state.cfg.max_upload_bytes {
        let _ = state.storage.delete(policy_key).await;
        return Err(too_big());
    }
    match check_image_file(file, state.cfg.max_image_pixels).await {
        Ok((file, c)) => Ok(CheckedUpload { file, kind: c.kind, width: c.width, height: c.height, bytes: c.bytes }),
        Err(e) => {
            if matches!(e, AppError::Client { .. }) {
                let _ = state.storage.delete(policy_key).await;
            }
            Err(e)
        }
    }
}

/// The photo a job made from `upload_id` processes: the copy `/people`
/// checked if there is one, else the uploaded object, checked now.
pub async fn checked(state: &AppState, upload_id: &str) -> AppResult<CheckedUpload> {
    let original = policy_key(state, upload_id).await?;
    let checked = checked_key(&original);
    let source = if state.storage.head(&checked).await?.is_some() { checked } else { original.clone() };
    fetch_checked(state, &source, &original).await
}

async fn people(
    State(state): State<AppState>,
    ip: crate::admission::ClientIp,
    Path(upload_id): Path<String>,
) -> AppResult<impl IntoResponse> {
    let original = policy_key(&state, &upload_id).await?;
    // Each call costs a worker a detection run: bounded per client like the
    // policies (counted once the upload is known), and by the task queue.
    Limit::new(&state, &ip, Scope::People).take().await?;
    crate::admission::catalog_queue_room(&state).await?;
    let photo = fetch_checked(&state, &original, &original).await?;
    // The worker looks at the copy that was checked, and a job made from
    // this upload uses the same copy.
    let checked = checked_key(&original);
    state.storage.put_file(&checked, &photo.file, photo.kind.mime()).await?;
    drop(photo.file);
    let task = CatalogTaskKind::DetectPeople { source_key: checked, upload_id: upload_id.clone() };
    let found = match super::catalog::run_task(&state, task).await? {
        CatalogTaskResult::People(p) => p,
        other => return Err(AppError::Internal(format!("unexpected catalog task result {other:?}"))),
    };
    let ttl = state.cfg.presign_ttl;
    let mut people = Vec::with_capacity(found.people.len());
    for p in &found.people {
        let (url, _) = state.storage.presign_get(&p.preview_key, ttl).await?;
        people.push(json!({"index": p.index, "face": p.face, "body": p.body, "preview_url": url}));
    }
    tracing::info!(%upload_id, people = people.len(), "people found in an upload");
    Ok(Json(json!({
        "upload_id": upload_id,
        "width": found.width,
        "height": found.height,
        "people": people,
        "default_index": found.default_index,
        "checked_at": Utc::now(),
    })))
}
