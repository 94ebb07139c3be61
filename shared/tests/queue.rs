//! The queue backend against a real redis-server, driven by real apalis
//! workers: backlogs, lost workers, long jobs, failures, wake-ups, trimming.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use serde::{Deserialize, Serialize};
use shared::queue::{DeadLetter, Delivery, Queue, QueueConfig, QueueStats, RetryLater};
use support::RedisServer;

/// The no-op job: only its number.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Noop {
    n: u64,
    /// Milliseconds the handler sleeps.
    #[serde(default)]
    sleep_ms: u64,
    /// Attempts that fail before one succeeds.
    #[serde(default)]
    fail_first: u64,
    /// Deliveries put off (`RetryLater`) before one runs.
    #[serde(default)]
    put_off_first: u64,
}

impl Noop {
    fn new(n: u64) -> Self {
        Noop { n, sleep_ms: 0, fail_first: 0, put_off_first: 0 }
    }
}

/// What a handler saw: job number -> (deliveries, when last delivered).
type Log = HashMap<u64, (Vec<u64>, Instant)>;

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Log>>);

impl Seen {
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn attempts(&self, n: u64) -> Vec<u64> {
        self.0.lock().unwrap().get(&n).map(|(a, _)| a.clone()).unwrap_or_default()
    }
    fn total_deliveries(&self) -> usize {
        self.0.lock().unwrap().values().map(|(a, _)| a.len()).sum()
    }
}

async fn handle(job: Noop, seen: Data<Seen>, delivery: Data<Delivery>) -> Result<(), BoxDynError> {
    let before = {
        let mut log = seen.0.0.lock().unwrap();
        let e = log.entry(job.n).or_insert_with(|| (Vec::new(), Instant::now()));
        e.0.push(delivery.attempt);
        e.0.len() as u64 - 1
    };
    if before < job.put_off_first {
        return Err(Box::new(RetryLater(Duration::from_millis(100))));
    }
    if job.sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
    }
    if delivery.attempt <= job.fail_first {
        return Err("failing on purpose".into());
    }
    Ok(())
}

fn config(lease_secs: u64, idle_ms: u64) -> QueueConfig {
    QueueConfig {
        name: format!("t{}", uuid::Uuid::new_v4().simple()),
        lease: Duration::from_secs(lease_secs),
        idle_wait: Duration::from_millis(idle_ms),
    }
}

/// Run an apalis worker on `queue` until the returned handle is dropped
/// (dropping it aborts the worker as a crash would: nothing is settled).
fn spawn_worker(queue: &Queue<Noop>, concurrency: usize, seen: &Seen) -> tokio::task::JoinHandle<()> {
    let consumer = queue.consumer(concurrency);
    let worker = WorkerBuilder::new(format!("w{}", uuid::Uuid::new_v4().simple()).as_str())
        .backend(consumer)
        .data(seen.clone())
        .concurrency(concurrency)
        .build(handle);
    tokio::spawn(async move {
        let _ = worker.run().await;
    })
}

async fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_stats(q: &Queue<Noop>, want: QueueStats, limit: Duration) {
    let t0 = Instant::now();
    loop {
        let s = q.stats().await.unwrap();
        if s == want {
            return;
        }
        assert!(t0.elapsed() < limit, "queue stats {s:?}, wanted {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Keys of the queue left in Redis.
async fn queue_keys(redis: &RedisServer, q: &Queue<Noop>) -> Vec<String> {
    let mut c = redis.manager().await;
    redis::cmd("KEYS").arg(format!("queue:{{{}}}:*", q.name())).query_async(&mut c).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_20000_due_jobs_drains_completely_once_each() {
    let redis = RedisServer::start();
    let q: Queue<Noop> = Queue::new(redis.manager().await, "backlog", &config(10, 1000));
    let t0 = Instant::now();
    for chunk in (0..20_000u64).collect::<Vec<_>>().chunks(1000) {
        let jobs: Vec<Noop> = chunk.iter().map(|&n| Noop::new(n)).collect();
        q.push_many(&jobs).await.unwrap();
    }
    let pushed = t0.elapsed();
    assert_eq!(q.stats().await.unwrap(), QueueStats { waiting: 20_000, leased: 0, stored: 20_000, dead: 0 });
    let seen = Seen::default();
    let t1 = Instant::now();
    let _w1 = spawn_worker(&q, 64, &seen);
    let _w2 = spawn_worker(&q, 64, &seen);
    wait_until(Duration::from_secs(120), "20,000 jobs", || seen.count() == 20_000).await;
    let drained = t1.elapsed();
    // Every outcome recorded: nothing waiting, leased or stored.
    wait_stats(&q, QueueStats::default(), Duration::from_secs(10)).await;
    assert_eq!(seen.total_deliveries(), 20_000, "each job delivered once");
    // Finished entries leave nothing behind but the (bounded) wake-up list.
    let keys = queue_keys(&redis, &q).await;
    assert!(keys.iter().all(|k| k.ends_with(":wake")), "left behind: {keys:?}");
    println!("20,000 jobs: pushed in {pushed:?}, drained by two workers in {drained:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_picks_up_a_new_job_at_once() {
    let redis = RedisServer::start();
    // Idle wait 10 s: only the wake-up can explain a fast pick-up.
    let q: Queue<Noop> = Queue::new(redis.manager().await, "wake", &config(10, 10_000));
    let seen = Seen::default();
    let _w = spawn_worker(&q, 4, &seen);
    tokio::time::sleep(Duration::from_millis(500)).await; // the worker is idle, blocked on its wake-up list
    let mut delays = Vec::new();
    for n in 0..5 {
        let t0 = Instant::now();
        q.push(&Noop::new(n)).await.unwrap();
        wait_until(Duration::from_secs(5), "the pick-up", || seen.attempts(n).len() == 1).await;
        delays.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let worst = delays.iter().max().unwrap();
    assert!(*worst < Duration::from_millis(500), "pick-up delays {delays:?}");
    println!("pick-up delays of an idle worker: {delays:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_a_worker_that_died_goes_to_another_after_the_lease() {
    let redis = RedisServer::start();
    let q: Queue<Noop> = Queue::new(redis.manager().await, "lost", &config(2, 200));
    let first = Seen::default();
    let dying = spawn_worker(&q, 1, &first);
    q.push(&Noop { n: 7, sleep_ms: 60_000, fail_first: 0, put_off_first: 0 }).await.unwrap();
    wait_until(Duration::from_secs(5), "the first delivery", || first.attempts(7) == [1]).await;
    assert_eq!(q.stats().await.unwrap().leased, 1);
    // The worker dies mid-job: no settlement, no more renewals.
    dying.abort();
    let died = Instant::now();
    let second = Seen::default();
    let _w = spawn_worker(&q, 1, &second);
    wait_until(Duration::from_secs(10), "the second delivery", || second.attempts(7).len() == 1).await;
    let took = died.elapsed();
    assert_eq!(second.attempts(7), [2], "delivered again as attempt 2");
    assert!(took >= Duration::from_millis(1500), "not before the lease ran out ({took:?})");
    println!("job of a dead worker delivered again after {took:?} (lease 2 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_job_keeps_its_lease_and_runs_once() {
    let redis = RedisServer::start();
    let q: Queue<Noop> = Queue::new(redis.manager().await, "long", &config(2, 200));
    let seen = Seen::default();
    let _a = spawn_worker(&q, 2, &seen);
    let _b = spawn_worker(&q, 2, &seen);
    // Three times the lease.
    q.push(&Noop { n: 1, sleep_ms: 6_000, fail_first: 0, put_off_first: 0 }).await.unwrap();
    wait_until(Duration::from_secs(5), "the delivery", || seen.attempts(1).len() == 1).await;
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    assert_eq!(q.stats().await.unwrap().leased, 1, "still leased while it runs");
    wait_stats(&q, QueueStats::default(), Duration::from_secs(5)).await;
    assert_eq!(seen.attempts(1), [1], "never delivered to the other worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_is_retried_with_backoff() {
    let redis = RedisServer::start();
    let q: Queue<Noop> = Queue::new(redis.manager().await, "retry", &config(10, 200));
    let seen = Seen::default();
    let _w = spawn_worker(&q, 2, &seen);
    q.push(&Noop { n: 3, sleep_ms: 0, fail_first: 2, put_off_first: 0 }).await.unwrap();
    let t0 = Instant::now();
    wait_until(Duration::from_secs(10), "three attempts", || seen.attempts(3).len() == 3).await;
    // Backoff 1 s after the first failure, 2 s after the second.
    assert!(t0.elapsed() >= Duration::from_millis(2_900), "retried too soon: {:?}", t0.elapsed());
    assert_eq!(seen.attempts(3), [1, 2, 3]);
    wait_stats(&q, QueueStats::default(), Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_come_out_in_the_order_they_went_in() {
    let redis = RedisServer::start();
    let q: Queue<Noop> = Queue::new(redis.manager().await, "order", &config(10, 200));
    for n in 0..50 {
        q.push(&Noop::new(n)).await.unwrap();
    }
    let seen = Seen::default();
    let _w = spawn_worker(&q, 1, &seen);
    wait_until(Duration::from_secs(10), "50 jobs", || seen.count() == 50).await;
    let mut order: Vec<(u64, Instant)> = seen.0.lock().unwrap().iter().map(|(n, (_, t))| (*n, *t)).collect();
    order.sort_by_key(|(_, t)| *t);
    let ns: Vec<u64> = order.iter().map(|(n, _)| *n).collect();
    assert_eq!(ns, (0..50).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_off_deliveries_are_not_counted_as_attempts() {
    let redis = RedisServer::start();
    let q: Queue<Noop> = Queue::new(redis.manager().await, "uncounted", &config(10, 200));
    let seen = Seen::default();
    let _w = spawn_worker(&q, 1, &seen);
    // Put off twice (a duplicate delivery, Redis trouble), then run.
    q.push(&Noop { n: 1, sleep_ms: 0, fail_first: 0, put_off_first: 2 }).await.unwrap();
    wait_until(Duration::from_secs(10), "three deliveries", || seen.attempts(1).len() == 3).await;
    assert_eq!(seen.attempts(1), [1, 1, 1], "put-off deliveries are not attempts");
    wait_stats(&q, QueueStats::default(), Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_cannot_be_read_is_kept_as_a_dead_letter_and_reported() {
    let redis = RedisServer::start();
    let q: Queue<Noop> = Queue::new(redis.manager().await, "unreadable", &config(10, 200));
    // Written by hand, as a gateway of another version would: `n` is a string.
    let raw = r#"{"version":7,"task_id":"t-from-the-future","n":"seven"}"#;
    let keys = q.keys().clone();
    let mut c = redis.manager().await;
    let _: () = redis::pipe().hset(&keys.data, "e1", raw).lpush(&keys.pending, "e1").query_async(&mut c).await.unwrap();
    let reported: Arc<Mutex<Vec<DeadLetter>>> = Default::default();
    let sink = reported.clone();
    let consumer = q.consumer(1).on_unreadable(Arc::new(move |d| {
        sink.lock().unwrap().push(d);
        Box::pin(async {})
    }));
    let seen = Seen::default();
    let worker = WorkerBuilder::new("reader").backend(consumer).data(seen.clone()).concurrency(1).build(handle);
    let _run = tokio::spawn(async move {
        let _ = worker.run().await;
    });
    wait_until(Duration::from_secs(5), "the report", || !reported.lock().unwrap().is_empty()).await;
    let d = reported.lock().unwrap()[0].clone();
    assert_eq!((d.task_id.as_deref(), d.version, d.raw.as_str()), (Some("t-from-the-future"), Some(7), raw));
    assert!(d.error.contains("invalid type"), "{}", d.error);
    let kept = q.dead_letters(10).await.unwrap();
    assert_eq!(kept, vec![d]);
    let ttl: i64 = redis::cmd("TTL").arg(&keys.dead).query_async(&mut c).await.unwrap();
    assert!(ttl > 6 * 86_400, "the dead-letter list expires: {ttl}");
    // Off the queue, never handed to the handler, and counted for operators.
    wait_stats(&q, QueueStats { waiting: 0, leased: 0, stored: 0, dead: 1 }, Duration::from_secs(5)).await;
    assert_eq!(seen.count(), 0);
}
