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

use crate::error::{AppError, AppResult};
use crate::intake::{ImageKind, check_image_file, check_task_id};
use crate::state::AppState;

/// How long a client has to start the upload once it has the policy.
const POLICY_TTL: Duration = Duration::from_secs(15 * 60);
/// How long an upload can wait for its job.
const RECORD_TTL: Duration = Duration::from_secs(60 * 60);
/// Upload policies per client address per minute, as a multiple of the
/// video rate limit (a person may try a few photos per video).
const UPLOADS_PER_VIDEO: u32 = 4;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/uploads", post(create)).route("/api/uploads/{upload_id}/people", post(people))
}

/// The per-client limit of `scope` (its own window): 4 × the video limit.
async fn limit(state: &AppState, scope: &str, ip: crate::admission::ClientIp) -> AppResult<()> {
    let per_minute = state.cfg.rate_limit_per_min.saturating_mul(UPLOADS_PER_VIDEO);
    crate::admission::rate_limit_scoped(&mut state.redis.clone(), scope, ip.0, per_minute).await
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
    limit(&state, "uploads", ip).await?;

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
/// refused with the same 4xx.
pub struct CheckedUpload {
    pub key: String,
    pub width: u32,
    pub height: u32,
}

pub async fn checked(state: &AppState, upload_id: &str) -> AppResult<CheckedUpload> {
    let upload_id = check_task_id(upload_id)
        .map_err(|_| AppError::bad_request("invalid-upload-id", "That is not a valid upload id."))?;
    let key: Option<String> = state.redis.clone().get(keys::upload(&upload_id)).await?;
    let key = key.ok_or_else(|| {
        AppError::not_found(
            "upload-not-found",
            "No such upload (upload links are kept for one hour); please upload the photo again.",
        )
    })?;
    let too_big =
        || AppError::client(StatusCode::PAYLOAD_TOO_LARGE, "image-too-large", "The photo is larger than 10 MB.");
    match state.storage.head(&key).await? {
        None => {
            return Err(AppError::client(
                StatusCode::CONFLICT,
                "upload-missing",
                "The photo has not arrived in storage: upload it with the policy first.",
            ));
        }
        Some(n) if n > state.cfg.max_upload_bytes => {
            let _ = state.storage.delete(&key).await;
            return Err(too_big());
        }
        Some(_) => {}
    }
    let file = tempfile::Builder::new()
        .prefix("tayori-upload-")
        .tempfile_in(&state.cfg.tmp_dir)
        .map_err(|e| AppError::Internal(format!("temp file: {e}")))?
        .into_temp_path();
    match state.storage.get_to_file(&key, &file).await {
        Ok(_) => {}
        Err(StorageError::NotFound { .. }) => {
            return Err(AppError::client(StatusCode::CONFLICT, "upload-missing", "The photo is no longer in storage."));
        }
        Err(e) => return Err(e.into()),
    }
    match check_image_file(file, state.cfg.max_image_pixels).await {
        Ok((_file, (_, width, height))) => Ok(CheckedUpload { key, width, height }),
        Err(e) => {
            if matches!(e, AppError::Client { .. }) {
                let _ = state.storage.delete(&key).await;
            }
            Err(e)
        }
    }
}

async fn people(
    State(state): State<AppState>,
    ip: crate::admission::ClientIp,
    Path(upload_id): Path<String>,
) -> AppResult<impl IntoResponse> {
    // Each call costs a worker a detection run: bounded per client like the policies.
    limit(&state, "people", ip).await?;
    let upload = checked(&state, &upload_id).await?;
    let task = CatalogTaskKind::DetectPeople { source_key: upload.key.clone(), upload_id: upload_id.clone() };
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
