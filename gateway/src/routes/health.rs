//! `GET /health`: Redis, S3 and the catalog files, each with its state.
//! `GET /ready`: a cheap readiness probe for load balancers and orchestrators:
//! 200 when Redis and S3 answer within 2 s, else 503 naming what is missing.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health)).route("/ready", get(ready))
}

/// Each dependency's state in words; what went wrong (error texts, which
/// may name hosts and paths) goes to the log, not to the caller.
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let unhealthy = |what: &str, e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "health check: {what} is unhealthy");
        json!({"status": "unhealthy", "problem": "unreachable"})
    };
    let mut conn = state.redis.clone();
    let redis = match redis::cmd("PING").query_async::<String>(&mut conn).await {
        Ok(_) => match state.queue.stats().await {
            Ok(q) => json!({
                "status": "healthy",
                "queue": state.cfg.queue.name,
                "queue_depth": q.waiting,
                "jobs_in_progress": q.leased,
            }),
            Err(e) => unhealthy("redis", &e),
        },
        Err(e) => unhealthy("redis", &e),
    };
    let s3 = match state.storage.check().await {
        Ok(()) => json!({"status": "healthy", "bucket": state.storage.bucket()}),
        Err(e) => unhealthy("s3", &e),
    };
    let (voices, bgm) = state.catalog.health().await;
    for (name, h) in [("voice catalog", &voices), ("music catalog", &bgm)] {
        if let Some(e) = &h.error {
            tracing::warn!(error = %e, "health check: the {name} is unhealthy");
        }
    }
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

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let limit = std::time::Duration::from_secs(2);
    let redis = async {
        let mut conn = state.redis.clone();
        matches!(tokio::time::timeout(limit, redis::cmd("PING").query_async::<String>(&mut conn)).await, Ok(Ok(_)))
    };
    let s3 = async { matches!(tokio::time::timeout(limit, state.storage.check()).await, Ok(Ok(()))) };
    let (redis, s3) = tokio::join!(redis, s3);
    let missing: Vec<&str> = [("redis", redis), ("s3", s3)].iter().filter(|(_, ok)| !ok).map(|(n, _)| *n).collect();
    let code = if missing.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(json!({"ready": missing.is_empty(), "waiting_for": missing})))
}
