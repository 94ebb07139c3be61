//! `/admin`: off without `TAYORI_ADMIN_TOKEN`, guarded with it; failed jobs
//! kept and retried.

use std::time::{Duration, Instant};

use crate::harness::{self, Options, Stack, push_raw};

pub const TOKEN: &str = "test-admin-token-0123456789abcdef";

pub fn admin_stack_options(workers: usize) -> Options {
    Options { workers, env: vec![("TAYORI_ADMIN_TOKEN".into(), TOKEN.into())], ..Default::default() }
}

pub async fn get_admin(stack: &Stack, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut r = reqwest::Client::new().get(format!("{}{path}", stack.http));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

pub async fn retry(stack: &Stack, task_id: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/admin/api/failed/{task_id}/retry", stack.http))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

async fn wait_listed(stack: &Stack, n: usize) -> Vec<serde_json::Value> {
    let t0 = Instant::now();
    loop {
        let (status, body) = get_admin(stack, "/admin/api/failed", Some(TOKEN)).await;
        assert_eq!(status, 200, "{body}");
        let list = body["failed"].as_array().unwrap().clone();
        if list.len() >= n {
            return list;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{n} failures not listed: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Without a token there is no `/admin` at all: every path answers as an
/// unknown one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_admin_does_not_exist() {
    let stack = Stack::start(Options { workers: 0, ..Default::default() }).await;
    for path in ["/admin", "/admin/api/failed", "/admin/api/overview"] {
        let (status, body) = get_admin(&stack, path, Some("anything-at-all-0123456789")).await;
        assert_eq!((status, body["error"]["code"].as_str()), (404, Some("no-such-endpoint")), "{path}: {body}");
    }
    let r = reqwest::Client::new()
        .post(format!("{}/admin/api/failed/{}/retry", stack.http, uuid::Uuid::new_v4()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// Three kinds of failure are kept (a stage that failed for good, a job
/// delivered too often, one no worker could read), listed newest first with
/// code, stage, attempts and the job; a retry is a new attempt of the same
/// task id with a fresh time budget, and here succeeds once the cause
/// (a photo without a person) is mended. Wrong tokens are refused and, past
/// 20 a minute, refused outright.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_jobs_are_kept_listed_and_retried_by_an_operator() {
    let stack = Stack::start(admin_stack_options(1)).await;

    // 1. A photo with nobody in it.
    let no_person = harness::submit_no_person(&stack, "Hello there.").await;
    let done = harness::wait_done(&stack, &no_person, Duration::from_secs(120)).await;
    assert_eq!(done["error"]["code"], "no-person", "{done}");

    // 2. A job every worker that took it lost (attempts set by hand).
    let gave_up = uuid::Uuid::new_v4().to_string();
    let job = shared::job::VideoJob {
        version: shared::job::JOB_VERSION,
        task_id: gave_up.clone(),
        image_key: format!("images/uploads/{gave_up}/original.png"),
        message: "Crashes every worker.".into(),
        voice_profile_id: "en_slt_female".into(),
        bgm_id: None,
        resolution: Default::default(),
        person_index: None,
        background: Default::default(),
        submitted_at: chrono::Utc::now(),
    };
    push_raw(&stack, &stack.queue, "lost-5-times", &serde_json::to_string(&job).unwrap(), Some(5)).await;
    assert_eq!(harness::wait_meta_done(&stack, &gave_up, Duration::from_secs(20)).await["error"]["code"], "gave-up");

    // 3. A job from a gateway of a newer version.
    let unreadable = uuid::Uuid::new_v4().to_string();
    let raw = serde_json::json!({"version": 2, "task_id": unreadable, "message": {"text": "<b>hi</b>"}}).to_string();
    push_raw(&stack, &stack.queue, "from-the-future", &raw, None).await;
    assert_eq!(
        harness::wait_meta_done(&stack, &unreadable, Duration::from_secs(20)).await["error"]["code"],
        "job-unreadable"
    );

    // No token, a wrong one, a session cookie that is not the token's.
    let (status, body) = get_admin(&stack, "/admin/api/failed", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("admin-token-invalid")), "{body}");
    let (status, _) = get_admin(&stack, "/admin/api/failed", Some("test-admin-token-0123456789abcdeF")).await;
    assert_eq!(status, 401);
    let r = reqwest::Client::new()
        .get(format!("{}/admin/api/failed", stack.http))
        .header("cookie", format!("tayori_admin={}", gateway::admin::session_value("another-token-0123456789")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let list = wait_listed(&stack, 3).await;
    eprintln!("kept: {}", serde_json::to_string_pretty(&list).unwrap());
    let ids: Vec<&str> = list.iter().map(|f| f["task_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [unreadable.as_str(), gave_up.as_str(), no_person.as_str()], "newest first");
    let (u, g, n) = (&list[0], &list[1], &list[2]);
    assert_eq!((n["code"].as_str(), n["stage"].as_str()), (Some("no-person"), Some("image")), "{n}");
    assert!(n["attempts"].as_u64().is_some_and(|a| a >= 1), "{n}");
    assert_eq!(n["job"]["message"], "Hello there.", "the job itself is kept: {n}");
    assert!(n["message"].as_str().is_some_and(|m| !m.is_empty()), "{n}");
    assert_eq!((g["code"].as_str(), g["stage"].as_str()), (Some("gave-up"), Some("image")), "{g}");
    assert_eq!(g["job"]["message"], "Crashes every worker.", "{g}");
    assert_eq!((u["code"].as_str(), u["stage"].as_str()), (Some("job-unreadable"), None), "{u}");
    assert_eq!(u["job"]["version"], 2, "kept exactly as it was queued: {u}");

    // A retry signed in by the cookie alone, without the anti-forgery header.
    let r = reqwest::Client::new()
        .post(format!("{}/admin/api/failed/{no_person}/retry", stack.http))
        .header("cookie", format!("tayori_admin={}", gateway::admin::session_value(TOKEN)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a cross-site form could send this");
    // Not a failed job: a running or unknown id.
    let (status, body) = retry(&stack, &uuid::Uuid::new_v4().to_string()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("failed-job-not-found")), "{body}");
    let (status, _) = retry(&stack, "../../etc/passwd").await;
    assert!(status == 400 || status == 404, "{status}");

    // Mend the cause (a photo with a person), then retry: the same task id
    // runs again, from the start, with a fresh time budget.
    let image_key = n["job"]["image_key"].as_str().unwrap();
    let person = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    stack.storage().put_bytes(image_key, person, "image/png").await.unwrap();
    let before = chrono::Utc::now();
    // The voice stage ran beside the image stage that failed: until it has
    // stopped, the retry is put off.
    let t0 = Instant::now();
    let (status, body) = loop {
        let (status, body) = retry(&stack, &no_person).await;
        if status != 409 || body["error"]["code"] != "job-still-stopping" || t0.elapsed() > Duration::from_secs(20) {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((status, body["status"].as_str(), body["retries"].as_u64()), (202, Some("PENDING"), Some(1)), "{body}");
    let (status, body) = retry(&stack, &no_person).await;
    assert!(status == 404 || status == 409, "a second retry queues nothing: {status} {body}");
    let done = harness::wait_done(&stack, &no_person, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    let meta = harness::meta(&stack, &no_person).await.unwrap();
    assert_eq!(meta["retries"], 1, "{meta}");
    let started: chrono::DateTime<chrono::Utc> = meta["date_started"].as_str().unwrap().parse().unwrap();
    assert!(started >= before, "the time budget starts at the retry: {started} < {before}");
    assert!(meta["error"].is_null(), "{meta}");
    let (events, _) = harness::follow(&stack, &no_person, Duration::from_secs(10)).await;
    assert!(events.iter().all(|e| e["status"] != "FAILURE"), "the progress log starts over: {events:?}");
    assert_eq!(events.last().unwrap()["status"], "SUCCESS");
    // Numbered on from the failed attempt's events (a viewer that saw them
    // takes the new ones as new), with no gap.
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs[0] > 0 && seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let list = wait_listed(&stack, 2).await;
    assert_eq!(list.len(), 2, "a retried job is no longer listed: {list:?}");
    assert_eq!(harness::queued(&stack).await, 0);

    // Wrong tokens: 20 a minute (two were sent above; no token at all is
    // not a guess), then 429 even for the right one.
    let mut statuses = Vec::new();
    for i in 0..20 {
        statuses.push(get_admin(&stack, "/admin/api/failed", Some(&format!("guess-{i:020}"))).await.0);
    }
    assert_eq!(&statuses[..18], &[401; 18][..], "{statuses:?}");
    assert_eq!(&statuses[18..], &[429, 429], "{statuses:?}");
    assert_eq!(get_admin(&stack, "/admin/api/failed", Some(TOKEN)).await.0, 429, "a blocked client tries nothing");
}

/// The dashboard in Chromium: the sign-in form (a wrong token refused), the
/// worker's heartbeat, the queues, a failure whose message is markup shown
/// as text, a retry from its button that updates the page live; and, read
/// from the API meanwhile, the retried job in progress with its step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_signs_in_and_retries_live_in_chromium() {
    let browser_dir = harness::repo_root().join("gateway/tests/browser");
    assert!(browser_dir.join("node_modules/playwright-core").is_dir(), "run scripts/browser-deps.sh");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let stack = Stack::start(admin_stack_options(1)).await;
    let artifacts = harness::repo_root().join("target/browser-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let task = harness::submit_no_person(&stack, "Hi <img src=x onerror=\"window.__pwned=1\"> there.").await;
    assert_eq!(harness::wait_done(&stack, &task, Duration::from_secs(120)).await["error"]["code"], "no-person");
    wait_listed(&stack, 1).await;
    let image_key = format!("images/uploads/{task}/original.png");
    let person = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    stack.storage().put_bytes(&image_key, person, "image/png").await.unwrap();
    // The voice stage of the failed attempt may still be stopping.
    let t0 = Instant::now();
    while harness::meta(&stack, &task).await.is_some() && {
        let mut r = stack.redis().await;
        let held: bool =
            redis::AsyncCommands::exists(&mut r, shared::keys::job_claim(&task, shared::job::Stage::Voice))
                .await
                .unwrap();
        held
    } {
        assert!(t0.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let child = tokio::process::Command::new("node")
        .arg("admin.mjs")
        .current_dir(&browser_dir)
        .env("TAYORI_URL", &stack.http)
        .env("TOKEN", TOKEN)
        .env("TASK_ID", &task)
        .env("WORKER", "test-worker-0")
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node is needed for the browser test");
    // Meanwhile: the retried job shows in progress, with its current step.
    let mut seen_step = None;
    let t0 = Instant::now();
    while seen_step.is_none() && t0.elapsed() < Duration::from_secs(90) {
        let (status, o) = get_admin(&stack, "/admin/api/overview", Some(TOKEN)).await;
        assert_eq!(status, 200, "{o}");
        seen_step = o["in_progress"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["task_id"] == task.as_str() && j["step"].is_string())
            .map(|j| (j["stage"].clone(), j["step"].clone(), j["worker"].clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out =
        tokio::time::timeout(Duration::from_secs(240), child.wait_with_output()).await.expect("node exits").unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    assert!(out.status.success() && stdout.contains("ADMIN OK"), "{stdout}\n{stderr}\n{}", stack.logs());
    let (stage, step, worker) = seen_step.expect("the retried job was never listed in progress");
    eprintln!("in progress: stage {stage}, step {step}, on {worker}");
    assert_eq!(worker, "test-worker-0");
    assert_eq!(harness::wait_done(&stack, &task, Duration::from_secs(60)).await["status"], "SUCCESS");
    let (_, o) = get_admin(&stack, "/admin/api/overview", Some(TOKEN)).await;
    eprintln!("overview: {}", serde_json::to_string_pretty(&o).unwrap());
    assert_eq!(o["jobs"]["succeeded"], 1, "{o}");
    assert_eq!(o["failures"]["by_code"][0]["code"], "no-person", "{o}");
    assert!(o["videos_per_minute"]["last_minutes"].as_array().unwrap().iter().any(|n| n == 1), "{o}");
    let render = o["steps"].as_array().unwrap().iter().find(|s| s["step"] == "render_and_upload").cloned();
    assert!(render.is_some_and(|r| r["count"] == 1 && r["p50_s"].as_f64().is_some()), "{o}");
    assert_eq!(o["workers"][0]["stages"], serde_json::json!(["image", "voice", "render"]), "{o}");
}
