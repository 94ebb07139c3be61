//! The job queue: tayori's own Redis backend for apalis.
//!
//! apalis-redis 1.0 stalls once about 8,000 tasks are due at once (its fetch
//! script unpacks them all), picks up new work only on its heartbeat, and
//! keeps finished tasks' data forever. This backend is written here instead
//! (no other maintained crate fits): a reliable queue with leases.
//!
//! - **Push**: the job's JSON goes into `queue:{q}:data`, its id onto the
//!   `pending` list, and a wake-up token onto `wake`, in one transaction.
//! - **Take** ([`scripts::FETCH`]): a bounded slice of ids is popped and each
//!   is leased (`leased` sorted set, deadline = now + lease) and its delivery
//!   counted (`attempts`). The attempt number is the holder's token.
//! - **Lease**: while a job is in hand its lease is renewed every third of
//!   the lease time ([`consumer`]), so a long job keeps it; a worker that dies
//!   stops renewing, and the next fetch by anyone puts the entry back at the
//!   head of the queue: delivery is at least once.
//! - **Settle** ([`scripts::SETTLE`]): done removes the entry and its data
//!   (nothing is left growing); a failed attempt is retried after a backoff
//!   through the `delayed` set.
//! - **Replicate**: a push and a settlement return once
//!   [`ConnectionManager::replicate`] has seen them reach a replica (with
//!   Sentinel), so neither is lost with the master.
//! - **Wake**: an idle consumer blocks on `wake` (BLPOP, on its own
//!   connection) so a new job is picked up at once, and looks at retries and
//!   expired leases at least every `idle_wait`.

pub mod consumer;
pub mod scripts;

use std::marker::PhantomData;
use std::time::Duration;

use serde::Serialize;

use crate::job::{Stage, VideoJob};
use crate::redis_conn::ConnectionManager;

pub use consumer::{Consumer, Delivery, RetryLater};

/// Most wake-up tokens kept: more than enough to wake every idle consumer.
const WAKE_TOKENS: isize = 64;

/// Most dead letters kept per queue, and how long after the last one.
pub const DEAD_LETTERS_KEPT: isize = 1000;
pub const DEAD_LETTER_TTL: Duration = Duration::from_secs(7 * 86_400);

/// A queued job that no worker could read (a gateway of another version
/// wrote it, or it is damaged), as kept in the queue's dead-letter list.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct DeadLetter {
    pub queue: String,
    pub entry: String,
    /// The envelope, where it could be read.
    pub task_id: Option<String>,
    pub version: Option<u64>,
    /// Why it could not be read.
    pub error: String,
    /// The job exactly as it was queued.
    pub raw: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

impl DeadLetter {
    /// Read the envelope (`task_id`, `version`) of a job that did not decode.
    pub fn new(queue: &str, entry: &str, raw: &str, error: String) -> Self {
        let envelope: Option<serde_json::Value> = serde_json::from_str(raw).ok();
        let field = |name: &str| envelope.as_ref().and_then(|v| v.get(name).cloned());
        DeadLetter {
            queue: queue.to_owned(),
            entry: entry.to_owned(),
            task_id: field("task_id").and_then(|v| v.as_str().map(str::to_owned)),
            version: field("version").and_then(|v| v.as_u64()),
            error,
            raw: raw.to_owned(),
            at: chrono::Utc::now(),
        }
    }
}
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// `TAYORI_QUEUE`, default `tayori-video`. No `:` (the key separator).
    pub name: String,
    /// `TAYORI_QUEUE_LEASE_SECS`, default 10: a taken job whose worker has
    /// not renewed its lease for this long is given to another worker.
    pub lease: Duration,
    /// `TAYORI_QUEUE_POLL_MS`, default 1000: the longest an idle worker
    /// waits before looking for retries and expired leases (new jobs wake it
    /// at once).
    pub idle_wait: Duration,
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
        let lease = crate::env::secs("TAYORI_QUEUE_LEASE_SECS", 10)?;
        if lease < Duration::from_secs(2) {
            return Err(crate::env::EnvError {
                name: "TAYORI_QUEUE_LEASE_SECS".into(),
                value: lease.as_secs().to_string(),
                reason: "a lease shorter than 2 s would expire between renewals".into(),
            });
        }
        Ok(QueueConfig { name, lease, idle_wait: crate::env::millis("TAYORI_QUEUE_POLL_MS", 1000)? })
    }

    /// The queue of one stage: `{name}` (image, where jobs enter),
    /// `{name}-voice`, `{name}-render`.
    pub fn stage_queue(&self, stage: Stage) -> String {
        match stage {
            Stage::Image => self.name.clone(),
            other => format!("{}-{}", self.name, other.name()),
        }
    }

    /// The queue the gateway pushes new jobs to: the image stage's.
    pub fn jobs(&self, conn: ConnectionManager) -> Queue<VideoJob> {
        self.stage(conn, Stage::Image)
    }

    pub fn stage(&self, conn: ConnectionManager, stage: Stage) -> Queue<VideoJob> {
        Queue::new(conn, &self.stage_queue(stage), self)
    }

    /// The queue of catalog tasks (`{name}-catalog`).
    pub fn catalog(&self, conn: ConnectionManager) -> Queue<crate::catalog_task::CatalogTask> {
        Queue::new(conn, &format!("{}-catalog", self.name), self)
    }
}

/// The Redis keys of one queue.
#[derive(Debug, Clone)]
pub struct Keys {
    pub pending: String,
    pub data: String,
    pub leased: String,
    pub attempts: String,
    pub delayed: String,
    pub wake: String,
    /// LIST of jobs no worker could read (newest first, at most
    /// [`DEAD_LETTERS_KEPT`], kept [`DEAD_LETTER_TTL`] after the last).
    pub dead: String,
}

impl Keys {
    pub fn new(queue: &str) -> Self {
        // The queue's name as the hash tag: one slot for all of them (Redis Cluster).
        let k = |part: &str| format!("queue:{{{queue}}}:{part}");
        Keys {
            pending: k("pending"),
            data: k("data"),
            leased: k("leased"),
            attempts: k("attempts"),
            delayed: k("delayed"),
            wake: k("wake"),
            dead: k("dead"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the job could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

/// How many entries a queue holds, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Waiting to be taken (including failed attempts waiting for a retry).
    pub waiting: u64,
    /// Taken by a worker and leased.
    pub leased: u64,
    /// Job data held (waiting + leased, plus entries being put back).
    pub stored: u64,
    /// Jobs no worker could read, kept in the dead-letter list.
    pub dead: u64,
}

/// One named queue of jobs of type `T`: pushing, and counting. Taking jobs
/// is [`Consumer`]'s.
pub struct Queue<T> {
    conn: ConnectionManager,
    name: String,
    keys: Keys,
    lease: Duration,
    idle_wait: Duration,
    _job: PhantomData<fn(T)>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            conn: self.conn.clone(),
            name: self.name.clone(),
            keys: self.keys.clone(),
            lease: self.lease,
            idle_wait: self.idle_wait,
            _job: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("name", &self.name).field("lease", &self.lease).finish()
    }
}

impl<T: Serialize> Queue<T> {
    pub fn new(conn: ConnectionManager, name: &str, cfg: &QueueConfig) -> Self {
        Queue {
            conn,
            name: name.to_owned(),
            keys: Keys::new(name),
            lease: cfg.lease,
            idle_wait: cfg.idle_wait,
            _job: PhantomData,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Push one job; returns its queue entry id.
    pub async fn push(&self, job: &T) -> Result<String, QueueError> {
        Ok(self.push_many(std::slice::from_ref(job)).await?.remove(0))
    }

    /// Push jobs in one transaction (one round trip); returns their entry ids.
    pub async fn push_many(&self, jobs: &[T]) -> Result<Vec<String>, QueueError> {
        let json = jobs.iter().map(serde_json::to_string).collect::<Result<Vec<_>, _>>()?;
        self.push_json(json).await
    }

    /// Push jobs already encoded (a failed job kept as it was queued, sent
    /// again by an operator's retry); returns their entry ids.
    pub async fn push_json(&self, jobs: Vec<String>) -> Result<Vec<String>, QueueError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let entries: Vec<(String, String)> =
            jobs.into_iter().map(|json| (uuid::Uuid::new_v4().simple().to_string(), json)).collect();
        let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
        let wake = vec![1u8; entries.len().min(WAKE_TOKENS as usize)];
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .atomic()
            .hset_multiple(&self.keys.data, &entries)
            .ignore()
            .lpush(&self.keys.pending, &ids)
            .ignore()
            .rpush(&self.keys.wake, wake)
            .ignore()
            .ltrim(&self.keys.wake, -WAKE_TOKENS, -1)
            .ignore()
            .query_async(&mut conn)
            .await?;
        // A job is accepted once a replica has it too (with Sentinel), so
        // that it survives the master's loss.
        conn.replicate().await?;
        Ok(entries.into_iter().map(|(id, _)| id).collect())
    }

    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        let mut conn = self.conn.clone();
        let (pending, delayed, leased, stored, dead): (u64, u64, u64, u64, u64) = redis::pipe()
            .llen(&self.keys.pending)
            .zcard(&self.keys.delayed)
            .zcard(&self.keys.leased)
            .hlen(&self.keys.data)
            .llen(&self.keys.dead)
            .query_async(&mut conn)
            .await?;
        Ok(QueueStats { waiting: pending + delayed, leased, stored, dead })
    }

    /// The newest `n` dead letters.
    pub async fn dead_letters(&self, n: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let mut conn = self.conn.clone();
        let raw: Vec<String> =
            redis::cmd("LRANGE").arg(&self.keys.dead).arg(0).arg(n.max(1) as i64 - 1).query_async(&mut conn).await?;
        Ok(raw.iter().filter_map(|s| serde_json::from_str(s).ok()).collect())
    }
}
