use std::time::Duration;

use crate::harness::{Options, Stack};

/// Flip one hex digit of the signature.
fn tamper(url: &str) -> String {
    let i = url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let mut bytes = url.as_bytes().to_vec();
    bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
    String::from_utf8(bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_s3_checks_signatures_expiry_and_post_policies() {
    let stack = Stack::start(Options { workers: 0, ..Default::default() }).await;
    the_storage_rules_hold(&stack).await;
}

/// The embedded endpoint answers small objects without waiting on the
/// client's delayed ACK: with Nagle's algorithm on its sockets, a body
/// written after its head waited 40 ms for it, and the render's four small
/// fetches took 47 ms instead of 7. Forty GETs of a small object one after
/// the other: 24 ms each on average with the stall (about half of them 40 ms
/// or more), under 1 ms without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_objects_come_back_without_a_delayed_ack_stall() {
    let stack = Stack::start(Options { workers: 0, ..Default::default() }).await;
    let storage = stack.storage();
    let key = "voices/generated/t/speech_timing.json";
    storage.put_bytes(key, br#"{"sentences":[]}"#.to_vec(), "application/json").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.json");
    storage.get_to_file(key, &path).await.unwrap();
    // The stall's mark is a GET of 40 ms or more; a busy machine may slow
    // one or two for other reasons.
    let mut slow = 0;
    for _ in 0..40 {
        let t0 = std::time::Instant::now();
        storage.get_to_file(key, &path).await.unwrap();
        if t0.elapsed() >= Duration::from_millis(35) {
            slow += 1;
        }
    }
    println!("small GETs of the embedded endpoint taking 35 ms or more: {slow} of 40");
    assert!(slow <= 3, "{slow} of 40 GETs took 35 ms or more: the delayed-ACK stall is back");
}

/// What tayori needs of its S3, checked with the attacks themselves:
/// presigned GETs (tampered, unsigned, for another key, expired: refused),
/// a presigned PUT, a presigned POST within its policy's bounds (too big,
/// wrong type: refused, nothing stored), CORS for the gateway's page and
/// not for another origin, the lifecycle rules applied at start.
pub(crate) async fn the_storage_rules_hold(stack: &Stack) {
    let storage = stack.storage();
    storage.put_bytes("videos/t/final_video.mp4", b"not really a video".to_vec(), "video/mp4").await.unwrap();

    let (url, _) = storage.presign_get("videos/t/final_video.mp4", Duration::from_secs(3600)).await.unwrap();
    let ok = reqwest::get(&url).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.bytes().await.unwrap().as_ref(), b"not really a video");
    assert_eq!(reqwest::get(tamper(&url)).await.unwrap().status(), 403, "tampered signature");
    let unsigned = url.split('?').next().unwrap();
    assert_eq!(reqwest::get(unsigned).await.unwrap().status(), 403, "no signature: nothing is public");
    let other_key = url.replace("final_video.mp4", "thumbnail.jpg");
    assert_eq!(reqwest::get(&other_key).await.unwrap().status(), 403, "signature for another key");

    let (short, _) = storage.presign_get("videos/t/final_video.mp4", Duration::from_secs(2)).await.unwrap();
    assert_eq!(reqwest::get(&short).await.unwrap().status(), 200, "the short link works at first");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    // AWS and the embedded endpoint answer 403, Garage 400: refused either way.
    let expired = reqwest::get(&short).await.unwrap().status();
    assert!(expired == 403 || expired == 400, "expired link: {expired}");

    // Presigned PUT for one key.
    let put =
        storage.presign_put("images/uploads/t/original.jpg", "image/jpeg", Duration::from_secs(60)).await.unwrap();
    let r = reqwest::Client::new()
        .put(&put)
        .header("content-type", "image/jpeg")
        .body(vec![0xFFu8, 0xD8, 0xFF])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(storage.head("images/uploads/t/original.jpg").await.unwrap(), Some(3));

    // Presigned POST: the endpoint enforces the policy's size bound and type.
    let post = |body: Vec<u8>, content_type: &'static str| {
        let p = storage.presign_post(
            "images/uploads/p/original.jpg",
            "image/jpeg",
            10 * 1024 * 1024,
            Duration::from_secs(60),
        );
        async move {
            let mut form = reqwest::multipart::Form::new();
            for (k, v) in &p.fields {
                let v = if k == "Content-Type" { content_type.to_owned() } else { v.clone() };
                form = form.text(k.clone(), v);
            }
            form = form
                .part("file", reqwest::multipart::Part::bytes(body).file_name("x.jpg").mime_str(content_type).unwrap());
            // An endpoint may refuse an oversized upload by answering 4xx
            // or by closing the connection before the client has sent it
            // all (a broken pipe here): both are refusals.
            match reqwest::Client::new().post(&p.url).multipart(form).send().await {
                Ok(r) => Ok(r.status()),
                Err(e) if e.is_request() => Err(format!("{e:?}")),
                Err(e) => panic!("{e:?}"),
            }
        }
    };
    let small = post(vec![0xFF, 0xD8, 0xFF, 0xE0], "image/jpeg").await.unwrap();
    assert!(small.is_success(), "{small}");
    assert_eq!(storage.head("images/uploads/p/original.jpg").await.unwrap(), Some(4));
    let big = post(vec![0u8; 11 * 1024 * 1024], "image/jpeg").await;
    assert!(big.as_ref().map_or(true, |s| s.is_client_error()), "11 MB through a 10 MB policy: {big:?}");
    assert_eq!(
        storage.head("images/uploads/p/original.jpg").await.unwrap(),
        Some(4),
        "the refused upload stored nothing"
    );
    let wrong_type = post(vec![1, 2, 3], "text/plain").await.unwrap();
    assert!(wrong_type.is_client_error(), "a content type the policy does not allow: {wrong_type}");
    assert_eq!(
        storage.head("images/uploads/p/original.jpg").await.unwrap(),
        Some(4),
        "the refused upload stored nothing"
    );

    // The gateway's page may fetch links and POST uploads cross-origin
    // (CORS preflight); a page elsewhere may not.
    let preflight = |origin: String, method: &'static str, url: String| async move {
        let r = reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, &url)
            .header("Origin", origin)
            .header("Access-Control-Request-Method", method)
            .send()
            .await
            .unwrap();
        (r.status(), r.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned()))
    };
    let page = stack.http.as_str();
    let bucket_url = url.split("/videos/").next().unwrap().to_owned();
    for (method, url) in [("GET", url.clone()), ("POST", bucket_url)] {
        let (status, allowed) = preflight(page.to_owned(), method, url.clone()).await;
        assert!(status.is_success(), "{method} from the page: {status}");
        assert!(allowed.as_deref() == Some(page) || allowed.as_deref() == Some("*"), "{method}: {allowed:?}");
        // Refused: a preflight that fails (Garage: 403, with a generic
        // `*` that browsers ignore on a failed preflight) or allows nothing.
        let (status, allowed) = preflight("https://evil.example".into(), method, url).await;
        assert!(!status.is_success() || allowed.is_none(), "{method} from another site: {status} {allowed:?}");
    }

    // The lifecycle rules were applied at start.
    let rules = storage.get_lifecycle().await.unwrap();
    assert_eq!(rules.expiry_days("videos/x/final_video.mp4"), Some(30));
    assert_eq!(rules.expiry_days("images/uploads/x/original.jpg"), Some(7));
    assert_eq!(rules.expiry_days("voices/custom/x.wav"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_objects_are_swept_by_the_lifecycle_rules() {
    // A lifecycle "day" of one second and a sweep every second.
    let stack = Stack::start(Options {
        workers: 0,
        env: vec![("TAYORI_S3_DAY_SECS".into(), "1".into()), ("TAYORI_S3_SWEEP_SECS".into(), "1".into())],
        ..Default::default()
    })
    .await;
    let storage = stack.storage();
    storage.put_bytes("images/uploads/old/original.jpg", vec![1], "image/jpeg").await.unwrap();
    storage.put_bytes("voices/custom/keep.wav", vec![1], "audio/wav").await.unwrap();
    // images/uploads/ expires after 7 "days" = 7 s here.
    let t0 = std::time::Instant::now();
    while storage.head("images/uploads/old/original.jpg").await.unwrap().is_some() {
        assert!(t0.elapsed() < Duration::from_secs(30), "object not swept\n{}", stack.logs());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(t0.elapsed() >= Duration::from_secs(5), "swept too early: {:?}", t0.elapsed());
    assert!(storage.head("voices/custom/keep.wav").await.unwrap().is_some(), "no expiry rule for voices/custom/");
}
