//! `Idempotency-Key`: a submit sent again (a retry after a dropped
//! connection, a double click, a race of identical requests) makes one job
//! and gets the first answer back; the key cannot be reused for another
//! request; a request that failed gives its key up.

use std::time::{Duration, Instant};

use redis::AsyncCommands;

use crate::harness::{self, Options, Stack, queued};

const KEY: &str = "idempotency-key";

fn photo() -> Vec<u8> {
    std::fs::read(harness::fixture("astronaut.png")).unwrap()
}

/// Submit `message` with the astronaut photo (or `image`) and `key`.
async fn submit(
    stack: &Stack,
    key: Option<&str>,
    message: &str,
    image: Option<Vec<u8>>,
) -> (u16, Option<String>, serde_json::Value) {
    let form = reqwest::multipart::Form::new()
        .part("image", reqwest::multipart::Part::bytes(image.unwrap_or_else(photo)).file_name("a.png"))
        .text("message", message.to_owned())
        .text("voice_profile_id", "en_slt_female");
    let mut req = reqwest::Client::new().post(format!("{}/api/video/generate", stack.http)).multipart(form);
    if let Some(k) = key {
        req = req.header(KEY, k);
    }
    let r = req.send().await.unwrap();
    let replayed = r.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap().to_owned());
    (r.status().as_u16(), replayed, r.json().await.unwrap_or_default())
}

/// The same request with the same key: the first answer (task id and
/// cancel token) again, marked as a replay, no second job and nothing
/// counted against the client's allowance; the key with another message
/// or another photo: 422; an invalid key: 400. Redis holds neither the key
/// nor the cancel token in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_submit_answers_the_first_job_and_a_reused_key_is_refused() {
    let env = vec![("TAYORI_RATE_LIMIT_PER_MIN".into(), "2".into())];
    let stack = Stack::start(Options { workers: 0, env, ..Default::default() }).await;
    let key = uuid::Uuid::new_v4().to_string();
    let (status, replayed, first) = submit(&stack, Some(&key), "Happy birthday.", None).await;
    assert_eq!((status, replayed), (202, None), "{first}");
    let token = first["cancel_token"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let (status, replayed, again) = submit(&stack, Some(&key), "Happy birthday.", None).await;
        assert_eq!(status, 202, "{again}");
        assert_eq!(replayed.as_deref(), Some("true"));
        assert_eq!(again, first, "the same answer, cancel token included");
    }
    assert_eq!(queued(&stack).await, 1, "one job for four requests");

    // The same key for anything else is refused, without a job.
    let (status, _, body) = submit(&stack, Some(&key), "Happy birthday!", None).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "idempotency-key-reused");
    let mut other_photo = photo();
    other_photo.extend_from_slice(b"trailing bytes change the file");
    let (status, _, body) = submit(&stack, Some(&key), "Happy birthday.", Some(other_photo)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("idempotency-key-reused")), "{body}");
    for bad in ["", "has space", &"k".repeat(256)] {
        let (status, _, body) = submit(&stack, Some(bad), "Happy birthday.", None).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("idempotency-key-invalid")), "{bad:?}");
    }
    assert_eq!(queued(&stack).await, 1);

    // The replays were not counted: the allowance of 2 has one job left.
    let (status, _, body) = submit(&stack, Some(&uuid::Uuid::new_v4().to_string()), "Hello.", None).await;
    assert_eq!(status, 202, "{body}");
    let (status, _, body) = submit(&stack, None, "Hello again.", None).await;
    assert_eq!(status, 429, "{body}");

    // What Redis keeps: a hash for a name, the token sealed.
    let mut redis = stack.redis().await;
    let names: Vec<String> = redis.keys("idem:*").await.unwrap();
    assert_eq!(names.len(), 2, "{names:?}");
    for name in &names {
        assert!(!name.contains(&key), "{name}");
        let record: String = redis.get(name).await.unwrap();
        assert!(!record.contains(&token) && !record.contains(&key), "{record}");
        let ttl: i64 = redis.ttl(name).await.unwrap();
        assert!((86_000..=86_400).contains(&ttl), "an answered key is kept 24 h: {ttl} s");
    }
    // The replayed token is the job's own: it cancels the job.
    let id = first["task_id"].as_str().unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/api/video/{id}/cancel", stack.http))
        .header("x-cancel-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A submit's raw HTTP request with `key`.
fn raw_submit(key: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in [("message", message), ("voice_profile_id", "en_slt_female")] {
        body.extend_from_slice(
            format!("--BND\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    }
    body.extend_from_slice(
        b"--BND\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n",
    );
    body.extend_from_slice(&photo());
    body.extend_from_slice(b"\r\n--BND--\r\n");
    let head = format!(
        "POST /api/video/generate HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=BND\r\n\
         Content-Length: {}\r\nIdempotency-Key: {key}\r\n\r\n",
        body.len()
    );
    [head.into_bytes(), body].concat()
}

/// Retry `message` with `key` until it is answered (409 while the first
/// request is still handled); returns whether the answer was a replay.
async fn retry_until_answered(stack: &Stack, key: &str, message: &str) -> (bool, serde_json::Value) {
    let t0 = Instant::now();
    loop {
        let (status, replayed, answer) = submit(stack, Some(key), message, None).await;
        match status {
            202 => return (replayed.as_deref() == Some("true"), answer),
            409 => assert_eq!(answer["error"]["code"], "idempotency-request-in-flight"),
            _ => panic!("{status} {answer}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "still in flight after 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The connection drops before the client read the answer: once after the
/// job was queued (the retry is a replay of that job), once right after
/// the request was sent (the server may drop the request or finish it;
/// either way the retry gets one job). Identical requests racing each
/// other make one job too: each gets its answer or 409 with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_dropped_connection_and_a_race_make_one_job() {
    use tokio::io::AsyncWriteExt;
    let stack = Stack::start(Options { workers: 0, ..Default::default() }).await;
    let addr = stack.http.trim_start_matches("http://").to_owned();

    // Dropped once the job is queued, its answer unread.
    let key = uuid::Uuid::new_v4().to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    sock.write_all(&raw_submit(&key, "Happy birthday.")).await.unwrap();
    let t0 = Instant::now();
    while queued(&stack).await == 0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "the job was never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(sock);
    let (replayed, answer) = retry_until_answered(&stack, &key, "Happy birthday.").await;
    assert!(replayed, "the retry gets the job the dropped request made: {answer}");
    assert_eq!(queued(&stack).await, 1);
    let meta = harness::meta(&stack, answer["task_id"].as_str().unwrap()).await.unwrap();
    assert_eq!(meta["status"], "PENDING");

    // Dropped (both ways closed) right after the last byte was sent.
    let key = uuid::Uuid::new_v4().to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    sock.write_all(&raw_submit(&key, "Happy birthday!")).await.unwrap();
    sock.shutdown().await.unwrap();
    drop(sock);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (replayed, _) = retry_until_answered(&stack, &key, "Happy birthday!").await;
    eprintln!("a request closed right after sending was {}", if replayed { "finished" } else { "dropped" });
    assert_eq!(queued(&stack).await, 2, "one job for the two requests");

    // Eight identical requests at once.
    let key = uuid::Uuid::new_v4().to_string();
    let answers =
        futures::future::join_all((0..8).map(|_| submit(&stack, Some(&key), "Happy birthday to you.", None))).await;
    let mut ids = std::collections::BTreeSet::new();
    for (status, _, body) in &answers {
        match status {
            202 => {
                ids.insert(body["task_id"].as_str().unwrap().to_owned());
            }
            409 => assert_eq!(body["error"]["code"], "idempotency-request-in-flight", "{body}"),
            _ => panic!("{status} {body}"),
        }
    }
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    eprintln!("eight racing requests answered {statuses:?}");
    assert_eq!(ids.len(), 1, "{statuses:?} {ids:?}");
    assert_eq!(queued(&stack).await, 3, "one more job for eight requests");

    // An upload policy asked for and hung up on, twenty times: each retry
    // is answered at once (the claim never outlives its request), and
    // with the policy of the one upload the key made, if it made one.
    for _ in 0..20 {
        let key = uuid::Uuid::new_v4().to_string();
        let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /api/uploads?content_type=image/png HTTP/1.1\r\nHost: x\r\nIdempotency-Key: {key}\r\nContent-Length: 0\r\n\r\n"
        );
        sock.write_all(head.as_bytes()).await.unwrap();
        drop(sock);
        let t0 = Instant::now();
        let (replayed, first) = loop {
            let (status, replayed, body) = policy(&stack, &key, "image/png").await;
            match status {
                201 => break (replayed, body),
                409 => assert_eq!(body["error"]["code"], "idempotency-request-in-flight", "{body}"),
                _ => panic!("{status} {body}"),
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "the key stayed claimed after its client hung up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (status, _, again) = policy(&stack, &key, "image/png").await;
        assert_eq!(status, 201, "{again}");
        assert_eq!(again["upload_id"], first["upload_id"], "one upload per key (first replayed: {replayed})");
    }
}

/// Ask for an upload policy with `key`: status, whether it was a replay, body.
async fn policy(stack: &Stack, key: &str, content_type: &str) -> (u16, bool, serde_json::Value) {
    let url = format!("{}/api/uploads?content_type={content_type}", stack.http);
    let r = reqwest::Client::new().post(url).header(KEY, key).send().await.unwrap();
    let replayed = r.headers().get("idempotent-replayed").is_some();
    (r.status().as_u16(), replayed, r.json::<serde_json::Value>().await.unwrap())
}

/// A request that fails (here: an unknown voice) gives its key up: the
/// same key then works for the corrected request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_gives_its_key_up_and_upload_policies_are_idempotent_too() {
    let stack = Stack::start(Options { workers: 0, ..Default::default() }).await;
    let key = "retry-me-1";
    let form = || {
        reqwest::multipart::Form::new()
            .part("image", reqwest::multipart::Part::bytes(photo()).file_name("a.png"))
            .text("message", "Hello.")
            .text("voice_profile_id", "no_such_voice")
    };
    for _ in 0..2 {
        let r = reqwest::Client::new()
            .post(format!("{}/api/video/generate", stack.http))
            .header(KEY, key)
            .multipart(form())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "refused each time, never replayed or in flight");
    }
    let (status, replayed, body) = submit(&stack, Some(key), "Hello.", None).await;
    assert_eq!((status, replayed), (202, None), "{body}");

    // Upload policies: the same upload again, with a fresh policy.
    let (status, replayed, first) = policy(&stack, "upload-1", "image/png").await;
    assert_eq!((status, replayed), (201, false), "{first}");
    let (status, replayed, again) = policy(&stack, "upload-1", "image/png").await;
    assert_eq!((status, replayed), (201, true), "{again}");
    assert_eq!(again["upload_id"], first["upload_id"]);
    assert_eq!(again["fields"]["key"], first["fields"]["key"]);
    let (status, _, other) = policy(&stack, "upload-1", "image/jpeg").await;
    assert_eq!((status, other["error"]["code"].as_str()), (422, Some("idempotency-key-reused")), "{other}");
    // The replayed policy works: the photo goes up with it.
    let up = harness::post_to_s3(&again, photo(), "image/png").await;
    assert!(up.is_success(), "{up}");
}
