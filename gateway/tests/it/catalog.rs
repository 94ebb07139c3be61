use std::time::Duration;

use crate::harness::{Options, Stack, get};

async fn delete(stack: &Stack, path: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new().delete(format!("{}{path}", stack.http)).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_api_lists_filters_and_protects_system_entries() {
    let stack = Stack::start(Options { workers: 0, own_data: true, ..Default::default() }).await;
    let (s, all) = get(&stack, "/api/voice-clone/profiles").await;
    assert_eq!(s, 200);
    assert_eq!(all["count"], 9);
    let (_, ja) = get(&stack, "/api/voice-clone/profiles?language=ja").await;
    assert!(ja["profiles"].as_array().unwrap().iter().all(|p| p["language"] == "ja"));
    assert_eq!(ja["count"], 7);
    let (s, _) = get(&stack, "/api/voice-clone/profiles?language=fr").await;
    assert_eq!(s, 400);
    let (s, p) = get(&stack, "/api/voice-clone/profiles/ja_mei_female").await;
    assert_eq!(s, 200);
    for field in [
        "id",
        "name",
        "type",
        "language",
        "gender",
        "embedding_path",
        "reference_audio_path",
        "preview_url",
        "created_at",
    ] {
        assert!(p.get(field).is_some(), "profile lacks {field}: {p}");
    }
    assert_eq!(p["metadata"]["sample_rate"], 48000);
    let (_, warm) = get(&stack, "/api/bgm/tracks?mood=warm").await;
    assert_eq!(warm["count"], 1);
    assert_eq!(warm["tracks"][0]["id"], "celebration_gentle");
    let (_, user) = get(&stack, "/api/bgm/tracks?type=user").await;
    assert_eq!(user["count"], 0);
    assert_eq!(get(&stack, "/api/bgm/tracks?type=custom").await.0, 400);

    // System entries cannot be deleted.
    for path in ["/api/voice-clone/profiles/ja_mei_female", "/api/bgm/tracks/celebration_upbeat"] {
        let (s, body) = delete(&stack, path).await;
        assert_eq!(s, 403, "{path}: {body}");
        assert_eq!(body["error"]["code"], "system-entry-protected");
    }
    // Unknown and malformed ids.
    assert_eq!(get(&stack, "/api/bgm/tracks/nothing_here").await.0, 404);
    assert_eq!(delete(&stack, "/api/bgm/tracks/nothing_here").await.0, 404);
    for bad in ["..%2F..%2Fetc", "a%20b", "x%00"] {
        let (s, body) = get(&stack, &format!("/api/bgm/tracks/{bad}")).await;
        assert_eq!(s, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid-id");
    }

    // Unknown routes answer in the same JSON shape.
    let (s, body) = get(&stack, "/api/nothing").await;
    assert_eq!((s, body["error"]["code"].as_str()), (404, Some("no-such-endpoint")));

    // A user track (as an upload will make it): its file goes with it.
    let storage = stack.storage();
    storage.put_bytes("bgm/user/anon_t1.mp3", b"ID3 fake".to_vec(), "audio/mpeg").await.unwrap();
    let doc_path = stack.data_dir.join("bgm/bgm_metadata.json");
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&doc_path).unwrap()).unwrap();
    let mut t = doc["tracks"][0].clone();
    t["id"] = "t1".into();
    t["type"] = "user".into();
    t["file_path"] = "bgm/user/anon_t1.mp3".into();
    doc["tracks"].as_array_mut().unwrap().push(t);
    std::fs::write(&doc_path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    assert_eq!(get(&stack, "/api/bgm/tracks?type=user").await.1["count"], 1);
    assert_eq!(delete(&stack, "/api/bgm/tracks/t1").await.0, 204);
    assert_eq!(get(&stack, "/api/bgm/tracks/t1").await.0, 404);
    assert_eq!(storage.head("bgm/user/anon_t1.mp3").await.unwrap(), None, "the track's file is deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_catalog_is_reported_kept_read_only_and_restored_from_backup() {
    let stack = Stack::start(Options { workers: 0, own_data: true, ..Default::default() }).await;
    // Back up (local and S3).
    let out = stack.gateway_cli(&["backup"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let today = chrono::Utc::now().format("%Y%m%d").to_string();
    let storage = stack.storage();
    for name in ["voices_metadata.json", "bgm_metadata.json"] {
        assert!(stack.data_dir.join("backups").join(&today).join(name).is_file());
        assert!(storage.head(&format!("backups/metadata/{today}/{name}")).await.unwrap().is_some(), "{name} in S3");
    }

    // Someone breaks the file by hand.
    let path = stack.data_dir.join("bgm/bgm_metadata.json");
    std::fs::write(&path, b"{\"tracks\": [ {\"id\": ").unwrap();
    let (s, h) = get(&stack, "/health").await;
    assert_eq!(s, 503);
    assert_eq!(h["catalog"]["bgm_tracks"]["status"], "unhealthy");
    assert_eq!(h["catalog"]["bgm_tracks"]["problem"], "corrupt", "{h}");
    // The answer names no file; the detail is in the gateway's log.
    assert!(
        !h.to_string().contains("bgm_metadata.json") && !h.to_string().contains(&*stack.dir.path().to_string_lossy()),
        "{h}"
    );
    // Reads still work from the last good version; writes are refused.
    let (s, list) = get(&stack, "/api/bgm/tracks").await;
    assert_eq!(s, 200);
    assert_eq!(list["count"], 5);
    let (s, body) = delete(&stack, "/api/bgm/tracks/anything").await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["error"]["code"], "catalog-corrupt");
    assert_eq!(std::fs::read(&path).unwrap(), b"{\"tracks\": [ {\"id\": ", "the broken file is not overwritten");
    // A backup refuses to copy a broken file.
    assert!(!stack.gateway_cli(&["backup"]).status.success());

    // Restore: the newest backup; then a dated one that only S3 still has.
    let out = stack.gateway_cli(&["restore"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&today));
    let t0 = std::time::Instant::now();
    loop {
        let (s, h) = get(&stack, "/health").await;
        if s == 200 {
            assert_eq!(h["catalog"]["bgm_tracks"]["count"], 5);
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "still unhealthy after restore: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::remove_dir_all(stack.data_dir.join("backups")).unwrap();
    std::fs::write(&path, b"broken again").unwrap();
    let out = stack.gateway_cli(&["restore", "--date", &today]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(get(&stack, "/health").await.0, 200);
    let out = stack.gateway_cli(&["restore", "--date", "19990101"]);
    assert!(!out.status.success(), "restoring a date that has no backup fails");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_track_is_measured_previewed_and_deleted_with_its_files() {
    let stack = Stack::start(Options { workers: 1, own_data: true, ..Default::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    // A real piece of music in another format: 20 s of the 150 BPM track as Ogg Vorbis.
    let ogg = dir.path().join("song.ogg");
    let ok = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-i"])
        .arg(stack.data_dir.join("bgm/system/celebration_energetic.mp3"))
        .args(["-t", "20", "-c:a", "libvorbis"])
        .arg(&ogg)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let form = reqwest::multipart::Form::new()
        .text("name", "My Party Song")
        .text("mood", "energetic")
        .text("uploaded_by", "user123")
        .part("file", reqwest::multipart::Part::bytes(std::fs::read(&ogg).unwrap()).file_name("../../etc/passwd.ogg"));
    let r = reqwest::Client::new().post(format!("{}/api/bgm/tracks", stack.http)).multipart(form).send().await.unwrap();
    let status = r.status();
    let track: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{track}");
    let id = track["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("user_") && !id.contains('/'), "server-chosen id: {id}");
    assert_eq!(track["type"], "user");
    assert_eq!(track["file_path"], format!("bgm/user/user123_{id}.mp3"));
    let duration = track["duration_seconds"].as_f64().unwrap();
    // Made loop-ready: its last 2 s are crossfaded into its start.
    assert!((duration - 18.0).abs() < 0.3, "{track}");
    let bpm = track["bpm"].as_u64().unwrap();
    assert!([75, 150].iter().any(|b| (bpm as i64 - b).abs() <= 3), "150 BPM track measured as {bpm}");
    let lufs = track["metadata"]["loudness_lufs"].as_f64().unwrap();
    assert!((-40.0..-3.0).contains(&lufs), "{lufs}");
    assert_eq!(track["metadata"]["original_filename"], "../../etc/passwd.ogg", "kept as data only");
    let storage = stack.storage();
    assert!(storage.head(&format!("bgm/user/user123_{id}.mp3")).await.unwrap().is_some());
    assert!(storage.list("bgm/uploads/").await.unwrap().is_empty(), "the raw upload is removed");
    let (_, listed) = get(&stack, "/api/bgm/tracks?type=user").await;
    assert_eq!(listed["count"], 1);

    // A preview: 15 s, made once, served through a presigned redirect.
    let preview = dir.path().join("preview.mp3");
    let r = reqwest::get(format!("{}/api/bgm/tracks/{id}/preview", stack.http)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.url().as_str().contains("X-Amz-Signature="), "redirected to a presigned URL: {}", r.url());
    std::fs::write(&preview, r.bytes().await.unwrap()).unwrap();
    let secs = crate::harness::duration_of(&preview);
    assert!((secs - 15.0).abs() < 0.5, "preview of {secs}s");
    assert!(storage.head(&format!("bgm/previews/{id}.mp3")).await.unwrap().is_some());
    // System tracks have previews too.
    let r = reqwest::get(format!("{}/api/bgm/tracks/celebration_upbeat/preview", stack.http)).await.unwrap();
    assert_eq!(r.status(), 200);

    // Not audio: refused before anything is stored.
    let form = reqwest::multipart::Form::new()
        .text("name", "x")
        .part("file", reqwest::multipart::Part::bytes(b"just text".to_vec()).file_name("a.mp3"));
    let r = reqwest::Client::new().post(format!("{}/api/bgm/tracks", stack.http)).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"]["code"], "unsupported-audio-type");
    assert!(storage.list("bgm/uploads/").await.unwrap().is_empty());

    // Delete: the entry, the file and the preview go.
    assert_eq!(delete(&stack, &format!("/api/bgm/tracks/{id}")).await.0, 204);
    assert!(storage.head(&format!("bgm/user/user123_{id}.mp3")).await.unwrap().is_none());
    assert!(storage.head(&format!("bgm/previews/{id}.mp3")).await.unwrap().is_none());
    assert_eq!(get(&stack, "/api/bgm/tracks?type=user").await.1["count"], 0);
}

/// Speak `text` with Open JTalk's male voice, `semitones` higher.
fn recording(stack: &Stack, dir: &std::path::Path, text: &str, semitones: &str) -> Vec<u8> {
    let txt = dir.join("ref.txt");
    std::fs::write(&txt, text).unwrap();
    let wav = dir.join(format!("ref{semitones}.wav"));
    let ok = std::process::Command::new("open_jtalk")
        .args(["-x", "/var/lib/mecab/dic/open-jtalk/naist-jdic", "-fm", semitones, "-m"])
        .arg(stack.data_dir.join("voices/system/nitech_jp_atr503_m001.htsvoice"))
        .arg("-ow")
        .arg(&wav)
        .arg(&txt)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    std::fs::read(wav).unwrap()
}

async fn post_voice(stack: &Stack, audio: Vec<u8>, file_name: &str) -> (u16, serde_json::Value) {
    let form = reqwest::multipart::Form::new()
        .text("name", "My voice")
        .text("language", "ja")
        .text("gender", "male")
        .part("reference_audio", reqwest::multipart::Part::bytes(audio).file_name(file_name.to_owned()));
    let r = reqwest::Client::new()
        .post(format!("{}/api/voice-clone/profiles", stack.http))
        .multipart(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_voice_is_matched_from_a_recording_and_speaks_in_a_video() {
    let stack = Stack::start(Options { workers: 1, own_data: true, ..Default::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let audio =
        recording(&stack, dir.path(), "こんにちは。今日はとても良い天気ですね。また一緒に出かけましょう。", "3");
    let (s, profile) = post_voice(&stack, audio, "me.wav").await;
    assert_eq!(s, 201, "{profile}");
    let id = profile["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("custom_"));
    assert_eq!(profile["type"], "custom");
    // Japanese: a blend of the Kokoro voices, chosen by speaker embedding.
    assert_eq!(profile["metadata"]["engine"], "kokoro", "{profile}");
    assert!(profile["metadata"]["base_profile"].as_str().unwrap().starts_with("ja_"), "{profile}");
    let embedding: serde_json::Value = serde_json::from_slice(
        &std::fs::read(stack.data_dir.join(profile["embedding_path"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let blend = embedding["kokoro_blend"].as_array().unwrap();
    let total: f64 = blend.iter().map(|p| p[1].as_f64().unwrap()).sum();
    assert!(!blend.is_empty() && (total - 1.0).abs() < 0.01, "{embedding}");
    let (best, single) =
        (embedding["similarity"].as_f64().unwrap(), embedding["similarity_best_single"].as_f64().unwrap());
    assert!(best >= single && best > 0.0, "the blend is at least as near as the best single voice: {embedding}");
    assert!(embedding["method"].as_str().unwrap().contains("not cloning"));
    let shift = embedding["pitch_semitones"].as_f64().unwrap();
    assert!((-12.0..=12.0).contains(&shift), "{embedding}");
    println!("matched: {blend:?}, similarity {best:.3} (best single {single:.3}), shift {shift} semitones");
    assert!(embedding["features"]["median_f0_hz"].as_f64().unwrap() > 0.0);
    let storage = stack.storage();
    assert!(storage.head(&format!("voices/custom/{id}.wav")).await.unwrap().is_some());
    assert!(storage.list("voices/uploads/").await.unwrap().is_empty());

    // The profile speaks in a video.
    let photo = std::fs::read(crate::harness::fixture("astronaut.png")).unwrap();
    let (status, body) = crate::harness::submit(
        &stack,
        photo,
        "a.png",
        &[("message", "ありがとう。"), ("voice_profile_id", id.as_str()), ("resolution", "512x910")],
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let done = crate::harness::wait_done(&stack, body["task_id"].as_str().unwrap(), Duration::from_secs(120)).await;
    assert_eq!(done["status"], "SUCCESS", "{done}");

    // A spoken preview, made once and kept.
    let r = reqwest::get(format!("{}/api/voice-clone/profiles/{id}/preview", stack.http)).await.unwrap();
    assert_eq!(r.status(), 200);
    let wav = dir.path().join("preview.wav");
    std::fs::write(&wav, r.bytes().await.unwrap()).unwrap();
    assert!(crate::harness::duration_of(&wav) > 1.0);
    assert!(storage.head(&format!("voices/previews/{id}.wav")).await.unwrap().is_some());

    // Recordings that cannot be used.
    let short = recording(&stack, dir.path(), "はい。", "0");
    let (s, body) = post_voice(&stack, short, "short.wav").await;
    assert_eq!((s, body["error"]["code"].as_str()), (422, Some("reference-audio-length")), "{body}");
    let (s, body) = post_voice(&stack, b"hello there".to_vec(), "x.wav").await;
    assert_eq!((s, body["error"]["code"].as_str()), (415, Some("unsupported-audio-type")), "{body}");
    assert!(storage.list("voices/uploads/").await.unwrap().is_empty());

    // Delete: the profile and its files.
    assert_eq!(delete(&stack, &format!("/api/voice-clone/profiles/{id}")).await.0, 204);
    assert!(storage.head(&format!("voices/custom/{id}.wav")).await.unwrap().is_none());
    assert!(storage.head(&format!("voices/previews/{id}.wav")).await.unwrap().is_none());
    assert!(!stack.data_dir.join(format!("voices/embeddings/{id}.json")).exists());
    assert_eq!(get(&stack, &format!("/api/voice-clone/profiles/{id}")).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_backs_up_the_catalog_by_itself() {
    let stack = Stack::start(Options {
        workers: 0,
        own_data: true,
        env: vec![("TAYORI_BACKUP_INTERVAL_SECS".into(), "1".into())],
        ..Default::default()
    })
    .await;
    let today = chrono::Utc::now().format("%Y%m%d").to_string();
    let storage = stack.storage();
    let t0 = std::time::Instant::now();
    loop {
        let keys: Vec<String> = storage.list("backups/metadata/").await.unwrap().into_iter().map(|o| o.key).collect();
        if keys.len() == 2 {
            assert!(keys.iter().all(|k| k.starts_with(&format!("backups/metadata/{today}/"))), "{keys:?}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "no backup in S3: {keys:?}\n{}", stack.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(stack.data_dir.join("backups").join(&today).join("bgm_metadata.json").is_file());
}
