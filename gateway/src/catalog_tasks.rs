//! Catalog tasks as the gateway asks them of workers (the gateway never
//! runs ffmpeg or a model): queue one with a deadline, wait for its answer
//! with a blocking pop, and turn the answer into a result or an `AppError`.

use axum::http::StatusCode;
use chrono::Utc;
use shared::catalog_task::{CatalogTask, CatalogTaskKind, CatalogTaskResult};

use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// How long past a catalog task's deadline the gateway still listens.
const CATALOG_ANSWER_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Run a catalog task on a worker and wait for its result.
pub async fn run(state: &AppState, kind: CatalogTaskKind) -> AppResult<CatalogTaskResult> {
    crate::admission::catalog_queue_room(state).await?;
    let wait = state.cfg.catalog_task_timeout;
    let deadline = Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
    let task = CatalogTask { id: uuid::Uuid::new_v4().simple().to_string(), kind, deadline: Some(deadline) };
    let id = task.id.clone();
    state.catalog_queue.push(&task).await?;
    // A little past the deadline: a worker answers before it or not at all.
    match shared::catalog_task::wait_result(state.redis.endpoint(), &id, wait + CATALOG_ANSWER_MARGIN).await? {
        // Workers of another version, or a task that keeps losing its
        // worker: try again later, said in words.
        Some(CatalogTaskResult::Failed { code, message }) if code == "job-unreadable" => {
            Err(AppError::client(StatusCode::SERVICE_UNAVAILABLE, "job-unreadable", message))
        }
        Some(CatalogTaskResult::Failed { code, message }) if code == "gave-up" => {
            Err(AppError::client(StatusCode::SERVICE_UNAVAILABLE, "gave-up", message))
        }
        Some(CatalogTaskResult::Failed { code, message }) => {
            Err(AppError::Internal(format!("catalog task failed ({code}): {message}")))
        }
        Some(CatalogTaskResult::Rejected { code, message }) => Err(AppError::JobFailed { code, message }),
        Some(r) => Ok(r),
        None => Err(AppError::client(
            StatusCode::SERVICE_UNAVAILABLE,
            "workers-busy",
            "No worker finished the task in time; please try again shortly.",
        )),
    }
}
