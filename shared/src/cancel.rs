//! Cancelling a job: the submitter's token, the REVOKED meta, and how
//! workers hear of it.
//!
//! There are no accounts, so the right to cancel is a secret handed to
//! whoever submitted the job: the submit answer carries a random
//! `cancel_token`, and Redis keeps only its SHA-256 (`job:cancel:{id}`, as
//! long as the task meta). A cancel ([`revoke`]) writes the meta REVOKED
//! (unless the job already ended: one compare-and-set, since workers write
//! the same key), then publishes the task id on [`CHANNEL`]. Each worker
//! holds one subscription to it ([`Cancels::listen`]) and drops the futures
//! of that job's running stages, which kills their tools; a worker that
//! missed the message sees the meta at its next look ([`Cancels::wait`]
//! polls it too).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use redis::AsyncCommands;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::keys;
use crate::progress::{TaskMeta, TaskStatus};
use crate::tasks::{TaskStore, TaskStoreError};

/// The channel a gateway publishes a cancelled job's id on.
pub const CHANNEL: &str = "job:cancelled";

/// How often a running stage also reads its meta, in case the worker's
/// subscription missed the message (reconnecting).
pub const POLL: Duration = Duration::from_secs(2);

/// A new cancel token (256 random bits, hex) and the hash that is stored.
pub fn new_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the system's random source");
    let token = hex::encode(bytes);
    let hash = token_hash(&token);
    (token, hash)
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Keep the hash of a job's cancel token as long as its meta.
pub async fn store_token_hash(tasks: &TaskStore, task_id: &str, hash: &str) -> Result<(), TaskStoreError> {
    let mut conn = tasks.conn();
    let ttl = tasks.ttls().task_meta.as_secs().max(1);
    let _: () = conn.set_ex(keys::job_cancel(task_id), hash, ttl).await?;
    Ok(())
}

/// What a cancel request came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Revoke {
    /// Revoked now (the meta as written), or it had been already.
    Revoked(Box<TaskMeta>),
    AlreadyRevoked,
    /// No such task (or its meta expired).
    NotFound,
    /// No token, or not this job's.
    WrongToken,
    /// It ended first (SUCCESS or FAILURE).
    Finished(TaskStatus),
}

/// Write `current` as `next` only if the key still holds `current`.
static SWAP: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
"#,
    )
});

/// Cancel `task_id` if `token` is its cancel token and it has not ended.
/// On `Revoked` the caller publishes the final event and the notice.
pub async fn revoke(tasks: &TaskStore, task_id: &str, token: Option<&str>) -> Result<Revoke, TaskStoreError> {
    let mut conn = tasks.conn();
    let stored: Option<String> = conn.get(keys::job_cancel(task_id)).await?;
    let meta_key = keys::task_meta(task_id);
    // A few tries: a worker may write the meta (STARTED, a step) between
    // the read and the swap.
    for _ in 0..16 {
        let raw: Option<String> = conn.get(&meta_key).await?;
        let Some(raw) = raw else { return Ok(Revoke::NotFound) };
        // Comparing hashes: the time this takes tells nothing about the
        // token, whose hash an attacker cannot steer byte by byte.
        match (&stored, token) {
            (Some(h), Some(t)) if *h == token_hash(t) => {}
            _ => return Ok(Revoke::WrongToken),
        }
        let mut meta: TaskMeta = serde_json::from_str(&raw)?;
        match meta.status {
            TaskStatus::Revoked => return Ok(Revoke::AlreadyRevoked),
            s @ (TaskStatus::Success | TaskStatus::Failure) => return Ok(Revoke::Finished(s)),
            TaskStatus::Pending | TaskStatus::Started => {}
        }
        meta.revoke();
        let next = serde_json::to_string(&meta)?;
        let swapped: i64 = SWAP.key(&meta_key).arg(&raw).arg(&next).invoke_async(&mut conn).await?;
        if swapped == 1 {
            let _: i64 = conn.publish(CHANNEL, task_id).await?;
            return Ok(Revoke::Revoked(Box::new(meta)));
        }
    }
    Err(TaskStoreError::Busy)
}

/// The jobs this process is running stages of, and a flag for each that
/// is raised when the job is cancelled.
#[derive(Default)]
pub struct Cancels {
    jobs: Mutex<HashMap<String, watch::Sender<bool>>>,
}

impl Cancels {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Resolves when `task_id` is cancelled: the notice on [`CHANNEL`], or
    /// its meta read REVOKED (every [`POLL`]). Never resolves otherwise.
    pub async fn wait(self: &Arc<Self>, tasks: &TaskStore, task_id: &str) {
        let mut rx = {
            let mut jobs = self.jobs.lock().expect("cancels lock");
            jobs.entry(task_id.to_owned()).or_insert_with(|| watch::Sender::new(false)).subscribe()
        };
        let _forget = Forget { cancels: self.clone(), task_id: task_id.to_owned() };
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                raised = async { rx.wait_for(|c| *c).await.is_ok() } => {
                    if raised { return }
                    // The sender is never dropped while a receiver is kept.
                    std::future::pending::<()>().await;
                }
                _ = tick.tick() => {
                    if let Ok(Some(m)) = tasks.meta(task_id).await && m.status == TaskStatus::Revoked {
                        return;
                    }
                }
            }
        }
    }

    fn raise(&self, task_id: &str) {
        if let Some(tx) = self.jobs.lock().expect("cancels lock").get(task_id) {
            tx.send_replace(true);
        }
    }

    /// Keep a subscription to [`CHANNEL`] open (reconnecting with backoff)
    /// and raise the flag of each job named on it.
    pub async fn listen(self: Arc<Self>, endpoint: crate::redis_conn::Endpoint) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match endpoint.pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(CHANNEL).await {
                    Ok(()) => {
                        backoff = Duration::from_millis(100);
                        let mut stream = pubsub.on_message();
                        while let Some(msg) = stream.next().await {
                            if let Ok(task_id) = msg.get_payload::<String>() {
                                self.raise(&task_id);
                            }
                        }
                        tracing::warn!("lost the cancel subscription; reconnecting");
                    }
                    Err(e) => tracing::warn!(error = %e, "could not subscribe to cancels"),
                },
                Err(e) => tracing::warn!(error = %e, "cancel listener cannot reach Redis"),
            }
            crate::metrics::count_error(crate::metrics::Service::Redis);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Removes a job's flag when its last waiter is gone.
struct Forget {
    cancels: Arc<Cancels>,
    task_id: String,
}

impl Drop for Forget {
    fn drop(&mut self) {
        let mut jobs = self.cancels.jobs.lock().expect("cancels lock");
        // This waiter's receiver is still alive here (declared before the
        // guard, it is dropped after it): one receiver left means it was
        // the last.
        if jobs.get(&self.task_id).is_some_and(|tx| tx.receiver_count() <= 1) {
            jobs.remove(&self.task_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_only_their_hash_matches() {
        let (a, ha) = new_token();
        let (b, hb) = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(token_hash(&a), ha);
        assert_ne!(token_hash(&b), ha);
        assert_eq!(token_hash(&b), hb);
        assert_ne!(ha, a, "the stored value is not the token");
    }
}
