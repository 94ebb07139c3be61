//! The web page at `/` and the read-only catalog lists it needs.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use serde_json::json;

use crate::error::AppResult;
use crate::state::AppState;

const INDEX_HTML: &str = include_str!("../../static/index.html");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/api/voice-clone/profiles", get(voices))
        .route("/api/bgm/tracks", get(tracks))
}

async fn voices(State(state): State<AppState>) -> AppResult<impl IntoResponse> {
    let doc = state.catalog.voices_async().await?;
    Ok(Json(json!({"profiles": doc.profiles, "last_updated": doc.last_updated})))
}

async fn tracks(State(state): State<AppState>) -> AppResult<impl IntoResponse> {
    let doc = state.catalog.bgm_async().await?;
    Ok(Json(json!({"tracks": doc.tracks, "last_updated": doc.last_updated})))
}
