//! Task meta and progress in Redis: the only state a job has outside S3.
//!
//! Progress events are appended by one Lua script that gives each event the
//! next sequence number (from the counter `progress:{id}:seq`, which lives as
//! long as the task meta: a job that waits longer than the log's TTL goes on
//! counting instead of starting again at 0), appends it to `progress:{id}:log`,
//! stores it as the snapshot `progress:{id}`, refreshes the TTLs and
//! publishes it, all at once, so a viewer can merge the replayed log with
//! live events exactly.

use std::sync::LazyLock;
use std::time::Duration;

use crate::redis_conn::{ConnectionManager, each};
use redis::AsyncCommands;

use crate::keys;
use crate::progress::{ProgressEvent, TaskMeta};

/// How long task state lives in Redis.
#[derive(Debug, Clone, Copy)]
pub struct Ttls {
    /// `TAYORI_TASK_META_TTL_SECS`, default 86400 (24 h).
    pub task_meta: Duration,
    /// `TAYORI_PROGRESS_TTL_SECS`, default 300: progress kept after the last event.
    pub progress: Duration,
    /// `TAYORI_WS_SESSION_TTL_SECS`, default 600.
    pub ws_session: Duration,
}

impl Ttls {
    pub fn from_env() -> Result<Self, crate::env::EnvError> {
        Ok(Ttls {
            task_meta: crate::env::secs("TAYORI_TASK_META_TTL_SECS", 86_400)?,
            progress: crate::env::secs("TAYORI_PROGRESS_TTL_SECS", 300)?,
            ws_session: crate::env::secs("TAYORI_WS_SESSION_TTL_SECS", 600)?,
        })
    }
}

// Steps of one job may run at the same time on different processes (image
// and voice branches), so the percentage is decided here, in one place: a
// started step other than the render counts the steps started before it
// (5 % + 9 % each, at most 65 %), and no event goes below the one before.
static PUBLISH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local ev = cjson.decode(ARGV[1])
local last = redis.call('LINDEX', KEYS[2], -1)
if last then
  -- Nothing follows a cancel's final event (a stage still winding down).
  local l = cjson.decode(last)
  if l['status'] == 'REVOKED' then return l['seq'] end
end
local seq = redis.call('INCR', KEYS[3]) - 1
redis.call('EXPIRE', KEYS[3], ARGV[4])
ev['seq'] = seq
if ev['status'] == 'STARTED' and ev['current_step'] ~= 'render_and_upload' then
  local started = 0
  for _, raw in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
    if cjson.decode(raw)['status'] == 'STARTED' then started = started + 1 end
  end
  ev['percentage'] = math.min(65, 5 + 9 * started)
end
local prev = redis.call('LINDEX', KEYS[2], -1)
if prev then
  local p = cjson.decode(prev)['percentage']
  if p and p > ev['percentage'] then ev['percentage'] = p end
end
local s = cjson.encode(ev)
redis.call('RPUSH', KEYS[2], s)
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], s, 'EX', ARGV[2])
redis.call('PUBLISH', ARGV[3], s)
return seq
"#,
    )
});

/// The one Lua test of "this task has ended", for every script that needs
/// it: `finished(meta_json_or_false)`. The same states as
/// [`crate::progress::TaskStatus::is_terminal`].
pub const LUA_FINISHED: &str = r#"
local function finished(raw)
  if not raw then return false end
  local st = cjson.decode(raw)['status']
  return st == 'SUCCESS' or st == 'FAILURE' or st == 'REVOKED'
end
"#;

static PUT_UNLESS_DONE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{LUA_FINISHED}{}",
        r#"
if finished(redis.call('GET', KEYS[1])) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"#
    ))
});

/// Writes the meta only while the task is FAILURE (or its meta expired).
static REOPEN_FAILED: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw)['status'] ~= 'FAILURE' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"#,
    )
});

#[derive(Debug, thiserror::Error)]
pub enum TaskStoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("stored task state is not valid JSON: {0}")]
    Decode(#[from] serde_json::Error),
    /// A compare-and-set lost every race (the meta kept changing).
    #[error("the task meta kept changing under the update")]
    Busy,
}

impl TaskStoreError {
    pub fn is_transient(&self) -> bool {
        match self {
            TaskStoreError::Redis(e) => crate::redis_conn::is_transient(e),
            TaskStoreError::Decode(_) => false,
            TaskStoreError::Busy => true,
        }
    }
}

/// Task state operations over a shared Redis connection.
#[derive(Clone)]
pub struct TaskStore {
    conn: ConnectionManager,
    ttls: Ttls,
}

impl TaskStore {
    pub fn new(conn: ConnectionManager, ttls: Ttls) -> Self {
        TaskStore { conn, ttls }
    }

    pub fn ttls(&self) -> Ttls {
        self.ttls
    }

    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Append a progress event; returns the sequence number it was given.
    pub async fn publish(&self, ev: &ProgressEvent) -> Result<u64, TaskStoreError> {
        let mut conn = self.conn.clone();
        let seq: u64 = PUBLISH
            .key(keys::progress(&ev.task_id))
            .key(keys::progress_log(&ev.task_id))
            .key(keys::progress_seq(&ev.task_id))
            .arg(serde_json::to_string(ev)?)
            .arg(self.ttls.progress.as_secs().max(1))
            .arg(keys::progress_channel(&ev.task_id))
            .arg(self.ttls.task_meta.as_secs().max(1))
            .invoke_async(&mut conn)
            .await?;
        Ok(seq)
    }

    /// The latest progress event, if any is still kept.
    pub async fn snapshot(&self, task_id: &str) -> Result<Option<ProgressEvent>, TaskStoreError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = conn.get(keys::progress(task_id)).await?;
        Ok(raw.map(|s| serde_json::from_str(&s)).transpose()?)
    }

    /// The snapshots of several tasks in one round trip, in the same order
    /// (one MGET, which a Redis Cluster client splits by slot).
    pub async fn snapshots(&self, task_ids: &[&str]) -> Result<Vec<Option<ProgressEvent>>, TaskStoreError> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let raw: Vec<Option<String>> =
            each(&self.conn, task_ids.iter().map(|id| redis::Cmd::get(keys::progress(id)))).await?;
        Ok(raw.into_iter().map(|r| r.map(|s| serde_json::from_str(&s)).transpose()).collect::<Result<_, _>>()?)
    }

    /// Every kept event with `seq >= from`, in order. (The log may have
    /// expired and started again, so an event's place in it is not its
    /// number; a job's log is a few dozen events at most.)
    pub async fn events_since(&self, task_id: &str, from: u64) -> Result<Vec<ProgressEvent>, TaskStoreError> {
        let mut conn = self.conn.clone();
        let raw: Vec<String> = conn.lrange(keys::progress_log(task_id), 0, -1).await?;
        let events: Vec<ProgressEvent> = raw.iter().map(|s| serde_json::from_str(s)).collect::<Result<_, _>>()?;
        Ok(events.into_iter().filter(|e| e.seq >= from).collect())
    }

    pub async fn meta(&self, task_id: &str) -> Result<Option<TaskMeta>, TaskStoreError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = conn.get(keys::task_meta(task_id)).await?;
        Ok(raw.map(|s| serde_json::from_str(&s)).transpose()?)
    }

    /// The metas of many tasks in one round trip (`None` where none is kept).
    pub async fn metas(&self, task_ids: &[String]) -> Result<Vec<Option<TaskMeta>>, TaskStoreError> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let raw: Vec<Option<String>> =
            each(&self.conn, task_ids.iter().map(|id| redis::Cmd::get(keys::task_meta(id)))).await?;
        raw.into_iter().map(|r| Ok(r.map(|s| serde_json::from_str(&s)).transpose()?)).collect()
    }

    pub async fn put_meta(&self, meta: &TaskMeta) -> Result<(), TaskStoreError> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .set_ex(keys::task_meta(&meta.task_id), serde_json::to_string(meta)?, self.ttls.task_meta.as_secs().max(1))
            .await?;
        Ok(())
    }

    /// Write the meta unless the task already ended (SUCCESS, FAILURE or REVOKED):
    /// stages of one job run in several processes (and a cancel comes from a
    /// gateway), and the first final word stands. Returns whether it was written.
    pub async fn put_meta_unless_done(&self, meta: &TaskMeta) -> Result<bool, TaskStoreError> {
        self.put_meta_by(&PUT_UNLESS_DONE, meta).await
    }

    /// Write `meta` through `script` (KEYS[1] the meta key, ARGV the JSON and
    /// the TTL; returns 1 when it wrote).
    async fn put_meta_by(&self, script: &redis::Script, meta: &TaskMeta) -> Result<bool, TaskStoreError> {
        let mut conn = self.conn.clone();
        let written: i64 = script
            .key(keys::task_meta(&meta.task_id))
            .arg(serde_json::to_string(meta)?)
            .arg(self.ttls.task_meta.as_secs().max(1))
            .invoke_async(&mut conn)
            .await?;
        Ok(written == 1)
    }

    /// Start a failed task afresh with `meta` (PENDING): written only while
    /// the task is FAILURE or has no meta left, so two retries at once queue
    /// it once. Its progress log starts over (the sequence numbers go on).
    /// Returns whether it was written.
    pub async fn reopen_failed(&self, meta: &TaskMeta) -> Result<bool, TaskStoreError> {
        let written = self.put_meta_by(&REOPEN_FAILED, meta).await?;
        if written {
            let id = &meta.task_id;
            let _: Vec<()> = each(
                &self.conn,
                [
                    redis::Cmd::del(&[keys::progress(id), keys::progress_log(id)]),
                    redis::Cmd::expire(keys::job_cancel(id), self.ttls.task_meta.as_secs().max(1) as i64),
                ],
            )
            .await?;
        }
        Ok(written)
    }

    /// Remove every trace of a task (used when a submission is rolled back).
    pub async fn forget(&self, task_id: &str) -> Result<(), TaskStoreError> {
        // By hash slot (Redis Cluster refuses a multi-key DEL across
        // slots): the meta, the cancel token, the progress keys (one slot);
        // sent together.
        let groups = [
            vec![keys::task_meta(task_id)],
            vec![keys::job_cancel(task_id)],
            vec![keys::progress(task_id), keys::progress_log(task_id), keys::progress_seq(task_id)],
        ];
        let _: Vec<()> = each(&self.conn, groups.into_iter().map(redis::Cmd::del)).await?;
        Ok(())
    }
}
