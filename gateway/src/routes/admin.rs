//! `/admin`: the operators' routes, only when `TAYORI_ADMIN_TOKEN` is set
//! (see [`crate::admin`] for who may use them).
//!
//! - `GET /admin/api/failed?limit=N`: the failed jobs kept (newest first),
//!   with code, message, stage, attempts and the job itself.
//! - `POST /admin/api/failed/{task_id}/retry`: queue a failed job again, as
//!   a new attempt of the same task id with a fresh time budget.

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use shared::job::{Stage, VideoJob};
use shared::progress::{ProgressEvent, TaskMeta, TaskStatus};

use crate::admin::Admin;
use crate::error::{AppError, AppResult};
use crate::intake::check_task_id;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/api/failed", get(failed))
        .route("/admin/api/failed/{task_id}/retry", post(retry))
}

/// Most failures one listing returns.
const MAX_LISTED: usize = 500;

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

async fn failed(
    _: Admin,
    State(state): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> AppResult<impl IntoResponse> {
    let q = q.map_err(|e| AppError::bad_request("invalid-query", e.body_text()))?;
    let (jobs, total) = state.failed.list(q.limit.unwrap_or(100).clamp(1, MAX_LISTED)).await?;
    let failed: Vec<serde_json::Value> = jobs.iter().map(listed).collect();
    Ok(Json(json!({
        "failed": failed,
        "total": total,
        "keep_seconds": state.failed.keep().as_secs(),
    })))
}

/// A failure as listed: the job shown as JSON where it is JSON.
fn listed(f: &shared::failed::FailedJob) -> serde_json::Value {
    let mut v = serde_json::to_value(f).expect("a failed job serializes");
    v["job"] = serde_json::from_str(&f.job).unwrap_or_else(|_| serde_json::Value::String(f.job.clone()));
    v["retry_url"] = format!("/admin/api/failed/{}/retry", f.task_id).into();
    v
}

async fn retry(_: Admin, State(state): State<AppState>, Path(task_id): Path<String>) -> AppResult<impl IntoResponse> {
    let task_id = check_task_id(&task_id)?;
    let Some(kept) = state.failed.get(&task_id).await? else {
        return Err(AppError::not_found(
            "failed-job-not-found",
            "No failed job with this id is kept (it was retried already, or kept longer than TAYORI_FAILED_KEEP_SECS).",
        ));
    };
    let meta = state.tasks.meta(&task_id).await?;
    if let Some(m) = &meta
        && m.status != TaskStatus::Failure
    {
        return Err(AppError::client(
            StatusCode::CONFLICT,
            "task-not-failed",
            format!("The job is {} now, not FAILURE: it was retried already.", m.status.as_str()),
        ));
    }
    // A stage of the failed attempt that is still winding down elsewhere
    // would write into the new one.
    let mut conn = state.redis.clone();
    let claims: Vec<String> = Stage::ALL.iter().map(|s| shared::keys::job_claim(&task_id, *s)).collect();
    let mut pipe = redis::pipe();
    for c in &claims {
        pipe.exists(c);
    }
    let held: Vec<bool> = pipe.query_async(&mut conn).await?;
    if held.into_iter().any(|h| h) {
        return Err(AppError::Busy {
            status: StatusCode::CONFLICT,
            code: "job-still-stopping",
            message: "A stage of the failed attempt is still stopping; try again in a few seconds.".into(),
            retry_after: 5,
        });
    }
    // A job that can be read: its photo must still be there. (One no worker
    // could read is queued as it was: the workers may have been upgraded.)
    let job: Option<VideoJob> = serde_json::from_str(&kept.job).ok();
    if let Some(job) = &job
        && state.storage.head(&job.image_key).await?.is_none()
    {
        return Err(AppError::client(
            StatusCode::GONE,
            "photo-expired",
            "The job's photo has expired from storage, so it cannot be made again.",
        ));
    }
    let submitted = job.as_ref().map(|j| j.submitted_at).or(meta.as_ref().map(|m| m.date_submitted));
    let mut fresh = TaskMeta::pending(&task_id, submitted.unwrap_or_else(chrono::Utc::now));
    fresh.retries = meta.as_ref().map_or(kept.retries, |m| m.retries) + 1;
    if !state.tasks.reopen_failed(&fresh).await? {
        return Err(AppError::client(StatusCode::CONFLICT, "task-not-failed", "The job was retried already."));
    }
    let queued = async {
        state.tasks.publish(&ProgressEvent::queued(&task_id)).await?;
        state.queue.push_json(vec![kept.job.clone()]).await?;
        Ok::<_, AppError>(())
    }
    .await;
    if let Err(e) = queued {
        // Not queued: it stays failed, and kept.
        if let Some(m) = &meta {
            let _ = state.tasks.put_meta(m).await;
        }
        return Err(e);
    }
    if let Err(e) = state.failed.remove(&task_id).await {
        tracing::warn!(%task_id, error = %e, "a retried job is still listed as failed");
    }
    tracing::info!(%task_id, retries = fresh.retries, code = %kept.code, "failed job queued again by an operator");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "task_id": task_id,
            "status": "PENDING",
            "retries": fresh.retries,
            "status_url": format!("/api/video/status/{task_id}"),
            "progress_ws": format!("/ws/progress/{task_id}"),
        })),
    ))
}
