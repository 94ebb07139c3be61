//! Runs one delivered stage of a job: claim it, mark the job started, run
//! the stage under what is left of the job's time limit (retrying transient
//! failures), hand the job on (image -> voice at the start, image + voice ->
//! render at the end), record the outcome in the task meta and the final
//! progress event, and clean up.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use shared::catalog::Catalog;
use shared::job::{JobError, Stage, StageMetric, VideoJob, VideoResult};
use shared::progress::{ProgressEvent, Step, TaskMeta, TaskStatus};
use shared::queue::Queue;
use shared::redis_conn::ConnectionManager;
use shared::storage::Storage;
use shared::tasks::{TaskStore, TaskStoreError};

use crate::config::WorkerConfig;
use crate::pipeline::{self, PipelineError, StepConfig};
use crate::{handoff, lease};

pub struct Runner {
    pub cfg: WorkerConfig,
    pub redis: ConnectionManager,
    pub tasks: TaskStore,
    /// Where failed jobs are kept for an operator's retry.
    pub failed: shared::failed::FailedStore,
    pub storage: Storage,
    pub catalog: Catalog,
    /// Queues of the voice and render stages (the image stage's is where
    /// the gateway puts new jobs).
    pub voice_queue: Queue<VideoJob>,
    pub render_queue: Queue<VideoJob>,
    /// Jobs this process has run a stage of that may not have ended yet,
    /// with when it last started one (kept for one job time limit): a
    /// stopping worker waits for them, since their later stages may be
    /// queued for it.
    pub touched: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// The jobs this process started (ran the image stage of) that may not
    /// have ended: the bound on taking new ones.
    pub entered: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Signalled when a job ends in this process.
    pub job_ended: tokio::sync::Notify,
    /// Set once the process is stopping: a job waiting for room is handed
    /// back instead of started.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// The stages of jobs running in this process now (for the heartbeat).
    pub in_hand: std::sync::Mutex<Vec<shared::heartbeat::InHand>>,
    /// Signalled when [`Runner::in_hand`] changes: the heartbeat goes out
    /// at once, so that a job of a few seconds is seen in progress.
    pub in_hand_changed: tokio::sync::Notify,
    /// The jobs this process runs stages of, flagged when cancelled.
    pub cancels: Arc<shared::cancel::Cancels>,
    /// Measured features of the system base voices (voice matching).
    pub base_voice_features: std::sync::Mutex<std::collections::HashMap<String, crate::voice_analysis::VoiceFeatures>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("task state unavailable: {0}")]
    Tasks(#[from] TaskStoreError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the next stage could not be queued: {0}")]
    Enqueue(#[from] shared::queue::QueueError),
    /// Not run now: deliver it again after this delay (not an attempt).
    #[error("put off for {0:?}")]
    PutOff(Duration),
}

impl RunError {
    /// How long to put the delivery off without counting it, if it was not
    /// a failed attempt: put off on purpose, or Redis unreachable (the
    /// outcome could not be recorded). Anything else counts.
    pub fn put_off(&self) -> Option<Duration> {
        let unreachable = shared::queue::RetryLater::REDIS_UNREACHABLE.0;
        match self {
            RunError::PutOff(d) => Some(*d),
            RunError::Tasks(e) if e.is_transient() => Some(unreachable),
            RunError::Redis(e) if shared::redis_conn::is_transient(e) => Some(unreachable),
            RunError::Enqueue(shared::queue::QueueError::Redis(e)) if shared::redis_conn::is_transient(e) => {
                Some(unreachable)
            }
            _ => None,
        }
    }
}

/// How long a duplicate delivery of a stage that is running elsewhere is
/// put off: a third of the claim's life, so a dead holder's claim has run
/// out by the third try.
const CLAIMED_ELSEWHERE_DELAY: Duration = Duration::from_secs(5);

/// Deliveries of one stage after which the job is failed (`gave-up`).
pub const MAX_DELIVERIES: u64 = 5;

/// Where a job came from, kept with its failure so that an operator can
/// queue it again.
pub struct Origin {
    pub stage: Option<Stage>,
    pub queue: String,
    /// The job as queued (JSON).
    pub job: String,
}

impl Origin {
    fn of(runner: &Runner, stage: Stage, job: &VideoJob) -> Origin {
        Origin {
            stage: Some(stage),
            queue: runner.cfg.queue.stage_queue(stage),
            job: serde_json::to_string(job).expect("a job serializes"),
        }
    }
}

/// A failed attempt: the error, the step it happened in, the steps' record.
type Failed = (PipelineError, Option<Step>, Vec<StageMetric>);

impl Runner {
    /// How long the stage bookkeeping is kept: past any redelivery of the job.
    fn keep(&self) -> Duration {
        self.cfg.job_timeout + Duration::from_secs(60)
    }

    /// How many of the jobs in `set` have not ended (wherever their other
    /// stages run), read in one round trip; ended ones are forgotten. A job
    /// whose state cannot be read counts as open.
    async fn open_jobs(&self, set: &std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>) -> usize {
        let ids: Vec<String> = {
            let mut set = set.lock().expect("job set lock");
            let limit = self.cfg.job_timeout;
            set.retain(|_, t| t.elapsed() < limit);
            set.keys().cloned().collect()
        };
        if ids.is_empty() {
            return 0;
        }
        let Ok(metas) = self.tasks.metas(&ids).await else { return ids.len() };
        let mut set = set.lock().expect("job set lock");
        let mut open = 0;
        for (id, meta) in ids.iter().zip(metas) {
            match meta {
                Some(m) if !m.status.is_terminal() => open += 1,
                _ => {
                    set.remove(id);
                }
            }
        }
        open
    }

    /// Wait (at most the job time limit) until every job this process ran a
    /// stage of has ended, wherever its other stages ran.
    pub async fn wait_touched_ended(&self) {
        let deadline = tokio::time::Instant::now() + self.cfg.job_timeout;
        while self.open_jobs(&self.touched).await > 0 && tokio::time::Instant::now() < deadline {
            let _ = tokio::time::timeout(Duration::from_millis(250), self.job_ended.notified()).await;
        }
    }

    /// Before a new job enters (its image stage, which starts its clock):
    /// wait while `2 x concurrency` of the jobs this process started are
    /// open. Without this the quick image stage races through a backlog, and
    /// jobs time out waiting for their voice and render stages. The job
    /// waits leased (and renewed), so an idle worker elsewhere takes the
    /// next ones. Woken when a job ends here, and looks again every second
    /// for jobs that ended elsewhere. `false`: the process is stopping, and
    /// the job should be handed back.
    async fn wait_for_room(&self, task_id: &str) -> bool {
        let limit = self.cfg.concurrency.max(1) * 2;
        let mut stopping = self.stopping.subscribe();
        let mut waited = false;
        loop {
            if *stopping.borrow() {
                return false;
            }
            if self.open_jobs(&self.entered).await < limit {
                return true;
            }
            if !waited {
                tracing::debug!(%task_id, limit, "waiting for jobs in progress to end before starting another");
                waited = true;
            }
            tokio::select! {
                _ = tokio::time::timeout(Duration::from_secs(1), self.job_ended.notified()) => {}
                _ = stopping.changed() => {}
            }
        }
    }

    /// Handle one delivery of `stage` (`delivery` counts from 1). An `Err`
    /// means the outcome could not be recorded (Redis down); the queue will
    /// deliver it again.
    pub async fn handle(self: &Arc<Self>, stage: Stage, job: VideoJob, delivery: u64) -> Result<(), RunError> {
        let task_id = job.task_id.clone();
        if delivery > MAX_DELIVERIES {
            // Every worker that took it stopped (crashed, or Redis failed
            // under it): end the job with a clear word instead of looping.
            let err = JobError {
                code: "gave-up".into(),
                message: format!(
                    "The {} stage was started {} times without finishing; please try again.",
                    stage.name(),
                    delivery - 1
                ),
                retryable: true,
            };
            tracing::error!(%task_id, stage = stage.name(), delivery, "giving up on a job delivered too often");
            return self
                .fail_task(&task_id, job.submitted_at, &err, None, Vec::new(), Origin::of(self, stage, &job))
                .await;
        }
        if stage == Stage::Image
            && let Some(meta) = self.tasks.meta(&task_id).await?
            && meta.status.is_terminal()
        {
            tracing::info!(%task_id, "job already ended (cancelled?) before it started; dropping it");
            return Ok(());
        }
        if stage == Stage::Image && !self.wait_for_room(&task_id).await {
            tracing::info!(%task_id, "stopping: handing back a job that had not started");
            return Err(RunError::PutOff(Duration::ZERO));
        }
        let holder = format!("{}:{}", self.cfg.name, uuid::Uuid::new_v4().simple());
        let claim = shared::keys::job_claim(&task_id, stage);
        let mut conn = self.redis.clone();
        if let Some(meta) = self.tasks.meta(&task_id).await?
            && meta.status.is_terminal()
        {
            tracing::info!(%task_id, stage = stage.name(), "job already finished; dropping a repeated delivery");
            return Ok(());
        }
        if handoff::is_done(&mut conn, &task_id, stage).await? {
            tracing::info!(%task_id, stage = stage.name(), "stage already done; dropping a repeated delivery");
            // Its hand-off may be what was lost: queue the render again if due.
            if stage != Stage::Render && handoff::render_due(&mut conn, &task_id).await? {
                self.render_queue.push(&job).await?;
            }
            return Ok(());
        }
        if !lease::try_claim(&mut conn, &claim, &holder).await? {
            // Running elsewhere (or its holder died and the claim has not run
            // out yet): hand it back for later instead of holding a slot.
            tracing::info!(%task_id, stage = stage.name(), "stage is running elsewhere; putting this delivery off");
            return Err(RunError::PutOff(CLAIMED_ELSEWHERE_DELAY));
        }
        let _renew = shared::rt::AbortOnDrop(lease::keep_alive(self.redis.clone(), &claim, &holder));
        let now = std::time::Instant::now();
        self.touched.lock().expect("touched lock").insert(task_id.clone(), now);
        if stage == Stage::Image {
            self.entered.lock().expect("entered lock").insert(task_id.clone(), now);
        }
        let _in_hand = InHandGuard::new(self, &task_id, stage);
        let outcome = self.run_claimed(stage, &job).await;
        let _ = lease::release(&mut conn, &claim, &holder).await;
        outcome
    }

    async fn run_claimed(&self, stage: Stage, job: &VideoJob) -> Result<(), RunError> {
        let task_id = &job.task_id;
        let mut conn = self.redis.clone();
        if stage == Stage::Image {
            // The voice stage starts now, on whichever worker serves it.
            self.voice_queue.push(job).await?;
        }
        let mut meta = self.current_meta(task_id, job.submitted_at).await?;
        if meta.status.is_terminal() {
            return Ok(());
        }
        let Some(starts) = handoff::count_start(&mut conn, task_id, stage, self.keep()).await? else {
            tracing::info!(%task_id, stage = stage.name(), "job ended as this stage started; dropping it");
            return Ok(());
        };
        meta.status = TaskStatus::Started;
        let date_started = *meta.date_started.get_or_insert_with(Utc::now);
        meta.worker = Some(self.cfg.name.clone());
        meta.attempts = meta.attempts.max(starts);
        self.tasks.put_meta_unless_done(&meta).await?;

        // The job's time limit counts from its first stage's start.
        let spent = (Utc::now() - date_started).to_std().unwrap_or_default();
        let budget = self.cfg.job_timeout.saturating_sub(spent);
        let started = tokio::time::Instant::now();
        let mut attempt = 0;
        let mut first_failure: Option<tokio::time::Instant> = None;
        let attempts = async {
            loop {
                attempt += 1;
                let left = budget.saturating_sub(started.elapsed());
                match tokio::time::timeout(left, self.run_stage(stage, job)).await {
                    Err(_) => {
                        let err = JobError {
                            code: "job-timeout".into(),
                            message: format!(
                                "Making the video took longer than {} seconds and was stopped.",
                                self.cfg.job_timeout.as_secs()
                            ),
                            retryable: true,
                        };
                        break Err((err, None, Vec::new()));
                    }
                    Ok(Ok(result)) => break Ok(result),
                    Ok(Err((e, _, _)))
                        if e.is_transient()
                            && first_failure.get_or_insert_with(tokio::time::Instant::now).elapsed()
                                < self.cfg.retry_budget =>
                    {
                        let backoff = Duration::from_secs(1 << (attempt - 1).min(3));
                        tracing::warn!(%task_id, stage = stage.name(), error = %e, attempt, "transient failure; retrying the stage");
                        tokio::time::sleep(backoff.min(left / 4)).await;
                    }
                    Ok(Err((PipelineError::Ended, _, _))) => {
                        tracing::info!(%task_id, stage = stage.name(), "the job ended while this stage waited; stopping it");
                        break Err((PipelineError::Ended.to_job_error(), None, Vec::new()));
                    }
                    Ok(Err((e, step, metrics))) => {
                        tracing::error!(%task_id, stage = stage.name(), error = %e, "job failed");
                        break Err((e.to_job_error(), step, metrics));
                    }
                }
            }
        };
        // A cancel drops the attempt: its tools are killed with it, and its
        // scratch directory removed.
        let outcome = tokio::select! {
            biased;
            () = self.cancels.wait(&self.tasks, task_id) => None,
            o = attempts => Some(o),
        };
        let Some(outcome) = outcome else {
            tracing::info!(%task_id, stage = stage.name(), "job cancelled; its stage stopped");
            self.cleanup_cancelled(task_id).await?;
            return Ok(());
        };

        match outcome {
            Ok((None, metrics)) => {
                // Image or voice done. The image stage queues the render if
                // the speech is already stored (else the voice stage does,
                // when it is); the voice stage's mark is what the render
                // waits for to add the sound.
                let due = handoff::mark_done(&mut conn, task_id, stage, &metrics, self.keep()).await?;
                if due && stage == Stage::Image {
                    self.queue_render(job).await?;
                }
                tracing::info!(%task_id, stage = stage.name(), seconds = started.elapsed().as_secs_f64(), "stage done");
            }
            Ok((Some(mut result), metrics)) => {
                let mut all = handoff::earlier_metrics(&mut conn, task_id).await?;
                all.extend(metrics);
                result.pipeline_metrics = all;
                tracing::info!(%task_id, duration = result.duration_seconds, "job succeeded");
                let mut meta = self.current_meta(task_id, job.submitted_at).await?;
                meta.status = TaskStatus::Success;
                let steps = result.pipeline_metrics.clone();
                meta.result = Some(shared::progress::TaskResult::Video(Box::new(result)));
                meta.date_done = Some(Utc::now());
                if self.tasks.put_meta_unless_done(&meta).await? {
                    handoff::forget(&mut conn, task_id).await?;
                    record_end(&mut conn, None, &steps).await;
                    pipeline::publish_progress(&self.tasks, ProgressEvent::succeeded(task_id, 0)).await;
                    self.job_ended.notify_waiters();
                }
            }
            Err((err, step, metrics)) => {
                let mut all = handoff::earlier_metrics(&mut conn, task_id).await?;
                all.extend(metrics);
                self.fail_task(task_id, job.submitted_at, &err, step, all, Origin::of(self, stage, job)).await?;
            }
        }
        // Cancelled while this stage was writing its last files (it ended
        // before it heard): what it wrote goes too.
        if self.tasks.meta(task_id).await?.is_some_and(|m| m.status == TaskStatus::Revoked) {
            self.cleanup_cancelled(task_id).await?;
        }
        Ok(())
    }

    /// Queue the render of `job`, unless the job has ended.
    async fn queue_render(&self, job: &VideoJob) -> Result<(), RunError> {
        let ended = self.tasks.meta(&job.task_id).await?.is_some_and(|m| m.status.is_terminal());
        if !ended {
            self.render_queue.push(job).await?;
        }
        Ok(())
    }

    /// Remove what a cancelled job stored, and its stage record. Called by
    /// each process that ran a stage of it, after that stage stopped (so
    /// nothing of it is written afterwards).
    async fn cleanup_cancelled(&self, task_id: &str) -> Result<(), RunError> {
        for prefix in shared::keys::objects::job_prefixes(task_id) {
            if let Err(e) = self.storage.delete_prefix(&prefix).await {
                tracing::warn!(%task_id, error = %e, "could not remove a cancelled job's files");
            }
        }
        let mut conn = self.redis.clone();
        handoff::forget(&mut conn, task_id).await?;
        self.job_ended.notify_waiters();
        Ok(())
    }

    /// End a job with `err` (unless it already ended): the FAILURE meta, the
    /// stage record forgotten, the failure kept with the job for a retry,
    /// the job counted, the final progress event.
    pub async fn fail_task(
        &self,
        task_id: &str,
        submitted_at: chrono::DateTime<Utc>,
        err: &JobError,
        step: Option<Step>,
        metrics: Vec<StageMetric>,
        origin: Origin,
    ) -> Result<(), RunError> {
        let mut meta = self.current_meta(task_id, submitted_at).await?;
        if meta.status.is_terminal() {
            return Ok(());
        }
        meta.fail(err);
        if !metrics.is_empty() {
            meta.pipeline_metrics = metrics;
        }
        if self.tasks.put_meta_unless_done(&meta).await? {
            let mut conn = self.redis.clone();
            handoff::forget(&mut conn, task_id).await?;
            let kept = shared::failed::FailedJob {
                task_id: task_id.to_owned(),
                code: err.code.clone(),
                message: err.message.clone(),
                stage: origin.stage.map(|s| s.name().to_owned()),
                attempts: meta.attempts,
                retries: meta.retries,
                failed_at: Utc::now(),
                queue: origin.queue,
                job: origin.job,
            };
            if let Err(e) = self.failed.record(&kept).await {
                shared::metrics::count_error(shared::metrics::Service::Redis);
                tracing::warn!(%task_id, error = %e, "could not keep the failed job for a retry");
            }
            record_end(&mut conn, Some(&err.code), &meta.pipeline_metrics).await;
            let (index, pct) = step.map(|s| (s.index(), s.start_percentage())).unwrap_or((0, 0));
            pipeline::publish_progress(&self.tasks, ProgressEvent::failed(task_id, index, pct, err, 0)).await;
            self.job_ended.notify_waiters();
        }
        Ok(())
    }

    /// The task's meta, or the PENDING one a submit writes if none is kept.
    async fn current_meta(
        &self,
        task_id: &str,
        submitted_at: chrono::DateTime<Utc>,
    ) -> Result<TaskMeta, TaskStoreError> {
        Ok(self.tasks.meta(task_id).await?.unwrap_or_else(|| TaskMeta::pending(task_id, submitted_at)))
    }

    /// One attempt of a stage in a fresh scratch directory (removed on
    /// return, also when the attempt is cancelled by the time limit).
    async fn run_stage(&self, stage: Stage, job: &VideoJob) -> Result<(Option<VideoResult>, Vec<StageMetric>), Failed> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("tayori-{}-{}-", job.task_id, stage.name()))
            .tempdir_in(&self.cfg.work_dir)
            .map_err(|e| (PipelineError::Io(e), None, Vec::new()))?;
        let step_cfg = StepConfig {
            tool_timeout: self.cfg.tool_timeout,
            segmentation: self.cfg.segmentation,
            caption_font: self.cfg.caption_font.clone(),
        };
        let hooks = Hooks { runner: self, job };
        let j = pipeline::Job::new(job, dir.path(), &self.storage, &self.catalog, &step_cfg, &self.tasks, &hooks);
        match pipeline::run_stage(&j, stage).await {
            Ok(r) => Ok((r, j.metrics())),
            Err(e) => Err((e, j.failed_step(), j.metrics())),
        }
    }
}

/// The runner's side of [`pipeline::Handoff`] for one attempt of a stage.
struct Hooks<'a> {
    runner: &'a Runner,
    job: &'a VideoJob,
}

impl pipeline::Handoff for Hooks<'_> {
    fn speech_ready(&self) -> futures::future::BoxFuture<'_, Result<(), PipelineError>> {
        Box::pin(async move {
            let mut conn = self.runner.redis.clone();
            let due = handoff::mark_speech_ready(&mut conn, &self.job.task_id, self.runner.keep())
                .await
                .map_err(|e| PipelineError::Handoff(e.to_string()))?;
            if due {
                self.runner.queue_render(self.job).await.map_err(|e| PipelineError::Handoff(e.to_string()))?;
            }
            Ok(())
        })
    }

    fn voice_is_done(&self) -> futures::future::BoxFuture<'_, Result<bool, PipelineError>> {
        Box::pin(async move {
            let mut conn = self.runner.redis.clone();
            handoff::is_done(&mut conn, &self.job.task_id, Stage::Voice)
                .await
                .map_err(|e| PipelineError::Handoff(e.to_string()))
        })
    }

    fn voice_done(&self) -> futures::future::BoxFuture<'_, Result<(), PipelineError>> {
        Box::pin(async move {
            let mut conn = self.runner.redis.clone();
            match handoff::wait_done(&mut conn, &self.runner.tasks, &self.job.task_id, Stage::Voice).await {
                Ok(()) => Ok(()),
                Err(handoff::WaitError::Ended(_)) => Err(PipelineError::Ended),
                Err(e) => Err(PipelineError::Handoff(e.to_string())),
            }
        })
    }
}

/// A stage in [`Runner::in_hand`] for as long as it runs.
struct InHandGuard<'a> {
    runner: &'a Runner,
    task_id: String,
    stage: &'static str,
}

impl<'a> InHandGuard<'a> {
    fn new(runner: &'a Runner, task_id: &str, stage: Stage) -> Self {
        runner.in_hand.lock().expect("in-hand lock").push(shared::heartbeat::InHand {
            task_id: task_id.to_owned(),
            stage: stage.name().to_owned(),
            since: Utc::now(),
        });
        runner.in_hand_changed.notify_one();
        InHandGuard { runner, task_id: task_id.to_owned(), stage: stage.name() }
    }
}

impl Drop for InHandGuard<'_> {
    fn drop(&mut self) {
        let mut list = self.runner.in_hand.lock().expect("in-hand lock");
        if let Some(i) = list.iter().position(|j| j.task_id == self.task_id && j.stage == self.stage) {
            list.swap_remove(i);
        }
        self.runner.in_hand_changed.notify_one();
    }
}

/// Count a job's end for `/metrics` (a failure to count is logged, not fatal).
async fn record_end(
    conn: &mut shared::redis_conn::ConnectionManager,
    error_code: Option<&str>,
    steps: &[shared::job::StageMetric],
) {
    if let Err(e) = shared::metrics::record_job_end(conn, error_code, steps).await {
        shared::metrics::count_error(shared::metrics::Service::Redis);
        tracing::warn!(error = %e, "could not record the job's metrics");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failed_attempts_count_as_deliveries() {
        let unreachable = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(RunError::Redis(unreachable).put_off(), Some(Duration::from_secs(2)), "Redis down: not an attempt");
        assert_eq!(RunError::PutOff(Duration::from_secs(5)).put_off(), Some(Duration::from_secs(5)));
        let bad = TaskStoreError::Decode(serde_json::from_str::<u32>("x").unwrap_err());
        assert_eq!(RunError::Tasks(bad).put_off(), None, "a damaged meta is a failed attempt");
    }
}
