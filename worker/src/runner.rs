//! Runs one delivered job: claim it, mark it started, run the pipeline under
//! the job's time limit (retrying transient failures), record the outcome in
//! the task meta and the final progress event, and clean up.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use shared::catalog::Catalog;
use shared::job::{JobError, VideoJob};
use shared::progress::{ProgressEvent, TaskMeta, TaskStatus};
use shared::redis_conn::ConnectionManager;
use shared::storage::Storage;
use shared::tasks::{TaskStore, TaskStoreError};

use crate::config::WorkerConfig;
use crate::lease;
use crate::pipeline::{self, PipelineError, StepConfig};

pub struct Runner {
    pub cfg: WorkerConfig,
    pub redis: ConnectionManager,
    pub tasks: TaskStore,
    pub storage: Storage,
    pub catalog: Catalog,
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
}

/// A failed attempt: the error, the step it happened in, the steps' record.
type Failed = (PipelineError, Option<shared::progress::Step>, Vec<shared::job::StageMetric>);

impl Runner {
    /// Handle one delivery. An `Err` means the outcome could not be
    /// recorded (Redis down); the queue will deliver the job again.
    pub async fn handle(self: &Arc<Self>, job: VideoJob) -> Result<(), RunError> {
        let task_id = job.task_id.clone();
        let holder = format!("{}:{}", self.cfg.name, uuid::Uuid::new_v4().simple());
        let mut conn = self.redis.clone();
        // Wait for the claim, unless the job already ended elsewhere.
        let deadline = tokio::time::Instant::now() + self.cfg.job_timeout + lease::CLAIM_TTL * 2;
        loop {
            if let Some(meta) = self.tasks.meta(&task_id).await?
                && meta.status.is_terminal()
            {
                tracing::info!(%task_id, "job already finished; dropping a repeated delivery");
                return Ok(());
            }
            if lease::try_claim(&mut conn, &task_id, &holder).await? {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(%task_id, "job stayed claimed by another worker; leaving it to them");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let _renew = AbortOnDrop(lease::keep_alive(self.redis.clone(), &task_id, &holder));
        let outcome = self.run_claimed(&job).await;
        let _ = lease::release(&mut conn, &task_id, &holder).await;
        outcome
    }

    async fn run_claimed(&self, job: &VideoJob) -> Result<(), RunError> {
        let task_id = &job.task_id;
        let mut meta = self.tasks.meta(task_id).await?.unwrap_or_else(|| TaskMeta::pending(task_id, job.submitted_at));
        meta.status = TaskStatus::Started;
        meta.date_started = Some(Utc::now());
        meta.worker = Some(self.cfg.name.clone());
        meta.attempts += 1;
        self.tasks.put_meta(&meta).await?;

        let started = tokio::time::Instant::now();
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            let left = self.cfg.job_timeout.saturating_sub(started.elapsed());
            let r = tokio::time::timeout(left, self.run_pipeline(job)).await;
            match r {
                Err(_) => {
                    break Err((
                        JobError {
                            code: "job-timeout".into(),
                            message: format!(
                                "Making the video took longer than {} seconds and was stopped.",
                                self.cfg.job_timeout.as_secs()
                            ),
                            retryable: true,
                        },
                        None,
                    ));
                }
                Ok(Ok(result)) => break Ok(result),
                Ok(Err((e, _, _))) if e.is_transient() && attempt <= self.cfg.job_retries => {
                    let backoff = Duration::from_secs(2u64.pow(attempt));
                    tracing::warn!(%task_id, error = %e, attempt, "transient failure; retrying the job");
                    tokio::time::sleep(backoff.min(left / 4)).await;
                }
                Ok(Err((e, step, metrics))) => {
                    tracing::error!(%task_id, error = %e, "job failed");
                    meta.pipeline_metrics = metrics;
                    break Err((e.to_job_error(), step));
                }
            }
        };

        let next_seq = self.tasks.snapshot(task_id).await.ok().flatten().map(|s| s.seq + 1).unwrap_or(0);
        match outcome {
            Ok(result) => {
                tracing::info!(%task_id, seconds = started.elapsed().as_secs_f64(), duration = result.duration_seconds, "job succeeded");
                meta.status = TaskStatus::Success;
                meta.result = Some(result);
                meta.date_done = Some(Utc::now());
                self.tasks.put_meta(&meta).await?;
                pipeline::publish_progress(&self.tasks, ProgressEvent::succeeded(task_id, next_seq)).await;
            }
            Err((err, step)) => {
                let (index, pct) = step.map(|s| (s.index(), s.start_percentage())).unwrap_or((0, 0));
                meta.status = TaskStatus::Failure;
                meta.error = Some(err.clone());
                meta.date_done = Some(Utc::now());
                self.tasks.put_meta(&meta).await?;
                pipeline::publish_progress(&self.tasks, ProgressEvent::failed(task_id, index, pct, &err, next_seq))
                    .await;
            }
        }
        Ok(())
    }

    /// One attempt of the pipeline in a fresh scratch directory (removed on
    /// return, also when the attempt is cancelled by the time limit).
    async fn run_pipeline(&self, job: &VideoJob) -> Result<shared::job::VideoResult, Failed> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("tayori-{}-", job.task_id))
            .tempdir_in(&self.cfg.work_dir)
            .map_err(|e| (PipelineError::Io(e), None, Vec::new()))?;
        let step_cfg = StepConfig { tool_timeout: self.cfg.tool_timeout, segmentation: self.cfg.segmentation };
        let j = pipeline::Job::new(job, dir.path(), &self.storage, &self.catalog, &step_cfg, &self.tasks);
        let r = pipeline::run(&j).await;
        r.map_err(|e| (e, j.failed_step(), j.metrics()))
    }
}
