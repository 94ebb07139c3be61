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
        ("empty message", photo.clone(), "a.png", with(ok_fields(), "message", ""), 400, "message-empty"),
        ("whitespace message", photo.clone(), "a.png", with(ok_fields(), "message", " \n\t "), 400, "message-empty"),
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
    let form = reqwest::multipart::Form::new().text("message", "hi").text("voice_profile_id", "ja_mei_female");
    let r =
        reqwest::Client::new().post(format!("{}/api/video/generate", stack.http)).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"]["code"], "image-missing");
    // Not multipart at all.
    let r = reqwest::Client::new().post(format!("{}/api/video/generate", stack.http)).body("{}").send().await.unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());

    // Nothing was queued or stored.
    let mut redis = stack.redis().await;
    let metas: Vec<String> = redis.keys("celery-task-meta-*").await.unwrap();
    assert!(metas.is_empty(), "{metas:?}");
    let queued: u64 = redis.llen(format!("{}:active", stack.queue)).await.unwrap();
    assert_eq!(queued, 0);
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
    assert_eq!(h["catalog"]["voice_profiles"]["count"], 4);
    assert_eq!(h["catalog"]["bgm_tracks"]["count"], 5);
    assert!(h["catalog"]["bgm_tracks"]["last_updated"].is_string());
    // The page is served and wired to the API.
    let page = reqwest::get(format!("{}/", stack.http)).await.unwrap().text().await.unwrap();
    assert!(page.contains("/api/video/generate") && page.contains("/ws/progress/") && page.contains("<video"));
}
