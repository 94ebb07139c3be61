//! Deliveries that go wrong: a job no worker can read, a duplicate of a
//! stage still running, a catalog task that keeps losing its worker or
//! outlives its caller, and progress numbering across a wait longer than
//! the progress log lives.

use std::time::{Duration, Instant};

use redis::AsyncCommands;

use crate::harness::{self, Options, Stack, push_raw};

/// A gateway of a newer version queued a job this worker cannot decode (its
/// `message` is now an object). The task fails at once with
/// `job-unreadable`, naming both versions; a viewer gets the final event;
/// the raw job is kept in the queue's dead-letter list; nothing is left in
/// the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_no_worker_can_read_fails_its_task_with_both_versions_and_is_kept() {
    let stack = Stack::start(Options { workers: 1, ..Default::default() }).await;
    let task_id = uuid::Uuid::new_v4().to_string();
    let meta = shared::progress::TaskMeta::pending(&task_id, chrono::Utc::now());
    let mut redis = stack.redis().await;
    let _: () =
        redis.set_ex(shared::keys::task_meta(&task_id), serde_json::to_string(&meta).unwrap(), 600).await.unwrap();
    let raw = serde_json::json!({
        "version": 2,
        "task_id": task_id,
        "image_key": format!("images/uploads/{task_id}/original.png"),
        "message": {"text": "Happy birthday", "language": "en"},
        "voice_profile_id": "en_joe_male",
        "resolution": "512x910",
        "submitted_at": chrono::Utc::now(),
    })
    .to_string();
    let t0 = Instant::now();
    push_raw(&stack, &stack.queue, "from-the-future", &raw, None).await;
    let done = harness::wait_done(&stack, &task_id, Duration::from_secs(20)).await;
    let took = t0.elapsed();
    assert_eq!(done["status"], "FAILURE", "{done}");
    assert_eq!(done["error"]["code"], "job-unreadable", "{done}");
    let message = done["error"]["message"].as_str().unwrap();
    assert!(message.contains("version 2") && message.contains("version 1"), "{message}");
    let (events, _) = harness::follow(&stack, &task_id, Duration::from_secs(10)).await;
    assert_eq!(events.last().unwrap()["status"], "FAILURE", "{events:?}");

    let keys = shared::queue::Keys::new(&stack.queue);
    let dead: Vec<String> = redis.lrange(&keys.dead, 0, -1).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let letter: shared::queue::DeadLetter = serde_json::from_str(&dead[0]).unwrap();
    assert_eq!(
        (letter.task_id.as_deref(), letter.version, letter.raw.as_str()),
        (Some(task_id.as_str()), Some(2), raw.as_str())
    );
    let left: (u64, u64, u64) =
        redis::pipe().hlen(&keys.data).llen(&keys.pending).zcard(&keys.leased).query_async(&mut redis).await.unwrap();
    assert_eq!(left, (0, 0, 0), "nothing left in the queue");
    eprintln!("unreadable job: FAILURE job-unreadable after {took:?}, kept as a dead letter");
}

/// A second delivery of an image stage that another worker holds the claim
/// of (set by hand) is put off, not waited on: at concurrency 1 the next job
/// runs meanwhile, and the first runs once the claim is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_delivery_of_a_running_stage_is_put_off_and_does_not_hold_the_slot() {
    let mut stack = Stack::start(Options { workers: 0, ..Default::default() }).await;
    let first = harness::submit_short(&stack).await;
    let claim = shared::keys::job_claim(&first, shared::job::Stage::Image);
    let mut redis = stack.redis().await;
    let _: () = redis::cmd("SET")
        .arg(&claim)
        .arg("another-worker")
        .arg("PX")
        .arg(120_000)
        .query_async(&mut redis)
        .await
        .unwrap();
    stack.start_worker();
    let second = harness::submit_short(&stack).await;
    let t0 = Instant::now();
    let done = harness::wait_done(&stack, &second, Duration::from_secs(90)).await;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    let second_took = t0.elapsed();
    assert_eq!(harness::meta(&stack, &first).await.unwrap()["status"], "PENDING", "the first waits for its claim");
    let put_off = stack.worker_log().matches("stage is running elsewhere; putting this delivery off").count();
    assert!(put_off >= 1, "{}", stack.logs());
    let _: () = redis.del(&claim).await.unwrap();
    let t1 = Instant::now();
    let done = harness::wait_done(&stack, &first, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    assert_eq!(stack.worker_log().matches("job succeeded").count(), 2, "each job once");
    eprintln!(
        "duplicate delivery: the next job finished in {second_took:?} while it was put off {put_off} times; \
         done {:?} after the claim went",
        t1.elapsed()
    );
}

/// A catalog task whose deliveries all lost their worker (attempts set by
/// hand, as three crashes would leave them) is answered `gave-up` instead of
/// being delivered forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_task_delivered_too_often_gives_up() {
    let stack = Stack::start(Options { workers: 1, ..Default::default() }).await;
    let task = shared::catalog_task::CatalogTask {
        id: "crashes-every-worker".into(),
        kind: shared::catalog_task::CatalogTaskKind::TrackPreview {
            source_key: "bgm/system/celebration_upbeat.mp3".into(),
            target_key: "bgm/previews/crashes-every-worker.mp3".into(),
        },
        deadline: None,
    };
    let queue = format!("{}-catalog", stack.queue);
    push_raw(&stack, &queue, "e1", &serde_json::to_string(&task).unwrap(), Some(3)).await;
    let mut redis = stack.redis().await;
    let (_, answer): (String, String) = redis::cmd("BLPOP")
        .arg(shared::catalog_task::result_key(&task.id))
        .arg(20)
        .query_async(&mut redis)
        .await
        .expect("an answer within 20 s");
    let answer: shared::catalog_task::CatalogTaskResult = serde_json::from_str(&answer).unwrap();
    match answer {
        shared::catalog_task::CatalogTaskResult::Failed { code, message } => {
            assert_eq!(code, "gave-up");
            assert!(message.contains("3 times"), "{message}");
        }
        other => panic!("expected gave-up, got {other:?}"),
    }
    assert_eq!(stack.storage().head(task.kind.target_key().unwrap()).await.unwrap(), None, "it did not run");
}

/// The gateway stops waiting for a music upload's analysis (2 s here; a
/// 9-minute track takes a worker longer) and says so. The worker stops at
/// the task's deadline too: it writes no track that no entry would ever
/// reference, and leaves no upload and no answer behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_task_past_its_deadline_leaves_nothing_behind() {
    let stack = Stack::start(Options {
        workers: 1,
        own_data: true,
        env: vec![("TAYORI_CATALOG_TASK_TIMEOUT_SECS".into(), "2".into())],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("long.mp3");
    let ok = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-stream_loop", "-1", "-i"])
        .arg(stack.data_dir.join("bgm/system/celebration_energetic.mp3"))
        .args(["-t", "540", "-c:a", "libmp3lame", "-b:a", "64k"])
        .arg(&long)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let form = reqwest::multipart::Form::new()
        .text("name", "Too long to wait for")
        .text("uploaded_by", "late")
        .part("file", reqwest::multipart::Part::bytes(std::fs::read(&long).unwrap()).file_name("long.mp3"));
    let t0 = Instant::now();
    let r = reqwest::Client::new().post(format!("{}/api/bgm/tracks", stack.http)).multipart(form).send().await.unwrap();
    let waited = t0.elapsed();
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "workers-busy", "{body}");
    assert!(waited < Duration::from_secs(8), "waited {waited:?}");
    let storage = stack.storage();
    let mut redis = stack.redis().await;
    // Until the worker is done with the task, one way or the other.
    while !["the caller stopped waiting", "catalog task done"].iter().any(|m| stack.worker_log().contains(m)) {
        assert!(t0.elapsed() < Duration::from_secs(90), "the worker never finished the task\n{}", stack.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tracks = storage.list("bgm/user/").await.unwrap();
    assert!(tracks.is_empty(), "no track without an entry: {tracks:?}");
    assert_eq!(storage.list("bgm/uploads/").await.unwrap().len(), 0, "no upload left");
    let answers: Vec<String> = redis.keys("catalog-task:*").await.unwrap();
    assert!(answers.is_empty(), "no answer nobody reads: {answers:?}");
    let (_, listed) = harness::get(&stack, "/api/bgm/tracks?type=user").await;
    assert_eq!(listed["tracks"].as_array().map(Vec::len), Some(0), "{listed}");
    assert!(stack.worker_log().contains("the caller stopped waiting"), "{}", stack.logs());
    eprintln!("catalog task past its deadline: 503 after {waited:?}, nothing left");
}

/// Progress numbering outlives the progress log: with a 2 s progress TTL, a
/// viewer watches a job that waits 4 s for a worker (its queued event and
/// log expire meanwhile). The worker's events go on from 1, and the viewer,
/// connected throughout, sees them all, to the final one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_numbering_goes_on_after_the_log_expires_and_the_viewer_sees_the_end() {
    let mut stack = Stack::start(Options {
        workers: 0,
        env: vec![("TAYORI_PROGRESS_TTL_SECS".into(), "2".into())],
        ..Default::default()
    })
    .await;
    let id = harness::submit_short(&stack).await;
    let url = stack.ws_url(&id);
    let viewer = tokio::spawn(async move { harness::follow_url(&url, Duration::from_secs(120)).await });
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut redis = stack.redis().await;
    let log: u64 = redis.llen(shared::keys::progress_log(&id)).await.unwrap();
    assert_eq!(log, 0, "the log has expired while the job waited");
    stack.start_worker();
    let (events, close) = viewer.await.unwrap().expect("the viewer saw the end");
    assert_eq!(close, Some(1000), "{events:#?}");
    assert_eq!(events.last().unwrap()["status"], "SUCCESS", "{events:#?}");
    harness::assert_seq_contiguous(&events, "a viewer connected throughout");
    // Numbered again from 0, the worker's first event would be dropped as
    // already seen.
    assert!(events.iter().any(|e| e["current_step"] == "detect_person"), "{events:#?}");
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs.first(), Some(&0), "{seqs:?}");
    assert!(seqs.len() >= 9, "{seqs:?}");
    // A late viewer of the finished job gets its end from the log or the meta.
    let (late, _) = harness::follow(&stack, &id, Duration::from_secs(10)).await;
    assert_eq!(late.last().unwrap()["status"], "SUCCESS", "{late:?}");
}

/// A stopping worker (concurrency 1) finishes the jobs it started and hands
/// back the one waiting for room, unstarted and uncounted: the next worker
/// runs it as its first delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_hands_back_the_job_waiting_for_room_uncounted() {
    let mut stack = Stack::start(Options { workers: 1, ..Default::default() }).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(harness::submit_short(&stack).await);
    }
    // The second job has started: the first is still open, so the third
    // waits for room (or still in the queue).
    harness::wait_event(&stack, &ids[1], Duration::from_secs(60), |e| e["step_index"].as_u64() >= Some(1)).await;
    stack.terminate_worker(0);
    let exit = stack.wait_worker_exit(0, Duration::from_secs(120)).await.expect("the worker exits");
    assert!(exit.success(), "{exit:?}");
    for id in &ids[..2] {
        assert_eq!(harness::meta(&stack, id).await.unwrap()["status"], "SUCCESS", "{}", stack.logs());
    }
    assert_eq!(harness::meta(&stack, &ids[2]).await.unwrap()["status"], "PENDING");
    let lines_of = |log: &str, id: &str| log.lines().filter(|l| l.contains(id)).map(harness::plain).collect::<Vec<_>>();
    let stopping = lines_of(&stack.worker_log_of(0), &ids[2]);
    assert!(!stopping.iter().any(|l| l.contains("stage done")), "the stopping worker ran it: {stopping:#?}");
    stack.start_worker();
    let done = harness::wait_done(&stack, &ids[2], Duration::from_secs(90)).await;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    let next = lines_of(&stack.worker_log_of(1), &ids[2]);
    assert!(next.iter().any(|l| l.contains("delivery=1")), "{next:#?}");
    assert!(!next.iter().any(|l| l.contains("delivery=2")), "a hand-back is not an attempt: {next:#?}");
}
