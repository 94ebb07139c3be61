//! The eight steps of a video job, each reported as progress when it starts
//! and timed. Intermediate files live in a per-job temp directory (removed
//! when the job ends) and are uploaded under the original bucket layout.

pub mod image;
pub mod mix;
pub mod render;
pub mod speech;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shared::catalog::{Catalog, CatalogError};
use shared::job::{JobError, Stage, StageMetric, VideoJob, VideoResult};
use shared::progress::{ProgressEvent, Step};
use shared::storage::{Storage, StorageError};
use shared::tasks::TaskStore;

use crate::process::ProcessError;
use crate::vision::VisionError;

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
    #[error(transparent)]
    Vision(#[from] crate::vision::VisionError),
    #[error("voice profile {0:?} does not exist")]
    UnknownVoice(String),
    #[error("music track {0:?} does not exist")]
    UnknownTrack(String),
    #[error("voice profile {id:?} is unusable: {reason}")]
    BadVoice { id: String, reason: String },
    #[error("the voice said nothing: the speech is silent")]
    SilentSpeech,
    #[error("job format version {0} is not supported by this worker")]
    UnsupportedVersion(u32),
    /// The speech engine itself failed (inference, or its phonemizer).
    #[error("the speech engine failed: {0}")]
    Speech(String),
    /// A tool ran but its output cannot be used (not 16-bit PCM, sample
    /// rates that disagree, nothing to speak): the same again would fail.
    #[error("a tool's output could not be used: {0}")]
    BadOutput(String),
    /// Telling the other stages where the job stands failed (Redis or the
    /// queue unreachable).
    #[error("the job could not be handed on: {0}")]
    Handoff(String),
    /// The job ended elsewhere (another stage failed, or it was cancelled)
    /// while this stage waited for it: nothing more to do.
    #[error("the job ended while this stage waited for another")]
    Ended,
    #[error(transparent)]
    Panicked(#[from] shared::rt::Panicked),
    #[error("local file error: {0}")]
    Io(#[from] std::io::Error),
}

/// Local file errors that may pass (a full disk being cleaned up, an
/// interrupted call); the rest (bad data, a missing file, no permission)
/// would only fail again.
fn io_may_pass(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(kind, StorageFull | QuotaExceeded | Interrupted | WouldBlock | TimedOut | ResourceBusy | OutOfMemory)
}

impl PipelineError {
    /// Whether running the job again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            PipelineError::Storage(e) => e.is_transient(),
            PipelineError::Handoff(_) => true,
            PipelineError::Io(e) => io_may_pass(e.kind()),
            _ => false,
        }
    }

    /// What the user is told.
    pub fn to_job_error(&self) -> JobError {
        let (code, message) = match self {
            PipelineError::Storage(StorageError::NotFound { key }) if key.starts_with("images/uploads/") => {
                ("upload-missing", "The uploaded photo is no longer in storage; please submit again.".to_owned())
            }
            PipelineError::Storage(StorageError::NotFound { .. }) => (
                "intermediate-missing",
                "A file made by an earlier step of this job is no longer in storage; please submit again.".to_owned(),
            ),
            PipelineError::Storage(_) => {
                ("storage-unavailable", "File storage was not reachable; please try again.".to_owned())
            }
            PipelineError::BadImage(_) | PipelineError::Vision(VisionError::Decode(_)) => {
                ("image-unreadable", "The photo could not be read as an image.".to_owned())
            }
            PipelineError::Vision(VisionError::NoPerson) => (
                "no-person",
                "No person was found in the photo. Please use a photo where a face is clearly visible, looking at the camera."
                    .to_owned(),
            ),
            PipelineError::Vision(VisionError::NoSuchPerson { asked, found }) => (
                "person-not-found",
                format!("Person {asked} was chosen, but the photo shows {found} (numbered from 0, left to right)."),
            ),
            PipelineError::UnknownVoice(id) => ("unknown-voice", format!("The voice {id:?} no longer exists.")),
            PipelineError::UnknownTrack(id) => ("unknown-bgm", format!("The music track {id:?} no longer exists.")),
            PipelineError::Process(ProcessError::Timeout { program, .. }) => {
                ("step-timeout", format!("A processing step ({program}) took too long."))
            }
            PipelineError::SilentSpeech => (
                "speech-silent",
                "The voice could not say any of the message. Please write it in words the voice's language can read."
                    .to_owned(),
            ),
            PipelineError::UnsupportedVersion(v) => {
                ("job-unreadable", JobError::unreadable(Some(u64::from(*v))).message)
            }
            PipelineError::BadVoice { .. } => (
                "voice-unusable",
                "The chosen voice cannot be used: its files on the server are missing or damaged.".to_owned(),
            ),
            PipelineError::Catalog(_) => {
                ("catalog-error", "The voice or music catalog could not be read.".to_owned())
            }
            PipelineError::Speech(_) => (
                "speech-failed",
                "The voice engine could not speak the message; please try again or pick another voice.".to_owned(),
            ),
            PipelineError::BadOutput(_) => {
                ("output-unusable", "A processing step produced something that could not be used.".to_owned())
            }
            PipelineError::Handoff(_) => {
                ("queue-unavailable", "The job queue was not reachable; please try again.".to_owned())
            }
            // Never shown: the job's meta already holds its final word.
            PipelineError::Ended => ("job-ended", "The job had already ended.".to_owned()),
            PipelineError::Panicked(_) => ("internal-error", "Making the video stopped on an internal error.".to_owned()),
            PipelineError::Io(e) if io_may_pass(e.kind()) => {
                ("worker-disk", "The worker could not write its working files; please try again.".to_owned())
            }
            PipelineError::Io(_) => ("worker-files", "The worker could not use its working files.".to_owned()),
            PipelineError::Process(_) | PipelineError::Vision(_) => {
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
    /// The background-removal model.
    pub segmentation: crate::vision::segment::Model,
    /// The captions' font file (Noto Sans CJK JP is taken from it).
    pub caption_font: PathBuf,
}

/// How a stage tells the job's other stages where it stands, and waits
/// for them (the runner's side of `crate::handoff`).
pub trait Handoff: Send + Sync {
    /// The speech and its sentence times are stored: the render may start.
    fn speech_ready(&self) -> futures::future::BoxFuture<'_, Result<(), PipelineError>>;
    /// Wait until the voice stage is done (the mix is stored).
    fn voice_done(&self) -> futures::future::BoxFuture<'_, Result<(), PipelineError>>;
    /// Whether the voice stage is done now.
    fn voice_is_done(&self) -> futures::future::BoxFuture<'_, Result<bool, PipelineError>>;
}

/// Everything a job's steps share. Steps of the image and voice branches
/// run at the same time, so the record of them is behind a lock.
pub struct Job<'a> {
    pub job: &'a VideoJob,
    pub dir: PathBuf,
    pub storage: &'a Storage,
    pub catalog: &'a Catalog,
    pub cfg: &'a StepConfig,
    pub tasks: &'a TaskStore,
    pub handoff: &'a dyn Handoff,
    record: Mutex<Record>,
}

#[derive(Default)]
struct Record {
    metrics: Vec<StageMetric>,
    failed: Option<Step>,
}

impl<'a> Job<'a> {
    pub fn new(
        job: &'a VideoJob,
        dir: &Path,
        storage: &'a Storage,
        catalog: &'a Catalog,
        cfg: &'a StepConfig,
        tasks: &'a TaskStore,
        handoff: &'a dyn Handoff,
    ) -> Self {
        Job { job, dir: dir.to_owned(), storage, catalog, cfg, tasks, handoff, record: Default::default() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn task_id(&self) -> &str {
        &self.job.task_id
    }

    /// The step that failed first, for the failure report.
    pub fn failed_step(&self) -> Option<Step> {
        self.record.lock().expect("record lock").failed
    }

    /// What each finished step took, in the order they ended.
    pub fn metrics(&self) -> Vec<StageMetric> {
        self.record.lock().expect("record lock").metrics.clone()
    }

    /// Run one step: publish its progress event, time it, and record the
    /// outcome. Progress is retried briefly but never fails the job:
    /// viewers recover missed events from the log.
    pub async fn step<T>(
        &self,
        step: Step,
        work: impl Future<Output = Result<T, PipelineError>>,
    ) -> Result<T, PipelineError> {
        tracing::info!(task_id = %self.job.task_id, step = step.name(), "step started");
        publish_progress(self.tasks, ProgressEvent::step(&self.job.task_id, step, 0)).await;
        let t0 = Instant::now();
        let r = work.await;
        let duration_ms = t0.elapsed().as_millis() as u64;
        if let Err(e) = &r {
            // The detail (a tool's stderr, paths) is for the log; the job's
            // record, which callers can read, keeps only the code.
            tracing::warn!(task_id = %self.job.task_id, step = step.name(), error = %e, "step failed");
        }
        let mut rec = self.record.lock().expect("record lock");
        if r.is_err() && rec.failed.is_none() {
            rec.failed = Some(step);
        }
        rec.metrics.push(StageMetric {
            stage: step.name().to_owned(),
            duration_ms,
            success: r.is_ok(),
            error: r.as_ref().err().map(|e| e.to_job_error().code),
        });
        r
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

/// Run one stage of the job. The render stage returns the result; the
/// others leave their outputs in S3 (the original bucket layout), where the
/// render, on whichever worker takes it, fetches them.
pub async fn run_stage(j: &Job<'_>, stage: Stage) -> Result<Option<VideoResult>, PipelineError> {
    if j.job.version != shared::job::JOB_VERSION {
        return Err(PipelineError::UnsupportedVersion(j.job.version));
    }
    // The voice stage mixes with ffmpeg after the speech is made, the render
    // encodes with it: after a pause, its libraries are read in meanwhile.
    if stage != Stage::Image {
        crate::media::warm_up_if_idle(j.cfg.tool_timeout);
    }
    match stage {
        Stage::Image => image_branch(j).await.map(|_| None),
        Stage::Voice => {
            let voice = j
                .catalog
                .voice(&j.job.voice_profile_id)
                .await?
                .ok_or_else(|| PipelineError::UnknownVoice(j.job.voice_profile_id.clone()))?;
            let track = match &j.job.bgm_id {
                Some(id) => Some(j.catalog.track(id).await?.ok_or_else(|| PipelineError::UnknownTrack(id.clone()))?),
                None => None,
            };
            voice_branch(j, &voice, track.as_ref()).await.map(|_| None)
        }
        Stage::Render => j.step(Step::RenderAndUpload, render_from_storage(j)).await.map(Some),
    }
}

/// The render, from what the other stages stored: the frame, the speech
/// and its sentence times now; the mix once the voice stage is done (the
/// picture is encoded meanwhile).
async fn render_from_storage(j: &Job<'_>) -> Result<VideoResult, PipelineError> {
    use shared::keys::objects;
    let (w, h) = (j.job.resolution.width(), j.job.resolution.height());
    let frame = j.path(&format!("optimized_{w}x{h}.png"));
    let speech = j.path("prosody_adjusted.wav");
    let id = j.task_id();
    let keys = (objects::optimized(id, w, h), objects::prosody_adjusted(id));
    // With the mix already made (a fast voice), it is fetched with the rest
    // and the encoder starts at once; else the voice stage is asked again
    // once the picture is ready (the mix often ends while the frame is
    // decoded), and only if it is still mixing is the picture encoded alone
    // meanwhile.
    let mixed = j.handoff.voice_is_done().await?;
    let (_, _, timing, ready) = tokio::try_join!(
        async { Ok::<_, PipelineError>(j.storage.get_to_file(&keys.0, &frame).await?) },
        async { Ok(j.storage.get_to_file(&keys.1, &speech).await?) },
        render::speech_timing(j),
        async { if mixed { mixed_audio(j).await.map(Some) } else { Ok(None) } },
    )?;
    let now = async {
        match j.handoff.voice_is_done().await? {
            true => mixed_audio(j).await.map(Some),
            false => Ok(None),
        }
    };
    let later = async {
        j.handoff.voice_done().await?;
        mixed_audio(j).await
    };
    let sound = render::Sound { ready, now, later };
    render::render_and_upload(j, &frame, &speech, timing.as_ref(), sound).await
}

/// The mix as the voice stage stored it: the AAC the render copies, or,
/// from a voice stage of a worker that made only the MP3, that MP3.
async fn mixed_audio(j: &Job<'_>) -> Result<render::Audio, PipelineError> {
    use shared::keys::objects;
    let aac = j.path("final_mixed.m4a");
    match j.storage.get_to_file(&objects::final_mixed_aac(j.task_id()), &aac).await {
        Ok(_) => Ok(render::Audio::Aac(aac)),
        Err(StorageError::NotFound { .. }) => {
            let mp3 = j.path("final_mixed.mp3");
            j.storage.get_to_file(&objects::final_mixed(j.task_id()), &mp3).await?;
            Ok(render::Audio::Mp3(mp3))
        }
        Err(e) => Err(e.into()),
    }
}

/// Photo in, portrait frame at the render size out.
pub async fn image_branch(j: &Job<'_>) -> Result<PathBuf, PipelineError> {
    let original = j.step(Step::DownloadImage, image::download(j)).await?;
    let found = j.step(Step::DetectPerson, image::detect_person(j, &original)).await?;
    let cutout = j.step(Step::BackgroundRemoval, image::remove_background(j, &found)).await?;
    j.step(Step::PrepareImage, image::prepare(j, &found, &cutout)).await
}

/// Message in, the adjusted speech and the final mix out.
pub async fn voice_branch(
    j: &Job<'_>,
    voice: &shared::catalog::VoiceProfile,
    track: Option<&shared::catalog::BgmTrack>,
) -> Result<(PathBuf, PathBuf), PipelineError> {
    let (base, timing) = j.step(Step::SynthesizeVoice, speech::synthesize(j, voice)).await?;
    let adjusted = j.step(Step::AdjustProsody, speech::adjust_prosody(j, voice, &base, &timing)).await?;
    // The render may start now: it encodes the picture while the music is
    // mixed. (Told once this step has started, so that the steps still
    // start in order for a viewer.)
    let mixing = async {
        j.handoff.speech_ready().await?;
        mix::mix(j, track, &adjusted).await
    };
    let mixed = j.step(Step::MixBgm, mixing).await?;
    Ok((adjusted, mixed.mp3))
}

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn failures_are_classified_by_cause() {
        let bad_wav = PipelineError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, "not 16-bit PCM"));
        assert!(!bad_wav.is_transient(), "bad data fails the same way again");
        assert_eq!(bad_wav.to_job_error().code, "worker-files");
        let full = PipelineError::Io(std::io::Error::new(std::io::ErrorKind::StorageFull, "no space"));
        assert!(full.is_transient());
        assert!(full.to_job_error().retryable);
        let panicked = PipelineError::from(shared::rt::Panicked("index out of bounds".into()));
        assert!(!panicked.is_transient());
        assert_eq!(panicked.to_job_error().code, "internal-error");
        let rates = PipelineError::BadOutput("22050 Hz after 48000 Hz".into());
        assert_eq!((rates.is_transient(), rates.to_job_error().code.as_str()), (false, "output-unusable"));
        let speech = PipelineError::Speech("inference failed".into());
        assert_eq!(speech.to_job_error().code, "speech-failed");
        assert!(!speech.to_job_error().message.contains("catalog"));
        let photo = PipelineError::Storage(StorageError::NotFound { key: "images/uploads/t/original.png".into() });
        assert_eq!(photo.to_job_error().code, "upload-missing");
        let frame = PipelineError::Storage(StorageError::NotFound { key: "images/processed/t/person.png".into() });
        assert_eq!(frame.to_job_error().code, "intermediate-missing");
        assert!(!frame.to_job_error().message.contains("photo"));
    }
}
