//! Worker heartbeats: each worker process says every
//! [`INTERVAL`] who it is and what it holds, so that the dashboard shows
//! every worker alive and the jobs in its hands.
//!
//! `worker:{name}` holds the latest beat (JSON, [`Heartbeat`]) and expires
//! [`TTL`] after it: a worker that dies drops off by itself. The `workers`
//! sorted set names them by their last beat, for listing; names not heard
//! of for an hour are dropped from it on each read.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::keys;
use crate::redis_conn::{ConnectionManager, each};

pub const INTERVAL: Duration = Duration::from_secs(5);
pub const TTL: Duration = Duration::from_secs(15);

/// A stage of a job a worker is running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InHand {
    pub task_id: String,
    pub stage: String,
    pub since: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub name: String,
    pub host: String,
    pub pid: u32,
    pub stages: Vec<String>,
    pub version: String,
    pub concurrency: usize,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
    pub jobs: Vec<InHand>,
}

/// Send one beat.
pub async fn beat(conn: &mut ConnectionManager, hb: &Heartbeat) -> redis::RedisResult<()> {
    let json = serde_json::to_string(hb).expect("a heartbeat serializes");
    let _: Vec<()> = each(
        conn,
        [
            redis::Cmd::set_ex(keys::worker(&hb.name), json, TTL.as_secs()),
            redis::Cmd::zadd(keys::workers(), &hb.name, hb.seen_at.timestamp_millis()),
        ],
    )
    .await?;
    Ok(())
}

/// A worker that stops says so at once.
pub async fn gone(conn: &mut ConnectionManager, name: &str) -> redis::RedisResult<()> {
    let _: Vec<()> = each(conn, [redis::Cmd::del(keys::worker(name)), redis::Cmd::zrem(keys::workers(), name)]).await?;
    Ok(())
}

/// Every worker alive (heard from within [`TTL`]), by name.
pub async fn alive(conn: &mut ConnectionManager) -> redis::RedisResult<Vec<Heartbeat>> {
    let hour_ago = Utc::now().timestamp_millis() - 3_600_000;
    let _: () = conn.zrembyscore(keys::workers(), "-inf", hour_ago).await?;
    let names: Vec<String> = conn.zrange(keys::workers(), 0, -1).await?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    // One GET each, not MGET: the beats may sit in different cluster slots.
    let raw: Vec<Option<String>> = each(conn, names.iter().map(|n| redis::Cmd::get(keys::worker(n)))).await?;
    let mut out: Vec<Heartbeat> = raw.into_iter().flatten().filter_map(|r| serde_json::from_str(&r).ok()).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
