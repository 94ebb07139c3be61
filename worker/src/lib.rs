//! The tayori worker: takes video jobs from the Redis queue (apalis) and
//! runs the media pipeline on them.

pub mod audio;
pub mod catalog_tasks;
pub mod config;
pub mod handoff;
pub mod kokoro;
pub mod lease;
pub mod media;
pub mod onnx;
pub mod pipeline;
pub mod piper;
pub mod process;
pub mod runner;
pub mod speaker;
pub mod vision;
pub mod voice_analysis;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use apalis::prelude::*;
use shared::catalog::Catalog;
use shared::job::{Stage, VideoJob};
use shared::queue::Delivery;
use shared::storage::Storage;
use shared::tasks::TaskStore;

pub use config::WorkerConfig;
use runner::Runner;

/// The stage a worker loop serves (apalis data).
#[derive(Clone, Copy)]
struct Serves(Stage);

async fn handle(
    job: VideoJob,
    runner: Data<Arc<Runner>>,
    stage: Data<Serves>,
    delivery: Data<Delivery>,
) -> Result<(), BoxDynError> {
    use tracing::Instrument;
    let Serves(stage) = *stage;
    let span = tracing::info_span!("job", task_id = %job.task_id, stage = stage.name(), delivery = delivery.attempt);
    runner.handle(stage, job, delivery.attempt).instrument(span).await.map_err(queue_error)
}

/// A run's error for the queue: put off uncounted (not run, or the outcome
/// could not be recorded because Redis is unreachable), or a failed attempt.
fn queue_error(e: runner::RunError) -> BoxDynError {
    match e.put_off() {
        Some(after) => Box::new(shared::queue::RetryLater(after)),
        None => Box::new(e),
    }
}

/// Deliveries of a catalog task after which it fails instead of being tried
/// again (each one crashed or lost a worker).
pub const MAX_CATALOG_DELIVERIES: u64 = 3;

async fn handle_catalog(
    task: shared::catalog_task::CatalogTask,
    runner: Data<Arc<Runner>>,
    delivery: Data<Delivery>,
) -> Result<(), BoxDynError> {
    use tracing::Instrument;
    let span = tracing::info_span!("catalog_task", id = %task.id, delivery = delivery.attempt);
    async move {
        let id = task.id.clone();
        let result = if delivery.attempt > MAX_CATALOG_DELIVERIES {
            tracing::error!("giving up on a catalog task delivered too often");
            catalog_tasks::gave_up(delivery.attempt - 1)
        } else {
            match catalog_tasks::handle(&runner, task).await {
                Some(result) => result,
                // Its caller has given up: nothing to answer, nothing kept.
                None => return Ok(()),
            }
        };
        tracing::info!(?result, "catalog task done");
        let mut conn = runner.redis.clone();
        shared::catalog_task::store_result(&mut conn, &id, &result).await.map_err(|e| {
            if shared::redis_conn::is_transient(&e) {
                Box::new(shared::queue::RetryLater::REDIS_UNREACHABLE) as BoxDynError
            } else {
                Box::new(e) as BoxDynError
            }
        })
    }
    .instrument(span)
    .await
}

/// A video job no worker of this version can read: fail its task, naming
/// both versions, so that its caller hears why instead of waiting.
fn on_unreadable_job(runner: Arc<Runner>) -> shared::queue::consumer::OnUnreadable {
    Arc::new(move |dead: shared::queue::DeadLetter| {
        let runner = runner.clone();
        Box::pin(async move {
            let Some(task_id) = dead.task_id.clone() else { return };
            let err = shared::job::JobError::unreadable(dead.version);
            let origin = runner::Origin { stage: None, queue: dead.queue.clone(), job: dead.raw.clone() };
            if let Err(e) = runner.fail_task(&task_id, chrono::Utc::now(), &err, None, Vec::new(), origin).await {
                tracing::error!(%task_id, error = %e, "could not fail the task of an unreadable job");
            }
        })
    })
}

/// A catalog task no worker of this version can read: answer its caller.
fn on_unreadable_catalog_task(runner: Arc<Runner>) -> shared::queue::consumer::OnUnreadable {
    Arc::new(move |dead: shared::queue::DeadLetter| {
        let mut conn = runner.redis.clone();
        Box::pin(async move {
            let Some(id) = dead.task_id.clone().or_else(|| {
                serde_json::from_str::<serde_json::Value>(&dead.raw).ok()?.get("id")?.as_str().map(str::to_owned)
            }) else {
                return;
            };
            let result = shared::catalog_task::CatalogTaskResult::Failed {
                code: "job-unreadable".into(),
                message:
                    "The task could not be read by the worker: the gateway and the workers are of different versions."
                        .into(),
            };
            let _ = shared::catalog_task::store_result(&mut conn, &id, &result).await;
        })
    })
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
    let cancels = shared::cancel::Cancels::new();
    tokio::spawn(cancels.clone().listen(redis.endpoint().clone()));
    let runner = Arc::new(Runner {
        cancels,
        tasks: TaskStore::new(redis.clone(), cfg.ttls),
        failed: shared::failed::FailedStore::new(redis.clone(), cfg.failed_keep),
        catalog: Catalog::new(&cfg.data_dir),
        base_voice_features: Default::default(),
        touched: Default::default(),
        in_hand: Default::default(),
        in_hand_changed: Default::default(),
        entered: Default::default(),
        job_ended: Default::default(),
        stopping: tokio::sync::watch::Sender::new(false),
        redis: redis.clone(),
        storage,
        voice_queue: cfg.queue.stage(redis.clone(), Stage::Voice),
        render_queue: cfg.queue.stage(redis.clone(), Stage::Render),
        cfg: cfg.clone(),
    });
    if cfg.preload_models {
        preload(&cfg);
    }
    // Catalog tasks (short, interactive) have their own queue and worker
    // loop so that they never wait behind a video job.
    let catalog_worker = WorkerBuilder::new(format!("{}-catalog", cfg.name).as_str())
        .backend(cfg.queue.catalog(redis.clone()).consumer(1).on_unreadable(on_unreadable_catalog_task(runner.clone())))
        .data(runner.clone())
        .concurrency(1)
        .build(handle_catalog);
    // Stopping is in two phases: first no new jobs (the image stage, where
    // jobs enter, and catalog tasks); then, once every job this process
    // worked on has ended (its later stages may still be queued for this
    // process), the voice and render loops.
    let (stop_entry_tx, stop_entry_rx) = tokio::sync::watch::channel(false);
    let (stop_rest_tx, stop_rest_rx) = tokio::sync::watch::channel(false);
    let when = |rx: &tokio::sync::watch::Receiver<bool>| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
            Ok::<(), std::io::Error>(())
        }
    };
    let catalog_run = tokio::spawn(catalog_worker.run_until(when(&stop_entry_rx)));
    // One worker loop per stage served, each taking jobs from its stage's
    // queue: the image and voice stages of a job run at the same time. A
    // loop that ends before its stop (its backend stream failed) is started
    // again: a process must not quietly stop serving a stage.
    let stage_runs: Vec<_> = cfg
        .stages
        .iter()
        .map(|&stage| {
            let stop_rx = if stage == Stage::Image { stop_entry_rx.clone() } else { stop_rest_rx.clone() };
            let (cfg, redis, runner) = (cfg.clone(), redis.clone(), runner.clone());
            tokio::spawn(async move {
                loop {
                    let w = WorkerBuilder::new(format!("{}-{}", cfg.name, stage.name()).as_str())
                        .backend(
                            cfg.queue
                                .stage(redis.clone(), stage)
                                .consumer(cfg.concurrency.max(1))
                                .on_unreadable(on_unreadable_job(runner.clone())),
                        )
                        .data(runner.clone())
                        .data(Serves(stage))
                        .concurrency(cfg.concurrency.max(1))
                        .build(handle);
                    let ended = w.run_until(when(&stop_rx)).await;
                    if *stop_rx.borrow() {
                        return ended;
                    }
                    tracing::error!(stage = stage.name(), result = ?ended, "stage loop ended by itself; starting it again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        })
        .collect();
    let stages: Vec<&str> = cfg.stages.iter().map(|s| s.name()).collect();
    tracing::info!(name = %cfg.name, queue = %cfg.queue.name, ?stages, "worker started");
    if !shared::telemetry::json_logs() {
        println!("tayori worker {} serving stages {} on queue {}", cfg.name, stages.join(","), cfg.queue.name);
    }
    // Errors this process met talking to Redis and S3, added to the
    // cluster's counts for /metrics every 10 s.
    let mut flush_conn = redis.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            let _ = shared::metrics::flush_errors(&mut flush_conn).await;
        }
    });
    let beats = tokio::spawn(heartbeats(runner.clone()));
    let drain = runner.clone();
    let mut stopping = runner.stopping.subscribe();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("stopping: taking no new jobs, finishing the ones in hand");
        drain.stopping.send_replace(true);
        let _ = stop_entry_tx.send(true);
        drain.wait_touched_ended().await;
        let _ = stop_rest_tx.send(true);
    });
    let loops = async {
        for run in stage_runs {
            run.await.context("stage worker panicked")?.context("stage worker stopped with an error")?;
        }
        catalog_run.await.context("catalog worker panicked")?.context("catalog worker stopped with an error")
    };
    // While stopping, an unreachable Redis ends the wait: nothing in hand can
    // be finished or handed back without it. The leases run out and other
    // workers take the jobs over.
    let redis_lost = async {
        let _ = stopping.wait_for(|s| *s).await;
        redis_unreachable_for(&redis, STOP_REDIS_GRACE).await;
    };
    tokio::select! {
        r = loops => r?,
        () = redis_lost => tracing::warn!(
            grace_s = STOP_REDIS_GRACE.as_secs(),
            "Redis unreachable while stopping: leaving the jobs in hand to other workers when their leases run out"
        ),
    }
    beats.abort();
    let mut conn = redis.clone();
    let _ = tokio::time::timeout(Duration::from_secs(1), shared::heartbeat::gone(&mut conn, &cfg.name)).await;
    tracing::info!("worker stopped");
    Ok(())
}

/// Say every few seconds who this worker is and what it holds (see
/// `shared::heartbeat`), and at once when what it holds changes (at most
/// every [`BEAT_AT_MOST_EVERY`]); a beat that fails is simply missed.
async fn heartbeats(runner: Arc<Runner>) {
    let cfg = &runner.cfg;
    let host = hostname();
    let started_at = chrono::Utc::now();
    let mut conn = runner.redis.clone();
    let mut tick = tokio::time::interval(shared::heartbeat::INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = runner.in_hand_changed.notified() => {
                // Let a burst of changes (a stage ending, the next one
                // starting) go out as one beat.
                tokio::time::sleep(BEAT_AT_MOST_EVERY).await;
                tick.reset();
            }
        }
        let hb = shared::heartbeat::Heartbeat {
            name: cfg.name.clone(),
            host: host.clone(),
            pid: std::process::id(),
            stages: cfg.stages.iter().map(|s| s.name().to_owned()).collect(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            concurrency: cfg.concurrency,
            started_at,
            seen_at: chrono::Utc::now(),
            jobs: runner.in_hand.lock().expect("in-hand lock").clone(),
        };
        if let Err(e) = shared::heartbeat::beat(&mut conn, &hb).await {
            tracing::debug!(error = %e, "heartbeat missed");
        }
    }
}

const BEAT_AT_MOST_EVERY: Duration = Duration::from_millis(200);

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "host".into())
}

/// How long a stopping worker waits on an unreachable Redis before it
/// leaves (see the README's "Stopping a worker").
pub const STOP_REDIS_GRACE: Duration = Duration::from_secs(3);

/// Completes once Redis has not answered a PING for `grace` in a row.
async fn redis_unreachable_for(redis: &shared::redis_conn::ConnectionManager, grace: Duration) {
    let mut since: Option<tokio::time::Instant> = None;
    loop {
        let mut conn = redis.clone();
        let ping =
            tokio::time::timeout(Duration::from_secs(1), redis::cmd("PING").query_async::<String>(&mut conn)).await;
        match ping {
            Ok(Ok(_)) => since = None,
            _ => {
                let first = *since.get_or_insert_with(tokio::time::Instant::now);
                if first.elapsed() >= grace {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Load the segmentation model and run it once on a blank image in the
/// background: the first run of a session is about 1 s slower than later ones.
/// A worker of the voice stage loads Kokoro the same way (its first call
/// also pays the model's loading and warm-up), one of the render stage
/// the caption font.
fn preload(cfg: &WorkerConfig) {
    if cfg.stages.contains(&shared::job::Stage::Voice) && kokoro::dir(&cfg.data_dir).join("model.onnx").is_file() {
        let data = cfg.data_dir.clone();
        tokio::task::spawn_blocking(move || {
            let t = std::time::Instant::now();
            let lib = onnx::runtime_path(&data);
            let warmed = kokoro::Kokoro::get(&lib, &kokoro::dir(&data)).and_then(|k| {
                let style = kokoro::Style::load(&kokoro::dir(&data).join("jf_alpha.npy"))?;
                k.infer(0, "koɲɲiʨiβa", &style, 1.0)
            });
            match warmed {
                Ok(_) => tracing::info!(ms = t.elapsed().as_millis() as u64, "Kokoro ready"),
                Err(e) => tracing::error!(error = %e, "Kokoro could not be loaded"),
            }
        });
    }
    if cfg.stages.contains(&shared::job::Stage::Render) {
        let font = cfg.caption_font.clone();
        tokio::task::spawn_blocking(move || match vision::caption::CaptionFont::shared(&font) {
            Ok(_) => tracing::info!("caption font ready"),
            Err(e) => tracing::error!(error = %e, "the caption font could not be loaded"),
        });
    }
    let (data, model) = (cfg.data_dir.clone(), cfg.segmentation);
    tokio::task::spawn_blocking(move || {
        let t = std::time::Instant::now();
        // A square at each longer side the model runs at (a first run at a
        // new side is slower). Its buffers are the largest a job needs: a
        // first run at a crop's own proportions was not slower than the
        // second (benches/vision.rs with SHAPES).
        let grey = image::RgbImage::from_pixel(64, 64, image::Rgb([128, 128, 128]));
        let warmed = vision::segment::segmenter(&data, model)
            .and_then(|s| model.sides().iter().try_for_each(|&side| s.mask_shown(&grey, side).map(drop)));
        match warmed {
            Ok(_) => tracing::info!(?model, ms = t.elapsed().as_millis() as u64, "segmentation model ready"),
            Err(e) => tracing::error!(?model, error = %e, "segmentation model could not be loaded"),
        }
    });
}

/// How many malloc arenas glibc may keep (unless `MALLOC_ARENA_MAX` says).
/// By default it makes one per thread up to 8 per core, and each keeps the
/// memory freed into it; the blocking pool's threads take turns at the
/// large buffers of segmentation, speech and rendering, so resident memory
/// kept growing. e2e bench, 10 jobs and then a backlog of 30: peak 1738 MB
/// with the default arenas, 1483 MB with 2 (issue 15).
pub const MALLOC_ARENAS: i32 = 2;

/// Apply [`MALLOC_ARENAS`]; call first thing in `main`, before any thread.
pub fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before
        // other threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}
