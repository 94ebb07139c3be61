//! The job queue: apalis with its Redis backend, configured the same way in
//! the gateway (which pushes) and the workers (which consume).

use std::time::Duration;

use apalis::prelude::TaskSink;
use apalis_redis::{Config, ConnectionManager, RedisStorage};

use crate::job::{Stage, VideoJob};

pub type JobStorage = RedisStorage<VideoJob, ConnectionManager>;
pub type CatalogTaskStorage = RedisStorage<crate::catalog_task::CatalogTask, ConnectionManager>;

#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// `TAYORI_QUEUE`, default `tayori-video`. No `:` (apalis uses it as a
    /// key separator).
    pub name: String,
    /// `TAYORI_QUEUE_POLL_MS`, default 200. apalis-redis polls for new jobs
    /// only on its heartbeat, so this is also the longest a new job waits
    /// for an idle worker in another process.
    pub poll_interval: Duration,
    /// `TAYORI_QUEUE_MISSED_HEARTBEATS`, default 50 (10 s): a worker silent for
    /// poll_interval x this long is presumed dead and its jobs are queued again.
    pub missed_heartbeats: usize,
}

impl QueueConfig {
    pub fn from_env() -> Result<Self, crate::env::EnvError> {
        let name = crate::env::var("TAYORI_QUEUE").unwrap_or_else(|| "tayori-video".into());
        if name.contains(':') {
            return Err(crate::env::EnvError {
                name: "TAYORI_QUEUE".into(),
                value: name,
                reason: "a queue name must not contain ':'".into(),
            });
        }
        Ok(QueueConfig {
            name,
            poll_interval: crate::env::millis("TAYORI_QUEUE_POLL_MS", 200)?,
            missed_heartbeats: crate::env::parse("TAYORI_QUEUE_MISSED_HEARTBEATS", 50)?,
        })
    }

    fn config(&self, queue: &str) -> Config {
        Config::default()
            .queue(queue)
            .heartbeat_interval(self.poll_interval)
            .missed_heartbeats(self.missed_heartbeats)
            .batch_size(1)
    }

    /// The queue the gateway pushes new jobs to: the image stage's.
    pub fn storage(&self, conn: ConnectionManager) -> JobStorage {
        self.stage_storage(conn, Stage::Image)
    }

    /// The queue of one stage: `{name}` (image, where jobs enter),
    /// `{name}-voice`, `{name}-render`.
    pub fn stage_storage(&self, conn: ConnectionManager, stage: Stage) -> JobStorage {
        RedisStorage::new(conn).with_config(self.config(&self.stage_queue(stage)))
    }

    pub fn stage_queue(&self, stage: Stage) -> String {
        match stage {
            Stage::Image => self.name.clone(),
            other => format!("{}-{}", self.name, other.name()),
        }
    }

    /// The queue of catalog tasks (`{name}-catalog`).
    pub fn catalog_storage(&self, conn: ConnectionManager) -> CatalogTaskStorage {
        RedisStorage::new(conn).with_config(self.config(&format!("{}-catalog", self.name)))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("could not enqueue the job: {0}")]
pub struct EnqueueError(String);

/// Push one job.
pub async fn enqueue(storage: &mut JobStorage, job: VideoJob) -> Result<(), EnqueueError> {
    storage.push(job).await.map_err(|e| EnqueueError(e.to_string()))
}

/// Number of jobs waiting in the queue (not yet taken by a worker).
/// apalis-redis keeps a pushed job in `{queue}:scheduled` (pushes carry a
/// run-at time) until a worker's fetch moves it to `{queue}:active`: both count.
pub async fn depth(conn: &mut ConnectionManager, cfg: &QueueConfig) -> redis::RedisResult<u64> {
    let c = Config::default().queue(&cfg.name);
    let (active, scheduled): (u64, u64) = redis::pipe()
        .cmd("LLEN")
        .arg(c.active_jobs_list())
        .cmd("ZCARD")
        .arg(c.scheduled_jobs_set())
        .query_async(conn)
        .await?;
    Ok(active + scheduled)
}
