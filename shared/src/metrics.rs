//! Operational counters, kept where every process can add to them.
//!
//! Job outcomes and step durations are recorded by whichever worker ends a
//! job, so they live in Redis (`metrics:jobs`, `metrics:steps`: two hashes
//! with a fixed, small set of fields, so they never grow) and any gateway's
//! `/metrics` shows the whole cluster. Errors talking to Redis and S3 are
//! counted in this process ([`count_error`]); a worker adds its counts to
//! `metrics:errors` now and then ([`flush_errors`]), since Redis may be the
//! very thing that is down when they happen.

use std::sync::atomic::{AtomicU64, Ordering};

use redis::aio::ConnectionLike;

use crate::job::StageMetric;
use crate::redis_conn::{ConnectionManager, each};

pub const JOBS_KEY: &str = "metrics:jobs";
pub const STEPS_KEY: &str = "metrics:steps";
pub const ERRORS_KEY: &str = "metrics:errors";

/// Upper bounds (seconds) of the step-duration histogram's buckets.
pub const STEP_BUCKETS: [f64; 12] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0];

/// A backing service whose failed calls are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Redis,
    S3,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Redis => "redis",
            Service::S3 => "s3",
        }
    }
}

static REDIS_ERRORS: AtomicU64 = AtomicU64::new(0);
static S3_ERRORS: AtomicU64 = AtomicU64::new(0);
static REDIS_FLUSHED: AtomicU64 = AtomicU64::new(0);
static S3_FLUSHED: AtomicU64 = AtomicU64::new(0);

fn counter(s: Service) -> (&'static AtomicU64, &'static AtomicU64) {
    match s {
        Service::Redis => (&REDIS_ERRORS, &REDIS_FLUSHED),
        Service::S3 => (&S3_ERRORS, &S3_FLUSHED),
    }
}

/// Count one failed call to `s` made by this process.
pub fn count_error(s: Service) {
    counter(s).0.fetch_add(1, Ordering::Relaxed);
}

/// Failed calls to `s` made by this process since it started.
pub fn errors(s: Service) -> u64 {
    counter(s).0.load(Ordering::Relaxed)
}

/// Add this process's error counts since the last flush to `metrics:errors`
/// (fields `redis`, `s3`). What fails to reach Redis is added next time.
pub async fn flush_errors<C: ConnectionLike + Send>(conn: &mut C) -> redis::RedisResult<()> {
    for s in [Service::Redis, Service::S3] {
        let (total, flushed) = counter(s);
        let now = total.load(Ordering::Relaxed);
        let delta = now.saturating_sub(flushed.load(Ordering::Relaxed));
        if delta > 0 {
            redis::cmd("HINCRBY").arg(ERRORS_KEY).arg(s.name()).arg(delta).query_async::<i64>(conn).await?;
            flushed.store(now, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Index of the first bucket that holds `secs` (`STEP_BUCKETS.len()`: +Inf).
pub fn bucket_of(secs: f64) -> usize {
    STEP_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(STEP_BUCKETS.len())
}

/// Record a job's end: `metrics:jobs` `succeeded` or `failed` and
/// `failed:{code}`, and each step's duration in `metrics:steps`
/// (`{step}:{bucket}` counts per bucket, not cumulative; `{step}:sum` in
/// milliseconds; `{step}:count`).
pub async fn record_job_end(
    conn: &ConnectionManager,
    error_code: Option<&str>,
    steps: &[StageMetric],
) -> redis::RedisResult<()> {
    // By key (each its own cluster slot): one pipeline per key, sent together.
    let mut jobs = redis::pipe();
    let mut minute = redis::pipe();
    match error_code {
        None => {
            jobs.hincr(JOBS_KEY, "succeeded", 1).ignore();
            let key = videos_key(chrono::Utc::now().timestamp() / 60);
            minute.incr(&key, 1).ignore().expire(&key, VIDEOS_KEPT_SECS).ignore();
        }
        Some(code) => {
            jobs.hincr(JOBS_KEY, "failed", 1).ignore();
            jobs.hincr(JOBS_KEY, format!("failed:{code}"), 1).ignore();
        }
    }
    let mut durations = redis::pipe();
    for m in steps.iter().filter(|m| m.success) {
        let secs = m.duration_ms as f64 / 1000.0;
        durations.hincr(STEPS_KEY, format!("{}:{}", m.stage, bucket_of(secs)), 1).ignore();
        durations.hincr(STEPS_KEY, format!("{}:sum", m.stage), m.duration_ms).ignore();
        durations.hincr(STEPS_KEY, format!("{}:count", m.stage), 1).ignore();
    }
    futures::future::try_join_all([jobs, minute, durations].into_iter().filter(|p| !p.is_empty()).map(|p| {
        let mut conn = conn.clone();
        async move { p.query_async::<()>(&mut conn).await }
    }))
    .await
    .map(drop)
}

/// Videos made in one minute (`metrics:videos:{unix minute}`), kept an hour.
pub fn videos_key(minute: i64) -> String {
    format!("metrics:videos:{minute}")
}
const VIDEOS_KEPT_SECS: i64 = 3600;

/// Videos made in each of the last `n` whole minutes and the current one
/// (oldest first; the last entry is the minute now running).
pub async fn videos_per_minute(conn: &ConnectionManager, n: i64) -> redis::RedisResult<Vec<u64>> {
    let now = chrono::Utc::now().timestamp() / 60;
    let counts: Vec<Option<u64>> = each(conn, ((now - n)..=now).map(|m| redis::Cmd::get(videos_key(m)))).await?;
    Ok(counts.into_iter().map(Option::unwrap_or_default).collect())
}

/// One step's durations, from the histogram in `metrics:steps`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StepSummary {
    pub step: String,
    pub count: u64,
    pub mean_s: f64,
    /// Upper bounds of the buckets the median and the 95th percentile fall
    /// in (seconds; `None`: above the last bucket).
    pub p50_s: Option<f64>,
    pub p95_s: Option<f64>,
}

/// Every step's count, mean and percentiles, from `metrics:steps`'s fields.
pub fn step_summaries(fields: &std::collections::HashMap<String, u64>) -> Vec<StepSummary> {
    let mut steps: Vec<&str> = fields.keys().filter_map(|k| k.strip_suffix(":count")).collect();
    steps.sort_unstable();
    steps
        .into_iter()
        .map(|step| {
            let get = |f: &str| fields.get(&format!("{step}:{f}")).copied().unwrap_or(0);
            let count = get("count");
            let buckets: Vec<u64> = (0..=STEP_BUCKETS.len()).map(|b| get(&b.to_string())).collect();
            let quantile = |q: f64| {
                let want = ((count as f64) * q).ceil().max(1.0) as u64;
                let mut seen = 0;
                for (i, n) in buckets.iter().enumerate() {
                    seen += n;
                    if seen >= want {
                        return STEP_BUCKETS.get(i).copied();
                    }
                }
                None
            };
            StepSummary {
                step: step.to_owned(),
                count,
                mean_s: if count == 0 { 0.0 } else { get("sum") as f64 / 1000.0 / count as f64 },
                p50_s: quantile(0.5),
                p95_s: quantile(0.95),
            }
        })
        .collect()
}

/// Count a cancelled job (`metrics:jobs` `cancelled`).
pub async fn record_job_cancelled<C: ConnectionLike + Send>(conn: &mut C) -> redis::RedisResult<()> {
    redis::cmd("HINCRBY").arg(JOBS_KEY).arg("cancelled").arg(1).query_async::<i64>(conn).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_percentiles_come_from_the_buckets() {
        // 10 renders: 9 of 2-4 s (bucket 6), 1 of 30-60 s (bucket 10).
        let fields: std::collections::HashMap<String, u64> =
            [("render:6", 9), ("render:10", 1), ("render:sum", 9 * 3000 + 45_000), ("render:count", 10)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
        let s = &step_summaries(&fields)[0];
        assert_eq!((s.step.as_str(), s.count), ("render", 10));
        assert_eq!((s.p50_s, s.p95_s), (Some(4.0), Some(60.0)));
        assert!((s.mean_s - 7.2).abs() < 1e-9, "{}", s.mean_s);
    }

    #[test]
    fn durations_fall_in_the_first_bucket_that_holds_them() {
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(0.05), 0);
        assert_eq!(bucket_of(0.051), 1);
        assert_eq!(bucket_of(3.9), 6);
        assert_eq!(bucket_of(120.0), 11);
        assert_eq!(bucket_of(121.0), STEP_BUCKETS.len());
    }
}
