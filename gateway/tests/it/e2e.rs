use std::time::{Duration, Instant};

use crate::harness::{self, Options, Stack};

const JA_MESSAGE: &str = "お誕生日おめでとうございます。いつも本当にありがとう。素敵な一年になりますように。";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_japanese_message_becomes_a_portrait_video_with_live_progress() {
    // The production segmentation model (IS-Net).
    let env = vec![("TAYORI_SEGMENTATION_MODEL".to_owned(), "isnet".to_owned())];
    let stack = Stack::start(Options { env, ..Options::default() }).await;
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    let t_submit = Instant::now();
    let (status, body) = harness::submit(
        &stack,
        photo,
        "astronaut.png",
        &[
            ("message", JA_MESSAGE),
            ("voice_profile_id", "ja_mei_female"),
            ("bgm_id", "celebration_gentle"),
            ("resolution", "512x910"),
            ("background", "#3366CC"),
        ],
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let task_id = body["task_id"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&task_id).unwrap().get_version_num() == 4);
    assert_eq!(body["progress_ws"], format!("/ws/progress/{task_id}"));
    assert_eq!(body["status_url"], format!("/api/video/status/{task_id}"));

    // Follow the job live.
    let (events, close) = harness::follow(&stack, &task_id, Duration::from_secs(240)).await;
    let elapsed = t_submit.elapsed();
    assert_eq!(close, Some(1000), "normal close after the end; events: {events:#?}");
    harness::assert_seq_contiguous(&events, "no gaps, no repeats");
    assert_eq!(events[0]["status"], "PENDING");
    let steps: Vec<(u64, String)> = events
        .iter()
        .filter(|e| e["status"] == "STARTED")
        .map(|e| (e["step_index"].as_u64().unwrap(), e["current_step"].as_str().unwrap().to_owned()))
        .collect();
    let expected = [
        "download_image",
        "detect_person",
        "background_removal",
        "prepare_image",
        "synthesize_voice",
        "adjust_prosody",
        "mix_bgm",
        "render_and_upload",
    ];
    // Every step once, with its own index; the image steps and the voice
    // steps each in order (the two branches run at the same time), the
    // render last.
    let mut sorted = steps.clone();
    sorted.sort();
    assert_eq!(sorted, expected.iter().enumerate().map(|(i, s)| (i as u64 + 1, s.to_string())).collect::<Vec<_>>());
    let order =
        |names: &[&str]| steps.iter().filter(|(_, n)| names.contains(&n.as_str())).map(|(i, _)| *i).collect::<Vec<_>>();
    assert_eq!(order(&expected[..4]), vec![1, 2, 3, 4], "image steps in order: {steps:?}");
    assert_eq!(order(&expected[4..7]), vec![5, 6, 7], "voice steps in order: {steps:?}");
    assert_eq!(steps.last().unwrap().1, "render_and_upload");
    let pct: Vec<u64> = events.iter().map(|e| e["percentage"].as_u64().unwrap()).collect();
    assert!(pct.windows(2).all(|w| w[0] <= w[1]), "percentages never go back: {pct:?}");
    let last = events.last().unwrap();
    assert_eq!((last["status"].as_str(), last["percentage"].as_u64()), (Some("SUCCESS"), Some(100)));
    for e in &events {
        for f in
            ["task_id", "percentage", "message", "current_step", "step_index", "total_steps", "status", "timestamp"]
        {
            assert!(e.get(f).is_some(), "event lacks {f}: {e}");
        }
        assert_eq!(e["total_steps"], 8);
    }
    let first_step = events.iter().find(|e| e["step_index"] == 1).unwrap();
    let queued_at = chrono::DateTime::parse_from_rfc3339(events[0]["timestamp"].as_str().unwrap()).unwrap();
    let started_at = chrono::DateTime::parse_from_rfc3339(first_step["timestamp"].as_str().unwrap()).unwrap();
    let pickup = (started_at - queued_at).num_milliseconds();
    println!("submit-to-done {:.2}s, enqueue-to-first-step {pickup} ms", elapsed.as_secs_f64());
    assert!(pickup < 3000, "the job started {pickup} ms after it was queued");

    // Status and result.
    let http = reqwest::Client::new();
    let status: serde_json::Value =
        http.get(format!("{}/api/video/status/{task_id}", stack.http)).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["status"], "SUCCESS");
    assert!(status["date_done"].is_string());
    assert_eq!(status["attempts"], 1);
    assert_eq!(status["progress"]["percentage"], 100);
    let result: serde_json::Value =
        http.get(format!("{}/api/video/result/{task_id}", stack.http)).send().await.unwrap().json().await.unwrap();
    let video_url = result["video_url"].as_str().unwrap();
    assert!(video_url.contains("X-Amz-Signature="), "{video_url}");
    assert!(result["expires_at"].is_string());

    // Download with a plain HTTP client and check the file itself.
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("video.mp4");
    let resp = reqwest::get(video_url).await.unwrap();
    assert_eq!(resp.status(), 200);
    std::fs::write(&video, resp.bytes().await.unwrap()).unwrap();
    let thumb = reqwest::get(result["thumbnail_url"].as_str().unwrap()).await.unwrap();
    assert_eq!(thumb.status(), 200);
    assert_eq!(&thumb.bytes().await.unwrap()[..3], &[0xFF, 0xD8, 0xFF], "thumbnail is a JPEG");
    let (vcodec, w, h, acodec, duration) = harness::ffprobe(&video);
    assert_eq!((vcodec.as_str(), w, h, acodec.as_str()), ("h264", 512, 910, "aac"));
    // As long as the speech (plus the short musical intro and outro).
    let storage = stack.storage();
    let speech = dir.path().join("base_voice.wav");
    storage.get_to_file(&format!("voices/generated/{task_id}/base_voice.wav"), &speech).await.unwrap();
    let speech_secs = harness::duration_of(&speech);
    assert!(speech_secs > 3.0, "a sentence of speech, got {speech_secs}s");
    assert!(duration >= speech_secs && duration <= speech_secs + 3.5, "video {duration}s vs speech {speech_secs}s");
    // As long as the mix (within 0.2 s).
    let mixed = dir.path().join("final_mixed.mp3");
    storage.get_to_file(&format!("voices/generated/{task_id}/final_mixed.mp3"), &mixed).await.unwrap();
    let mix_secs = harness::duration_of(&mixed);
    assert!((duration - mix_secs).abs() <= 0.2, "video {duration}s vs mix {mix_secs}s");

    // 30 fps, yuv420p, and captions burnt in: the band where captions sit
    // differs from the same band of the prepared frame (which has none),
    // with white caption pixels in it.
    let probe = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=pix_fmt,r_frame_rate",
            "-of",
            "csv=p=0",
        ])
        .arg(&video)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "yuv420p,30/1");
    let rgb = |input: &std::path::Path, seek: Option<f64>| -> Vec<u8> {
        let mut cmd = std::process::Command::new("ffmpeg");
        cmd.args(["-nostdin", "-loglevel", "error"]);
        if let Some(t) = seek {
            cmd.args(["-ss", &format!("{t:.2}")]);
        }
        let out = cmd
            .arg("-i")
            .arg(input)
            .args(["-frames:v", "1", "-vf", "scale=512:910", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    };
    let prepared = dir.path().join("prepared.png");
    storage.get_to_file(&format!("images/uploads/{task_id}/optimized_512x910.png"), &prepared).await.unwrap();
    let with_captions = rgb(&video, Some(1.0 + speech_secs / 2.0));
    let without = rgb(&prepared, None);
    let band = (910 * 84 / 100)..(910 * 92 / 100);
    let (mut diff, mut white, mut n) = (0u64, 0u64, 0u64);
    for y in band {
        for x in 0..512 {
            let i = (y * 512 + x) * 3;
            let (a, b) = (&with_captions[i..i + 3], &without[i..i + 3]);
            diff += a.iter().zip(b).map(|(p, q)| (*p as i32 - *q as i32).unsigned_abs() as u64).sum::<u64>();
            white += u64::from(a.iter().all(|c| *c > 230));
            n += 1;
        }
    }
    let mean_diff = diff as f64 / (n * 3) as f64;
    assert!(mean_diff > 8.0, "the caption band looks like the frame without captions (mean diff {mean_diff:.1})");
    assert!(white > 500, "no white caption pixels ({white})");
    // The chosen background colour where the person is not: the top corners
    // of the middle frame (H.264 and yuv420p shift colours by a few levels).
    for (x, y) in [(10usize, 10usize), (500, 10), (10, 300), (500, 300)] {
        let i = (y * 512 + x) * 3;
        let px = &with_captions[i..i + 3];
        let near = px.iter().zip([0x33u8, 0x66, 0xCC]).all(|(a, b)| a.abs_diff(b) <= 12);
        assert!(near, "background at ({x},{y}) is {px:?}, not #3366CC");
    }
    // The cut-out person: opaque in the middle of the face, transparent at
    // the top corners of the crop.
    let cutout = dir.path().join("cutout.png");
    storage.get_to_file(&format!("images/uploads/{task_id}/person_0_bg_removed.png"), &cutout).await.unwrap();
    let alpha = |x: &str, y: &str| -> u8 {
        let out = std::process::Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "error", "-i"])
            .arg(&cutout)
            .args(["-vf", &format!("crop=1:1:{x}:{y}"), "-f", "rawvideo", "-pix_fmt", "rgba", "-"])
            .output()
            .unwrap();
        out.stdout[3]
    };
    let corners = (alpha("0", "0"), alpha("iw-1", "0"));
    assert!(corners.0 < 13 && corners.1 < 13, "background removed at the top corners: {corners:?}");
    let face = alpha("iw/2", "ih/4");
    assert!(face > 240, "the face is kept: alpha {face}");
    // Each step's time and outcome is kept with the result.
    let metrics = status["result"]["pipeline_metrics"].as_array().unwrap();
    assert_eq!(metrics.len(), 8, "{metrics:?}");
    assert!(metrics.iter().all(|m| m["success"] == true && m["duration_ms"].is_u64() && m["error"].is_null()));

    // Every intermediate file is in the original layout.
    for key in [
        format!("images/uploads/{task_id}/original.png"),
        format!("images/uploads/{task_id}/person_0_crop.jpg"),
        format!("images/uploads/{task_id}/person_0_bg_removed.png"),
        format!("images/uploads/{task_id}/optimized_512x910.png"),
        format!("images/previews/{task_id}/person_0_preview.jpg"),
        format!("voices/generated/{task_id}/base_voice.wav"),
        format!("voices/generated/{task_id}/prosody_adjusted.wav"),
        format!("voices/generated/{task_id}/final_mixed.mp3"),
        // Beside the original layout: the mix as AAC, which the render copies.
        format!("voices/generated/{task_id}/final_mixed.m4a"),
        format!("videos/{task_id}/final_video.mp4"),
        format!("videos/{task_id}/thumbnail.jpg"),
    ] {
        assert!(storage.head(&key).await.unwrap().is_some_and(|n| n > 0), "{key} missing");
    }
    // Local scratch files are gone.
    for i in 0..2 {
        let left: Vec<_> = std::fs::read_dir(stack.work_dir(i)).unwrap().collect();
        assert!(left.is_empty(), "worker {i} left {left:?}");
    }

    // A viewer who connects after the end still gets the whole story.
    let (replay, close) = harness::follow(&stack, &task_id, Duration::from_secs(10)).await;
    assert_eq!(close, Some(1000));
    assert_eq!(replay, events);

    // Everything the job left in Redis expires: meta after 24 h, progress
    // after 5 minutes; the job's claim is gone.
    use redis::AsyncCommands;
    let mut redis = stack.redis().await;
    let ttl = |key: String| {
        let mut redis = redis.clone();
        async move { redis.ttl::<_, i64>(key).await.unwrap() }
    };
    let meta_ttl = ttl(format!("celery-task-meta-{task_id}")).await;
    assert!((86_000..=86_400).contains(&meta_ttl), "task meta ttl {meta_ttl}");
    for key in [shared::keys::progress(&task_id), shared::keys::progress_log(&task_id)] {
        let t = ttl(key.clone()).await;
        assert!((1..=300).contains(&t), "{key} ttl {t}");
    }
    // The stage record is removed when the job ends.
    assert!(!redis.exists::<_, bool>(shared::keys::job_stages(&task_id)).await.unwrap(), "stage record left");
    for stage in ["image", "voice", "render"] {
        assert!(!redis.exists::<_, bool>(format!("job:claim:{task_id}:{stage}")).await.unwrap(), "{stage} claim left");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_jobs_at_once_run_once_each_on_two_workers() {
    let stack = Stack::start(Options::default()).await;
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    let (a, b) = tokio::join!(
        harness::submit(
            &stack,
            photo.clone(),
            "a.png",
            &[
                ("message", "Happy birthday! Have a wonderful year."),
                ("voice_profile_id", "en_joe_male"),
                ("bgm_id", "celebration_upbeat")
            ],
        ),
        harness::submit(
            &stack,
            photo,
            "b.png",
            &[("message", "おめでとう！"), ("voice_profile_id", "ja_nitech_male"), ("resolution", "512x910")],
        ),
    );
    assert_eq!(a.0, 202, "{}", a.1);
    assert_eq!(b.0, 202, "{}", b.1);
    let ids = [a.1["task_id"].as_str().unwrap().to_owned(), b.1["task_id"].as_str().unwrap().to_owned()];
    for id in &ids {
        let done = harness::wait_done(&stack, id, Duration::from_secs(240)).await;
        assert_eq!(done["status"], "SUCCESS", "{done}");
        assert_eq!(done["attempts"], 1, "{done}");
    }
    for i in 0..2 {
        let stages = stack.worker_log_of(i).lines().filter(|l| l.contains("stage done")).count();
        assert!(stages >= 1, "worker {i} did no stage of either job");
    }
    let log = stack.worker_log();
    for id in &ids {
        let runs = log.lines().filter(|l| l.contains("job succeeded") && l.contains(id.as_str())).count();
        assert_eq!(runs, 1, "job {id} ran {runs} times");
    }
    // The default size is 1080x1920.
    let result: serde_json::Value =
        reqwest::get(format!("{}/api/video/result/{}", stack.http, ids[0])).await.unwrap().json().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("a.mp4");
    std::fs::write(&video, reqwest::get(result["video_url"].as_str().unwrap()).await.unwrap().bytes().await.unwrap())
        .unwrap();
    let (vcodec, w, h, acodec, _) = harness::ffprobe(&video);
    assert_eq!((vcodec.as_str(), w, h, acodec.as_str()), ("h264", 1080, 1920, "aac"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_time_limit_is_stopped_with_a_clear_error() {
    let stack = Stack::start(Options {
        workers: 1,
        env: vec![("TAYORI_JOB_TIMEOUT_SECS".into(), "1".into())],
        ..Default::default()
    })
    .await;
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    let long = "これは時間制限を確かめるための長いメッセージです。".repeat(8);
    let (status, body) = harness::submit(
        &stack,
        photo,
        "a.png",
        &[("message", long.as_str()), ("voice_profile_id", "ja_mei_female"), ("bgm_id", "celebration_elegant")],
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["task_id"].as_str().unwrap();
    let done = harness::wait_done(&stack, id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "FAILURE", "{done}");
    assert_eq!(done["error"]["code"], "job-timeout", "{done}");
    assert!(done["error"]["message"].as_str().unwrap().contains("1 seconds"), "{done}");
    let r = reqwest::get(format!("{}/api/video/result/{id}", stack.http)).await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"]["code"], "job-timeout");
    // Its tools were killed and its scratch directory removed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let work = stack.work_dir(0);
    let out = std::process::Command::new("pgrep").arg("-f").arg(work.as_os_str()).output().unwrap();
    assert!(
        out.stdout.is_empty(),
        "processes still running in {}: {}",
        work.display(),
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_job_in_hand_finish_and_takes_no_new_one() {
    let mut stack = Stack::start(Options { workers: 1, ..Default::default() }).await;
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    let fields = [
        ("message", "最後まで仕上げてから止まります。"),
        ("voice_profile_id", "ja_mei_female"),
        ("bgm_id", "celebration_upbeat"),
    ];
    let (status, body) = harness::submit(&stack, photo.clone(), "a.png", &fields).await;
    assert_eq!(status, 202, "{body}");
    let first = body["task_id"].as_str().unwrap().to_owned();
    harness::wait_event(&stack, &first, Duration::from_secs(30), |e| e["step_index"].as_u64() >= Some(2)).await;
    stack.terminate_worker(0);
    let (status, body) = harness::submit(&stack, photo, "b.png", &fields).await;
    assert_eq!(status, 202, "{body}");
    let second = body["task_id"].as_str().unwrap().to_owned();

    let done = harness::wait_done(&stack, &first, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    let exit = stack.wait_worker_exit(0, Duration::from_secs(30)).await.expect("the worker exits after its job");
    assert!(exit.success(), "{exit:?}");
    let status: serde_json::Value =
        reqwest::get(format!("{}/api/video/status/{second}", stack.http)).await.unwrap().json().await.unwrap();
    assert_eq!(status["status"], "PENDING", "a stopping worker takes no new job: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_holds_a_session_key_with_a_ttl_while_connected() {
    use futures::{SinkExt, StreamExt};
    use redis::AsyncCommands;
    use tokio_tungstenite::tungstenite::Message;
    // No worker: the job stays queued while we watch.
    let stack = Stack::start(Options { workers: 0, ..Default::default() }).await;
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    let (status, body) =
        harness::submit(&stack, photo, "a.png", &[("message", "hello"), ("voice_profile_id", "en_slt_female")]).await;
    assert_eq!(status, 202, "{body}");
    let id = body["task_id"].as_str().unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(stack.ws_url(id)).await.unwrap();
    let first = ws.next().await.unwrap().unwrap();
    let ev: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!((ev["status"].as_str(), ev["current_step"].as_str()), (Some("PENDING"), Some("queued")));
    let mut redis = stack.redis().await;
    let keys: Vec<String> = redis.keys("ws:session:*").await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let session: serde_json::Value = serde_json::from_str(&redis.get::<_, String>(&keys[0]).await.unwrap()).unwrap();
    assert_eq!(session["task_id"], id);
    let _: () = redis.expire(&keys[0], 100).await.unwrap();
    ws.send(Message::Ping(Default::default())).await.unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let ttl: i64 = redis.ttl(&keys[0]).await.unwrap();
        if ttl > 590 {
            assert!(ttl <= 600);
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "a ping did not refresh the session (ttl {ttl})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ws.close(None).await.unwrap();
    let t0 = std::time::Instant::now();
    while redis.exists::<_, bool>(&keys[0]).await.unwrap() {
        assert!(t0.elapsed() < Duration::from_secs(5), "session key kept after close");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_without_a_person_fails_once_with_a_clear_error() {
    let stack = Stack::start(Options { workers: 1, ..Default::default() }).await;
    let photo = std::fs::read(harness::fixture("coffee.png")).unwrap();
    let (status, body) = harness::submit(
        &stack,
        photo,
        "coffee.png",
        &[("message", "Hello there."), ("voice_profile_id", "en_slt_female")],
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["task_id"].as_str().unwrap();
    let done = harness::wait_done(&stack, id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "FAILURE", "{done}");
    assert_eq!(done["error"]["code"], "no-person", "{done}");
    assert_eq!(done["error"]["retryable"], false, "{done}");
    assert_eq!(done["attempts"], 1, "not retried: {done}");
    let failed: Vec<_> =
        done["pipeline_metrics"].as_array().unwrap().iter().filter(|m| m["success"] == false).collect();
    assert_eq!(failed.len(), 1, "{done}");
    assert_eq!(failed[0]["stage"], "detect_person");
    let (events, _) = harness::follow(&stack, id, Duration::from_secs(10)).await;
    let last = events.last().unwrap();
    assert_eq!(last["status"], "FAILURE");
    assert!(last["message"].as_str().unwrap().contains("No person"), "{last}");
    // A person index the photo does not have is refused the same way.
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    let (status, body) = harness::submit(
        &stack,
        photo,
        "a.png",
        &[("message", "Hello."), ("voice_profile_id", "en_slt_female"), ("person_index", "3")],
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let done = harness::wait_done(&stack, body["task_id"].as_str().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(done["error"]["code"], "person-not-found", "{done}");
}

/// When `step` started, by its progress event.
fn started_at(events: &[serde_json::Value], step: &str) -> chrono::DateTime<chrono::FixedOffset> {
    let e = events.iter().find(|e| e["current_step"] == step).unwrap_or_else(|| panic!("no {step} event"));
    chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).unwrap()
}

/// Stage pools: one worker serves only the image stage, the other voice and
/// render. The job is handed between them through Redis, the image and voice
/// stages overlap in time, and the viewer sees one ordered stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_pools_share_a_job_and_run_image_and_voice_at_once() {
    let stack = Stack::start(Options {
        workers: 2,
        stages: vec!["image".into(), "voice,render".into()],
        env: vec![("TAYORI_SEGMENTATION_MODEL".into(), "isnet".into())],
        ..Default::default()
    })
    .await;
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    let (status, body) = harness::submit(
        &stack,
        photo,
        "a.png",
        &[
            ("message", "Happy birthday! I hope this year brings you everything you wish for."),
            ("voice_profile_id", "en_joe_male"),
            ("bgm_id", "celebration_gentle"),
            ("resolution", "512x910"),
        ],
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["task_id"].as_str().unwrap().to_owned();
    let (events, close) = harness::follow(&stack, &id, Duration::from_secs(120)).await;
    assert_eq!(close, Some(1000), "{events:#?}\n{}", stack.logs());
    assert_eq!(events.last().unwrap()["status"], "SUCCESS", "{events:#?}");
    harness::assert_seq_contiguous(&events, "one ordered stream");
    let pct: Vec<u64> = events.iter().map(|e| e["percentage"].as_u64().unwrap()).collect();
    assert!(pct.windows(2).all(|w| w[0] <= w[1]), "percentages never go back: {pct:?}");

    // Who did what: each worker's log names only its own stages.
    let done = |i: usize, stage: &str| {
        stack.worker_log_of(i).lines().any(|l| l.contains("stage done") && l.contains(&format!("\"{stage}\"")))
    };
    assert!(done(0, "image") && !done(0, "voice"), "worker 0 serves the image stage only\n{}", stack.logs());
    assert!(done(1, "voice") && !done(1, "image"), "worker 1 serves voice (and render)");
    assert!(stack.worker_log_of(1).contains("job succeeded"), "worker 1 rendered");

    // At the same time: the voice stage started before the image stage's last step.
    let at = |step: &str| started_at(&events, step);
    assert!(at("synthesize_voice") < at("prepare_image"), "voice started while the image stage ran");
    assert!(at("render_and_upload") > at("prepare_image") && at("render_and_upload") > at("mix_bgm"));
    let status: serde_json::Value =
        reqwest::get(format!("{}/api/video/status/{id}", stack.http)).await.unwrap().json().await.unwrap();
    let stages: Vec<&str> =
        status["result"]["pipeline_metrics"].as_array().unwrap().iter().map(|m| m["stage"].as_str().unwrap()).collect();
    let mut sorted = stages.clone();
    sorted.sort();
    assert_eq!(sorted.len(), 8, "{stages:?}");
}

/// The render starts once the picture and the speech are ready and encodes
/// the picture while the music is mixed (issue 15): with a slow voice
/// (Kokoro) and a quick cut-out, the render step starts before the mix
/// step ends, and the video still has the whole mix as its sound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_render_encodes_the_picture_while_the_music_is_mixed() {
    let env = vec![("TAYORI_SEGMENTATION_MODEL".into(), "u2netp".into())];
    let stack = Stack::start(Options { workers: 1, env, ..Default::default() }).await;
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    let fields = [
        ("message", "お誕生日おめでとうございます。素敵な一年になりますように。"),
        ("voice_profile_id", "ja_alpha_female"),
        ("bgm_id", "celebration_gentle"),
        ("resolution", "512x910"),
    ];
    let (status, body) = harness::submit(&stack, photo, "a.png", &fields).await;
    assert_eq!(status, 202, "{body}");
    let id = body["task_id"].as_str().unwrap().to_owned();
    let (events, close) = harness::follow(&stack, &id, Duration::from_secs(120)).await;
    assert_eq!(close, Some(1000), "{events:#?}");
    assert_eq!(events.last().unwrap()["status"], "SUCCESS", "{events:#?}\n{}", stack.logs());
    let at = |step: &str| started_at(&events, step);
    let status: serde_json::Value =
        reqwest::get(format!("{}/api/video/status/{id}", stack.http)).await.unwrap().json().await.unwrap();
    let metrics = status["result"]["pipeline_metrics"].as_array().unwrap();
    let mix_ms = metrics.iter().find(|m| m["stage"] == "mix_bgm").unwrap()["duration_ms"].as_i64().unwrap();
    let mix_end = at("mix_bgm") + chrono::Duration::milliseconds(mix_ms);
    let render = at("render_and_upload");
    println!("render started {} ms before the mix ended", (mix_end - render).num_milliseconds());
    assert!(render > at("prepare_image") && render > at("mix_bgm"), "the steps still start in order");
    assert!(render < mix_end, "the render started while the music was mixed: {events:#?}");
    // The sound is the whole mix: as long as the picture.
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("v.mp4");
    stack.storage().get_to_file(&format!("videos/{id}/final_video.mp4"), &video).await.unwrap();
    let probe = |stream: &str| -> f64 {
        let out = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", stream, "-show_entries", "stream=duration", "-of", "csv=p=0"])
            .arg(&video)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let (a, v) = (probe("a"), probe("v"));
    assert!((a - v).abs() < 0.1 && v > 4.0, "sound {a} s, picture {v} s");
}

/// Raw output of an ffmpeg command over `video` (the test's own judge).
fn ffmpeg_raw(video: &std::path::Path, args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-i"])
        .arg(video)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Where speech starts after at least `gap` seconds of silence, measured
/// on the audio itself: 10 ms frames, speech above -30 dB of the loudest
/// (soft consonants such as す included).
fn speech_onsets(samples: &[f32], rate: usize, gap: f64) -> Vec<f64> {
    let frame = rate / 100;
    let rms: Vec<f32> =
        samples.chunks(frame).map(|c| (c.iter().map(|x| x * x).sum::<f32>() / c.len() as f32).sqrt()).collect();
    let loud = rms.iter().cloned().fold(0.0, f32::max) * 0.03;
    let (mut onsets, mut quiet) = (Vec::new(), usize::MAX / 2);
    for (i, &r) in rms.iter().enumerate() {
        if r > loud {
            if quiet as f64 * 0.01 >= gap {
                onsets.push(i as f64 * 0.01);
            }
            quiet = 0;
        } else {
            quiet += 1;
        }
    }
    onsets
}

/// Item 4 of the voice issue: for a four-sentence message, each caption
/// appears within 0.1 s of when its sentence starts to be heard. Both are
/// measured on the rendered video: the onsets in its audio track, and the
/// frames where the caption band changes at once (a new caption).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caption_appears_when_its_sentence_is_heard() {
    let stack = Stack::start(Options::default()).await;
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    let message = "お誕生日おめでとう。いつも本当にありがとう。また一緒に旅行に行こうね。素敵な一年になりますように。";
    let fields = [
        ("message", message),
        ("voice_profile_id", "ja_alpha_female"),
        ("resolution", "512x910"),
        ("background", "#3366CC"),
    ];
    let (status, body) = harness::submit(&stack, photo, "a.png", &fields).await;
    assert_eq!(status, 202, "{body}");
    let id = body["task_id"].as_str().unwrap().to_owned();
    let done = harness::wait_done(&stack, &id, Duration::from_secs(240)).await;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    let video = stack.dir.path().join("captions.mp4");
    stack.storage().get_to_file(&shared::keys::objects::final_video(&id), &video).await.unwrap();

    let pcm = ffmpeg_raw(&video, &["-vn", "-ac", "1", "-ar", "16000", "-f", "f32le", "-"]);
    let samples: Vec<f32> = pcm.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let heard = speech_onsets(&samples, 16_000, 0.15);

    // The caption band (the lowest quarter), small and grey, frame by frame.
    let (w, h) = (64usize, 40usize);
    let band =
        ffmpeg_raw(&video, &["-an", "-vf", "crop=iw:ih/4:0:ih*3/4,scale=64:40,format=gray", "-f", "rawvideo", "-"]);
    let frames: Vec<&[u8]> = band.chunks_exact(w * h).collect();
    let diffs: Vec<f64> = frames
        .windows(2)
        .map(|p| p[0].iter().zip(p[1]).map(|(a, b)| (*a as f64 - *b as f64).abs()).sum::<f64>() / (w * h) as f64)
        .collect();
    let biggest = diffs.iter().cloned().fold(0.0, f64::max);
    // A new caption: a jump well above the zoom's slow drift.
    let shown: Vec<f64> = diffs
        .iter()
        .enumerate()
        .filter(|(i, d)| **d > biggest * 0.25 && (*i == 0 || diffs[i - 1] <= biggest * 0.25))
        .map(|(i, _)| (i + 1) as f64 / 30.0)
        .collect();
    println!("speech heard at {heard:.2?} s; captions change at {shown:.2?} s");
    assert_eq!(heard.len(), 4, "four sentences heard: {heard:?}");
    assert!(shown.len() >= 4, "captions: {shown:?}");
    let worst = heard.iter().zip(&shown).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    println!("worst caption offset {:.3} s", worst);
    assert!(worst <= 0.1, "captions {shown:?} vs speech {heard:?}: worst {worst:.3} s");
}
