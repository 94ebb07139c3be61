//! Photos the browser uploaded straight to S3, as the routes that use them
//! see them: the upload record (`upload:{id}` in Redis, the policy's object
//! key, kept [`RECORD_TTL`]), and the photo fetched and checked. The upload
//! routes (`routes::uploads`) and the job route (`routes::jobs`, which takes
//! an `upload_id`) both build on this.

use std::time::Duration;

use axum::http::StatusCode;
use redis::AsyncCommands;
use shared::keys;
use shared::storage::StorageError;

use crate::error::{AppError, AppResult};
use crate::intake::{ImageKind, check_image_file, check_task_id};
use crate::state::AppState;

/// How long an upload can wait for its job.
pub const RECORD_TTL: Duration = Duration::from_secs(60 * 60);

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
pub(crate) fn checked_key(policy_key: &str) -> String {
    policy_key.replacen("/original.", "/checked.", 1)
}

/// A valid upload id with a live record: the policy's object key.
pub(crate) async fn policy_key(state: &AppState, upload_id: &str) -> AppResult<String> {
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
pub(crate) async fn fetch_checked(state: &AppState, key: &str, policy_key: &str) -> AppResult<CheckedUpload> {
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
