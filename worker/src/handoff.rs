//! Handing a job from stage to stage through Redis. The hash
//! `job:stages:{task_id}` records which stages finished (`done:{stage}`),
//! what their steps took (`metrics:{stage}`) and how often each was started
//! (`starts:{stage}`). The image stage queues the voice stage when it starts;
//! whichever of image and voice finishes second queues the render. Marking a
//! stage done and counting the finished ones is one script, so exactly one of
//! two stages finishing together queues the render; a stage run again after
//! a crash may queue it a second time, and that copy is dropped by the
//! render's claim and done checks.

use std::sync::LazyLock;
use std::time::Duration;

use shared::job::{Stage, StageMetric};
use shared::keys;
use shared::redis_conn::ConnectionManager;

// A job that has already ended (the other stage failed) gets no new record:
// it would only linger until its TTL.
static MARK_DONE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{}{}",
        shared::tasks::LUA_FINISHED,
        r#"
if finished(redis.call('GET', KEYS[2])) then return -1 end
redis.call('HSET', KEYS[1], 'done:' .. ARGV[1], 1, 'metrics:' .. ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local n = 0
for _, s in ipairs({'image', 'voice'}) do
  if redis.call('HEXISTS', KEYS[1], 'done:' .. s) == 1 then n = n + 1 end
end
return n
"#
    ))
});

/// Mark `stage` of the job done with its step records; returns whether both
/// the image and voice stages are now done (the render may start).
pub async fn mark_done(
    conn: &mut ConnectionManager,
    task_id: &str,
    stage: Stage,
    metrics: &[StageMetric],
    keep: Duration,
) -> redis::RedisResult<bool> {
    let json = serde_json::to_string(metrics).unwrap_or_else(|_| "[]".into());
    let n: i64 = MARK_DONE
        .key(keys::job_stages(task_id))
        .key(keys::task_meta(task_id))
        .arg(stage.name())
        .arg(json)
        .arg(keep.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    Ok(n == 2)
}

pub async fn is_done(conn: &mut ConnectionManager, task_id: &str, stage: Stage) -> redis::RedisResult<bool> {
    redis::cmd("HEXISTS").arg(keys::job_stages(task_id)).arg(format!("done:{}", stage.name())).query_async(conn).await
}

// Counting a start is refused once the job has ended, in the same script
// as the check: a stage starting while the other one fails must not make
// the record again after the failure forgot it (it would linger until its
// TTL, past the job's other keys).
static COUNT_START: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{}{}",
        shared::tasks::LUA_FINISHED,
        r#"
if finished(redis.call('GET', KEYS[2])) then return -1 end
local n = redis.call('HINCRBY', KEYS[1], 'starts:' .. ARGV[1], 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return n
"#
    ))
});

/// Count one more start of `stage`; returns how many there have been, or
/// None when the job has already ended (nothing is recorded then).
pub async fn count_start(
    conn: &mut ConnectionManager,
    task_id: &str,
    stage: Stage,
    keep: Duration,
) -> redis::RedisResult<Option<u32>> {
    let n: i64 = COUNT_START
        .key(keys::job_stages(task_id))
        .key(keys::task_meta(task_id))
        .arg(stage.name())
        .arg(keep.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    Ok(u32::try_from(n).ok())
}

/// The step records of the image and voice stages, in that order.
pub async fn earlier_metrics(conn: &mut ConnectionManager, task_id: &str) -> redis::RedisResult<Vec<StageMetric>> {
    let raw: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(keys::job_stages(task_id))
        .arg("metrics:image")
        .arg("metrics:voice")
        .query_async(conn)
        .await?;
    Ok(raw.iter().flatten().flat_map(|s| serde_json::from_str::<Vec<StageMetric>>(s).unwrap_or_default()).collect())
}

/// Whether image and voice are both done (so the render is due).
pub async fn render_due(conn: &mut ConnectionManager, task_id: &str) -> redis::RedisResult<bool> {
    let (image, voice): (bool, bool) = redis::pipe()
        .cmd("HEXISTS")
        .arg(keys::job_stages(task_id))
        .arg("done:image")
        .cmd("HEXISTS")
        .arg(keys::job_stages(task_id))
        .arg("done:voice")
        .query_async(conn)
        .await?;
    Ok(image && voice)
}

/// Drop a job's stage record once the job has ended: a later delivery of any
/// of its stages sees the final task meta first and is dropped.
pub async fn forget(conn: &mut ConnectionManager, task_id: &str) -> redis::RedisResult<()> {
    redis::cmd("DEL").arg(keys::job_stages(task_id)).query_async(conn).await
}
