//! Progress events and task meta, as stored in Redis and sent to viewers.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::job::{JobError, VideoResult};

/// Task status, as in the original (Celery) design. `Revoked` is Celery's
/// word for a job cancelled by whoever submitted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TaskStatus {
    Pending,
    Started,
    Success,
    Failure,
    Revoked,
}

impl TaskStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Success | TaskStatus::Failure | TaskStatus::Revoked)
    }

    /// Celery's word for the state (as stored).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "PENDING",
            TaskStatus::Started => "STARTED",
            TaskStatus::Success => "SUCCESS",
            TaskStatus::Failure => "FAILURE",
            TaskStatus::Revoked => "REVOKED",
        }
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

    /// The final event of a cancelled job.
    pub fn revoked(task_id: &str, seq: u64) -> Self {
        ProgressEvent {
            task_id: task_id.to_owned(),
            percentage: 0,
            message: "キャンセルされました".to_owned(),
            current_step: "cancelled".to_owned(),
            step_index: 0,
            total_steps: TOTAL_STEPS,
            status: TaskStatus::Revoked,
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

/// What `result` holds: the video of a SUCCESS, or, for a FAILURE or a
/// REVOKED job, the exception in the shape Celery's result backends store
/// (so that a Celery client's `AsyncResult.get()` raises it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TaskResult {
    Video(Box<VideoResult>),
    Exception(CeleryException),
}

/// An exception as Celery serializes it (`exc_type`, `exc_message` as the
/// exception's arguments, `exc_module`). A Celery client that cannot import
/// the module makes a class of that name, so the name is what it sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CeleryException {
    pub exc_type: String,
    pub exc_message: Vec<String>,
    pub exc_module: String,
}

/// The module named in tayori's failures (not importable unless a client
/// library provides it, then its classes are used).
pub const CELERY_EXC_MODULE: &str = "tayori.errors";

impl CeleryException {
    /// A failure, as an exception named by its error code in CamelCase
    /// (`speech-silent` -> `SpeechSilent`) carrying the user-facing message.
    pub fn failure(err: &JobError) -> Self {
        let exc_type: String = err
            .code
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| {
                let mut cs = w.chars();
                cs.next().map(|c| c.to_ascii_uppercase()).into_iter().chain(cs).collect::<String>()
            })
            .collect();
        let exc_type = if exc_type.is_empty() { "JobFailed".to_owned() } else { exc_type };
        CeleryException { exc_type, exc_message: vec![err.message.clone()], exc_module: CELERY_EXC_MODULE.into() }
    }

    /// A cancelled job: Celery's own `TaskRevokedError`, as Celery stores it.
    pub fn revoked() -> Self {
        CeleryException {
            exc_type: "TaskRevokedError".into(),
            exc_message: vec!["cancelled".into()],
            exc_module: "celery.exceptions".into(),
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
    pub result: Option<TaskResult>,
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
    /// How many times an operator retried the job after it failed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// The steps of a failed attempt (a success has them in its result).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pipeline_metrics: Vec<crate::job::StageMetric>,
}

impl TaskMeta {
    /// The video of a successful job.
    pub fn video(&self) -> Option<&VideoResult> {
        match &self.result {
            Some(TaskResult::Video(v)) => Some(v),
            _ => None,
        }
    }

    /// End the task with `err` (FAILURE), in tayori's `error` and in
    /// Celery's `result`.
    pub fn fail(&mut self, err: &JobError) {
        self.status = TaskStatus::Failure;
        self.result = Some(TaskResult::Exception(CeleryException::failure(err)));
        self.error = Some(err.clone());
        self.date_done = Some(Utc::now());
    }

    /// End the task as cancelled (REVOKED).
    pub fn revoke(&mut self) {
        self.status = TaskStatus::Revoked;
        self.result = Some(TaskResult::Exception(CeleryException::revoked()));
        self.error = Some(JobError {
            code: "cancelled".into(),
            message: "The job was cancelled by its sender.".into(),
            retryable: false,
        });
        self.date_done = Some(Utc::now());
    }

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
            retries: 0,
            pipeline_metrics: Vec::new(),
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
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

    #[test]
    fn failures_and_cancels_carry_the_exception_celery_reads() {
        let mut meta = TaskMeta::pending("t1", Utc::now());
        let err = JobError { code: "speech-silent".into(), message: "No speech.".into(), retryable: false };
        meta.fail(&err);
        let v = serde_json::to_value(&meta).unwrap();
        assert_eq!(v["status"], "FAILURE");
        assert_eq!(v["result"]["exc_type"], "SpeechSilent");
        assert_eq!(v["result"]["exc_message"], serde_json::json!(["No speech."]));
        assert_eq!(v["result"]["exc_module"], CELERY_EXC_MODULE);
        assert_eq!(v["error"]["code"], "speech-silent", "tayori's own error is kept");
        let back: TaskMeta = serde_json::from_value(v).unwrap();
        assert_eq!(back, meta);
        assert!(back.video().is_none());

        meta.revoke();
        let v = serde_json::to_value(&meta).unwrap();
        assert_eq!(v["status"], "REVOKED");
        assert_eq!(v["result"]["exc_type"], "TaskRevokedError");
        assert!(meta.status.is_terminal());
        assert_eq!(CeleryException::failure(&JobError { code: "-".into(), ..err }).exc_type, "JobFailed");
    }
}
