//! Job submission, status and result.

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use chrono::Utc;
use serde_json::json;
use shared::job::{Background, JOB_VERSION, Resolution, VideoJob};
use shared::keys::objects;
use shared::progress::{ProgressEvent, TaskMeta, TaskStatus};

use crate::admission::{Limit, Scope};
use crate::error::{AppError, AppResult};
use crate::idempotency;
use crate::intake::{check_image_file, check_message, check_task_id};
use crate::state::AppState;
use crate::upload;
use crate::uploaded::CheckedUpload;

pub fn router(max_upload_bytes: u64) -> Router<AppState> {
    Router::new()
        .route("/api/video/generate", post(generate).layer(DefaultBodyLimit::max(upload::body_limit(max_upload_bytes))))
        .route("/api/video/status/{task_id}", get(status))
        .route("/api/video/result/{task_id}", get(result))
        .route("/api/video/{task_id}/cancel", post(cancel).layer(DefaultBodyLimit::max(CANCEL_BODY_LIMIT)))
        .route("/api/video/{task_id}", delete(cancel).layer(DefaultBodyLimit::max(CANCEL_BODY_LIMIT)))
}

/// A cancel's body is at most a small JSON object.
const CANCEL_BODY_LIMIT: usize = 4 * 1024;

fn too_big() -> AppError {
    AppError::client(StatusCode::PAYLOAD_TOO_LARGE, "image-too-large", "The photo is larger than 10 MB.")
}

/// The text fields of a submit.
const FIELDS: [&str; 7] =
    ["message", "voice_profile_id", "bgm_id", "resolution", "person_index", "background", "upload_id"];

async fn generate(
    State(state): State<AppState>,
    ip: crate::admission::ClientIp,
    headers: axum::http::HeaderMap,
    crate::upload::MultipartForm(mp): crate::upload::MultipartForm,
) -> AppResult<axum::response::Response> {
    // Decided before the upload is read: a refused client costs no disk.
    // The request is counted only once it has passed validation (below).
    let mut limit = Limit::new(&state, &ip, Scope::Videos);
    let admitted = async {
        let key = idempotency::Key::from_headers(&headers, "generate")?;
        crate::admission::queue_room(&state).await?;
        limit.check().await?;
        Ok::<_, AppError>(key)
    }
    .await;
    let key = match admitted {
        Ok(key) => key,
        Err(e) => {
            upload::discard(mp).await;
            return Err(e);
        }
    };
    let form = upload::read_form(mp, "image", &FIELDS, &state.cfg.tmp_dir, state.cfg.max_upload_bytes, too_big).await?;
    // From here the request is carried to its end even if the client goes
    // away: a job made is always recorded for the retry.
    let fingerprint = form.fingerprint(&FIELDS);
    let made = idempotency::once(state.redis.clone(), key, fingerprint, Some("cancel_token"), async move {
        make_job(&state, limit, form).await
    })
    .await?;
    let (answer, replayed) = match made {
        idempotency::Once::Made(answer) => (answer, false),
        idempotency::Once::Replay(answer) => {
            // The same request, answered before: no second job, not counted.
            tracing::info!(task_id = %answer["task_id"], "submit replayed for its Idempotency-Key");
            (answer, true)
        }
    };
    let mut resp = (StatusCode::ACCEPTED, Json(answer)).into_response();
    if replayed {
        idempotency::mark_replayed(resp.headers_mut());
    }
    Ok(resp)
}

/// Check a submitted form, store its photo and queue the job: the answer's
/// body, with the job's cancel token.
async fn make_job(state: &AppState, mut limit: Limit, form: upload::Form) -> AppResult<serde_json::Value> {
    let message = check_message(
        form.text("message")
            .ok_or_else(|| AppError::bad_request("message-empty", "Please type a message to speak."))?,
    )?;
    let voice_id = form
        .text("voice_profile_id")
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| AppError::bad_request("voice-missing", "Please choose a voice (voice_profile_id)."))?
        .to_owned();
    let Some(voice) = state.catalog.voice(&voice_id).await? else {
        return Err(AppError::bad_request("unknown-voice", format!("There is no voice profile {voice_id:?}.")));
    };
    // A voice reads only its own language's script: anything else comes
    // out as noise (kanji spelled as "Chinese letter", English as kana).
    if let Some(language) = shared::text::language(&message)
        && language != voice.language
    {
        let catalog = state.catalog.voices_async().await?;
        let voices = catalog.profiles.iter().filter(|p| p.language == language).map(|p| p.id.clone()).collect();
        return Err(AppError::VoiceLanguage { language, voice: voice_id, voice_language: voice.language, voices });
    }
    let bgm_id = form.text("bgm_id").map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    if let Some(id) = &bgm_id
        && state.catalog.track(id).await?.is_none()
    {
        return Err(AppError::bad_request("unknown-bgm", format!("There is no music track {id:?}.")));
    }
    let resolution: Resolution = match form.text("resolution").map(str::trim).filter(|v| !v.is_empty()) {
        None => Resolution::default(),
        Some(r) => r.parse().map_err(|e: String| AppError::bad_request("invalid-resolution", e))?,
    };
    let person_index: Option<u32> = match form.text("person_index").map(str::trim).filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => Some(v.parse().ok().filter(|i| *i < 100).ok_or_else(|| {
            AppError::bad_request("invalid-person-index", format!("person_index {v:?} is not a number from 0 to 99."))
        })?),
    };
    let background: Background = match form.text("background").map(str::trim).filter(|v| !v.is_empty()) {
        None => Background::default(),
        Some(b) => b.parse().map_err(|e: String| AppError::bad_request("invalid-background", e))?,
    };
    let upload_id = form.text("upload_id").map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    if form.file.is_some() && upload_id.is_some() {
        return Err(AppError::bad_request(
            "duplicate-field",
            "Send either the photo (image) or the id of an upload (upload_id), not both.",
        ));
    }
    let task_id = uuid::Uuid::new_v4().to_string();
    // The photo: sent in this form, or uploaded before straight to S3;
    // either way checked here and stored under a key this job owns (no
    // upload policy can write it), cut to the image's end.
    let photo = match (form.file, upload_id) {
        (None, Some(id)) => crate::uploaded::checked(state, &id).await?,
        (Some(upload::SpooledFile { path, bytes, .. }), None) => {
            if bytes == 0 {
                return Err(AppError::bad_request("image-missing", "The photo is empty."));
            }
            let (file, c) = check_image_file(path, state.cfg.max_image_pixels).await?;
            CheckedUpload { file, kind: c.kind, width: c.width, height: c.height, bytes: c.bytes }
        }
        _ => return Err(AppError::bad_request("image-missing", "Please choose a photo (field image).")),
    };
    // Valid: now it counts against the client's allowance.
    limit.take().await?;
    let (width, height, image_bytes) = (photo.width, photo.height, photo.bytes);
    let image_key = objects::upload_original(&task_id, photo.kind.ext());
    state.storage.put_file(&image_key, &photo.file, photo.kind.mime()).await?;
    drop(photo.file);

    let now = Utc::now();
    let (cancel_token, cancel_hash) = shared::cancel::new_token();
    let job = VideoJob {
        version: JOB_VERSION,
        task_id: task_id.clone(),
        image_key: image_key.clone(),
        message,
        voice_profile_id: voice_id,
        bgm_id,
        resolution,
        person_index,
        background,
        submitted_at: now,
    };
    let enqueued = async {
        state.tasks.put_meta(&TaskMeta::pending(&task_id, now)).await?;
        shared::cancel::store_token_hash(&state.tasks, &task_id, &cancel_hash).await?;
        state.tasks.publish(&ProgressEvent::queued(&task_id)).await?;
        state.queue.push(&job).await?;
        Ok::<_, AppError>(())
    }
    .await;
    if let Err(e) = enqueued {
        // Leave nothing behind for a job that was never queued.
        let _ = state.storage.delete(&image_key).await;
        let _ = state.tasks.forget(&task_id).await;
        return Err(e);
    }
    state.metrics.jobs_submitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(%task_id, width, height, bytes = image_bytes, "job queued");
    let answer = json!({
        "task_id": task_id,
        "status": "PENDING",
        "status_url": format!("/api/video/status/{task_id}"),
        "result_url": format!("/api/video/result/{task_id}"),
        "progress_ws": format!("/ws/progress/{task_id}"),
        "cancel_url": format!("/api/video/{task_id}/cancel"),
        "cancel_token": cancel_token,
    });
    Ok(answer)
}

/// The cancel token of a request: the `X-Cancel-Token` header, or
/// `cancel_token` in a JSON body.
fn cancel_token(headers: &axum::http::HeaderMap, body: &[u8]) -> Option<String> {
    if let Some(v) = headers.get("x-cancel-token") {
        return v.to_str().ok().map(|t| t.trim().to_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("cancel_token")?.as_str().map(str::to_owned)
}

/// `POST /api/video/{id}/cancel` (or `DELETE /api/video/{id}`): the job is
/// written REVOKED, viewers get the final event, workers running its stages
/// drop them (killing their tools), and what it stored is removed.
async fn cancel(
    State(state): State<AppState>,
    ip: crate::admission::ClientIp,
    Path(task_id): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> AppResult<impl IntoResponse> {
    let task_id = check_task_id(&task_id)?;
    // Every try counts, so tokens cannot be guessed at speed.
    let mut limit = Limit::new(&state, &ip, Scope::Cancels);
    limit.check().await?;
    limit.take().await?;
    let token = cancel_token(&headers, &body);
    use shared::cancel::Revoke;
    match shared::cancel::revoke(&state.tasks, &task_id, token.as_deref()).await? {
        Revoke::NotFound => {
            return Err(AppError::not_found(
                "task-not-found",
                "No job with that id (it may have expired after 24 hours).",
            ));
        }
        Revoke::WrongToken => {
            return Err(AppError::client(
                StatusCode::FORBIDDEN,
                "cancel-token-invalid",
                "A job can be cancelled only with the cancel_token its submit answer carried.",
            ));
        }
        Revoke::Finished(s) => {
            return Err(AppError::client(
                StatusCode::CONFLICT,
                "task-finished",
                format!(
                    "The job has already {}; there is nothing to cancel.",
                    if s == TaskStatus::Success { "succeeded" } else { "failed" }
                ),
            ));
        }
        Revoke::AlreadyRevoked => {}
        Revoke::Revoked(_) => {
            tracing::info!(%task_id, "job cancelled by its sender");
            let mut conn = state.tasks.conn();
            if let Err(e) = shared::metrics::record_job_cancelled(&mut conn).await {
                tracing::warn!(%task_id, error = %e, "could not count the cancel");
            }
            if let Err(e) = state.tasks.publish(&ProgressEvent::revoked(&task_id, 0)).await {
                tracing::warn!(%task_id, error = %e, "could not publish the cancel's final event");
            }
            // What a queued job stored (its photo); a worker running a stage
            // removes what that stage wrote once it has stopped.
            for prefix in objects::job_prefixes(&task_id) {
                if let Err(e) = state.storage.delete_prefix(&prefix).await {
                    tracing::warn!(%task_id, error = %e, "could not remove a cancelled job's files");
                }
            }
        }
    }
    Ok(Json(json!({"task_id": task_id, "status": "REVOKED"})))
}

async fn load_meta(state: &AppState, task_id: &str) -> AppResult<TaskMeta> {
    state.tasks.meta(task_id).await?.ok_or_else(|| {
        AppError::not_found("task-not-found", "No job with that id (it may have expired after 24 hours).")
    })
}

async fn status(State(state): State<AppState>, Path(task_id): Path<String>) -> AppResult<impl IntoResponse> {
    let task_id = check_task_id(&task_id)?;
    let meta = load_meta(&state, &task_id).await?;
    let progress = state.tasks.snapshot(&task_id).await?;
    let mut body = public_meta(&meta)?;
    body["progress"] = serde_json::to_value(progress).map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(Json(body))
}

/// The task meta as an anonymous caller sees it: codes and the user-facing
/// message, step names and times; no worker name (host, process id) and
/// no error text of a step (a tool's output, paths), which are logged with
/// the task id instead.
fn public_meta(meta: &TaskMeta) -> AppResult<serde_json::Value> {
    let mut body = serde_json::to_value(meta).map_err(|e| AppError::Internal(e.to_string()))?;
    if let Some(obj) = body.as_object_mut() {
        obj.remove("worker");
    }
    let code_only = |metrics: Option<&mut serde_json::Value>| {
        for m in metrics.and_then(|m| m.as_array_mut()).into_iter().flatten() {
            if let Some(e) = m.get_mut("error").filter(|e| !e.is_null()) {
                let code = e.as_str().filter(|c| is_code(c)).unwrap_or("failed").to_owned();
                *e = serde_json::Value::String(code);
            }
        }
    };
    code_only(body.get_mut("pipeline_metrics"));
    code_only(body.get_mut("result").and_then(|r| r.get_mut("pipeline_metrics")));
    Ok(body)
}

/// A stable error code: kebab-case words.
fn is_code(s: &str) -> bool {
    !s.is_empty() && s.len() <= 40 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

async fn result(State(state): State<AppState>, Path(task_id): Path<String>) -> AppResult<impl IntoResponse> {
    let task_id = check_task_id(&task_id)?;
    let meta = load_meta(&state, &task_id).await?;
    match meta.status {
        TaskStatus::Pending | TaskStatus::Started => Err(AppError::client(
            StatusCode::CONFLICT,
            "task-not-finished",
            "The video is not ready yet; follow the progress and ask again when it is done.",
        )),
        TaskStatus::Failure | TaskStatus::Revoked => {
            let err = meta.error.unwrap_or(shared::job::JobError {
                code: "job-failed".into(),
                message: "The job failed.".into(),
                retryable: true,
            });
            Err(AppError::JobFailed { code: err.code, message: err.message })
        }
        TaskStatus::Success => {
            let r = meta.video().ok_or_else(|| AppError::Internal("successful task has no result".into()))?;
            let ttl = state.cfg.presign_ttl;
            let (video_url, expires_at) = state.storage.presign_get(&r.video_key, ttl).await?;
            let (thumbnail_url, _) = state.storage.presign_get(&r.thumbnail_key, ttl).await?;
            let file_name = format!("tayori-{}.mp4", &task_id[..8]);
            let (download_url, _) = state.storage.presign_download(&r.video_key, &file_name, ttl).await?;
            Ok(Json(json!({
                "task_id": task_id,
                "video_url": video_url,
                "thumbnail_url": thumbnail_url,
                "download_url": download_url,
                "expires_at": expires_at,
                "duration_seconds": r.duration_seconds,
                "width": r.width,
                "height": r.height,
                "video_bytes": r.video_bytes,
            })))
        }
    }
}
