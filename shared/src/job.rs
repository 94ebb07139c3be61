//! The video job as it travels through the queue, and its result.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Version of the [`VideoJob`] wire format. Bump it when a field changes
/// meaning; workers refuse jobs of a version they do not know.
pub const JOB_VERSION: u32 = 1;

/// Output frame size. Portrait only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Resolution {
    #[default]
    #[serde(rename = "1080x1920")]
    Full,
    #[serde(rename = "512x910")]
    Small,
}

impl Resolution {
    pub fn width(self) -> u32 {
        match self {
            Resolution::Full => 1080,
            Resolution::Small => 512,
        }
    }
    pub fn height(self) -> u32 {
        match self {
            Resolution::Full => 1920,
            Resolution::Small => 910,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Full => "1080x1920",
            Resolution::Small => "512x910",
        }
    }
}

impl std::str::FromStr for Resolution {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "1080x1920" => Ok(Resolution::Full),
            "512x910" => Ok(Resolution::Small),
            other => Err(format!("unsupported resolution {other:?}: use 1080x1920 or 512x910")),
        }
    }
}

/// One video-message job, pushed by the gateway, run by a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoJob {
    pub version: u32,
    pub task_id: String,
    /// S3 key of the uploaded photo (`images/uploads/{task_id}/original.{ext}`).
    pub image_key: String,
    pub message: String,
    pub voice_profile_id: String,
    pub bgm_id: Option<String>,
    pub resolution: Resolution,
    pub submitted_at: DateTime<Utc>,
}

/// What a finished job produced: S3 keys and facts about the video.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoResult {
    pub video_key: String,
    pub thumbnail_key: String,
    pub duration_seconds: f64,
    pub width: u32,
    pub height: u32,
    pub video_bytes: u64,
    pub thumbnail_bytes: u64,
    /// Seconds each step took, in pipeline order.
    pub step_seconds: Vec<(String, f64)>,
}

/// Why a job failed, as stored in the task meta and shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    /// Stable kebab-case code, e.g. `job-timeout`, `unknown-voice`.
    pub code: String,
    /// A sentence a person can act on.
    pub message: String,
    /// Whether submitting the same job again may succeed.
    pub retryable: bool,
}
