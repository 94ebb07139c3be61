//! Redis Cluster: the whole job path on three masters made of real
//! `redis-server` processes in cluster mode. Every key a command or a
//! script uses together shares a slot (a cluster refuses anything else with
//! CROSSSLOT), so each part of the path below would fail here if one did
//! not: submit (idempotent), queue, the stages, progress over a WebSocket,
//! the presigned result, a failure kept for the operator and retried, the
//! dashboard's overview, a cancel heard by the worker, a catalog task
//! answered through a blocking pop.

use std::time::{Duration, Instant};

use crate::admin::TOKEN;
use crate::harness::{self, Options, Stack, Topology};

const JOB: &[(&str, &str)] =
    &[("message", "Happy birthday to you."), ("voice_profile_id", "en_slt_female"), ("resolution", "512x910")];

async fn submit_keyed(stack: &Stack, key: &str) -> (u16, serde_json::Value) {
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    let mut form =
        reqwest::multipart::Form::new().part("image", reqwest::multipart::Part::bytes(photo).file_name("a.png"));
    for (k, v) in JOB {
        form = form.text(k.to_string(), v.to_string());
    }
    let r = reqwest::Client::new()
        .post(format!("{}/api/video/generate", stack.http))
        .header("idempotency-key", key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

async fn admin(stack: &Stack, path: &str) -> serde_json::Value {
    let (status, body) = crate::admin::get_admin(stack, path, Some(TOKEN)).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// `INFO` field `name` of the node on `port`.
fn info_field(port: u16, section: &str, name: &str) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let info: String = redis::cmd("INFO").arg(section).query(&mut client.get_connection().unwrap()).unwrap();
    info.lines().find_map(|l| l.strip_prefix(&format!("{name}:")).map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_job_path_runs_on_a_three_master_cluster() {
    let env = vec![("TAYORI_ADMIN_TOKEN".into(), TOKEN.into())];
    let stack =
        Stack::start(Options { workers: 1, env, own_data: true, topology: Topology::Cluster, ..Default::default() })
            .await;
    assert!(stack.redis_url.starts_with("redis+cluster://"), "{}", stack.redis_url);
    for &port in &stack.cluster_ports {
        assert_eq!(info_field(port, "cluster", "cluster_enabled").as_deref(), Some("1"));
        assert_eq!(info_field(port, "replication", "role").as_deref(), Some("master"));
    }
    let t0 = Instant::now();

    // Idempotent submits: the same key twice is one job.
    let key = uuid::Uuid::new_v4().to_string();
    let (status, first) = submit_keyed(&stack, &key).await;
    assert_eq!(status, 202, "{first}");
    let (status, again) = submit_keyed(&stack, &key).await;
    assert_eq!((status, &again), (202, &first), "a repeated submit answers the first job");
    let id = first["task_id"].as_str().unwrap().to_owned();
    let second = harness::submit_short(&stack).await;

    // Progress over a WebSocket, to the end.
    let (events, close) = harness::follow(&stack, &id, Duration::from_secs(180)).await;
    assert_eq!(close, Some(1000), "{events:?}\n{}", stack.logs());
    harness::assert_seq_contiguous(&events, "cluster job");
    assert_eq!(events.last().unwrap()["status"], "SUCCESS", "{events:?}\n{}", stack.logs());
    for task in [&id, &second] {
        let done = harness::wait_done(&stack, task, Duration::from_secs(180)).await;
        assert_eq!(done["status"], "SUCCESS", "{done}\n{}", stack.logs());
        let (code, result) = harness::get(&stack, &format!("/api/video/result/{task}")).await;
        assert_eq!(code, 200, "{result}");
        let video = reqwest::get(result["video_url"].as_str().unwrap()).await.unwrap();
        assert_eq!(video.status(), 200);
        assert!(video.bytes().await.unwrap().len() > 10_000, "a video");
    }

    // A failure, kept for the operator.
    let no_person = harness::submit_no_person(&stack, "Hello there.").await;
    let done = harness::wait_done(&stack, &no_person, Duration::from_secs(120)).await;
    assert_eq!(done["error"]["code"], "no-person", "{done}");
    let t = Instant::now();
    loop {
        let failed = admin(&stack, "/admin/api/failed").await;
        if failed["failed"].as_array().unwrap().iter().any(|f| f["task_id"] == no_person.as_str()) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "the failure is not listed: {failed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A cancel of a running job reaches its worker.
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    let long = "これはクラスタで取り消しを確かめるための長いメッセージです。".repeat(6);
    let (status, body) = harness::submit(
        &stack,
        photo,
        "a.png",
        &[("message", long.as_str()), ("voice_profile_id", "ja_mei_female"), ("resolution", "512x910")],
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let cancelled = body["task_id"].as_str().unwrap().to_owned();
    harness::wait_event(&stack, &cancelled, Duration::from_secs(60), |e| e["status"] == "STARTED").await;
    let r = reqwest::Client::new()
        .post(format!("{}/api/video/{cancelled}/cancel", stack.http))
        .json(&serde_json::json!({ "cancel_token": body["cancel_token"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let meta = harness::wait_meta_done(&stack, &cancelled, Duration::from_secs(30)).await;
    assert_eq!(meta["status"], "REVOKED", "{meta}");
    // The notice reached the worker (pub/sub on one node, published on
    // another): its stage stopped, without waiting for the job to end.
    let t = Instant::now();
    while !stack.worker_log().contains("job cancelled; its stage stopped") {
        assert!(t.elapsed() < Duration::from_secs(5), "the worker never heard of the cancel\n{}", stack.worker_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The operator mends the failed job's photo and retries it: the same
    // task id runs again to the end, and it leaves the failure list.
    let kept = admin(&stack, "/admin/api/failed").await;
    let entry = kept["failed"].as_array().unwrap().iter().find(|f| f["task_id"] == no_person.as_str()).unwrap().clone();
    let image_key = entry["job"]["image_key"].as_str().unwrap();
    let person = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    stack.storage().put_bytes(image_key, person, "image/png").await.unwrap();
    let t = Instant::now();
    let (status, body) = loop {
        let (status, body) = crate::admin::retry(&stack, &no_person).await;
        // Put off while a stage of the failed attempt is still stopping.
        if status != 409 || t.elapsed() > Duration::from_secs(20) {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, 202, "{body}");
    let done = harness::wait_done(&stack, &no_person, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "SUCCESS", "{done}\n{}", stack.logs());
    let kept = admin(&stack, "/admin/api/failed").await;
    assert!(kept["failed"].as_array().unwrap().iter().all(|f| f["task_id"] != no_person.as_str()), "{kept}");

    // A catalog task (a track measured by a worker, its answer taken by a
    // blocking pop).
    let mp3 = std::fs::read(stack.data_dir.join("bgm/system/celebration_energetic.mp3")).unwrap();
    let form = reqwest::multipart::Form::new()
        .text("name", "Cluster Song")
        .text("mood", "energetic")
        .part("file", reqwest::multipart::Part::bytes(mp3).file_name("song.mp3"));
    let r = reqwest::Client::new().post(format!("{}/api/bgm/tracks", stack.http)).multipart(form).send().await.unwrap();
    let status = r.status();
    let track: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{track}");
    assert!(track["bpm"].as_u64().is_some(), "{track}");

    // The dashboard's overview: the worker's heartbeat, the queues, counts
    // and step times.
    let o = admin(&stack, "/admin/api/overview").await;
    assert_eq!(o["workers"].as_array().unwrap().len(), 1, "{o}");
    assert!(o["jobs"]["succeeded"].as_u64().unwrap() >= 3, "{o}");
    assert!(o["jobs"]["failed"].as_u64().unwrap() >= 1, "{o}");
    assert!(o["videos_per_minute"]["last_minutes"].as_array().unwrap().iter().any(|n| n.as_u64() >= Some(1)), "{o}");

    // The work was spread over the cluster: every master holds keys and ran
    // scripts.
    for &port in &stack.cluster_ports {
        let keys = info_field(port, "keyspace", "db0").unwrap_or_default();
        assert!(keys.starts_with("keys=") && !keys.starts_with("keys=0,"), "node {port} holds no key: {keys}");
        let scripts = info_field(port, "commandstats", "cmdstat_evalsha").unwrap_or_default();
        assert!(scripts.starts_with("calls="), "node {port} ran no script");
        // No command was refused for spanning slots (the node counts every
        // error it answered, by its code).
        assert_eq!(info_field(port, "errorstats", "errorstat_CROSSSLOT"), None, "node {port}");
        eprintln!("CLUSTER node {port}: {keys}; evalsha {scripts}");
    }
    assert!(!stack.logs().contains("CROSSSLOT"), "{}", stack.logs());
    eprintln!("CLUSTER: whole path in {:.1} s", t0.elapsed().as_secs_f64());
}
