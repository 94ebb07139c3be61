//! Progress events and task meta, as stored in Redis and sent to viewers.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::job::{JobError, VideoResult};

/// Task status, as in the original (Celery) design.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TaskStatus {
    Pending,
    Started,
    Success,
    Failure,
}

impl TaskStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Success | TaskStatus::Failure)
    }
}

/// The eight named steps of the pipeline, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    DownloadImage,
    DetectPerson,
    BackgroundRemoval,
    PrepareImage,
    SynthesizeVoice,
    AdjustProsody,
    MixBgm,
    RenderAndUpload,
}

impl Step {
    pub const ALL: [Step; 8] = [
        Step::DownloadImage,
        Step::DetectPerson,
        Step::BackgroundRemoval,
        Step::PrepareImage,
        Step::SynthesizeVoice,
        Step::AdjustProsody,
        Step::MixBgm,
        Step::RenderAndUpload,
    ];

    /// 1-based position among [`Step::ALL`].
    pub fn index(self) -> u32 {
        Step::ALL.iter().position(|s| *s == self).expect("step is in ALL") as u32 + 1
    }

    pub fn name(self) -> &'static str {
        match self {
            Step::DownloadImage => "download_image",
            Step::DetectPerson => "detect_person",
            Step::BackgroundRemoval => "background_removal",
            Step::PrepareImage => "prepare_image",
            Step::SynthesizeVoice => "synthesize_voice",
            Step::AdjustProsody => "adjust_prosody",
            Step::MixBgm => "mix_bgm",
            Step::RenderAndUpload => "render_and_upload",
        }
    }

    /// Percentage shown when the step starts: rendering is the longest step,
    /// so the bar leaves it the most room.
    pub fn start_percentage(self) -> u8 {
        match self {
            Step::DownloadImage => 5,
            Step::DetectPerson => 10,
            Step::BackgroundRemoval => 20,
            Step::PrepareImage => 30,
            Step::SynthesizeVoice => 40,
            Step::AdjustProsody => 50,
            Step::MixBgm => 60,
            Step::RenderAndUpload => 70,
        }
    }

    /// The step's message, in Japanese (the original design's language).
    pub fn message(self) -> &'static str {
        match self {
            Step::DownloadImage => "画像をダウンロード中...",
            Step::DetectPerson => "人物を検出中...",
            Step::BackgroundRemoval => "背景を削除中...",
            Step::PrepareImage => "画像を準備中...",
            Step::SynthesizeVoice => "音声を合成中...",
            Step::AdjustProsody => "話し方を調整中...",
            Step::MixBgm => "BGMをミックス中...",
            Step::RenderAndUpload => "動画を作成してアップロード中...",
        }
    }

    /// The step's message in English (for the page and the command line).
    pub fn message_en(self) -> &'static str {
        match self {
            Step::DownloadImage => "Downloading the photo...",
            Step::DetectPerson => "Finding the person...",
            Step::BackgroundRemoval => "Removing the background...",
            Step::PrepareImage => "Preparing the picture...",
            Step::SynthesizeVoice => "Speaking the message...",
            Step::AdjustProsody => "Adjusting the voice...",
            Step::MixBgm => "Mixing in the music...",
            Step::RenderAndUpload => "Making the video and saving it...",
        }
    }

    /// The step with this wire name.
    pub fn from_name(name: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.name() == name)
    }
}

pub const TOTAL_STEPS: u32 = Step::ALL.len() as u32;

/// One progress event, as published by a worker and relayed to viewers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressEvent {
    pub task_id: String,
    pub percentage: u8,
    pub message: String,
    /// Step name (`queued` before the first step, `done` or `failed` at the end).
    pub current_step: String,
    /// 0 while queued, 1..=8 during the steps, 8 at the end.
    pub step_index: u32,
    pub total_steps: u32,
    pub status: TaskStatus,
    pub timestamp: String,
    /// Increases by one with each event of a job, so that a viewer can merge
    /// a replayed history with live events without gaps or duplicates.
    pub seq: u64,
}

pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl ProgressEvent {
    pub fn queued(task_id: &str) -> Self {
        ProgressEvent {
            task_id: task_id.to_owned(),
            percentage: 0,
            message: "順番待ち...".to_owned(),
            current_step: "queued".to_owned(),
            step_index: 0,
            total_steps: TOTAL_STEPS,
            status: TaskStatus::Pending,
            timestamp: now_rfc3339(),
            seq: 0,
        }
    }

    pub fn step(task_id: &str, step: Step, seq: u64) -> Self {
        ProgressEvent {
            task_id: task_id.to_owned(),
            percentage: step.start_percentage(),
            message: step.message().to_owned(),
            current_step: step.name().to_owned(),
            step_index: step.index(),
            total_steps: TOTAL_STEPS,
            status: TaskStatus::Started,
            timestamp: now_rfc3339(),
            seq,
        }
    }

    pub fn succeeded(task_id: &str, seq: u64) -> Self {
        ProgressEvent {
            task_id: task_id.to_owned(),
            percentage: 100,
            message: "完了しました".to_owned(),
            current_step: "done".to_owned(),
            step_index: TOTAL_STEPS,
            total_steps: TOTAL_STEPS,
            status: TaskStatus::Success,
            timestamp: now_rfc3339(),
            seq,
        }
    }

    pub fn failed(task_id: &str, step_index: u32, percentage: u8, error: &JobError, seq: u64) -> Self {
        ProgressEvent {
            task_id: task_id.to_owned(),
            percentage,
            message: error.message.clone(),
            current_step: "failed".to_owned(),
            step_index,
            total_steps: TOTAL_STEPS,
            status: TaskStatus::Failure,
            timestamp: now_rfc3339(),
            seq,
        }
    }
}

/// Task meta, stored at `celery-task-meta-{task_id}` for 24 h. Keeps the
/// fields of the original design (`status`, `result`, `traceback`,
/// `children`, `date_done`) and adds a structured `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMeta {
    pub task_id: String,
    pub status: TaskStatus,
    pub result: Option<VideoResult>,
    pub error: Option<JobError>,
    /// Always null: tayori never exposes stack traces.
    pub traceback: Option<String>,
    pub children: Vec<String>,
    pub date_submitted: DateTime<Utc>,
    pub date_started: Option<DateTime<Utc>>,
    pub date_done: Option<DateTime<Utc>>,
    /// Worker that ran (or is running) the job.
    pub worker: Option<String>,
    /// How many times a worker started this job (more than one after a crash).
    pub attempts: u32,
    /// The steps of a failed attempt (a success has them in its result).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pipeline_metrics: Vec<crate::job::StageMetric>,
}

impl TaskMeta {
    pub fn pending(task_id: &str, submitted: DateTime<Utc>) -> Self {
        TaskMeta {
            task_id: task_id.to_owned(),
            status: TaskStatus::Pending,
            result: None,
            error: None,
            traceback: None,
            children: Vec::new(),
            date_submitted: submitted,
            date_started: None,
            date_done: None,
            worker: None,
            attempts: 0,
            pipeline_metrics: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_numbered_in_order_with_rising_percentages() {
        let idx: Vec<u32> = Step::ALL.iter().map(|s| s.index()).collect();
        assert_eq!(idx, (1..=8).collect::<Vec<_>>());
        let pct: Vec<u8> = Step::ALL.iter().map(|s| s.start_percentage()).collect();
        assert!(pct.windows(2).all(|w| w[0] < w[1]), "{pct:?}");
        assert!(*pct.last().unwrap() < 100);
    }

    #[test]
    fn progress_event_has_the_wire_fields() {
        let ev = ProgressEvent::step("t1", Step::BackgroundRemoval, 3);
        let v = serde_json::to_value(&ev).unwrap();
        for f in
            ["task_id", "percentage", "message", "current_step", "step_index", "total_steps", "status", "timestamp"]
        {
            assert!(v.get(f).is_some(), "missing {f} in {v}");
        }
        assert_eq!(v["current_step"], "background_removal");
        assert_eq!(v["status"], "STARTED");
        assert_eq!(v["total_steps"], 8);
    }
}
