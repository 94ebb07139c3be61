//! Worker configuration, from `TAYORI_*` environment variables.

use std::path::PathBuf;
use std::time::Duration;

use shared::env::{self, EnvError};
use shared::queue::QueueConfig;
use shared::redis_conn::RedisConfig;
use shared::storage::S3Config;
use shared::tasks::Ttls;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `TAYORI_WORKER_NAME`, default `worker-{host}-{pid}`: unique per process.
    pub name: String,
    /// `TAYORI_DATA_DIR`, default `data`: the catalog directory.
    pub data_dir: PathBuf,
    /// `TAYORI_WORK_DIR`, default the system temp dir: per-job scratch space.
    pub work_dir: PathBuf,
    /// `TAYORI_JOB_TIMEOUT_SECS`, default 300: a job's whole time budget.
    pub job_timeout: Duration,
    /// `TAYORI_TOOL_TIMEOUT_SECS`, default 120: any one ffmpeg/TTS call.
    pub tool_timeout: Duration,
    /// `TAYORI_JOB_RETRY_BUDGET_SECS`, default 60: how long a stage keeps
    /// being retried (backoff 1, 2, 4, 8, 8, ... s) after transient failures
    /// (S3 or disk trouble) before the job fails with a retryable error.
    pub retry_budget: Duration,
    /// `TAYORI_CONCURRENCY`, default 1: jobs run at once by this process, per stage.
    pub concurrency: usize,
    /// `--stages` or `TAYORI_STAGES`, default `all`: which stages this
    /// process serves (`image`, `voice`, `render`, comma-separated).
    pub stages: Vec<shared::job::Stage>,
    /// `TAYORI_SEGMENTATION_MODEL`, default `isnet` (quality); `u2netp` is fast.
    pub segmentation: crate::vision::segment::Model,
    /// `TAYORI_PRELOAD_MODELS`, default true: load the segmentation model
    /// and run it once at start, so the first job does not pay for it.
    pub preload_models: bool,
    /// `TAYORI_CAPTION_FONT`, default Debian's Noto Sans CJK Bold
    /// collection (`fonts-noto-cjk`): the font the captions are drawn in.
    pub caption_font: PathBuf,
    pub redis: RedisConfig,
    pub queue: QueueConfig,
    pub ttls: Ttls,
    /// `TAYORI_FAILED_KEEP_SECS`: how long a failed job is kept for a retry.
    pub failed_keep: Duration,
    pub s3: S3Config,
}

impl WorkerConfig {
    pub fn from_env() -> Result<Self, EnvError> {
        let host =
            std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "host".into());
        let mut s3 = S3Config::from_env()?;
        if s3.endpoint.is_none() && env::var("TAYORI_S3_USE_AWS").is_none() {
            // Same default as the gateway's embedded endpoint.
            s3.endpoint = Some("http://127.0.0.1:9000".into());
            s3.public_endpoint.get_or_insert_with(|| "http://127.0.0.1:9000".into());
            s3.path_style = true;
        }
        Ok(WorkerConfig {
            name: env::var("TAYORI_WORKER_NAME").unwrap_or_else(|| format!("worker-{host}-{}", std::process::id())),
            data_dir: env::parse("TAYORI_DATA_DIR", PathBuf::from("data"))?,
            work_dir: env::parse("TAYORI_WORK_DIR", std::env::temp_dir())?,
            job_timeout: env::secs("TAYORI_JOB_TIMEOUT_SECS", 300)?,
            tool_timeout: env::secs("TAYORI_TOOL_TIMEOUT_SECS", 120)?,
            retry_budget: env::secs("TAYORI_JOB_RETRY_BUDGET_SECS", 60)?,
            concurrency: env::parse("TAYORI_CONCURRENCY", 1)?,
            stages: match env::var("TAYORI_STAGES") {
                None => shared::job::Stage::ALL.to_vec(),
                Some(v) => shared::job::Stage::parse_list(&v).map_err(|reason| EnvError {
                    name: "TAYORI_STAGES".into(),
                    value: v,
                    reason,
                })?,
            },
            segmentation: env::parse("TAYORI_SEGMENTATION_MODEL", crate::vision::segment::Model::IsNet)?,
            preload_models: env::parse("TAYORI_PRELOAD_MODELS", true)?,
            caption_font: env::parse("TAYORI_CAPTION_FONT", PathBuf::from(crate::vision::caption::DEFAULT_FONT))?,
            redis: RedisConfig::from_env()?,
            queue: QueueConfig::from_env()?,
            ttls: Ttls::from_env()?,
            failed_keep: shared::failed::keep_from_env()?,
            s3,
        })
    }
}
