//! `GET /metrics` in the Prometheus text format (version 0.0.4).
//!
//! Two kinds of figures: this gateway's own (jobs it accepted, viewers it
//! serves, its failed Redis and S3 calls), and the cluster's, read from
//! Redis at scrape time (queue depths per stage, job outcomes and step
//! durations recorded by the workers, the workers' failed calls; see
//! `shared::metrics`). Written by hand rather than with a metrics crate:
//! most values are read from Redis when scraped, which the crates' model
//! of in-process metric objects does not fit, and the format is a few lines.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use redis::AsyncCommands;
use shared::job::Stage;
use shared::metrics::{self as m, Service};
use shared::progress::Step;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// One metric family's header.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::with_capacity(8 * 1024);
    let own = &state.metrics;

    family(&mut out, "tayori_jobs_submitted_total", "counter", "Video jobs accepted by this gateway.");
    let _ = writeln!(out, "tayori_jobs_submitted_total {}", own.jobs_submitted.load(Ordering::Relaxed));
    family(&mut out, "tayori_websocket_viewers", "gauge", "Progress WebSockets open on this gateway.");
    let _ = writeln!(out, "tayori_websocket_viewers {}", own.viewers.load(Ordering::Relaxed).max(0));

    // The cluster's figures, from Redis. If Redis is down they are left out
    // (and counted as an error), and the scrape still answers.
    let cluster = cluster(&state).await;
    let worker_errors = cluster.as_ref().map(|c| c.errors.clone()).unwrap_or_default();
    family(&mut out, "tayori_backend_errors_total", "counter", "Failed calls to Redis and S3, by process kind.");
    for s in [Service::Redis, Service::S3] {
        let _ = writeln!(
            out,
            "tayori_backend_errors_total{{service=\"{}\",process=\"gateway\"}} {}",
            s.name(),
            m::errors(s)
        );
        let w = worker_errors.get(s.name()).copied().unwrap_or(0);
        let _ = writeln!(out, "tayori_backend_errors_total{{service=\"{}\",process=\"workers\"}} {w}", s.name());
    }
    let Some(c) = cluster else {
        let _ = writeln!(out, "# the cluster's figures are missing: Redis did not answer");
        return (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out);
    };

    family(
        &mut out,
        "tayori_queue_jobs",
        "gauge",
        "Queued work by queue and state (waiting, leased to a worker, or dead: a job no worker could read, kept for operators).",
    );
    for (queue, stats) in &c.queues {
        let _ = writeln!(out, "tayori_queue_jobs{{queue=\"{queue}\",state=\"waiting\"}} {}", stats.waiting);
        let _ = writeln!(out, "tayori_queue_jobs{{queue=\"{queue}\",state=\"leased\"}} {}", stats.leased);
        let _ = writeln!(out, "tayori_queue_jobs{{queue=\"{queue}\",state=\"dead\"}} {}", stats.dead);
    }

    let jobs = &c.jobs;
    family(&mut out, "tayori_jobs_finished_total", "counter", "Video jobs that ended, by outcome.");
    let _ = writeln!(out, "tayori_jobs_finished_total{{status=\"success\"}} {}", jobs.get("succeeded").unwrap_or(&0));
    let _ = writeln!(out, "tayori_jobs_finished_total{{status=\"failure\"}} {}", jobs.get("failed").unwrap_or(&0));
    let _ = writeln!(out, "tayori_jobs_finished_total{{status=\"cancelled\"}} {}", jobs.get("cancelled").unwrap_or(&0));
    family(&mut out, "tayori_jobs_failed_total", "counter", "Failed video jobs by error code.");
    let mut codes: Vec<_> = jobs.iter().filter_map(|(k, v)| k.strip_prefix("failed:").map(|c| (c, v))).collect();
    codes.sort();
    for (code, n) in codes {
        if code.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-') {
            let _ = writeln!(out, "tayori_jobs_failed_total{{code=\"{code}\"}} {n}");
        }
    }

    family(&mut out, "tayori_step_duration_seconds", "histogram", "Time each pipeline step took, in successful runs.");
    for step in Step::ALL {
        let name = step.name();
        let get = |f: &str| c.steps.get(&format!("{name}:{f}")).copied().unwrap_or(0);
        let mut cumulative = 0;
        for (i, le) in m::STEP_BUCKETS.iter().enumerate() {
            cumulative += get(&i.to_string());
            let _ = writeln!(out, "tayori_step_duration_seconds_bucket{{step=\"{name}\",le=\"{le}\"}} {cumulative}");
        }
        cumulative += get(&m::STEP_BUCKETS.len().to_string());
        let _ = writeln!(out, "tayori_step_duration_seconds_bucket{{step=\"{name}\",le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "tayori_step_duration_seconds_sum{{step=\"{name}\"}} {}", get("sum") as f64 / 1000.0);
        let _ = writeln!(out, "tayori_step_duration_seconds_count{{step=\"{name}\"}} {}", get("count"));
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out)
}

struct Cluster {
    queues: Vec<(String, shared::queue::QueueStats)>,
    jobs: HashMap<String, u64>,
    steps: HashMap<String, u64>,
    errors: HashMap<String, u64>,
}

async fn cluster(state: &AppState) -> Option<Cluster> {
    let read = async {
        let mut conn = state.redis.clone();
        let mut queues = Vec::new();
        for stage in [Stage::Image, Stage::Voice, Stage::Render] {
            let q = state.cfg.queue.stage(conn.clone(), stage);
            queues.push((stage.name().to_owned(), q.stats().await.map_err(|e| e.to_string())?));
        }
        queues.push(("catalog".to_owned(), state.catalog_queue.stats().await.map_err(|e| e.to_string())?));
        let jobs: HashMap<String, u64> = conn.hgetall(m::JOBS_KEY).await.map_err(|e| e.to_string())?;
        let steps: HashMap<String, u64> = conn.hgetall(m::STEPS_KEY).await.map_err(|e| e.to_string())?;
        let errors: HashMap<String, u64> = conn.hgetall(m::ERRORS_KEY).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(Cluster { queues, jobs, steps, errors })
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), read).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            m::count_error(Service::Redis);
            tracing::warn!(error = %e, "metrics: reading the cluster's figures failed");
            None
        }
        Err(_) => {
            m::count_error(Service::Redis);
            None
        }
    }
}
