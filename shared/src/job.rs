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

/// The parts of a video job, each served by its own pool of workers
/// (`worker --stages …`), handed from one to the next through Redis.
/// Image and voice run at the same time; the render starts when both are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// download_image, detect_person, background_removal, prepare_image
    Image,
    /// synthesize_voice, adjust_prosody, mix_bgm
    Voice,
    /// render_and_upload
    Render,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Image, Stage::Voice, Stage::Render];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Image => "image",
            Stage::Voice => "voice",
            Stage::Render => "render",
        }
    }

    /// A list such as `image,voice` or `all`.
    pub fn parse_list(s: &str) -> Result<Vec<Stage>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "all" => out.extend(Stage::ALL),
                "image" => out.push(Stage::Image),
                "voice" => out.push(Stage::Voice),
                "render" => out.push(Stage::Render),
                other => return Err(format!("unknown stage {other:?} (stages: image, voice, render, all)")),
            }
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err("no stage named (stages: image, voice, render, all)".into());
        }
        Ok(out)
    }
}

/// What shows behind the cut-out person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Background {
    /// One colour, `#RRGGBB`.
    Color { color: String },
    /// A soft vertical gradient from `top` to `bottom` (`#RRGGBB`).
    Gradient { top: String, bottom: String },
    /// The original photo, scaled to fill the frame and blurred.
    Blur,
}

impl Default for Background {
    fn default() -> Self {
        Background::Gradient { top: "#F7F1EA".into(), bottom: "#E2D3C6".into() }
    }
}

/// `#RRGGBB` (or `RRGGBB`) as bytes.
pub fn parse_hex_color(s: &str) -> Option<[u8; 3]> {
    let h = s.trim().strip_prefix('#').unwrap_or(s.trim());
    if h.len() != 6 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(&h[i..i + 2], 16).ok();
    Some([byte(0)?, byte(2)?, byte(4)?])
}

impl std::str::FromStr for Background {
    type Err = String;
    /// Form syntax: `blur`, `gradient`, `gradient:#RRGGBB,#RRGGBB`,
    /// `color:#RRGGBB` or just `#RRGGBB`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("unsupported background {s:?}: use a colour (#RRGGBB), gradient[:#top,#bottom] or blur");
        let color = |c: &str| parse_hex_color(c).map(|[r, g, b]| format!("#{r:02X}{g:02X}{b:02X}")).ok_or_else(bad);
        match s.split_once(':') {
            None if s.eq_ignore_ascii_case("blur") => Ok(Background::Blur),
            None if s.eq_ignore_ascii_case("gradient") => Ok(Background::default()),
            None => Ok(Background::Color { color: color(s)? }),
            Some((k, v)) if k.eq_ignore_ascii_case("color") => Ok(Background::Color { color: color(v)? }),
            Some((k, v)) if k.eq_ignore_ascii_case("gradient") => {
                let (top, bottom) = v.split_once(',').ok_or_else(bad)?;
                Ok(Background::Gradient { top: color(top)?, bottom: color(bottom)? })
            }
            Some(_) => Err(bad()),
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
    /// Which detected person (left to right, from 0); none: the largest face.
    #[serde(default)]
    pub person_index: Option<u32>,
    #[serde(default)]
    pub background: Background,
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
    /// Each step's time and outcome, in the order the steps ended.
    pub pipeline_metrics: Vec<StageMetric>,
}

/// One step's record, as the original design's `pipeline_metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageMetric {
    pub stage: String,
    pub duration_ms: u64,
    pub success: bool,
    pub error: Option<String>,
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

impl JobError {
    /// A job this worker cannot read (`job-unreadable`): written in job
    /// format `version` (when its envelope says) by a gateway of another
    /// version, or damaged.
    pub fn unreadable(version: Option<u64>) -> JobError {
        let message = match version {
            Some(v) if v != u64::from(JOB_VERSION) => format!(
                "This job was written in job format version {v}, and this worker reads version {JOB_VERSION}: \
                 the gateway and the workers are of different versions. Please submit it again."
            ),
            _ => format!(
                "This job could not be read by the worker (job format version {JOB_VERSION}); please submit it again."
            ),
        };
        JobError { code: "job-unreadable".into(), message, retryable: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backgrounds_parse_from_the_form() {
        assert_eq!("blur".parse::<Background>().unwrap(), Background::Blur);
        assert_eq!("#a0B1c2".parse::<Background>().unwrap(), Background::Color { color: "#A0B1C2".into() });
        assert_eq!("color:112233".parse::<Background>().unwrap(), Background::Color { color: "#112233".into() });
        assert_eq!(
            "gradient:#000000,#FFFFFF".parse::<Background>().unwrap(),
            Background::Gradient { top: "#000000".into(), bottom: "#FFFFFF".into() }
        );
        assert_eq!("gradient".parse::<Background>().unwrap(), Background::default());
        for bad in ["red", "#12345", "color:", "gradient:#000000", "stripes:#000000"] {
            assert!(bad.parse::<Background>().is_err(), "{bad}");
        }
    }

    #[test]
    fn stage_lists_parse() {
        assert_eq!(Stage::parse_list("all").unwrap(), Stage::ALL.to_vec());
        assert_eq!(Stage::parse_list(" render, image ,image").unwrap(), vec![Stage::Image, Stage::Render]);
        assert!(Stage::parse_list("image,paint").is_err());
        assert!(Stage::parse_list(" , ").is_err());
    }

    #[test]
    fn jobs_without_the_newer_fields_still_parse() {
        let old = r#"{"version":1,"task_id":"t","image_key":"k","message":"m","voice_profile_id":"v",
            "bgm_id":null,"resolution":"512x910","submitted_at":"2026-01-01T00:00:00Z"}"#;
        let job: VideoJob = serde_json::from_str(old).unwrap();
        assert_eq!((job.person_index, job.background), (None, Background::default()));
    }
}
