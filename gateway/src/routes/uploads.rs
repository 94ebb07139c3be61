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

use crate::admission::{Limit, Scope};
use crate::error::{AppError, AppResult};
use crate::idempotency;
use crate::intake::ImageKind;
use crate::state::AppState;
use crate::uploaded::{RECORD_TTL, checked_key, fetch_checked, policy_key};

/// How long a client has to start the upload once it has the policy.
const POLICY_TTL: Duration = Duration::from_secs(15 * 60);

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
    headers: axum::http::HeaderMap,
    q: Result<Query<CreateQuery>, QueryRejection>,
) -> AppResult<axum::response::Response> {
    let q = q.map_err(|e| AppError::bad_request("invalid-query", e.body_text()))?;
    let key = idempotency::Key::from_headers(&headers, "uploads")?;
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
    let fingerprint = idempotency::fingerprint([("content_type", Some(kind.mime().as_bytes()))]);
    let work = {
        let state = state.clone();
        async move {
            Limit::new(&state, &ip, Scope::Uploads).take().await?;
            let upload_id = uuid::Uuid::new_v4().to_string();
            let object = objects::upload_original(&upload_id, kind.ext());
            let _: () = state.redis.clone().set_ex(keys::upload(&upload_id), &object, RECORD_TTL.as_secs()).await?;
            Ok(policy(&state, &upload_id, &object, kind))
        }
    };
    let answer = match idempotency::once(state.redis.clone(), key, fingerprint, None, work).await? {
        idempotency::Once::Made(answer) => answer,
        idempotency::Once::Replay(answer) => {
            // The same request, answered before: a fresh policy for the
            // same upload (the first one may have expired), not counted.
            let upload_id = answer["upload_id"].as_str().unwrap_or_default().to_owned();
            let object: Option<String> = state.redis.clone().get(keys::upload(&upload_id)).await?;
            let object = object.ok_or_else(|| {
                AppError::client(
                    StatusCode::GONE,
                    "upload-expired",
                    "The upload this Idempotency-Key made has expired; ask for a new one with a new key.",
                )
            })?;
            let mut resp = (StatusCode::CREATED, Json(policy(&state, &upload_id, &object, kind))).into_response();
            idempotency::mark_replayed(resp.headers_mut());
            return Ok(resp);
        }
    };
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// The answer to a policy request: a presigned POST for `object`.
fn policy(state: &AppState, upload_id: &str, object: &str, kind: ImageKind) -> serde_json::Value {
    let post = state.storage.presign_post(object, kind.mime(), state.cfg.max_upload_bytes, POLICY_TTL);
    let fields: serde_json::Map<String, serde_json::Value> =
        post.fields.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
    json!({
        "upload_id": upload_id,
        "url": post.url,
        "fields": fields,
        "file_field": "file",
        "max_bytes": state.cfg.max_upload_bytes,
        "expires_at": post.expires_at,
        "people_url": format!("/api/uploads/{upload_id}/people"),
    })
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
    let found = match crate::catalog_tasks::run(&state, task).await? {
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
