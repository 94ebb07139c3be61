//! Taking jobs from a [`Queue`]: an apalis [`Backend`] whose work happens in
//! three background tasks, so the worker's stream never sees a Redis error
//! (a Redis restart is waited out, not fatal):
//!
//! - the **fetcher** takes as many jobs as there are free slots (bounded by
//!   the worker's concurrency), and when the queue is empty blocks on the
//!   wake-up list until a push (or `idle_wait`) wakes it;
//! - the **renewer** extends the lease of every job in hand (delivered or
//!   still buffered) every third of the lease time;
//! - the **settler** records outcomes in batches (done: entry and data
//!   removed; failed: retried after a backoff), retrying until Redis takes
//!   them, and only then frees the slot.
//!
//! Outcomes come from [`SettleLayer`], the backend's middleware, which sees
//! each job's result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::redis_conn::ConnectionManager;
use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::{RandomId, TaskId};
use apalis_core::worker::context::WorkerContext;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, mpsc};

use super::{Keys, Queue, scripts};
use crate::rt::AbortOnDrop;

/// Most entries taken, or settled, in one script call.
const BATCH: usize = 256;

/// What a delivered job knows about its delivery (task data: a handler can
/// take it as `Data<Delivery>`).
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The queue entry's id (not the job's own id).
    pub entry: String,
    /// 1 for the first delivery; more after a crash or a failed attempt.
    pub attempt: u64,
}

/// An outcome to record.
struct Settlement {
    entry: String,
    attempt: u64,
    /// `None`: done; `Some(d)`: retry after `d`.
    retry_after: Option<Duration>,
    /// Whether the delivery counts as an attempt (a job handed back unstarted
    /// or put off with [`RetryLater`] does not).
    counted: bool,
}

/// A handler's answer "not now": the job goes back to the queue and is
/// delivered again after the given delay, and this delivery does not count
/// as an attempt (the job was not run: a duplicate delivery of a stage still
/// running elsewhere, or an outcome that could not be recorded because Redis
/// is unreachable). Any other `Err` is a failed attempt, retried after
/// [`retry_backoff`].
#[derive(Debug, Clone, Copy)]
pub struct RetryLater(pub Duration);

impl RetryLater {
    /// The delay after an outcome could not be recorded because Redis is
    /// unreachable.
    pub const REDIS_UNREACHABLE: RetryLater = RetryLater(Duration::from_secs(2));
}

impl std::fmt::Display for RetryLater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "put off for {} ms", self.0.as_millis())
    }
}

impl std::error::Error for RetryLater {}

/// What a consumer does with a job that it cannot decode, besides keeping
/// it in the dead-letter list (for example: fail its task with a clear word).
pub type OnUnreadable = Arc<dyn Fn(super::DeadLetter) -> BoxFuture<'static, ()> + Send + Sync>;

/// Jobs in hand (entry -> attempt) and the slots they take.
struct InHand {
    held: Mutex<HashMap<String, u64>>,
    slots: Semaphore,
    /// Signalled whenever entries are settled.
    settled: tokio::sync::Notify,
}

impl InHand {
    fn snapshot(&self) -> Vec<(String, u64)> {
        self.held.lock().expect("in-hand lock").iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    fn is_empty(&self) -> bool {
        self.held.lock().expect("in-hand lock").is_empty()
    }
}

/// The consuming end of a queue, for `WorkerBuilder::backend`. Give it the
/// same concurrency as the worker.
pub struct Consumer<T> {
    queue: Queue<T>,
    concurrency: usize,
    in_hand: Arc<InHand>,
    settle_tx: mpsc::UnboundedSender<Settlement>,
    settle_rx: Option<mpsc::UnboundedReceiver<Settlement>>,
    jobs: Option<mpsc::Receiver<Task<T>>>,
    tasks: Vec<AbortOnDrop>,
    closing: Option<BoxFuture<'static, ()>>,
    on_unreadable: Option<OnUnreadable>,
}

impl<T> Queue<T>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    /// A consumer of this queue. Its blocking wake-up connection goes to
    /// the queue connection's endpoint (the master, with Sentinel).
    pub fn consumer(&self, concurrency: usize) -> Consumer<T> {
        let concurrency = concurrency.max(1);
        let (settle_tx, settle_rx) = mpsc::unbounded_channel();
        Consumer {
            queue: self.clone(),
            concurrency,
            in_hand: Arc::new(InHand {
                held: Mutex::new(HashMap::new()),
                slots: Semaphore::new(concurrency),
                settled: tokio::sync::Notify::new(),
            }),
            settle_tx,
            settle_rx: Some(settle_rx),
            jobs: None,
            tasks: Vec::new(),
            closing: None,
            on_unreadable: None,
        }
    }
}

impl<T> Consumer<T>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    /// Call `f` (besides keeping the job as a dead letter) for each job that
    /// cannot be decoded.
    pub fn on_unreadable(mut self, f: OnUnreadable) -> Self {
        self.on_unreadable = Some(f);
        self
    }

    fn start(&mut self) {
        let (tx, rx) = mpsc::channel(self.concurrency);
        self.jobs = Some(rx);
        let settle_rx = self.settle_rx.take().expect("started once");
        self.tasks.push(AbortOnDrop(tokio::spawn(fetcher(
            self.queue.clone(),
            self.in_hand.clone(),
            self.on_unreadable.clone(),
            tx,
        ))));
        self.tasks.push(AbortOnDrop(tokio::spawn(renewer(self.queue.clone(), self.in_hand.clone()))));
        // The settler is not aborted with the consumer: it ends when every
        // sender (this consumer and its middleware) is gone and its last
        // outcomes are recorded.
        tokio::spawn(settler(self.queue.clone(), self.in_hand.clone(), settle_rx));
    }
}

/// Backoff between attempts of a failed job: 1 s, 2 s, 4 s, ... at most 60 s.
pub fn retry_backoff(attempt: u64) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

fn invocation(script: &'static redis::Script, keys: &[&str]) -> redis::ScriptInvocation<'static> {
    let mut inv = script.prepare_invoke();
    for k in keys {
        inv.key(*k);
    }
    inv
}

/// Take up to `n` entries.
async fn fetch(
    conn: &mut ConnectionManager,
    keys: &Keys,
    lease: Duration,
    n: usize,
) -> redis::RedisResult<Vec<String>> {
    let mut inv =
        invocation(&scripts::FETCH, &[&keys.pending, &keys.data, &keys.leased, &keys.attempts, &keys.delayed]);
    inv.arg(lease.as_millis() as u64).arg(n).arg(BATCH);
    inv.invoke_async(conn).await
}

/// Keep a job that cannot be decoded in the dead-letter list and take it
/// off the queue (on a Redis error its lease runs out and it comes back).
async fn bury(conn: &mut ConnectionManager, keys: &Keys, dead: &super::DeadLetter) -> redis::RedisResult<()> {
    let mut inv = invocation(&scripts::BURY, &[&keys.dead, &keys.leased, &keys.data, &keys.attempts]);
    inv.arg(serde_json::to_string(dead).expect("dead letters serialize"))
        .arg(super::DEAD_LETTERS_KEPT)
        .arg(super::DEAD_LETTER_TTL.as_secs())
        .arg(&dead.entry);
    inv.invoke_async::<i64>(conn).await.map(drop)
}

async fn fetcher<T: DeserializeOwned + Send + 'static>(
    queue: Queue<T>,
    in_hand: Arc<InHand>,
    on_unreadable: Option<OnUnreadable>,
    out: mpsc::Sender<Task<T>>,
) {
    let mut conn = queue.conn.clone();
    let mut waker: Option<crate::redis_conn::Dedicated> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        // A free slot first; then as many more as are free, up to a batch.
        let Ok(first) = in_hand.slots.acquire().await else { return };
        first.forget();
        let mut n = 1;
        while n < BATCH && in_hand.slots.try_acquire().map(|p| p.forget()).is_ok() {
            n += 1;
        }
        let got = match fetch(&mut conn, &queue.keys, queue.lease, n).await {
            Ok(flat) => {
                backoff = Duration::from_millis(100);
                flat
            }
            Err(e) => {
                in_hand.slots.add_permits(n);
                crate::metrics::count_error(crate::metrics::Service::Redis);
                tracing::warn!(queue = %queue.name, error = %e, "taking jobs failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let taken = got.len() / 3;
        in_hand.slots.add_permits(n - taken);
        for entry in got.chunks_exact(3) {
            let (id, json, attempt) = (&entry[0], &entry[1], entry[2].parse::<u64>().unwrap_or(1));
            match serde_json::from_str::<T>(json) {
                Ok(job) => {
                    in_hand.held.lock().expect("in-hand lock").insert(id.clone(), attempt);
                    let task = TaskBuilder::new(job)
                        .task_id(TaskId::from_string(id.clone()))
                        .data(Delivery { entry: id.clone(), attempt })
                        .build();
                    if out.send(task).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // No worker of this version can ever run it: keep it
                    // where operators can see it, off the queue, and let the
                    // owner of the consumer say so (fail its task).
                    let dead = super::DeadLetter::new(&queue.name, id, json, e.to_string());
                    tracing::error!(queue = %queue.name, entry = %id, task_id = ?dead.task_id, version = ?dead.version, error = %e,
                        "a job that cannot be read was moved to the dead-letter list");
                    in_hand.slots.add_permits(1);
                    match bury(&mut conn, &queue.keys, &dead).await {
                        Ok(()) => {
                            if let Some(f) = &on_unreadable {
                                tokio::spawn(f(dead));
                            }
                        }
                        Err(e) => {
                            crate::metrics::count_error(crate::metrics::Service::Redis);
                            tracing::warn!(queue = %queue.name, error = %e, "keeping an unreadable job failed; it comes back when its lease ends");
                        }
                    }
                }
            }
        }
        if taken == n {
            continue;
        }
        // The queue is empty (for now): wait for a push, or look again for
        // retries and expired leases after `idle_wait`.
        if waker.is_none() {
            let endpoint = queue.conn.endpoint();
            match endpoint.dedicated(Duration::from_secs(5), queue.idle_wait + Duration::from_secs(5)).await {
                Ok(c) => waker = Some(c),
                Err(e) => {
                    crate::metrics::count_error(crate::metrics::Service::Redis);
                    tracing::warn!(queue = %queue.name, error = %e, "no wake-up connection; polling");
                    tokio::time::sleep(queue.idle_wait.min(backoff)).await;
                    continue;
                }
            }
        }
        let c = waker.as_mut().expect("connected above");
        let woke: redis::RedisResult<Option<(String, String)>> =
            redis::cmd("BLPOP").arg(&queue.keys.wake).arg(queue.idle_wait.as_secs_f64()).query_async(c).await;
        if let Err(e) = woke {
            crate::metrics::count_error(crate::metrics::Service::Redis);
            tracing::warn!(queue = %queue.name, error = %e, "wake-up wait failed");
            waker = None;
            tokio::time::sleep(backoff).await;
        }
    }
}

async fn renewer<T>(queue: Queue<T>, in_hand: Arc<InHand>) {
    let mut conn = queue.conn.clone();
    let every = queue.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        for chunk in in_hand.snapshot().chunks(BATCH) {
            let mut inv = invocation(&scripts::RENEW, &[&queue.keys.leased, &queue.keys.attempts]);
            inv.arg(queue.lease.as_millis() as u64);
            for (entry, attempt) in chunk {
                inv.arg(entry).arg(attempt);
            }
            match inv.invoke_async::<Vec<String>>(&mut conn).await {
                Ok(lost) if lost.is_empty() => {}
                Ok(lost) => {
                    // Still held here but no longer leased: another worker
                    // may get it too (the stage claims keep that harmless).
                    tracing::warn!(queue = %queue.name, ?lost, "job leases ran out while in hand");
                }
                Err(e) => {
                    crate::metrics::count_error(crate::metrics::Service::Redis);
                    tracing::warn!(queue = %queue.name, error = %e, "renewing job leases failed")
                }
            }
        }
    }
}

async fn settler<T>(queue: Queue<T>, in_hand: Arc<InHand>, mut rx: mpsc::UnboundedReceiver<Settlement>) {
    let mut conn = queue.conn.clone();
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut inv = invocation(
                &scripts::SETTLE,
                &[&queue.keys.leased, &queue.keys.data, &queue.keys.attempts, &queue.keys.delayed],
            );
            for s in &batch {
                let after = s.retry_after.map_or(-1, |d| d.as_millis() as i64);
                inv.arg(&s.entry).arg(s.attempt).arg(after).arg(u8::from(s.counted));
            }
            // Settling twice is harmless (a settled entry's attempt no
            // longer matches), so a batch whose replication could not be
            // confirmed is simply settled again.
            let settled = match inv.invoke_async::<u64>(&mut conn).await {
                Ok(_) => conn.replicate().await,
                Err(e) => Err(e),
            };
            match settled {
                Ok(()) => break,
                Err(e) => {
                    crate::metrics::count_error(crate::metrics::Service::Redis);
                    tracing::warn!(queue = %queue.name, error = %e, n = batch.len(), "recording job outcomes failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        {
            let mut held = in_hand.held.lock().expect("in-hand lock");
            for s in &batch {
                held.remove(&s.entry);
            }
        }
        in_hand.slots.add_permits(batch.len());
        in_hand.settled.notify_waiters();
        batch.clear();
    }
}

/// The next job from the fetcher. When the fetcher has ended (it panicked,
/// or its channel closed) the stream ends too, so that the worker loop ends
/// and its owner starts a new one, instead of waiting forever on a channel
/// nobody will send to.
fn poll_jobs<J, E>(jobs: &mut mpsc::Receiver<J>, cx: &mut Context<'_>) -> Poll<Option<Result<J, E>>> {
    match jobs.poll_recv(cx) {
        Poll::Ready(Some(task)) => Poll::Ready(Some(Ok(task))),
        Poll::Ready(None) => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    }
}

impl<T> Backend for Consumer<T>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    type Task = Task<T>;
    type Error = std::convert::Infallible;

    fn poll_ready(&mut self, _cx: &mut Context<'_>, _worker: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        if self.jobs.is_none() {
            self.start();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        if self.jobs.is_none() {
            self.start();
        }
        poll_jobs(self.jobs.as_mut().expect("started"), cx)
    }

    /// Stop taking jobs, give back the ones taken but not started (retried
    /// at once), and wait (at most 10 s) until every outcome is recorded.
    fn poll_close(&mut self, cx: &mut Context<'_>, _worker: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        if self.closing.is_none() {
            // Abort the fetcher only: the renewer keeps the leases of jobs
            // whose outcomes are still being recorded.
            if !self.tasks.is_empty() {
                self.tasks.remove(0);
            }
            if let Some(jobs) = self.jobs.as_mut() {
                jobs.close();
                while let Ok(task) = jobs.try_recv() {
                    if let Some(d) = task.ctx().data().get::<Delivery>() {
                        let _ = self.settle_tx.send(Settlement {
                            entry: d.entry.clone(),
                            attempt: d.attempt,
                            retry_after: Some(Duration::ZERO),
                            counted: false,
                        });
                    }
                }
            }
            let in_hand = self.in_hand.clone();
            self.closing = Some(
                async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), async {
                        while !in_hand.is_empty() {
                            let settled = in_hand.settled.notified();
                            if in_hand.is_empty() {
                                break;
                            }
                            let _ = tokio::time::timeout(Duration::from_millis(100), settled).await;
                        }
                    })
                    .await;
                }
                .boxed(),
            );
        }
        self.closing.as_mut().expect("set above").poll_unpin(cx).map(Ok)
    }
}

impl<T> BackendConfig for Consumer<T>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    type Args = T;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = SettleLayer;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        SettleLayer { tx: self.settle_tx.clone() }
    }
}

/// Records each job's outcome: `Ok` is done; [`RetryLater`] puts the job
/// off uncounted; any other `Err` is a failed attempt, retried after
/// [`retry_backoff`].
#[derive(Clone)]
pub struct SettleLayer {
    tx: mpsc::UnboundedSender<Settlement>,
}

impl<S> tower::Layer<S> for SettleLayer {
    type Service = SettleService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SettleService { inner, tx: self.tx.clone() }
    }
}

#[derive(Clone)]
pub struct SettleService<S> {
    inner: S,
    tx: mpsc::UnboundedSender<Settlement>,
}

impl<S, T> tower::Service<Task<T>> for SettleService<S>
where
    S: tower::Service<Task<T>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError>,
{
    type Response = S::Response;
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<S::Response, BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<T>) -> Self::Future {
        let delivery = task.ctx().data().get::<Delivery>().cloned();
        let fut = self.inner.call(task);
        let tx = self.tx.clone();
        async move {
            let res = fut.await.map_err(Into::into);
            if let Some(d) = delivery {
                let (retry_after, counted) = match &res {
                    Ok(_) => (None, true),
                    Err(e) => match e.downcast_ref::<RetryLater>() {
                        Some(RetryLater(after)) => (Some(*after), false),
                        None => (Some(retry_backoff(d.attempt)), true),
                    },
                };
                let _ = tx.send(Settlement { entry: d.entry, attempt: d.attempt, retry_after, counted });
            }
            res
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_whose_fetcher_is_gone_ends_instead_of_pending_forever() {
        let (tx, mut rx) = mpsc::channel::<u32>(1);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(poll_jobs::<u32, ()>(&mut rx, &mut cx), Poll::Pending));
        tx.try_send(7).unwrap();
        assert!(matches!(poll_jobs::<u32, ()>(&mut rx, &mut cx), Poll::Ready(Some(Ok(7)))));
        drop(tx);
        assert!(matches!(poll_jobs::<u32, ()>(&mut rx, &mut cx), Poll::Ready(None)));
    }

    #[test]
    fn retry_later_is_found_in_a_boxed_handler_error() {
        let e: BoxDynError = Box::new(RetryLater(Duration::from_secs(5)));
        assert_eq!(e.downcast_ref::<RetryLater>().map(|r| r.0), Some(Duration::from_secs(5)));
        let other: BoxDynError = "plain failure".into();
        assert!(other.downcast_ref::<RetryLater>().is_none());
    }
}
