//! Cancelling a job with its submitter's token: a running one (its tools
//! killed, its files removed, viewers told), a queued one (never run), and
//! the refusals (no token, a wrong one, a finished job).

use std::time::{Duration, Instant};

use crate::harness::{self, Options, Stack};

/// A Japanese message long enough that Open JTalk and ffmpeg are still at
/// work when the test cancels.
fn long_job() -> Vec<(&'static str, String)> {
    vec![
        ("message", "これは取り消しを確かめるための長いメッセージです。".repeat(9)),
        ("voice_profile_id", "ja_mei_female".into()),
        ("bgm_id", "celebration_elegant".into()),
    ]
}

async fn submit_long(stack: &Stack) -> serde_json::Value {
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    let fields = long_job();
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, body) = harness::submit(stack, photo, "a.png", &fields).await;
    assert_eq!(status, 202, "{body}");
    body
}

/// The worker's tools (processes whose command line names its work dir).
fn tools_of(stack: &Stack, worker: usize) -> Vec<String> {
    let out = std::process::Command::new("pgrep").arg("-af").arg(stack.work_dir(worker).as_os_str()).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

async fn cancel(stack: &Stack, task_id: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().post(format!("{}/api/video/{task_id}/cancel", stack.http));
    if let Some(t) = token {
        req = req.json(&serde_json::json!({ "cancel_token": t }));
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(serde_json::Value::Null))
}

async fn objects_of(stack: &Stack, task_id: &str) -> Vec<String> {
    let storage = stack.storage();
    let mut all = Vec::new();
    for prefix in shared::keys::objects::job_prefixes(task_id) {
        all.extend(storage.list(&prefix).await.unwrap().into_iter().map(|o| o.key));
    }
    all
}

/// A job whose tools are running is cancelled with its token: the answer
/// is REVOKED, the viewer's final event arrives, every tool of the worker
/// is gone within a second, the job's files are removed, no later stage is
/// queued, and the meta says REVOKED in Celery's shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_is_cancelled_its_tools_killed_and_its_files_removed() {
    let stack = Stack::start(Options { workers: 1, ..Default::default() }).await;
    let body = submit_long(&stack).await;
    let id = body["task_id"].as_str().unwrap().to_owned();
    let token = body["cancel_token"].as_str().expect("the submit answer carries a cancel token").to_owned();
    assert_eq!(body["cancel_url"], format!("/api/video/{id}/cancel"));

    // Wait until the worker is running tools for this job.
    let t0 = Instant::now();
    while tools_of(&stack, 0).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(60), "no tool ever ran\n{}", stack.logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let running = tools_of(&stack, 0);
    let viewer = {
        let url = stack.ws_url(&id);
        tokio::spawn(async move {
            let r = harness::follow_url(&url, Duration::from_secs(30)).await;
            (r, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    let asked = Instant::now();
    let (status, answer) = cancel(&stack, &id, Some(&token)).await;
    let answered = asked.elapsed();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "REVOKED");
    let mut killed = None;
    while killed.is_none() {
        if tools_of(&stack, 0).is_empty() {
            killed = Some(asked.elapsed());
        }
        assert!(asked.elapsed() < Duration::from_secs(5), "tools still running: {:?}", tools_of(&stack, 0));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed = killed.unwrap();
    let (events, at) = viewer.await.unwrap();
    let (events, _) = events.expect("the viewer's socket ends");
    let last = events.last().unwrap();
    assert_eq!(last["status"], "REVOKED", "{events:?}");
    assert_eq!(last["current_step"], "cancelled");
    let final_event = at.duration_since(asked);
    eprintln!(
        "cancel: answered in {answered:?}, tools killed {killed:?} after the request, final event after \
         {final_event:?}; tools running then: {running:?}"
    );
    assert!(killed < Duration::from_secs(1), "tools lived {killed:?} after the cancel");

    // Nothing of the job is left or made afterwards.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(objects_of(&stack, &id).await, Vec::<String>::new(), "files left behind");
    let meta = harness::meta(&stack, &id).await.unwrap();
    assert_eq!(meta["status"], "REVOKED", "{meta}");
    assert_eq!(meta["result"]["exc_type"], "TaskRevokedError", "{meta}");
    assert_eq!(meta["error"]["code"], "cancelled", "{meta}");
    let mut redis = stack.redis().await;
    for stage in ["voice", "render"] {
        let keys = shared::queue::Keys::new(&format!("{}-{stage}", stack.queue));
        let held: u64 = redis::cmd("HLEN").arg(&keys.data).query_async(&mut redis).await.unwrap();
        assert_eq!(held, 0, "a {stage} job is still queued");
    }
    let stages: u64 = redis::cmd("EXISTS").arg(shared::keys::job_stages(&id)).query_async(&mut redis).await.unwrap();
    assert_eq!(stages, 0, "the stage record is forgotten");
    assert!(!stack.worker_log().contains("job succeeded"), "{}", stack.worker_log());
    let (code, result) = harness::get(&stack, &format!("/api/video/result/{id}")).await;
    assert_eq!(code, 422, "{result}");
    assert_eq!(result["error"]["code"], "cancelled");
    // A second cancel with the token is answered the same (a retried request).
    let (status, again) = cancel(&stack, &id, Some(&token)).await;
    assert_eq!((status, &again["status"]), (200, &serde_json::json!("REVOKED")));
    assert!(tools_of(&stack, 0).is_empty());
}

/// Refusals: no token and a wrong one are 403 (also by DELETE with the
/// header), an unknown task 404, a finished job 409. A queued job cancelled
/// before any worker runs is never started: its photo is removed and the
/// worker that comes later drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_token_cancels_only_an_unfinished_job_and_a_queued_one_never_runs() {
    let mut stack = Stack::start(Options { workers: 0, ..Default::default() }).await;
    let body = submit_long(&stack).await;
    let id = body["task_id"].as_str().unwrap().to_owned();
    let token = body["cancel_token"].as_str().unwrap().to_owned();
    assert_eq!(objects_of(&stack, &id).await.len(), 1, "the photo is stored");

    assert_eq!(cancel(&stack, &id, None).await.0, 403);
    let (status, wrong) = cancel(&stack, &id, Some(&"0".repeat(64))).await;
    assert_eq!(status, 403, "{wrong}");
    assert_eq!(wrong["error"]["code"], "cancel-token-invalid");
    // Another job's token does not cancel this one.
    let other = harness::submit_short(&stack).await;
    let r = reqwest::Client::new()
        .delete(format!("{}/api/video/{other}", stack.http))
        .header("x-cancel-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(cancel(&stack, &unknown, Some(&token)).await.0, 404);
    assert_eq!(cancel(&stack, "not-a-task", Some(&token)).await.0, 400);
    assert_eq!(harness::meta(&stack, &id).await.unwrap()["status"], "PENDING");

    // The right token, by DELETE and the header.
    let r = reqwest::Client::new()
        .delete(format!("{}/api/video/{id}", stack.http))
        .header("x-cancel-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(objects_of(&stack, &id).await, Vec::<String>::new());
    let (events, _) = harness::follow(&stack, &id, Duration::from_secs(5)).await;
    assert_eq!(events.last().unwrap()["status"], "REVOKED", "a late viewer sees the end: {events:?}");

    // A worker arrives: the cancelled job is dropped, the other one runs.
    stack.start_worker();
    let done = harness::wait_done(&stack, &other, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    let (events, _) = harness::follow(&stack, &id, Duration::from_secs(5)).await;
    assert!(events.iter().all(|e| e["status"] != "STARTED"), "the cancelled job never started: {events:?}");
    assert_eq!(harness::meta(&stack, &id).await.unwrap()["status"], "REVOKED");
    assert_eq!(objects_of(&stack, &id).await, Vec::<String>::new());

    // The finished job cannot be cancelled (with its own token).
    let (status, body) =
        harness::submit(&stack, std::fs::read(harness::fixture("astronaut.png")).unwrap(), "a.png", harness::SHORT_EN)
            .await;
    assert_eq!(status, 202);
    let third = body["task_id"].as_str().unwrap();
    harness::wait_done(&stack, third, Duration::from_secs(120)).await;
    let (status, finished) = cancel(&stack, third, body["cancel_token"].as_str()).await;
    assert_eq!(status, 409, "{finished}");
    assert_eq!(finished["error"]["code"], "task-finished");
    assert_eq!(harness::meta(&stack, third).await.unwrap()["status"], "SUCCESS");
}
