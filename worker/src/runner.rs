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
    pub storage: Storage,
    pub catalog: Catalog,
    /// Queues of the voice and render stages (the image stage's is where
    /// the gateway puts new jobs).
    pub voice_queue: Queue<VideoJob>,
    pub render_queue: Queue<VideoJob>,
    /// Jobs this process has worked on that may not have ended yet, with
    /// when it last started a stage of each (kept for one job time limit).
    pub in_hand: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Measured features of the system base voices (voice matching).
    pub base_voice_features: std::sync::Mutex<std::collections::HashMap<String, crate::voice_analysis::VoiceFeatures>>,
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("task state unavailable: {0}")]
    Tasks(#[from] TaskStoreError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the next stage could not be queued: {0}")]
    Enqueue(#[from] shared::queue::QueueError),
}

/// Deliveries of one stage after which the job is failed (`gave-up`).
pub const MAX_DELIVERIES: u64 = 5;

/// A failed attempt: the error, the step it happened in, the steps' record.
type Failed = (PipelineError, Option<Step>, Vec<StageMetric>);

impl Runner {
    /// How long the stage bookkeeping is kept: past any redelivery of the job.
    fn keep(&self) -> Duration {
        self.cfg.job_timeout + Duration::from_secs(60)
    }

    /// How many jobs this process worked on have not ended (wherever their
    /// other stages run); ended ones are forgotten. A job whose state cannot
    /// be read counts as open.
    async fn open_jobs(&self) -> usize {
        let ids: Vec<String> = self.in_hand.lock().expect("in_hand lock").keys().cloned().collect();
        let mut open = 0;
        for id in ids {
            match self.tasks.meta(&id).await {
                Ok(Some(m)) if !m.status.is_terminal() => open += 1,
                Err(_) => open += 1,
                _ => {
                    self.in_hand.lock().expect("in_hand lock").remove(&id);
                }
            }
        }
        open
    }

    /// Wait (at most the job time limit) until every job this process worked
    /// on has ended, wherever its other stages ran.
    pub async fn wait_in_hand_ended(&self) {
        let deadline = tokio::time::Instant::now() + self.cfg.job_timeout;
        while self.open_jobs().await > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Before a new job enters (its image stage, which starts its clock):
    /// wait while this process has `2 x concurrency` jobs open. Without this
    /// the quick image stage races through a backlog, and jobs time out
    /// waiting for their voice and render stages. The job waits leased (and
    /// renewed), so an idle worker elsewhere takes the next ones.
    async fn wait_for_room(&self, task_id: &str) {
        let limit = self.cfg.concurrency.max(1) * 2;
        let mut waited = false;
        while self.open_jobs().await >= limit {
            if !waited {
                tracing::debug!(%task_id, limit, "waiting for jobs in progress to end before starting another");
                waited = true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
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
            let mut meta = self.current_meta(&job).await?;
            if !meta.status.is_terminal() {
                meta.status = TaskStatus::Failure;
                meta.error = Some(err.clone());
                meta.date_done = Some(Utc::now());
                if self.tasks.put_meta_unless_done(&meta).await? {
                    handoff::forget(&mut self.redis.clone(), &task_id).await?;
                    record_end(&mut self.redis.clone(), Some(&err.code), &[]).await;
                    let seq = self.next_seq(&task_id).await;
                    pipeline::publish_progress(&self.tasks, ProgressEvent::failed(&task_id, 0, 0, &err, seq)).await;
                }
            }
            return Ok(());
        }
        if stage == Stage::Image {
            self.wait_for_room(&task_id).await;
        }
        let holder = format!("{}:{}", self.cfg.name, uuid::Uuid::new_v4().simple());
        let claim = shared::keys::job_claim(&task_id, stage);
        let mut conn = self.redis.clone();
        // Wait for the claim, unless the job ended or the stage finished elsewhere.
        let deadline = tokio::time::Instant::now() + self.cfg.job_timeout + lease::CLAIM_TTL * 2;
        loop {
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
            if lease::try_claim(&mut conn, &claim, &holder).await? {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(%task_id, stage = stage.name(), "stage stayed claimed by another worker; leaving it to them");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let _renew = AbortOnDrop(lease::keep_alive(self.redis.clone(), &claim, &holder));
        {
            let mut in_hand = self.in_hand.lock().expect("in_hand lock");
            let limit = self.cfg.job_timeout;
            in_hand.retain(|_, t| t.elapsed() < limit);
            in_hand.insert(task_id.clone(), std::time::Instant::now());
        }
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
        let mut meta = self.tasks.meta(task_id).await?.unwrap_or_else(|| TaskMeta::pending(task_id, job.submitted_at));
        if meta.status.is_terminal() {
            return Ok(());
        }
        let starts = handoff::count_start(&mut conn, task_id, stage, self.keep()).await?;
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
        let outcome = loop {
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
                Ok(Err((e, step, metrics))) => {
                    tracing::error!(%task_id, stage = stage.name(), error = %e, "job failed");
                    break Err((e.to_job_error(), step, metrics));
                }
            }
        };

        match outcome {
            Ok((None, metrics)) => {
                // Image or voice done: the second of them queues the render.
                if handoff::mark_done(&mut conn, task_id, stage, &metrics, self.keep()).await? {
                    let ended = self.tasks.meta(task_id).await?.is_some_and(|m| m.status.is_terminal());
                    if !ended {
                        self.render_queue.push(job).await?;
                    }
                }
                tracing::info!(%task_id, stage = stage.name(), seconds = started.elapsed().as_secs_f64(), "stage done");
            }
            Ok((Some(mut result), metrics)) => {
                let mut all = handoff::earlier_metrics(&mut conn, task_id).await?;
                all.extend(metrics);
                result.pipeline_metrics = all;
                tracing::info!(%task_id, duration = result.duration_seconds, "job succeeded");
                let mut meta = self.current_meta(job).await?;
                meta.status = TaskStatus::Success;
                let steps = result.pipeline_metrics.clone();
                meta.result = Some(result);
                meta.date_done = Some(Utc::now());
                if self.tasks.put_meta_unless_done(&meta).await? {
                    handoff::forget(&mut conn, task_id).await?;
                    record_end(&mut conn, None, &steps).await;
                    let seq = self.next_seq(task_id).await;
                    pipeline::publish_progress(&self.tasks, ProgressEvent::succeeded(task_id, seq)).await;
                }
            }
            Err((err, step, metrics)) => {
                let mut all = handoff::earlier_metrics(&mut conn, task_id).await?;
                all.extend(metrics);
                let (index, pct) = step.map(|s| (s.index(), s.start_percentage())).unwrap_or((0, 0));
                let mut meta = self.current_meta(job).await?;
                meta.status = TaskStatus::Failure;
                meta.error = Some(err.clone());
                meta.date_done = Some(Utc::now());
                meta.pipeline_metrics = all;
                if self.tasks.put_meta_unless_done(&meta).await? {
                    handoff::forget(&mut conn, task_id).await?;
                    record_end(&mut conn, Some(&err.code), &meta.pipeline_metrics).await;
                    let seq = self.next_seq(task_id).await;
                    pipeline::publish_progress(&self.tasks, ProgressEvent::failed(task_id, index, pct, &err, seq))
                        .await;
                }
            }
        }
        Ok(())
    }

    async fn current_meta(&self, job: &VideoJob) -> Result<TaskMeta, TaskStoreError> {
        Ok(self.tasks.meta(&job.task_id).await?.unwrap_or_else(|| TaskMeta::pending(&job.task_id, job.submitted_at)))
    }

    async fn next_seq(&self, task_id: &str) -> u64 {
        self.tasks.snapshot(task_id).await.ok().flatten().map(|s| s.seq + 1).unwrap_or(0)
    }

    /// One attempt of a stage in a fresh scratch directory (removed on
    /// return, also when the attempt is cancelled by the time limit).
    async fn run_stage(&self, stage: Stage, job: &VideoJob) -> Result<(Option<VideoResult>, Vec<StageMetric>), Failed> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("tayori-{}-{}-", job.task_id, stage.name()))
            .tempdir_in(&self.cfg.work_dir)
            .map_err(|e| (PipelineError::Io(e), None, Vec::new()))?;
        let step_cfg = StepConfig { tool_timeout: self.cfg.tool_timeout, segmentation: self.cfg.segmentation };
        let j = pipeline::Job::new(job, dir.path(), &self.storage, &self.catalog, &step_cfg, &self.tasks);
        match pipeline::run_stage(&j, stage).await {
            Ok(r) => Ok((r, j.metrics())),
            Err(e) => Err((e, j.failed_step(), j.metrics())),
        }
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
