//! A stage's claim: the queue delivers at least once (a job whose worker
//! looked dead is queued again), so before running a stage of a job a worker
//! takes `job:claim:{task_id}:{stage}` with a short TTL and keeps renewing
//! it while it works. A second delivery of a stage that is running elsewhere
//! is put off (handed back to the queue for a few seconds) until the claim is
//! released or expires (its holder died), and a
//! delivery of a stage that already finished, or of a job that already
//! ended, is dropped: each stage runs to completion once.

use std::sync::LazyLock;
use std::time::Duration;

use shared::redis_conn::ConnectionManager;

/// How long a claim lives without renewal.
pub const CLAIM_TTL: Duration = Duration::from_secs(15);
const RENEW_EVERY: Duration = Duration::from_secs(5);

static RENEW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#,
    )
});

static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// Try to take the claim; `Ok(false)` when another worker holds it.
pub async fn try_claim(conn: &mut ConnectionManager, key: &str, holder: &str) -> redis::RedisResult<bool> {
    let r: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(holder)
        .arg("NX")
        .arg("PX")
        .arg(CLAIM_TTL.as_millis() as u64)
        .query_async(conn)
        .await?;
    Ok(r.is_some())
}

pub async fn release(conn: &mut ConnectionManager, key: &str, holder: &str) -> redis::RedisResult<()> {
    let _: i64 = RELEASE.key(key).arg(holder).invoke_async(conn).await?;
    Ok(())
}

/// Renew the claim until the returned handle is dropped.
pub fn keep_alive(conn: ConnectionManager, key: &str, holder: &str) -> tokio::task::JoinHandle<()> {
    let key = key.to_owned();
    let holder = holder.to_owned();
    tokio::spawn(async move {
        let mut conn = conn;
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            let r: redis::RedisResult<i64> =
                RENEW.key(&key).arg(&holder).arg(CLAIM_TTL.as_millis() as u64).invoke_async(&mut conn).await;
            match r {
                Ok(1) => {}
                Ok(_) => tracing::error!(%key, "job claim was lost while the job runs"),
                Err(e) => tracing::warn!(%key, error = %e, "renewing job claim failed"),
            }
        }
    })
}
