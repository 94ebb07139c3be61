//! Celery clients read tayori's task meta: the real `celery` package from
//! PyPI (scripts/interop-deps.sh, pinned by hash) runs `AsyncResult.get()`
//! against the stack's Redis for a SUCCESS, a FAILURE and a REVOKED job.

use std::time::Duration;

use crate::harness::{self, Options, Stack};

fn celery_python() -> String {
    std::env::var("TAYORI_INTEROP_PYTHON")
        .expect("TAYORI_INTEROP_PYTHON: the test suite (scripts/test.sh) sets it from scripts/interop-deps.sh")
}

/// What Celery made of each task (see scripts/celery_results.py).
fn celery_read(stack: &Stack, ids: &[&str]) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(celery_python())
        .arg(harness::repo_root().join("scripts/celery_results.py"))
        .arg(&stack.redis_url)
        .args(ids)
        .output()
        .unwrap();
    assert!(out.status.success(), "celery failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_reads_successes_failures_and_cancels() {
    let stack = Stack::start(Options { workers: 1, ..Default::default() }).await;
    let ok = harness::submit_short(&stack).await;
    let failed = harness::submit_no_person(&stack, "Hello there.").await;
    harness::wait_done(&stack, &ok, Duration::from_secs(120)).await;
    assert_eq!(harness::wait_done(&stack, &failed, Duration::from_secs(120)).await["error"]["code"], "no-person");

    // A third job, cancelled while it waits behind nothing (or runs).
    let (status, body) =
        harness::submit(&stack, std::fs::read(harness::fixture("astronaut.png")).unwrap(), "a.png", harness::SHORT_EN)
            .await;
    assert_eq!(status, 202);
    let revoked = body["task_id"].as_str().unwrap().to_owned();
    let r = reqwest::Client::new()
        .post(format!("{}/api/video/{revoked}/cancel", stack.http))
        .header("x-cancel-token", body["cancel_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let seen = celery_read(&stack, &[&ok, &failed, &revoked]);
    eprintln!("celery saw: {}", serde_json::to_string_pretty(&seen).unwrap());
    let (s, f, c) = (&seen[0], &seen[1], &seen[2]);
    assert_eq!(s["state"], "SUCCESS", "{s}");
    assert_eq!(s["result"]["video_key"], format!("videos/{ok}/final_video.mp4"), "{s}");
    assert!(s["date_done"].as_str().is_some_and(|d| d.starts_with("20")), "{s}");

    assert_eq!(f["state"], "FAILURE", "{f}");
    assert_eq!(f["exception"], "NoPerson", "an exception named by the error code: {f}");
    let meta = harness::meta(&stack, &failed).await.unwrap();
    assert_eq!(f["message"], meta["error"]["message"], "{f}");
    assert_eq!(meta["error"]["code"], "no-person", "tayori's own error is kept: {meta}");

    assert_eq!(c["state"], "REVOKED", "{c}");
    assert_eq!(c["exception"], "TaskRevokedError", "{c}");
    assert_eq!(c["exception_module"], "celery.exceptions", "Celery's own class: {c}");
}
