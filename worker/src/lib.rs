//! The tayori worker: takes video jobs from the Redis queue (apalis) and
//! runs the media pipeline on them.

pub mod config;
pub mod lease;
pub mod media;
pub mod pipeline;
pub mod process;
pub mod runner;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use apalis::prelude::*;
use shared::catalog::Catalog;
use shared::job::VideoJob;
use shared::storage::Storage;
use shared::tasks::TaskStore;

pub use config::WorkerConfig;
use runner::Runner;

async fn handle(job: VideoJob, runner: Data<Arc<Runner>>) -> Result<(), BoxDynError> {
    use tracing::Instrument;
    let span = tracing::info_span!("job", task_id = %job.task_id);
    runner.handle(job).instrument(span).await.map_err(|e| Box::new(e) as BoxDynError)
}

/// Run until `shutdown` completes; then stop taking jobs and finish the ones in hand.
pub async fn run(cfg: WorkerConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let redis = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match cfg.redis.connect().await {
                Ok(c) => break c,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "Redis not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e).context("connecting to Redis"),
            }
        }
    };
    std::fs::create_dir_all(&cfg.work_dir).with_context(|| format!("creating {}", cfg.work_dir.display()))?;
    let storage = Storage::new(cfg.s3.clone());
    let runner = Arc::new(Runner {
        tasks: TaskStore::new(redis.clone(), cfg.ttls),
        catalog: Catalog::new(&cfg.data_dir),
        redis: redis.clone(),
        storage,
        cfg: cfg.clone(),
    });
    let backend = cfg.queue.storage(redis);
    let worker = WorkerBuilder::new(cfg.name.as_str())
        .backend(backend)
        .data(runner)
        .concurrency(cfg.concurrency.max(1))
        .build(handle);
    tracing::info!(name = %cfg.name, queue = %cfg.queue.name, "worker started");
    println!("tayori worker {} waiting for jobs on queue {}", cfg.name, cfg.queue.name);
    worker
        .run_until(async move {
            shutdown.await;
            tracing::info!("stopping: finishing the job in hand, taking no new ones");
            Ok::<(), std::io::Error>(())
        })
        .await
        .context("worker stopped with an error")?;
    Ok(())
}
