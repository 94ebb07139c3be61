//! The tayori gateway: upload form and JSON API, job submission to tayori's
//! own Redis queue (`shared::queue`), progress relay over WebSockets,
//! presigned S3 links, and (by default) an embedded S3 endpoint.

pub mod admin;
pub mod admission;
pub mod backup;
pub mod catalog_tasks;
pub mod client;
pub mod config;
pub mod cors;
pub mod error;
pub mod hub;
pub mod idempotency;
pub mod intake;
pub mod routes;
pub mod s3_server;
pub mod serve;
pub mod state;
pub mod upload;
pub mod uploaded;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use shared::catalog::Catalog;
use shared::lifecycle::LifecycleRules;
use shared::storage::Storage;
use shared::tasks::TaskStore;
use tokio::net::TcpListener;
use tower_http::LatencyUnit;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};

pub use config::GatewayConfig;
use hub::ProgressHub;
use state::AppState;

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let router = Router::new()
        .merge(routes::page::router())
        .merge(routes::catalog::router(state.cfg.max_upload_bytes))
        .merge(routes::jobs::router(state.cfg.max_upload_bytes))
        .merge(routes::uploads::router())
        .merge(routes::progress::router())
        .merge(routes::health::router())
        .merge(routes::metrics::router())
        .merge(routes::admin::router())
        .fallback(|| async {
            error::AppError::not_found("no-such-endpoint", "There is no such endpoint; see the README for the API.")
        });
    let router = match cors::api(&state.cfg.cors_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    // One span per request (method, path), closed by a line with the status
    // and the latency, at the info level that operators see by default.
    let trace = TraceLayer::new_for_http()
        .make_span_with(DefaultMakeSpan::new().level(tracing::Level::INFO))
        .on_request(())
        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO).latency_unit(LatencyUnit::Millis));
    router.layer(trace).with_state(state)
}

/// Retry an async start-up step for up to `patience` (services started
/// together come up in any order).
async fn retry_start<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    patience: Duration,
    mut f: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut delay = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "{what} not ready yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => anyhow::bail!("{what}: {e}"),
        }
    }
}

/// Storage for the command-line tools (`backup`, `restore`): the configured
/// endpoint, or the embedded endpoint of a gateway running on this machine.
pub fn cli_storage(cfg: &GatewayConfig) -> Storage {
    let mut s3 = cfg.s3.clone();
    if let Some(emb) = &cfg.embedded_s3 {
        s3.endpoint = Some(format!("http://{}", emb.bind));
        s3.path_style = true;
    }
    Storage::new(s3)
}

/// Start everything and serve until `shutdown` completes.
pub async fn run(mut cfg: GatewayConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    if let Some(emb) = &cfg.embedded_s3 {
        let limits = cfg.server_limits(false);
        let s3 = s3_server::start(emb, &cfg.s3.access_key, &cfg.s3.secret_key, &cfg.cors_origins, limits, stopped())
            .await
            .with_context(|| format!("starting the embedded S3 endpoint on {}", emb.bind))?;
        let url = format!("http://{}", s3.addr);
        cfg.s3.endpoint = Some(url.clone());
        cfg.s3.public_endpoint.get_or_insert(url);
        cfg.s3.path_style = true;
    }
    let storage = Storage::new(cfg.s3.clone());
    retry_start("S3 bucket", Duration::from_secs(30), || storage.ensure_bucket()).await?;
    let rules = LifecycleRules::load(&cfg.lifecycle_file)?;
    retry_start("S3 lifecycle", Duration::from_secs(10), || storage.put_lifecycle(&rules)).await?;
    tracing::info!(bucket = storage.bucket(), rules = rules.rules.len(), "bucket ready, lifecycle applied");
    if cfg.embedded_s3.is_none() && !cfg.s3_cors_origins.is_empty() {
        let origins: Vec<String> =
            cfg.s3_cors_origins.iter().filter_map(|o| o.to_str().ok()).map(str::to_owned).collect();
        retry_start("S3 CORS", Duration::from_secs(10), || storage.put_cors(&origins)).await?;
        tracing::info!(?origins, "bucket CORS set");
    }
    let mut background = tokio::task::JoinSet::new();
    if let Some(emb) = &cfg.embedded_s3 {
        background.spawn(s3_server::sweeper(storage.clone(), emb.sweep_interval, emb.day));
    }

    let redis = retry_start("Redis", Duration::from_secs(30), || cfg.redis.connect()).await?;
    let catalog = Catalog::new(&cfg.data_dir);
    let (voices, bgm) = catalog.health().await;
    if voices.error.is_some() || bgm.error.is_some() {
        tracing::error!(?voices, ?bgm, "catalog files are not readable; see /health");
    }
    if !cfg.backup_interval.is_zero() {
        background.spawn(backup::daily(catalog.clone(), storage.clone(), cfg.backup_interval));
    }
    let hub = ProgressHub::default();
    background.spawn(hub.clone().run(redis.endpoint().clone()));

    let state = AppState {
        queue: cfg.queue.jobs(redis.clone()),
        catalog_queue: cfg.queue.catalog(redis.clone()),
        tasks: TaskStore::new(redis.clone(), cfg.ttls),
        failed: shared::failed::FailedStore::new(redis.clone(), cfg.failed_keep),
        redis,
        storage,
        catalog,
        hub,
        metrics: Default::default(),
        cfg: Arc::new(cfg),
    };
    let listener = TcpListener::bind(state.cfg.bind).await.with_context(|| format!("binding {}", state.cfg.bind))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "gateway listening");
    if !shared::telemetry::json_logs() {
        println!("tayori gateway listening on http://{addr}");
    }
    let limits = state.cfg.server_limits(state.cfg.proxies.hops > 0);
    let result = serve::serve(listener, app(state), limits, async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    })
    .await;
    background.abort_all();
    result.context("serving HTTP")
}
