//! Floods are refused with a clear 429/503 and `Retry-After`, before
//! anything is stored or queued. (Clients behind proxies, the other routes'
//! limits and slow bodies: `trust.rs`.)

use redis::AsyncCommands;

use crate::harness::{self, Options, Stack, queued};

async fn post(stack: &Stack, forwarded_for: Option<&str>) -> (u16, Option<String>, serde_json::Value) {
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    let form = reqwest::multipart::Form::new()
        .part("image", reqwest::multipart::Part::bytes(photo).file_name("a.png"))
        .text("message", "hello")
        .text("voice_profile_id", "en_slt_female");
    let mut req = reqwest::Client::new().post(format!("{}/api/video/generate", stack.http)).multipart(form);
    if let Some(ip) = forwarded_for {
        req = req.header("X-Forwarded-For", ip);
    }
    let r = req.send().await.unwrap();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    (r.status().as_u16(), retry, r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_address_gets_a_few_jobs_a_minute_then_429_with_retry_after() {
    let env = vec![("TAYORI_RATE_LIMIT_PER_MIN".into(), "3".into())];
    let stack = Stack::start(Options { workers: 0, env, ..Default::default() }).await;
    for _ in 0..3 {
        assert_eq!(post(&stack, None).await.0, 202);
    }
    // X-Forwarded-For is not trusted unless configured: still the same client.
    let (status, retry, body) = post(&stack, Some("203.0.113.9")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate-limited");
    let secs: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    assert_eq!(queued(&stack).await, 3, "the refused job was not queued");
    let mut redis = stack.redis().await;
    let ttl: i64 = redis.pttl("ratelimit:127.0.0.1").await.unwrap();
    assert!((1..=60_000).contains(&ttl), "ratelimit key ttl {ttl} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_busy_instead_of_growing() {
    let env = vec![("TAYORI_MAX_QUEUE_DEPTH".into(), "2".into())];
    let stack = Stack::start(Options { workers: 0, env, ..Default::default() }).await;
    assert_eq!(post(&stack, None).await.0, 202);
    assert_eq!(post(&stack, None).await.0, 202);
    let (status, retry, body) = post(&stack, None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "server-busy");
    assert_eq!(retry.as_deref(), Some("30"));
    assert_eq!(queued(&stack).await, 2);
}

/// A slowloris client (request head sent a byte at a time) is cut off after
/// the header timeout; a normal request on the same server still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = vec![("TAYORI_HEADER_READ_TIMEOUT_SECS".into(), "2".into())];
    let stack = Stack::start(Options { workers: 0, env, ..Default::default() }).await;
    let addr = stack.http.trim_start_matches("http://").to_owned();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    sock.write_all(b"POST /api/video/generate HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let t0 = std::time::Instant::now();
    let mut closed = false;
    for b in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        if sock.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(std::time::Duration::from_millis(1), sock.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    assert!(closed, "still connected after {secs:.1} s");
    assert!((1.5..6.0).contains(&secs), "cut off after {secs:.1} s (timeout 2 s)");
    let health = reqwest::get(format!("{}/health", stack.http)).await.unwrap();
    assert_eq!(health.status(), 200);
}
