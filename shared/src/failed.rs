//! Video jobs that ended in FAILURE, kept for operators: listed (newest
//! first) and retried from the admin routes.
//!
//! Every failure is kept, whatever ended it: a stage that failed for good,
//! a job given up after too many deliveries, one that ran out of time, and
//! one no worker could read (a gateway of another version queued it). Each
//! record holds the error's code and message, the stage it happened in, how
//! many times a worker started the job, and the job exactly as it was
//! queued, so that a retry queues the same job again.
//!
//! Two kinds of keys, no multi-key script (so the records may sit on any
//! cluster node): `failed:job:{task_id}` holds the record and expires by
//! itself after [`keep_from_env`] (`TAYORI_FAILED_KEEP_SECS`, 7 days, as
//! long as the photo); `failed:index` orders them by time, and is trimmed
//! on each write to what is younger than that and to at most [`MAX_KEPT`]
//! entries, so nothing grows without bound.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::keys;
use crate::redis_conn::{ConnectionManager, each};

/// Most failures kept in the index.
pub const MAX_KEPT: isize = 10_000;

/// One failed job, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedJob {
    pub task_id: String,
    /// The error's code (`no-person`, `gave-up`, `job-unreadable`, ...) and
    /// its plain words.
    pub code: String,
    pub message: String,
    /// The stage it failed in (`image`, `voice`, `render`), where known.
    pub stage: Option<String>,
    /// How many times a worker started the job.
    pub attempts: u32,
    /// How many times an operator had retried it before this failure.
    #[serde(default)]
    pub retries: u32,
    pub failed_at: DateTime<Utc>,
    /// The queue the job was in.
    pub queue: String,
    /// The job exactly as it was queued (JSON).
    pub job: String,
}

/// `TAYORI_FAILED_KEEP_SECS`, default 604800 (7 days): how long a failed
/// job is kept for a retry.
pub fn keep_from_env() -> Result<Duration, crate::env::EnvError> {
    crate::env::secs("TAYORI_FAILED_KEEP_SECS", 7 * 86_400)
}

#[derive(Clone)]
pub struct FailedStore {
    conn: ConnectionManager,
    keep: Duration,
}

impl std::fmt::Debug for FailedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailedStore").field("keep", &self.keep).finish_non_exhaustive()
    }
}

impl FailedStore {
    pub fn new(conn: ConnectionManager, keep: Duration) -> Self {
        FailedStore { conn, keep }
    }

    pub fn keep(&self) -> Duration {
        self.keep
    }

    /// Keep `job` (a later failure of the same task replaces it).
    pub async fn record(&self, job: &FailedJob) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let json = serde_json::to_string(job).expect("a failed job serializes");
        let at = job.failed_at.timestamp_millis();
        let oldest = Utc::now().timestamp_millis() - self.keep.as_millis() as i64;
        let index = keys::failed_index();
        // The record and the index (different cluster slots): the record first.
        let _: () = conn.set_ex(keys::failed_job(&job.task_id), json, self.keep.as_secs().max(1)).await?;
        let _: () = redis::pipe()
            .zadd(&index, &job.task_id, at)
            .ignore()
            .zrembyscore(&index, "-inf", format!("({oldest}"))
            .ignore()
            .zremrangebyrank(&index, 0, -(MAX_KEPT + 1))
            .ignore()
            .expire(&index, self.keep.as_secs().max(1) as i64)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The newest `n` failures (and how many the index holds). Index
    /// entries whose record has expired are dropped on the way.
    pub async fn list(&self, n: usize) -> redis::RedisResult<(Vec<FailedJob>, u64)> {
        let mut conn = self.conn.clone();
        let index = keys::failed_index();
        let (ids, total): (Vec<String>, u64) =
            redis::pipe().zrevrange(&index, 0, n.max(1) as isize - 1).zcard(&index).query_async(&mut conn).await?;
        if ids.is_empty() {
            return Ok((Vec::new(), total));
        }
        // One GET per record, not MGET: the records may live in different
        // cluster slots.
        let raw: Vec<Option<String>> = each(&conn, ids.iter().map(|id| redis::Cmd::get(keys::failed_job(id)))).await?;
        let mut out = Vec::with_capacity(raw.len());
        let mut gone = Vec::new();
        for (id, raw) in ids.iter().zip(raw) {
            match raw.and_then(|r| serde_json::from_str::<FailedJob>(&r).ok()) {
                Some(f) => out.push(f),
                None => gone.push(id.clone()),
            }
        }
        if !gone.is_empty() {
            let _: () = conn.zrem(&index, gone).await?;
        }
        Ok((out, total))
    }

    pub async fn get(&self, task_id: &str) -> redis::RedisResult<Option<FailedJob>> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = conn.get(keys::failed_job(task_id)).await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// Forget a failure (its job was queued again).
    pub async fn remove(&self, task_id: &str) -> redis::RedisResult<()> {
        let _: Vec<()> = each(
            &self.conn,
            [redis::Cmd::del(keys::failed_job(task_id)), redis::Cmd::zrem(keys::failed_index(), task_id)],
        )
        .await?;
        Ok(())
    }
}
