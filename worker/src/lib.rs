//! The tayori worker: takes video jobs from the Redis queue (apalis) and
//! runs the media pipeline on them.

pub mod catalog_tasks;
pub mod config;
pub mod lease;
pub mod media;
pub mod onnx;
pub mod pipeline;
pub mod piper;
pub mod process;
pub mod runner;
pub mod vision;
pub mod voice_analysis;

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

async fn handle_catalog(task: shared::catalog_task::CatalogTask, runner: Data<Arc<Runner>>) -> Result<(), BoxDynError> {
    use tracing::Instrument;
    let span = tracing::info_span!("catalog_task", id = %task.id);
    async move {
        let id = task.id.clone();
        let result = catalog_tasks::handle(&runner, task).await;
        tracing::info!(?result, "catalog task done");
        let mut conn = runner.redis.clone();
        shared::catalog_task::store_result(&mut conn, &id, &result).await.map_err(|e| Box::new(e) as BoxDynError)
    }
    .instrument(span)
    .await
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
        base_voice_features: Default::default(),
        redis: redis.clone(),
        storage,
        cfg: cfg.clone(),
    });
    if cfg.preload_models {
        preload(&cfg);
    }
    let backend = cfg.queue.storage(redis.clone());
    let worker = WorkerBuilder::new(cfg.name.as_str())
        .backend(backend)
        .data(runner.clone())
        .concurrency(cfg.concurrency.max(1))
        .build(handle);
    // Catalog tasks (short, interactive) have their own queue and worker
    // loop so that they never wait behind a video job.
    let catalog_worker = WorkerBuilder::new(format!("{}-catalog", cfg.name).as_str())
        .backend(cfg.queue.catalog_storage(redis))
        .data(runner)
        .concurrency(1)
        .build(handle_catalog);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
            Ok::<(), std::io::Error>(())
        }
    };
    let catalog_run = tokio::spawn(catalog_worker.run_until(stopped()));
    tracing::info!(name = %cfg.name, queue = %cfg.queue.name, "worker started");
    println!("tayori worker {} waiting for jobs on queue {}", cfg.name, cfg.queue.name);
    let video_stopped = stopped();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("stopping: finishing the job in hand, taking no new ones");
        let _ = stop_tx.send(true);
    });
    worker.run_until(video_stopped).await.context("worker stopped with an error")?;
    catalog_run.await.context("catalog worker panicked")?.context("catalog worker stopped with an error")?;
    Ok(())
}

/// Load the segmentation model and run it once on a blank image in the
/// background: the first run of a session is about 1 s slower than later ones.
fn preload(cfg: &WorkerConfig) {
    let (data, model) = (cfg.data_dir.clone(), cfg.segmentation);
    tokio::task::spawn_blocking(move || {
        let t = std::time::Instant::now();
        let warmed = vision::segment::segmenter(&data, model)
            .and_then(|s| s.mask(&image::RgbImage::from_pixel(64, 64, image::Rgb([128, 128, 128]))));
        match warmed {
            Ok(_) => tracing::info!(?model, ms = t.elapsed().as_millis() as u64, "segmentation model ready"),
            Err(e) => tracing::error!(?model, error = %e, "segmentation model could not be loaded"),
        }
    });
}
