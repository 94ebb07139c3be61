//! `/admin`: the operators' routes, only when `TAYORI_ADMIN_TOKEN` is set
//! (see [`crate::admin`] for who may use them).
//!
//! - `GET /admin`: the dashboard (a sign-in form until signed in), live:
//!   its script reads `GET /admin/api/overview` every 2 s.
//! - `POST /admin/login` (form field `token`), `POST /admin/logout`.
//! - `GET /admin/api/overview`: queue depths per stage and for catalog
//!   tasks, every worker alive with the jobs in its hands, jobs in progress
//!   with their current step, failures by code and the newest kept ones,
//!   videos per minute, step time percentiles.
//! - `GET /admin/api/failed?limit=N`: the failed jobs kept (newest first),
//!   with code, message, stage, attempts and the job itself.
//! - `POST /admin/api/failed/{task_id}/retry`: queue a failed job again, as
//!   a new attempt of the same task id with a fresh time budget.

use axum::Form;
use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use redis::AsyncCommands;
use serde::Deserialize;
use serde_json::json;
use shared::job::{Stage, VideoJob};
use shared::progress::{ProgressEvent, TaskMeta, TaskStatus};

use crate::admin::{self, Admin};
use crate::admission::ClientIp;
use crate::error::{AppError, AppResult};
use crate::intake::check_task_id;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin", get(dashboard))
        .route("/static/admin.js", get(script))
        .route("/admin/login", post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/api/overview", get(overview))
        .route("/admin/api/failed", get(failed))
        .route("/admin/api/failed/{task_id}/retry", post(retry))
}

const ADMIN_HTML: &str = include_str!("../../static/admin.html");
const ADMIN_JS: &str = include_str!("../../static/admin.js");

/// The page, signed in or not (its script shows the sign-in form when the
/// API answers 401); absent without an admin token.
async fn dashboard(State(state): State<AppState>, headers: HeaderMap) -> AppResult<Response> {
    if state.cfg.admin_token.is_none() {
        return Err(admin::absent());
    }
    let mut resp = super::page::page(&state, ADMIN_HTML, &headers);
    resp.headers_mut().insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    Ok(resp)
}

async fn script(State(state): State<AppState>) -> AppResult<Response> {
    if state.cfg.admin_token.is_none() {
        return Err(admin::absent());
    }
    Ok(super::page::asset(ADMIN_JS, "text/javascript; charset=utf-8"))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

fn see_other(to: &'static str, cookie: Option<String>) -> Response {
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, HeaderValue::from_static(to))]).into_response();
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

/// The sign-in form's target: the session cookie and back to `/admin`, or
/// back with `?signin=wrong` (`?signin=wait` once over the bound).
async fn login(State(state): State<AppState>, ip: ClientIp, Form(form): Form<LoginForm>) -> AppResult<Response> {
    let Some(token) = state.cfg.admin_token.as_deref() else { return Err(admin::absent()) };
    match admin::check_attempt(&state, &ip, admin::token_matches(token, &form.token)).await {
        Ok(()) => {
            let cookie = admin::session_cookie(&admin::session_value(token), admin::SESSION_SECS);
            Ok(see_other("/admin", Some(cookie)))
        }
        Err(AppError::Busy { .. }) => Ok(see_other("/admin?signin=wait", None)),
        Err(AppError::Client { .. }) => Ok(see_other("/admin?signin=wrong", None)),
        Err(e) => Err(e),
    }
}

async fn logout(State(state): State<AppState>) -> AppResult<Response> {
    if state.cfg.admin_token.is_none() {
        return Err(admin::absent());
    }
    Ok(see_other("/admin", Some(admin::session_cookie("", 0))))
}

/// How many of the newest failures the overview shows.
const RECENT_FAILURES: usize = 20;

async fn overview(_: Admin, State(state): State<AppState>) -> AppResult<impl IntoResponse> {
    let mut conn = state.redis.clone();
    let mut queues = Vec::new();
    for stage in Stage::ALL {
        let q = state.cfg.queue.stage(conn.clone(), stage);
        queues.push(json!({"queue": q.name(), "stage": stage.name(), "stats": q.stats().await?}));
    }
    queues.push(json!({
        "queue": state.catalog_queue.name(),
        "stage": "catalog",
        "stats": state.catalog_queue.stats().await?,
    }));
    let workers = shared::heartbeat::alive(&mut conn).await?;
    // Jobs in progress: what the workers hold, with each job's last event.
    let held: Vec<_> = workers.iter().flat_map(|w| w.jobs.iter().map(move |j| (w, j))).collect();
    let ids: Vec<&str> = held.iter().map(|(_, j)| j.task_id.as_str()).collect();
    let lasts = state.tasks.snapshots(&ids).await?;
    let mut in_progress = Vec::new();
    for ((w, j), last) in held.into_iter().zip(lasts) {
        in_progress.push(json!({
            "task_id": j.task_id,
            "stage": j.stage,
            "worker": w.name,
            "since": j.since,
            "step": last.as_ref().map(|e| e.current_step.clone()),
            "percentage": last.as_ref().map(|e| e.percentage),
        }));
    }
    let jobs: std::collections::HashMap<String, u64> = conn.hgetall(shared::metrics::JOBS_KEY).await?;
    let mut by_code: Vec<(String, u64)> =
        jobs.iter().filter_map(|(k, v)| Some((k.strip_prefix("failed:")?.to_owned(), *v))).collect();
    by_code.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let (recent, kept) = state.failed.list(RECENT_FAILURES).await?;
    let steps: std::collections::HashMap<String, u64> = conn.hgetall(shared::metrics::STEPS_KEY).await?;
    let per_minute = shared::metrics::videos_per_minute(&conn, 10).await?;
    let whole = &per_minute[..per_minute.len() - 1];
    Ok(Json(json!({
        "at": chrono::Utc::now(),
        "queues": queues,
        "workers": workers,
        "in_progress": in_progress,
        "jobs": {
            "succeeded": jobs.get("succeeded").copied().unwrap_or(0),
            "failed": jobs.get("failed").copied().unwrap_or(0),
            "cancelled": jobs.get("cancelled").copied().unwrap_or(0),
        },
        "failures": {
            "by_code": by_code.into_iter().map(|(code, n)| json!({"code": code, "count": n})).collect::<Vec<_>>(),
            "kept": kept,
            "recent": recent.iter().map(listed).collect::<Vec<_>>(),
        },
        "videos_per_minute": {
            "last_minutes": per_minute,
            "mean_last_10": whole.iter().sum::<u64>() as f64 / whole.len().max(1) as f64,
        },
        "steps": shared::metrics::step_summaries(&steps),
    })))
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
    let conn = state.redis.clone();
    let claims: Vec<String> = Stage::ALL.iter().map(|s| shared::keys::job_claim(&task_id, *s)).collect();
    // One EXISTS each: the claims may sit in different cluster slots.
    let held: Vec<bool> = shared::redis_conn::each(&conn, claims.iter().map(redis::Cmd::exists)).await?;
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
