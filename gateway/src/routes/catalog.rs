//! The voice-profile and BGM catalogs: list (with filters), one entry, and
//! deletion of the entries people added (system entries are protected).

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Redirect;
use axum::routing::get;
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use shared::catalog::{BgmMetadata, BgmTrack, EntryType, VoiceMetadata, VoiceProfile, is_valid_id, timestamp};
use shared::catalog_task::{CatalogTaskKind, CatalogTaskResult, track_preview_key, voice_preview_key};

use crate::admission::{ClientIp, Limit, Scope};
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::upload;

pub fn router(max_upload_bytes: u64) -> Router<AppState> {
    Router::new()
        .route(
            "/api/voice-clone/profiles",
            get(list_voices).post(create_voice).layer(DefaultBodyLimit::max(upload::body_limit(max_upload_bytes))),
        )
        .route("/api/voice-clone/profiles/{id}", get(get_voice).delete(delete_voice))
        .route("/api/voice-clone/profiles/{id}/preview", get(voice_preview))
        .route(
            "/api/bgm/tracks",
            get(list_tracks).post(upload_track).layer(DefaultBodyLimit::max(upload::body_limit(max_upload_bytes))),
        )
        .route("/api/bgm/tracks/{id}", get(get_track).delete(delete_track))
        .route("/api/bgm/tracks/{id}/preview", get(track_preview))
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
    for key in [p.reference_audio_path.clone(), voice_preview_key(&id)] {
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
    state.storage.delete(&track_preview_key(&id)).await?;
    if t.file_path.starts_with("bgm/user/") {
        state.storage.delete(&t.file_path).await?;
        if let Err(e) = state.catalog.remove_file(&t.file_path).await {
            tracing::warn!(error = %e, path = %t.file_path, "could not remove a track file");
        }
    }
    tracing::info!(%id, "music track deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Before a music or voice upload is read: room in the catalog queue and
/// in the client's allowance (counted only once the upload is valid), or
/// the body is discarded and the refusal sent.
async fn admit_upload(
    state: &AppState,
    ip: &ClientIp,
    mp: axum::extract::Multipart,
) -> AppResult<(Limit, axum::extract::Multipart)> {
    let mut limit = Limit::new(state, ip, Scope::CatalogUploads);
    let admitted = async {
        crate::admission::catalog_queue_room(state).await?;
        limit.check().await
    }
    .await;
    match admitted {
        Ok(()) => Ok((limit, mp)),
        Err(e) => {
            upload::discard(mp).await;
            Err(e)
        }
    }
}

fn track_too_big() -> AppError {
    AppError::client(StatusCode::PAYLOAD_TOO_LARGE, "audio-too-large", "The music file is larger than 10 MB.")
}

/// `POST /api/bgm/tracks`, multipart: `file` (MP3, M4A, WAV or OGG, at most
/// 10 MB), `name`, optional `mood`, `description`, `uploaded_by`. A worker
/// transcodes it to MP3 and measures duration, tempo and loudness; the
/// track is stored under an id the server chooses.
async fn upload_track(
    State(state): State<AppState>,
    ip: ClientIp,
    crate::upload::MultipartForm(mp): crate::upload::MultipartForm,
) -> AppResult<impl IntoResponse> {
    let (mut limit, mp) = admit_upload(&state, &ip, mp).await?;
    let fields = ["name", "mood", "description", "uploaded_by"];
    let form =
        upload::read_form(mp, "file", &fields, &state.cfg.tmp_dir, state.cfg.max_upload_bytes, track_too_big).await?;
    let text = |k: &str| form.text(k).map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    let (name, mood, description, uploaded_by) = (text("name"), text("mood"), text("description"), text("uploaded_by"));
    let name = name
        .filter(|n| n.chars().count() <= 100 && !n.chars().any(char::is_control))
        .ok_or_else(|| AppError::bad_request("invalid-name", "Please give the track a name (1 to 100 characters)."))?;
    let uploaded_by = uploaded_by.unwrap_or_else(|| "anonymous".into());
    if !is_valid_id(&uploaded_by) {
        return Err(AppError::bad_request("invalid-id", "uploaded_by is 1 to 128 letters, digits, '_' or '-'."));
    }
    let mood = mood.unwrap_or_else(|| "custom".into());
    if mood.chars().count() > 40 || !is_valid_id(&mood) {
        return Err(AppError::bad_request("invalid-mood", "mood is a short word (letters, digits, '_' or '-')."));
    }
    let upload::SpooledFile { path, bytes, file_name: original_filename, .. } =
        form.file.ok_or_else(|| AppError::bad_request("file-missing", "Please choose a music file (field file)."))?;
    let kind = sniffed(&path).await?.ok_or_else(|| {
        AppError::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-audio-type",
            "The music must be an MP3, M4A, WAV or OGG file.",
        )
    })?;

    limit.take().await?;
    let id = format!("user_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let source_key = format!("bgm/uploads/{id}.{}", kind.ext());
    let target_key = format!("bgm/user/{uploaded_by}_{id}.mp3");
    state.storage.put_file(&source_key, &path, "application/octet-stream").await?;
    drop(path);
    let facts = match crate::catalog_tasks::run(
        &state,
        CatalogTaskKind::AnalyseTrack { source_key: source_key.clone(), target_key: target_key.clone() },
    )
    .await
    {
        Ok(CatalogTaskResult::Track(f)) => f,
        Ok(other) => return Err(AppError::Internal(format!("unexpected catalog task result {other:?}"))),
        Err(e) => {
            let _ = state.storage.delete(&source_key).await;
            return Err(e);
        }
    };
    let track = BgmTrack {
        preview_url: format!("/api/bgm/tracks/{id}/preview"),
        id,
        name,
        kind: EntryType::User,
        file_path: target_key.clone(),
        duration_seconds: (facts.duration_seconds * 1000.0).round() / 1000.0,
        bpm: facts.bpm,
        mood,
        volume_db: -14.0,
        created_at: timestamp(Utc::now()),
        metadata: BgmMetadata {
            description: description.unwrap_or_default(),
            genre: None,
            seamless_loop: Some(false),
            original_filename,
            uploaded_by: Some(uploaded_by),
            extra: [("loudness_lufs".to_owned(), json!(facts.loudness_lufs.map(|l| (l * 10.0).round() / 10.0)))]
                .into_iter()
                .collect(),
        },
    };
    if let Err(e) = state.catalog.add_track(track.clone()).await {
        let _ = state.storage.delete(&target_key).await;
        return Err(e.into());
    }
    tracing::info!(id = %track.id, bytes, "music track added");
    Ok((StatusCode::CREATED, Json(track)))
}

/// `GET /api/bgm/tracks/{id}/preview`: a redirect to a presigned 15-second
/// excerpt, cut once by a worker and kept in S3.
async fn track_preview(
    State(state): State<AppState>,
    ip: ClientIp,
    Path(id): Path<String>,
) -> AppResult<impl IntoResponse> {
    check_id(&id)?;
    let track = state
        .catalog
        .track(&id)
        .await?
        .ok_or_else(|| AppError::not_found("track-not-found", format!("There is no music track {id:?}.")))?;
    let key = track_preview_key(&id);
    if state.storage.head(&key).await?.is_none() {
        Limit::new(&state, &ip, Scope::Previews).take().await?;
        crate::catalog_tasks::run(
            &state,
            CatalogTaskKind::TrackPreview { source_key: track.file_path, target_key: key.clone() },
        )
        .await?;
    }
    let (url, _) = state.storage.presign_get(&key, state.cfg.presign_ttl).await?;
    Ok(Redirect::temporary(&url))
}

fn voice_too_big() -> AppError {
    AppError::client(StatusCode::PAYLOAD_TOO_LARGE, "audio-too-large", "The recording is larger than 10 MB.")
}

/// `POST /api/voice-clone/profiles`, multipart: `name`, `language` (ja|en),
/// `gender`, `reference_audio` (WAV, MP3 or M4A; 3-30 s; at most 10 MB),
/// optional `description`. A worker measures the recording (pitch, speaking
/// rate, loudness) and matches the closest base voice of the language,
/// shifted toward it: voice matching, not cloning.
async fn create_voice(
    State(state): State<AppState>,
    ip: ClientIp,
    crate::upload::MultipartForm(mp): crate::upload::MultipartForm,
) -> AppResult<impl IntoResponse> {
    let (mut limit, mp) = admit_upload(&state, &ip, mp).await?;
    let fields = ["name", "language", "gender", "description"];
    let form = upload::read_form(
        mp,
        "reference_audio",
        &fields,
        &state.cfg.tmp_dir,
        state.cfg.max_upload_bytes,
        voice_too_big,
    )
    .await?;
    let text = |k: &str| form.text(k).map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    let (name, language, gender, description) = (text("name"), text("language"), text("gender"), text("description"));
    let name = name
        .filter(|n| n.chars().count() <= 100 && !n.chars().any(char::is_control))
        .ok_or_else(|| AppError::bad_request("invalid-name", "Please give the voice a name (1 to 100 characters)."))?;
    let language = language
        .filter(|l| l == "ja" || l == "en")
        .ok_or_else(|| AppError::bad_request("invalid-language", "language must be ja or en."))?;
    let gender = gender
        .filter(|g| ["female", "male", "other"].contains(&g.as_str()))
        .ok_or_else(|| AppError::bad_request("invalid-gender", "gender must be female, male or other."))?;
    let upload::SpooledFile { path, .. } = form
        .file
        .ok_or_else(|| AppError::bad_request("file-missing", "Please add a recording (field reference_audio)."))?;
    let kind = sniffed(&path).await?.filter(|k| !matches!(k, crate::intake::AudioKind::Ogg)).ok_or_else(|| {
        AppError::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-audio-type",
            "The recording must be a WAV, MP3 or M4A file.",
        )
    })?;

    limit.take().await?;
    let id = format!("custom_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let source_key = format!("voices/uploads/{id}.{}", kind.ext());
    let reference_key = format!("voices/custom/{id}.wav");
    state.storage.put_file(&source_key, &path, "application/octet-stream").await?;
    drop(path);
    let task = CatalogTaskKind::AnalyseVoice {
        source_key: source_key.clone(),
        target_key: reference_key.clone(),
        language: language.clone(),
        gender: Some(gender.clone()),
    };
    let matched = match crate::catalog_tasks::run(&state, task).await {
        Ok(CatalogTaskResult::Voice(v)) => v,
        Ok(other) => return Err(AppError::Internal(format!("unexpected catalog task result {other:?}"))),
        Err(e) => {
            let _ = state.storage.delete(&source_key).await;
            return Err(e);
        }
    };
    let embedding_path = format!("voices/embeddings/{id}.json");
    let bytes = serde_json::to_vec_pretty(&matched.embedding).map_err(|e| AppError::Internal(e.to_string()))?;
    if let Err(e) = state.catalog.write_file(&embedding_path, bytes).await {
        let _ = state.storage.delete(&reference_key).await;
        return Err(AppError::Internal(format!("writing the embedding: {e}")));
    }
    let profile = VoiceProfile {
        preview_url: format!("/api/voice-clone/profiles/{id}/preview"),
        id,
        name,
        kind: EntryType::Custom,
        language,
        gender,
        embedding_path: embedding_path.clone(),
        reference_audio_path: reference_key.clone(),
        created_at: timestamp(Utc::now()),
        metadata: VoiceMetadata {
            description: description.unwrap_or_else(|| "User-uploaded reference audio (voice matching)".into()),
            sample_rate: Some(matched.sample_rate),
            duration_seconds: Some(matched.duration_seconds),
            engine: matched.engine,
            base_voice: matched.base_voice,
            extra: [("base_profile".to_owned(), json!(matched.base_profile_id))].into_iter().collect(),
        },
    };
    if let Err(e) = state.catalog.add_voice(profile.clone()).await {
        let _ = state.storage.delete(&reference_key).await;
        let _ = state.catalog.remove_file(&embedding_path).await;
        return Err(e.into());
    }
    tracing::info!(id = %profile.id, base = %matched.base_profile_id, "voice profile added");
    Ok((StatusCode::CREATED, Json(profile)))
}

/// `GET /api/voice-clone/profiles/{id}/preview`: a redirect to a presigned
/// spoken sample in that voice, made once by a worker and kept in S3.
async fn voice_preview(
    State(state): State<AppState>,
    ip: ClientIp,
    Path(id): Path<String>,
) -> AppResult<impl IntoResponse> {
    check_id(&id)?;
    if state.catalog.voice(&id).await?.is_none() {
        return Err(AppError::not_found("voice-not-found", format!("There is no voice profile {id:?}.")));
    }
    let key = voice_preview_key(&id);
    if state.storage.head(&key).await?.is_none() {
        Limit::new(&state, &ip, Scope::Previews).take().await?;
        crate::catalog_tasks::run(&state, CatalogTaskKind::VoicePreview { profile_id: id, target_key: key.clone() })
            .await?;
    }
    let (url, _) = state.storage.presign_get(&key, state.cfg.presign_ttl).await?;
    Ok(Redirect::temporary(&url))
}

/// The audio format of a spooled upload, by its content.
async fn sniffed(path: &std::path::Path) -> AppResult<Option<shared::sniff::AudioKind>> {
    shared::sniff::sniff_audio_file(path).await.map_err(|e| AppError::Internal(format!("reading the upload: {e}")))
}
