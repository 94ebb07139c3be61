//! The voice-profile and BGM catalogs: list (with filters), one entry, and
//! deletion of the entries people added (system entries are protected).

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use shared::catalog::{EntryType, is_valid_id};

use crate::error::{AppError, AppResult};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/voice-clone/profiles", get(list_voices))
        .route("/api/voice-clone/profiles/{id}", get(get_voice).delete(delete_voice))
        .route("/api/bgm/tracks", get(list_tracks))
        .route("/api/bgm/tracks/{id}", get(get_track).delete(delete_track))
}

fn check_id(id: &str) -> AppResult<()> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(AppError::bad_request("invalid-id", "Ids are 1 to 128 letters, digits, '_' or '-'."))
    }
}

fn parse_type(t: Option<&str>, allowed: &[(&str, EntryType)]) -> AppResult<Option<EntryType>> {
    match t {
        None | Some("") => Ok(None),
        Some(t) => allowed.iter().find(|(name, _)| *name == t).map(|(_, k)| Some(*k)).ok_or_else(|| {
            let names: Vec<_> = allowed.iter().map(|(n, _)| *n).collect();
            AppError::bad_request("invalid-filter", format!("type must be one of {}", names.join(", ")))
        }),
    }
}

#[derive(Deserialize)]
struct VoiceFilter {
    #[serde(rename = "type")]
    kind: Option<String>,
    language: Option<String>,
}

async fn list_voices(State(state): State<AppState>, Query(f): Query<VoiceFilter>) -> AppResult<impl IntoResponse> {
    let kind = parse_type(f.kind.as_deref(), &[("system", EntryType::System), ("custom", EntryType::Custom)])?;
    if let Some(l) = f.language.as_deref().filter(|l| !l.is_empty() && *l != "ja" && *l != "en") {
        return Err(AppError::bad_request("invalid-filter", format!("language {l:?}: use ja or en")));
    }
    let doc = state.catalog.voices_async().await?;
    let profiles: Vec<_> = doc
        .profiles
        .iter()
        .filter(|p| kind.is_none_or(|k| p.kind == k))
        .filter(|p| f.language.as_deref().is_none_or(|l| l.is_empty() || p.language == l))
        .collect();
    Ok(Json(json!({"profiles": profiles, "count": profiles.len(), "last_updated": doc.last_updated})))
}

async fn get_voice(State(state): State<AppState>, Path(id): Path<String>) -> AppResult<impl IntoResponse> {
    check_id(&id)?;
    let p = state
        .catalog
        .voice(&id)
        .await?
        .ok_or_else(|| AppError::not_found("voice-not-found", format!("There is no voice profile {id:?}.")))?;
    Ok(Json(p))
}

/// Remove a custom profile and its files (reference recording and cached
/// preview in S3, embedding under the data directory).
async fn delete_voice(State(state): State<AppState>, Path(id): Path<String>) -> AppResult<impl IntoResponse> {
    check_id(&id)?;
    let p = state.catalog.remove_voice(&id).await?;
    for key in [p.reference_audio_path.clone(), format!("voices/previews/{id}.wav")] {
        if key.starts_with("voices/custom/") || key.starts_with("voices/previews/") {
            state.storage.delete(&key).await?;
        }
    }
    if let Err(e) = state.catalog.remove_file(&p.embedding_path).await {
        tracing::warn!(error = %e, path = %p.embedding_path, "could not remove an embedding file");
    }
    tracing::info!(%id, "voice profile deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct TrackFilter {
    #[serde(rename = "type")]
    kind: Option<String>,
    mood: Option<String>,
}

async fn list_tracks(State(state): State<AppState>, Query(f): Query<TrackFilter>) -> AppResult<impl IntoResponse> {
    let kind = parse_type(f.kind.as_deref(), &[("system", EntryType::System), ("user", EntryType::User)])?;
    let doc = state.catalog.bgm_async().await?;
    let tracks: Vec<_> = doc
        .tracks
        .iter()
        .filter(|t| kind.is_none_or(|k| t.kind == k))
        .filter(|t| f.mood.as_deref().is_none_or(|m| m.is_empty() || t.mood == m))
        .collect();
    Ok(Json(json!({"tracks": tracks, "count": tracks.len(), "last_updated": doc.last_updated})))
}

async fn get_track(State(state): State<AppState>, Path(id): Path<String>) -> AppResult<impl IntoResponse> {
    check_id(&id)?;
    let t = state
        .catalog
        .track(&id)
        .await?
        .ok_or_else(|| AppError::not_found("track-not-found", format!("There is no music track {id:?}.")))?;
    Ok(Json(t))
}

/// Remove a user track and its file (S3 object, or local file under data/).
async fn delete_track(State(state): State<AppState>, Path(id): Path<String>) -> AppResult<impl IntoResponse> {
    check_id(&id)?;
    let t = state.catalog.remove_track(&id).await?;
    if t.file_path.starts_with("bgm/user/") {
        state.storage.delete(&t.file_path).await?;
        if let Err(e) = state.catalog.remove_file(&t.file_path).await {
            tracing::warn!(error = %e, path = %t.file_path, "could not remove a track file");
        }
    }
    tracing::info!(%id, "music track deleted");
    Ok(StatusCode::NO_CONTENT)
}
