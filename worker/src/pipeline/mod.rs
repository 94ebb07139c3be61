//! The eight steps of a video job, each reported as progress when it starts
//! and timed. Intermediate files live in a per-job temp directory (removed
//! when the job ends) and are uploaded under the original bucket layout.

pub mod image;
pub mod mix;
pub mod render;
pub mod speech;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shared::catalog::{Catalog, CatalogError};
use shared::job::{JobError, VideoJob, VideoResult};
use shared::progress::{ProgressEvent, Step};
use shared::storage::{Storage, StorageError};
use shared::tasks::TaskStore;

use crate::process::ProcessError;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("the photo could not be read as an image: {0}")]
    BadImage(String),
    #[error("voice profile {0:?} does not exist")]
    UnknownVoice(String),
    #[error("music track {0:?} does not exist")]
    UnknownTrack(String),
    #[error("voice profile {id:?} is unusable: {reason}")]
    BadVoice { id: String, reason: String },
    #[error("job format version {0} is not supported by this worker")]
    UnsupportedVersion(u32),
    #[error("local file error: {0}")]
    Io(#[from] std::io::Error),
}

impl PipelineError {
    /// Whether running the job again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            PipelineError::Storage(e) => e.is_transient(),
            PipelineError::Io(_) => true,
            _ => false,
        }
    }

    /// What the user is told.
    pub fn to_job_error(&self) -> JobError {
        let (code, message) = match self {
            PipelineError::Storage(StorageError::NotFound { .. }) => {
                ("upload-missing", "The uploaded photo is no longer in storage; please submit again.".to_owned())
            }
            PipelineError::Storage(_) => {
                ("storage-unavailable", "File storage was not reachable; please try again.".to_owned())
            }
            PipelineError::BadImage(_) => ("image-unreadable", "The photo could not be read as an image.".to_owned()),
            PipelineError::UnknownVoice(id) => ("unknown-voice", format!("The voice {id:?} no longer exists.")),
            PipelineError::UnknownTrack(id) => ("unknown-bgm", format!("The music track {id:?} no longer exists.")),
            PipelineError::Process(ProcessError::Timeout { program, .. }) => {
                ("step-timeout", format!("A processing step ({program}) took too long."))
            }
            PipelineError::UnsupportedVersion(_) => {
                ("unsupported-job", "This job was made by a newer gateway.".to_owned())
            }
            PipelineError::BadVoice { .. } | PipelineError::Catalog(_) => {
                ("catalog-error", "The voice or music catalog could not be used.".to_owned())
            }
            PipelineError::Process(_) | PipelineError::Io(_) => {
                ("processing-failed", "Making the video failed on our side.".to_owned())
            }
        };
        JobError { code: code.to_owned(), message, retryable: self.is_transient() }
    }
}

/// Settings the steps need.
#[derive(Debug, Clone)]
pub struct StepConfig {
    /// Longest any one external tool may run.
    pub tool_timeout: Duration,
}

/// Everything a job's steps share.
pub struct Job<'a> {
    pub job: &'a VideoJob,
    pub dir: PathBuf,
    pub storage: &'a Storage,
    pub catalog: &'a Catalog,
    pub cfg: &'a StepConfig,
    pub tasks: &'a TaskStore,
    current: Option<(Step, Instant)>,
    pub timings: Vec<(String, f64)>,
}

impl<'a> Job<'a> {
    pub fn new(
        job: &'a VideoJob,
        dir: &Path,
        storage: &'a Storage,
        catalog: &'a Catalog,
        cfg: &'a StepConfig,
        tasks: &'a TaskStore,
    ) -> Self {
        Job { job, dir: dir.to_owned(), storage, catalog, cfg, tasks, current: None, timings: Vec::new() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn task_id(&self) -> &str {
        &self.job.task_id
    }

    /// The step now running, for failure reports.
    pub fn current_step(&self) -> Option<Step> {
        self.current.map(|(s, _)| s)
    }

    /// Mark the start of a step: closes the previous step's timer and
    /// publishes the progress event. Progress is retried briefly but never
    /// fails the job: viewers recover missed events from the log.
    pub async fn begin(&mut self, step: Step) {
        self.finish_timer();
        self.current = Some((step, Instant::now()));
        tracing::info!(task_id = %self.job.task_id, step = step.name(), "step started");
        publish_progress(self.tasks, ProgressEvent::step(&self.job.task_id, step, 0)).await;
    }

    fn finish_timer(&mut self) {
        if let Some((step, t0)) = self.current.take() {
            self.timings.push((step.name().to_owned(), t0.elapsed().as_secs_f64()));
        }
    }
}

/// Publish a progress event, retrying transient Redis errors a few times.
pub async fn publish_progress(tasks: &TaskStore, ev: ProgressEvent) {
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=5 {
        match tasks.publish(&ev).await {
            Ok(_) => return,
            Err(e) if attempt < 5 && e.is_transient() => {
                tracing::warn!(error = %e, attempt, "publishing progress failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                tracing::error!(error = %e, task_id = %ev.task_id, "progress event lost");
                return;
            }
        }
    }
}

/// Run every step of the job in order.
pub async fn run(j: &mut Job<'_>) -> Result<VideoResult, PipelineError> {
    if j.job.version != shared::job::JOB_VERSION {
        return Err(PipelineError::UnsupportedVersion(j.job.version));
    }
    let voice = j
        .catalog
        .voice(&j.job.voice_profile_id)
        .await?
        .ok_or_else(|| PipelineError::UnknownVoice(j.job.voice_profile_id.clone()))?;
    let track = match &j.job.bgm_id {
        Some(id) => Some(j.catalog.track(id).await?.ok_or_else(|| PipelineError::UnknownTrack(id.clone()))?),
        None => None,
    };

    j.begin(Step::DownloadImage).await;
    let original = image::download(j).await?;
    j.begin(Step::DetectPerson).await;
    let crop = image::detect_person(j, &original).await?;
    j.begin(Step::BackgroundRemoval).await;
    let cutout = image::remove_background(j, &crop).await?;
    j.begin(Step::PrepareImage).await;
    let frame = image::prepare(j, &cutout).await?;
    j.begin(Step::SynthesizeVoice).await;
    let voice_wav = speech::synthesize(j, &voice).await?;
    j.begin(Step::AdjustProsody).await;
    let adjusted = speech::adjust_prosody(j, &voice, &voice_wav).await?;
    j.begin(Step::MixBgm).await;
    let mixed = mix::mix(j, track.as_ref(), &adjusted).await?;
    j.begin(Step::RenderAndUpload).await;
    let result = render::render_and_upload(j, &frame, &adjusted, &mixed).await?;
    j.finish_timer();
    Ok(VideoResult { step_seconds: j.timings.clone(), ..result })
}
