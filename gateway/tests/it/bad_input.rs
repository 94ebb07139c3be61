use redis::AsyncCommands;

use crate::harness::{self, Options, Stack};

fn ok_fields<'a>() -> Vec<(&'a str, &'a str)> {
    vec![("message", "こんにちは"), ("voice_profile_id", "ja_mei_female"), ("bgm_id", "celebration_upbeat")]
}

fn with<'a>(mut fields: Vec<(&'a str, &'a str)>, key: &'a str, value: &'a str) -> Vec<(&'a str, &'a str)> {
    fields.retain(|(k, _)| *k != key);
    fields.push((key, value));
    fields
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_a_clear_4xx_and_leave_nothing_behind() {
    let stack = Stack::start(Options { workers: 1, ..Default::default() }).await;
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    let mut big = photo.clone();
    big.resize(11 * 1024 * 1024, 0);
    let long = "あ".repeat(501);
    // A tiny PNG whose header declares 30,000 x 30,000 pixels.
    let mut bomb = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    bomb.extend_from_slice(&30000u32.to_be_bytes());
    bomb.extend_from_slice(&30000u32.to_be_bytes());
    bomb.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    // (what, image bytes, file name, form fields, expected status, expected code)
    type Case<'a> = (&'a str, Vec<u8>, &'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "text file named .jpg",
            b"this is not a photo at all".to_vec(),
            "photo.jpg",
            ok_fields(),
            415,
            "unsupported-image-type",
        ),
        ("11 MB image", big, "big.png", ok_fields(), 413, "image-too-large"),
        ("truncated PNG", photo[..photo.len() - 1000].to_vec(), "a.png", ok_fields(), 422, "image-truncated"),
        (
            "PNG + HTML polyglot",
            [photo.as_slice(), b"<html><script>alert(document.cookie)</script></html>"].concat(),
            "a.png",
            ok_fields(),
            422,
            "image-extra-data",
        ),
        (
            "decompression bomb (30000x30000 PNG header)",
            bomb,
            "bomb.png",
            ok_fields(),
            422,
            "image-dimensions-too-large",
        ),
        ("empty message", photo.clone(), "a.png", with(ok_fields(), "message", ""), 400, "message-empty"),
        ("whitespace message", photo.clone(), "a.png", with(ok_fields(), "message", " \n\t "), 400, "message-empty"),
        (
            "control characters only",
            photo.clone(),
            "a.png",
            with(ok_fields(), "message", "\u{7}\u{1b}\u{0}\u{8}\u{7f}"),
            400,
            "message-empty",
        ),
        ("501-character message", photo.clone(), "a.png", with(ok_fields(), "message", &long), 400, "message-too-long"),
        (
            "unknown voice",
            photo.clone(),
            "a.png",
            with(ok_fields(), "voice_profile_id", "nobody"),
            400,
            "unknown-voice",
        ),
        ("unknown track", photo.clone(), "a.png", with(ok_fields(), "bgm_id", "nothing"), 400, "unknown-bgm"),
        (
            "bad resolution",
            photo.clone(),
            "a.png",
            with(ok_fields(), "resolution", "100x100"),
            400,
            "invalid-resolution",
        ),
        (
            "Japanese message, English voice",
            photo.clone(),
            "a.png",
            with(ok_fields(), "voice_profile_id", "en_joe_male"),
            400,
            "voice-language-mismatch",
        ),
        (
            "English message, Japanese voice",
            photo.clone(),
            "a.png",
            with(ok_fields(), "message", "Happy birthday, and all the best!"),
            400,
            "voice-language-mismatch",
        ),
        (
            "repeated field",
            photo.clone(),
            "a.png",
            {
                let mut f = ok_fields();
                f.push(("message", "again"));
                f
            },
            400,
            "duplicate-field",
        ),
    ];
    for (what, image, name, fields, status, code) in cases {
        let (got, body) = harness::submit(&stack, image, name, &fields).await;
        assert_eq!(got.as_u16(), status, "{what}: {body}");
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {body}");
    }
    // A form without a photo.
    let form = reqwest::multipart::Form::new().text("message", "こんにちは").text("voice_profile_id", "ja_mei_female");
    let r =
        reqwest::Client::new().post(format!("{}/api/video/generate", stack.http)).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"]["code"], "image-missing");
    // Not multipart at all: JSON (well-formed or not), a bare body, a
    // multipart type without its boundary, on every upload endpoint.
    let http = reqwest::Client::new();
    for path in ["/api/video/generate", "/api/voice-clone/profiles", "/api/bgm/tracks"] {
        for (ctype, body) in [
            ("application/json", "{\"message\": \"hi\", "),
            ("application/json", "{\"message\": \"hi\"}"),
            ("text/plain", "hello"),
            ("multipart/form-data", "--x\r\n"),
        ] {
            let r = http
                .post(format!("{}{path}", stack.http))
                .header("content-type", ctype)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 415, "{path} {ctype}");
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "multipart-required", "{path} {ctype}: {body}");
        }
    }

    // Nothing was queued or stored.
    let mut redis = stack.redis().await;
    let metas: Vec<String> = redis.keys("celery-task-meta-*").await.unwrap();
    assert!(metas.is_empty(), "{metas:?}");
    let queued: u64 = redis.hlen(shared::queue::Keys::new(&stack.queue).data).await.unwrap();
    assert_eq!(queued, 0, "no job data in the queue");
    let objects = stack.storage().list("").await.unwrap();
    assert!(objects.is_empty(), "{:?}", objects.iter().map(|o| &o.key).collect::<Vec<_>>());

    // Unknown and malformed ids.
    let id = uuid::Uuid::new_v4();
    for path in [format!("/api/video/status/{id}"), format!("/api/video/result/{id}")] {
        let r = reqwest::get(format!("{}{path}", stack.http)).await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"]["code"], "task-not-found");
    }
    let r = reqwest::get(format!("{}/api/video/status/..%2f..%2fetc", stack.http)).await.unwrap();
    assert_eq!(r.status(), 400);
    // A WebSocket for an unknown job is closed with a reason.
    let (events, close) = harness::follow(&stack, &id.to_string(), std::time::Duration::from_secs(5)).await;
    assert!(events.is_empty());
    assert_eq!(close, Some(4404));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_redis_s3_and_the_catalog() {
    let stack = Stack::start(Options { workers: 0, ..Default::default() }).await;
    let r = reqwest::get(format!("{}/health", stack.http)).await.unwrap();
    assert_eq!(r.status(), 200);
    let h: serde_json::Value = r.json().await.unwrap();
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["redis"]["status"], "healthy");
    assert_eq!(h["s3"]["status"], "healthy");
    assert_eq!(h["catalog"]["voice_profiles"]["count"], 9);
    assert_eq!(h["catalog"]["bgm_tracks"]["count"], 5);
    assert!(h["catalog"]["bgm_tracks"]["last_updated"].is_string());
    let r = reqwest::get(format!("{}/ready", stack.http)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["ready"], true);
    // The page is served and wired to the API.
    let page = reqwest::get(format!("{}/", stack.http)).await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        csp.contains("script-src 'self';") && csp.contains(&format!("connect-src 'self' {};", stack.s3_endpoint)),
        "{csp}"
    );
    let page = page.text().await.unwrap();
    assert!(page.contains("<video") && page.contains("/static/app.js"), "{page}");
    let js = reqwest::get(format!("{}/static/app.js", stack.http)).await.unwrap();
    assert_eq!(js.headers()["content-type"], "text/javascript; charset=utf-8");
    let js = js.text().await.unwrap();
    assert!(js.contains("/api/video/generate") && js.contains("/ws/progress/") && js.contains("/api/uploads"));
}

/// Send a multipart upload whose photo is `total` bytes of zeros straight
/// over TCP (declared with Content-Length, or chunked), reading the answer
/// while sending. Returns the status, the bytes sent when it came, and when.
async fn huge_upload(stack: &Stack, total: u64, chunked: bool) -> (Option<u16>, u64, std::time::Duration) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = stack.http.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let boundary = "tayoriBOUNDARY";
    let preamble = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\nContent-Type: image/png\r\n\r\n"
    );
    let mut head = format!(
        "POST /api/video/generate HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
    );
    if chunked {
        head += "Transfer-Encoding: chunked\r\n\r\n";
    } else {
        head += &format!("Content-Length: {}\r\n\r\n", preamble.len() as u64 + total);
    }
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let t0 = std::time::Instant::now();
    let writer = tokio::spawn(async move {
        let frame = |data: &[u8]| -> Vec<u8> {
            if chunked {
                let mut f = format!("{:x}\r\n", data.len()).into_bytes();
                f.extend_from_slice(data);
                f.extend_from_slice(b"\r\n");
                f
            } else {
                data.to_vec()
            }
        };
        wr.write_all(head.as_bytes()).await?;
        wr.write_all(&frame(preamble.as_bytes())).await?;
        let chunk = frame(&vec![0u8; 256 * 1024]);
        let mut left = total;
        while left > 0 {
            wr.write_all(&chunk).await?;
            counter.fetch_add(256 * 1024, Ordering::Relaxed);
            left = left.saturating_sub(256 * 1024);
        }
        Ok::<(), std::io::Error>(())
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let status = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(120), rd.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                answer.extend_from_slice(&buf[..n]);
                if let Some(line) = answer.split(|b| *b == b'\n').next().filter(|_| answer.contains(&b'\n')) {
                    break std::str::from_utf8(line)
                        .ok()
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|s| s.parse().ok());
                }
            }
            _ => break None,
        }
    };
    let at = (sent.load(Ordering::Relaxed), t0.elapsed());
    writer.abort();
    (status, at.0, at.1)
}

/// A 1 GB upload (declared, and chunked) is answered 413 long before it is
/// sent, and the gateway's memory stays flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gb_upload_is_cut_off_early_with_flat_memory() {
    let stack = Stack::start(Options { workers: 0, ..Default::default() }).await;
    let (_, before) = stack.gateway_memory_kb();
    for chunked in [false, true] {
        let (status, sent, took) = huge_upload(&stack, 1 << 30, chunked).await;
        println!("1 GB upload (chunked: {chunked}): {status:?} after {} MB sent, {took:?}", sent >> 20);
        assert_eq!(status, Some(413), "chunked: {chunked}");
        assert!(sent < 64 << 20, "cut off early: {} MB sent", sent >> 20);
    }
    let (peak, _) = stack.gateway_memory_kb();
    println!("gateway resident memory: {} MB before, peak {} MB", before >> 10, peak >> 10);
    assert!(peak < before + (64 << 10), "memory flat: {before} KiB -> peak {peak} KiB");
    // Nothing stored.
    let objects = stack.storage().list("").await.unwrap();
    assert!(objects.is_empty());
}

/// CORS: only configured origins may call the API; the embedded S3 also
/// allows pages from its own host (the gateway's page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_only_configured_origins() {
    let env = vec![("TAYORI_CORS_ORIGINS".into(), "https://app.example".into())];
    let stack = Stack::start(Options { workers: 0, env, ..Default::default() }).await;
    let http = reqwest::Client::new();
    let preflight = |url: String, origin: &str| {
        http.request(reqwest::Method::OPTIONS, url)
            .header("origin", origin.to_owned())
            .header("access-control-request-method", "POST")
            .send()
    };
    let allowed =
        |r: &reqwest::Response| r.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned());
    let api = format!("{}/api/video/generate", stack.http);
    let r = preflight(api.clone(), "https://app.example").await.unwrap();
    assert_eq!(allowed(&r).as_deref(), Some("https://app.example"));
    let r = preflight(api.clone(), "https://evil.example").await.unwrap();
    assert_eq!(allowed(&r), None, "an unlisted origin gets no CORS grant");
    let r = http.get(format!("{}/health", stack.http)).header("origin", "https://evil.example").send().await.unwrap();
    assert_eq!(allowed(&r), None);
    // The embedded S3: the listed origin and the gateway's own page, no other.
    let s3 = format!("{}/tayori/images/x.png", stack.s3_endpoint);
    for (origin, ok) in [("https://app.example", true), (stack.http.as_str(), true), ("https://evil.example", false)] {
        let r = preflight(s3.clone(), origin).await.unwrap();
        assert_eq!(allowed(&r).is_some(), ok, "S3 preflight from {origin}: {:?}", r.headers());
    }

    // No origins configured: no CORS headers on the API at all.
    let plain = Stack::start(Options { workers: 0, ..Default::default() }).await;
    let r = preflight(format!("{}/api/video/generate", plain.http), "https://app.example").await.unwrap();
    assert_eq!(allowed(&r), None);
}

/// A message is checked against its voice's language: the 400 names the
/// message's language and offers every voice that speaks it; a Japanese
/// message with a name in Latin letters, digits and emoji is still one a
/// Japanese voice takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_of_another_language_is_refused_with_the_voices_that_fit() {
    let stack = Stack::start(Options { workers: 0, ..Default::default() }).await;
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    let cases = [
        ("お誕生日おめでとうございます。", "en_joe_male", "ja", "Japanese"),
        ("Happy birthday! See you soon.", "ja_alpha_female", "en", "English"),
        ("Happy birthday!", "ja_mei_female", "en", "English"),
    ];
    let (_, list) = harness::get(&stack, "/api/voice-clone/profiles").await;
    for (message, voice, language, name) in cases {
        let fields = [("message", message), ("voice_profile_id", voice)];
        let (status, body) = harness::submit(&stack, photo.clone(), "a.png", &fields).await;
        assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (400, Some("voice-language-mismatch")), "{body}");
        assert_eq!(body["error"]["language"], language, "{body}");
        let offered: Vec<&str> =
            body["error"]["voices"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let expected: Vec<&str> = list["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["language"] == language)
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(offered, expected, "{body}");
        let text = body["error"]["message"].as_str().unwrap();
        assert!(text.contains(name) && text.contains(expected[0]), "{text}");
    }
    // Mixed messages a Japanese voice can read are taken (no worker runs:
    // only the check is tested here).
    for message in ["Tomさん、3歳のお誕生日おめでとう🎉", "2026年もよろしく！ See you!"] {
        let fields = [("message", message), ("voice_profile_id", "ja_alpha_female")];
        let (status, body) = harness::submit(&stack, photo.clone(), "a.png", &fields).await;
        assert_eq!(status, 202, "{message:?}: {body}");
    }
    // Nothing to tell the language by (digits and emoji): any voice.
    let (status, body) =
        harness::submit(&stack, photo, "a.png", &[("message", "2026 🎉"), ("voice_profile_id", "en_joe_male")]).await;
    assert_eq!(status, 202, "{body}");
}
