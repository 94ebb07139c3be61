//! `GET /metrics`: the Prometheus text format, with figures that follow
//! what the stack really did.

use std::collections::HashMap;
use std::time::Duration;

use crate::harness::{self, Options, Stack};

/// Sample lines (`name{labels} value`) of a scrape, checked against the
/// text format's rules: every sample's family was declared with HELP and
/// TYPE before it, and every value is a number.
async fn scrape(stack: &Stack) -> HashMap<String, f64> {
    let r = reqwest::get(format!("{}/metrics", stack.http)).await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = r.text().await.unwrap();
    let mut typed = std::collections::HashSet::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            typed.insert(parts.next().unwrap().to_owned());
            assert!(["counter", "gauge", "histogram"].contains(&parts.next().unwrap()), "{line}");
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(typed.contains(name) || typed.contains(family), "sample before its TYPE: {line}");
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
        assert!(samples.insert(series.to_owned(), v).is_none(), "series twice: {line}");
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_jobs_steps_queues_and_viewers() {
    let stack = Stack::start(Options { workers: 1, ..Default::default() }).await;
    let before = scrape(&stack).await;
    assert_eq!(before["tayori_jobs_submitted_total"], 0.0);
    assert_eq!(before["tayori_websocket_viewers"], 0.0);
    assert_eq!(before["tayori_queue_jobs{queue=\"image\",state=\"waiting\"}"], 0.0);
    assert_eq!(before["tayori_step_duration_seconds_count{step=\"render_and_upload\"}"], 0.0);

    // One job that succeeds and one that fails (no person in the photo).
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    let fields = [("message", "Metrics."), ("voice_profile_id", "en_joe_male"), ("resolution", "512x910")];
    let (status, ok) = harness::submit(&stack, photo, "a.png", &fields).await;
    assert_eq!(status, 202);
    let coffee = std::fs::read(harness::fixture("coffee.png")).unwrap();
    let (status, bad) = harness::submit(&stack, coffee, "c.png", &fields).await;
    assert_eq!(status, 202);

    // A viewer is counted while it watches.
    let ok_id = ok["task_id"].as_str().unwrap().to_owned();
    let (ws, _) = tokio_tungstenite::connect_async(stack.ws_url(&ok_id)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = scrape(&stack).await;
    assert_eq!(during["tayori_websocket_viewers"], 1.0);
    assert_eq!(during["tayori_jobs_submitted_total"], 2.0);
    drop(ws);

    let done = harness::wait_done(&stack, &ok_id, Duration::from_secs(180)).await;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    let failed = harness::wait_done(&stack, bad["task_id"].as_str().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(failed["error"]["code"], "no-person");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let after = scrape(&stack).await;
    assert_eq!(after["tayori_websocket_viewers"], 0.0, "the viewer is counted out when it leaves");
    assert_eq!(after["tayori_jobs_finished_total{status=\"success\"}"], 1.0);
    assert_eq!(after["tayori_jobs_finished_total{status=\"failure\"}"], 1.0);
    assert_eq!(after["tayori_jobs_failed_total{code=\"no-person\"}"], 1.0);
    // Every successful step of both jobs (the failed job's first step
    // succeeded) once; the durations agree with the jobs' own records.
    let steps = done["result"]["pipeline_metrics"].as_array().unwrap();
    let failed_meta = harness::meta(&stack, bad["task_id"].as_str().unwrap()).await.unwrap();
    let failed_steps = failed_meta["pipeline_metrics"].as_array().cloned().unwrap_or_default();
    for step in steps {
        let name = step["stage"].as_str().unwrap();
        let also: Vec<_> = failed_steps.iter().filter(|s| s["stage"] == name && s["success"] == true).collect();
        let count = 1.0 + also.len() as f64;
        let expected_sum: f64 = (step["duration_ms"].as_f64().unwrap()
            + also.iter().map(|s| s["duration_ms"].as_f64().unwrap()).sum::<f64>())
            / 1000.0;
        assert_eq!(after[&format!("tayori_step_duration_seconds_count{{step=\"{name}\"}}")], count, "{name}");
        let sum = after[&format!("tayori_step_duration_seconds_sum{{step=\"{name}\"}}")];
        assert!((sum - expected_sum).abs() < 1e-6, "{name}: {sum} vs {expected_sum}");
        assert_eq!(after[&format!("tayori_step_duration_seconds_bucket{{step=\"{name}\",le=\"+Inf\"}}")], count);
    }
    assert_eq!(after["tayori_step_duration_seconds_count{step=\"download_image\"}"], 2.0, "{failed_steps:?}");
    assert_eq!(steps.len(), 8);
    assert_eq!(after["tayori_queue_jobs{queue=\"render\",state=\"leased\"}"], 0.0);
    assert_eq!(after["tayori_backend_errors_total{service=\"s3\",process=\"gateway\"}"], 0.0);

    // Redis down: the scrape still answers with the gateway's own figures
    // and counts the failed read.
    let mut stack = stack;
    stack.stop_redis("TERM");
    let down = scrape(&stack).await;
    assert_eq!(down["tayori_jobs_submitted_total"], 2.0);
    assert!(!down.contains_key("tayori_jobs_finished_total{status=\"success\"}"));
    assert!(down["tayori_backend_errors_total{service=\"redis\",process=\"gateway\"}"] >= 1.0);
}
