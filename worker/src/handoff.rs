//! Handing a job from stage to stage through Redis. The hash
//! `job:stages:{task_id}` records which stages finished (`done:{stage}`),
//! that the speech is stored (`ready:speech`), what the stages' steps took
//! (`metrics:{stage}`) and how often each was started (`starts:{stage}`).
//!
//! The image stage queues the voice stage when it starts. The render is
//! due once the image stage is done and the speech (with its sentence
//! times) is stored, which the voice stage marks before it mixes the
//! music: the render encodes the picture while the mix is made, and waits
//! for the voice stage to be done ([`wait_done`]) only to add the sound.
//! Whichever of the two marks comes second queues the render. Setting a
//! mark and looking at the other is one script, so exactly one of two
//! marks made together queues it; a stage run again after a crash may queue
//! it a second time, and that copy is dropped by the render's claim and
//! done checks.

use std::sync::LazyLock;
use std::time::Duration;

use shared::job::{Stage, StageMetric};
use shared::keys;
use shared::redis_conn::ConnectionManager;

/// The marks that together make the render due.
const RENDER_DUE: [&str; 2] = ["done:image", "ready:speech"];

// A job that has already ended (the other stage failed) gets no new record:
// it would only linger until its TTL.
static MARK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{}{}",
        shared::tasks::LUA_FINISHED,
        r#"
if finished(redis.call('GET', KEYS[2])) then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], 1)
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], ARGV[2], ARGV[3]) end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if redis.call('HEXISTS', KEYS[1], ARGV[5]) == 1 and redis.call('HEXISTS', KEYS[1], ARGV[6]) == 1 then
  return 1
end
return 0
"#
    ))
});

/// Set `mark` (with `record`, a field and its value), unless the job has
/// ended; returns whether the render is now due.
async fn mark(
    conn: &mut ConnectionManager,
    task_id: &str,
    mark: &str,
    record: Option<(String, String)>,
    keep: Duration,
) -> redis::RedisResult<bool> {
    let (field, value) = record.unwrap_or_default();
    let n: i64 = MARK
        .key(keys::job_stages(task_id))
        .key(keys::task_meta(task_id))
        .arg(mark)
        .arg(field)
        .arg(value)
        .arg(keep.as_millis() as u64)
        .arg(RENDER_DUE[0])
        .arg(RENDER_DUE[1])
        .invoke_async(conn)
        .await?;
    Ok(n == 1)
}

/// Mark `stage` of the job done with its step records; returns whether the
/// render is now due (the image and speech are both ready).
pub async fn mark_done(
    conn: &mut ConnectionManager,
    task_id: &str,
    stage: Stage,
    metrics: &[StageMetric],
    keep: Duration,
) -> redis::RedisResult<bool> {
    let json = serde_json::to_string(metrics).unwrap_or_else(|_| "[]".into());
    let record = (format!("metrics:{}", stage.name()), json);
    mark(conn, task_id, &format!("done:{}", stage.name()), Some(record), keep).await
}

/// Mark the speech and its sentence times stored; returns whether the
/// render is now due.
pub async fn mark_speech_ready(
    conn: &mut ConnectionManager,
    task_id: &str,
    keep: Duration,
) -> redis::RedisResult<bool> {
    mark(conn, task_id, RENDER_DUE[1], None, keep).await
}

/// How often [`wait_done`] looks.
const WAIT_POLL: Duration = Duration::from_millis(40);

/// Why [`wait_done`] stopped waiting.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Tasks(#[from] shared::tasks::TaskStoreError),
    /// The job ended (the other stage failed, or it was cancelled).
    #[error("the job ended while waiting for its {0} stage")]
    Ended(&'static str),
}

/// Wait until `stage` of the job is done, looking every 40 ms (the render
/// waits so for the mix, a second or two at most when it comes). Stops when
/// the job ends instead (a failed stage forgets the record, so its mark
/// never comes).
pub async fn wait_done(
    conn: &mut ConnectionManager,
    tasks: &shared::tasks::TaskStore,
    task_id: &str,
    stage: Stage,
) -> Result<(), WaitError> {
    let mut looks = 0u32;
    loop {
        if is_done(conn, task_id, stage).await? {
            return Ok(());
        }
        // The meta is read less often: an end is rare and not urgent.
        if looks.is_multiple_of(10) && tasks.meta(task_id).await?.is_some_and(|m| m.status.is_terminal()) {
            return Err(WaitError::Ended(stage.name()));
        }
        looks += 1;
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// Whether `stage` of the job is done.
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

/// Whether the render is due: the image stage done and the speech stored.
pub async fn render_due(conn: &mut ConnectionManager, task_id: &str) -> redis::RedisResult<bool> {
    let (image, speech): (bool, bool) = redis::pipe()
        .cmd("HEXISTS")
        .arg(keys::job_stages(task_id))
        .arg(RENDER_DUE[0])
        .cmd("HEXISTS")
        .arg(keys::job_stages(task_id))
        .arg(RENDER_DUE[1])
        .query_async(conn)
        .await?;
    Ok(image && speech)
}

/// Drop a job's stage record once the job has ended: a later delivery of any
/// of its stages sees the final task meta first and is dropped.
pub async fn forget(conn: &mut ConnectionManager, task_id: &str) -> redis::RedisResult<()> {
    redis::cmd("DEL").arg(keys::job_stages(task_id)).query_async(conn).await
}
