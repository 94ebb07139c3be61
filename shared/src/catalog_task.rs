//! Catalog work done by workers for the gateway (the gateway never runs
//! ffmpeg or a model): analysing uploaded music and voices, cutting
//! previews, and finding the people in an uploaded photo.
//! Tasks go through their own apalis queue. Each carries a deadline (the
//! gateway's wait): a worker that cannot answer by then stops and removes
//! what it wrote. A result is pushed onto the list `catalog-task:{id}` (kept
//! 10 minutes), on which the gateway waits with a blocking pop.

use std::time::Duration;

use crate::redis_conn::ConnectionManager;
use serde::{Deserialize, Serialize};

pub const RESULT_TTL: Duration = Duration::from_secs(600);

pub fn result_key(task_id: &str) -> String {
    format!("catalog-task:{task_id}")
}

/// S3 key of a track's 15-second preview.
pub fn track_preview_key(track_id: &str) -> String {
    format!("bgm/previews/{track_id}.mp3")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CatalogTaskKind {
    /// Transcode an upload (at `source_key`) to MP3 at `target_key`, measure
    /// it, and delete the upload.
    AnalyseTrack { source_key: String, target_key: String },
    /// Cut a 15-second preview of the MP3 at `source_key` to `target_key`.
    TrackPreview { source_key: String, target_key: String },
    /// Measure a reference recording (at `source_key`), match a base voice
    /// of `language` to it, store the recording as WAV at `target_key`,
    /// and delete the upload. `gender` (female, male, other; absent from
    /// older gateways) narrows the Kokoro voices a Japanese match may use.
    AnalyseVoice {
        source_key: String,
        target_key: String,
        language: String,
        #[serde(default)]
        gender: Option<String>,
    },
    /// Speak a short sample in a profile's voice to `target_key`.
    VoicePreview { profile_id: String, target_key: String },
    /// Find the people in an uploaded photo (at `source_key`) and store a
    /// preview of each at `images/previews/{upload_id}/person_{n}_preview.jpg`.
    DetectPeople { source_key: String, upload_id: String },
}

impl CatalogTaskKind {
    /// The object the task writes for its caller to reference, if any
    /// (a person's previews expire by the lifecycle rules instead).
    pub fn target_key(&self) -> Option<&str> {
        match self {
            CatalogTaskKind::AnalyseTrack { target_key, .. }
            | CatalogTaskKind::TrackPreview { target_key, .. }
            | CatalogTaskKind::AnalyseVoice { target_key, .. }
            | CatalogTaskKind::VoicePreview { target_key, .. } => Some(target_key),
            CatalogTaskKind::DetectPeople { .. } => None,
        }
    }

    /// The caller's upload the task consumes, if any.
    pub fn source_upload(&self) -> Option<&str> {
        match self {
            CatalogTaskKind::AnalyseTrack { source_key, .. } | CatalogTaskKind::AnalyseVoice { source_key, .. } => {
                Some(source_key)
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogTask {
    pub id: String,
    pub kind: CatalogTaskKind,
    /// When the caller stops waiting: the worker does not start after it,
    /// stops at it, and leaves nothing behind (none: no deadline).
    #[serde(default)]
    pub deadline: Option<chrono::DateTime<chrono::Utc>>,
}

/// Facts measured from a track.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackFacts {
    pub duration_seconds: f64,
    pub bpm: Option<u32>,
    /// Integrated loudness, LUFS.
    pub loudness_lufs: Option<f64>,
}

/// A reference recording measured and matched to a base voice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoiceMatch {
    /// The system profile whose base voice is used.
    pub base_profile_id: String,
    pub engine: String,
    pub base_voice: String,
    /// The embedding file's content: features, pitch shift and speed.
    pub embedding: serde_json::Value,
    pub duration_seconds: f64,
    pub sample_rate: u32,
}

/// One person found in a photo: boxes in photo pixels (upright), `[x, y, w, h]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonFound {
    pub index: u32,
    pub face: [u32; 4],
    pub body: [u32; 4],
    pub preview_key: String,
}

/// Every person found in a photo, and the one a job picks when none is asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeopleFound {
    pub width: u32,
    pub height: u32,
    pub people: Vec<PersonFound>,
    pub default_index: u32,
}

/// S3 key of a voice profile's spoken sample.
pub fn voice_preview_key(profile_id: &str) -> String {
    format!("voices/previews/{profile_id}.wav")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CatalogTaskResult {
    Track(TrackFacts),
    Voice(VoiceMatch),
    Preview {
        key: String,
    },
    /// The people in a photo, left to right.
    People(PeopleFound),
    /// The input could not be used (not audio, too short…): the client's fault.
    Rejected {
        code: String,
        message: String,
    },
    /// Something failed on our side (`code` says what, in one word).
    Failed {
        #[serde(default = "failed_code")]
        code: String,
        message: String,
    },
}

fn failed_code() -> String {
    "catalog-task-failed".into()
}

pub async fn store_result(
    conn: &mut ConnectionManager,
    task_id: &str,
    result: &CatalogTaskResult,
) -> redis::RedisResult<()> {
    let json = serde_json::to_string(result).expect("results serialize");
    let key = result_key(task_id);
    redis::pipe()
        .atomic()
        .rpush(&key, json)
        .ignore()
        .expire(&key, RESULT_TTL.as_secs() as i64)
        .ignore()
        .query_async(conn)
        .await
}

/// Wait for a task's result until `limit` (a blocking pop on its own
/// connection to `endpoint`, so that no shared connection is held);
/// `Ok(None)` on timeout.
pub async fn wait_result(
    endpoint: &crate::redis_conn::Endpoint,
    task_id: &str,
    limit: Duration,
) -> redis::RedisResult<Option<CatalogTaskResult>> {
    let mut conn = endpoint.dedicated(Duration::from_secs(5), limit + Duration::from_secs(5)).await?;
    let mut cmd = redis::cmd("BLPOP");
    cmd.arg(result_key(task_id)).arg(limit.as_secs_f64().max(0.01));
    let pop = cmd.query_async(&mut conn);
    // Bounded here too: a cluster connection sends a lost pop again.
    let popped: Option<(String, String)> = match tokio::time::timeout(limit + Duration::from_secs(5), pop).await {
        Ok(r) => r?,
        Err(_) => None,
    };
    Ok(popped.and_then(|(_, json)| serde_json::from_str(&json).ok()))
}
