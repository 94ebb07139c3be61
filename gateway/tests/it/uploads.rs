//! Photos uploaded straight to S3 with a presigned POST policy, the people
//! found in them, and jobs made from them.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{self, Options, Stack};

use crate::harness::{people, policy, post_to_s3};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_uploaded_straight_to_s3_shows_its_people_and_becomes_a_video() {
    let stack = Stack::start(Options { workers: 1, ..Default::default() }).await;
    let storage = stack.storage();
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();

    let (status, p) = policy(&stack, "image/png").await;
    assert_eq!(status, 201, "{p}");
    let upload_id = p["upload_id"].as_str().unwrap().to_owned();
    assert_eq!(p["max_bytes"], 10 * 1024 * 1024);
    assert!(p["url"].as_str().unwrap().starts_with(&stack.s3_endpoint), "{p}");
    // Nothing is there before the upload.
    let (status, body) = people(&stack, &upload_id).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "upload-missing");

    // The S3 endpoint enforces the policy: the size bound and the type.
    let big = post_to_s3(&p, vec![0u8; 10 * 1024 * 1024 + 1], "image/png").await;
    assert!(big.is_client_error(), "10 MB + 1 byte through the policy: {big}");
    let wrong = post_to_s3(&p, photo.clone(), "image/jpeg").await;
    assert!(wrong.is_client_error(), "a type other than the declared one: {wrong}");
    let key = format!("images/uploads/{upload_id}/original.png");
    assert_eq!(storage.head(&key).await.unwrap(), None, "refused uploads store nothing");

    let ok = post_to_s3(&p, photo.clone(), "image/png").await;
    assert!(ok.is_success(), "{ok}");
    assert_eq!(storage.head(&key).await.unwrap(), Some(photo.len() as u64));

    let (status, found) = people(&stack, &upload_id).await;
    assert_eq!(status, 200, "{found}\n{}", stack.logs());
    let list = found["people"].as_array().unwrap();
    assert_eq!(list.len(), 1, "the astronaut photo shows one person: {found}");
    assert_eq!(found["default_index"], 0);
    let face = list[0]["face"].as_array().unwrap();
    assert!(face[2].as_u64().unwrap() > 50, "a face box of some size: {found}");
    let preview = reqwest::get(list[0]["preview_url"].as_str().unwrap()).await.unwrap();
    assert_eq!(preview.status(), 200);
    let bytes = preview.bytes().await.unwrap();
    assert_eq!(&bytes[..3], &[0xFF, 0xD8, 0xFF], "the preview is a JPEG");
    let size = imagesize::blob_size(&bytes).unwrap();
    assert!(size.width <= 256 && size.width > 64, "{size:?}");

    // A job from the upload, without sending the photo again.
    let form = reqwest::multipart::Form::new()
        .text("upload_id", upload_id.clone())
        .text("message", "Hello from an upload.")
        .text("voice_profile_id", "en_joe_male")
        .text("resolution", "512x910")
        .text("person_index", "0");
    let r =
        reqwest::Client::new().post(format!("{}/api/video/generate", stack.http)).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    let task_id = body["task_id"].as_str().unwrap().to_owned();
    let done = harness::wait_done(&stack, &task_id, Duration::from_secs(180)).await;
    assert_eq!(done["status"], "SUCCESS", "{done}\n{}", stack.logs());
    assert!(storage.head(&format!("videos/{task_id}/final_video.mp4")).await.unwrap().unwrap() > 10_000);

    // Both the photo and an upload id: refused.
    let form = reqwest::multipart::Form::new()
        .part("image", reqwest::multipart::Part::bytes(photo).file_name("a.png"))
        .text("upload_id", upload_id)
        .text("message", "x")
        .text("voice_profile_id", "en_joe_male");
    let r =
        reqwest::Client::new().post(format!("{}/api/video/generate", stack.http)).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_that_are_not_photos_are_refused_and_removed() {
    let stack = Stack::start(Options { workers: 1, ..Default::default() }).await;
    let storage = stack.storage();

    let (status, body) = policy(&stack, "text/plain").await;
    assert_eq!(status, 415, "{body}");
    assert_eq!(body["error"]["code"], "unsupported-image-type");
    let (status, body) = policy(&stack, "").await;
    assert_eq!(status, 415, "{body}");

    // Text declared as a JPEG gets into S3 (the policy only knows the
    // declared type) but is refused, and deleted, when it is used.
    let (_, p) = policy(&stack, "image/jpeg").await;
    let id = p["upload_id"].as_str().unwrap().to_owned();
    assert!(post_to_s3(&p, b"hello, I am not a photo".to_vec(), "image/jpeg").await.is_success());
    let key = format!("images/uploads/{id}/original.jpg");
    assert!(storage.head(&key).await.unwrap().is_some());
    let (status, body) = people(&stack, &id).await;
    assert_eq!(status, 415, "{body}");
    assert_eq!(body["error"]["code"], "unsupported-image-type");
    assert_eq!(storage.head(&key).await.unwrap(), None, "the refused upload is deleted");

    // A photo without a person: 422 no-person, in words.
    let (_, p) = policy(&stack, "image/png").await;
    let id = p["upload_id"].as_str().unwrap().to_owned();
    let coffee = std::fs::read(harness::fixture("coffee.png")).unwrap();
    assert!(post_to_s3(&p, coffee, "image/png").await.is_success());
    let (status, body) = people(&stack, &id).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "no-person");

    // Unknown and malformed upload ids.
    let (status, body) = people(&stack, &uuid::Uuid::new_v4().to_string()).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "upload-not-found");
    let (status, body) = people(&stack, "..%2F..%2Fetc").await;
    assert_eq!(status, 400, "{body}");
    let form = reqwest::multipart::Form::new()
        .text("upload_id", uuid::Uuid::new_v4().to_string())
        .text("message", "x")
        .text("voice_profile_id", "en_joe_male");
    let r =
        reqwest::Client::new().post(format!("{}/api/video/generate", stack.http)).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_policies_have_their_own_rate_limit() {
    // One video a minute per client, so four upload policies a minute.
    let env = vec![("TAYORI_RATE_LIMIT_PER_MIN".to_owned(), "1".to_owned())];
    let stack = Stack::start(Options { workers: 0, env, ..Default::default() }).await;
    for i in 0..4 {
        let (status, body) = policy(&stack, "image/png").await;
        assert_eq!(status, 201, "policy {i}: {body}");
    }
    let r =
        reqwest::Client::new().post(format!("{}/api/uploads?content_type=image/png", stack.http)).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate-limited");
    assert!(body["error"]["message"].as_str().unwrap().contains("uploads"), "{body}");
    // Finding people has its own allowance (tested with real uploads in
    // trust.rs); asking about an upload that does not exist costs nothing.
    let id = uuid::Uuid::new_v4().to_string();
    for _ in 0..6 {
        assert_eq!(people(&stack, &id).await.0, 404);
    }
    // The uploads did not use up the video allowance.
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    let (status, body) =
        harness::submit(&stack, photo, "a.png", &[("message", "x"), ("voice_profile_id", "en_joe_male")]).await;
    assert_eq!(status, 202, "{body}");
}

/// An upload whose bytes are all carriage returns (seen as a flaky browser
/// test with a real PNG): every chunk the server reads then ends in what
/// could be the start of the form's closing boundary, and s3s buffered the
/// next chunk whole behind it, refusing more than 64 KiB with a 400. The
/// endpoint now hands s3s small chunks, so the upload is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_of_carriage_returns_is_stored_whole() {
    let stack = Stack::start(Options { workers: 0, ..Default::default() }).await;
    let storage = stack.storage();
    for _ in 0..3 {
        let (status, p) = policy(&stack, "image/png").await;
        assert_eq!(status, 201, "{p}");
        let id = p["upload_id"].as_str().unwrap().to_owned();
        let body = vec![b'\r'; 4 * 1024 * 1024];
        let status = post_to_s3(&p, body.clone(), "image/png").await;
        assert!(status.is_success(), "{status}\n{}", stack.logs());
        let key = format!("images/uploads/{id}/original.png");
        assert_eq!(storage.head(&key).await.unwrap(), Some(body.len() as u64));
    }
}
