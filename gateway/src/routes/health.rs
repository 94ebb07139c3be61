//! `GET /health`: Redis, S3 and the catalog files, each with its state.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health))
}

async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let mut conn = state.redis.clone();
    let redis = match redis::cmd("PING").query_async::<String>(&mut conn).await {
        Ok(_) => match state.queue.stats().await {
            Ok(q) => json!({
                "status": "healthy",
                "queue": state.cfg.queue.name,
                "queue_depth": q.waiting,
                "jobs_in_progress": q.leased,
            }),
            Err(e) => json!({"status": "unhealthy", "error": e.to_string()}),
        },
        Err(e) => json!({"status": "unhealthy", "error": e.to_string()}),
    };
    let s3 = match state.storage.check().await {
        Ok(()) => json!({"status": "healthy", "bucket": state.storage.bucket()}),
        Err(e) => json!({"status": "unhealthy", "bucket": state.storage.bucket(), "error": e.to_string()}),
    };
    let (voices, bgm) = state.catalog.health().await;
    let healthy = [&redis["status"], &s3["status"]].iter().all(|s| *s == "healthy")
        && voices.status == "healthy"
        && bgm.status == "healthy";
    let code = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (
        code,
        Json(json!({
            "status": if healthy { "healthy" } else { "unhealthy" },
            "redis": redis,
            "s3": s3,
            "catalog": {"voice_profiles": voices, "bgm_tracks": bgm},
            "progress_viewers_tasks": state.hub.watched_tasks(),
        })),
    )
}
