//! The `tayori` command-line client against a whole stack: lists, a job
//! followed to its saved video, and the exit codes scripts rely on.

use std::process::{Command, Output};

use crate::harness::{self, Options, Stack};

fn tayori(server: &str, args: &[&str]) -> Output {
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_tayori"));
    Command::new(bin).arg("--server").arg(server).args(args).env_remove("LANG").output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_client_lists_submits_saves_and_exits_with_meaning() {
    let stack = Stack::start(Options { workers: 1, ..Default::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let server = stack.http.clone();
    let run = move |args: Vec<String>| {
        let server = server.clone();
        async move {
            tokio::task::spawn_blocking(move || tayori(&server, &args.iter().map(String::as_str).collect::<Vec<_>>()))
                .await
                .unwrap()
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let o = run(args(&["voices"])).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.lines().next().unwrap().starts_with("ID"), "{out}");
    for id in ["ja_mei_female", "ja_nitech_male", "en_slt_female", "en_joe_male"] {
        assert!(out.contains(id), "{id} in {out}");
    }
    let o = run(args(&["voices", "--language", "en", "--json"])).await;
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    let o = run(args(&["tracks", "--mood", "cheerful"])).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("celebration_upbeat") && !out.contains("celebration_gentle"), "{out}");

    // A job followed to its end and saved.
    let video = dir.path().join("video.mp4");
    let photo = harness::fixture("astronaut.png");
    let o = run(args(&[
        "submit",
        photo.to_str().unwrap(),
        "--message",
        "Hello from the command line.",
        "--voice",
        "en_joe_male",
        "--bgm",
        "celebration_gentle",
        "--resolution",
        "512x910",
        "--out",
        video.to_str().unwrap(),
    ]))
    .await;
    assert_eq!(o.status.code(), Some(0), "{}\n{}", text(&o), stack.logs());
    let err = String::from_utf8_lossy(&o.stderr);
    // Not a terminal: each step on its own line, with its percentage.
    for step in ["Finding the person...", "Speaking the message...", "Making the video and saving it..."] {
        assert!(err.contains(step), "{step} in {err}");
    }
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("saved:") && out.contains("video.mp4"), "{out}");
    let (vcodec, w, h, acodec, dur) = harness::ffprobe(&video);
    assert_eq!((vcodec.as_str(), w, h, acodec.as_str()), ("h264", 512, 910, "aac"));
    assert!(dur > 1.0);
    assert!(!dir.path().join("video.part").exists());

    // --json: one JSON object on stdout.
    let o = run(args(&[
        "submit",
        photo.to_str().unwrap(),
        "-m",
        "JSON please.",
        "-v",
        "en_slt_female",
        "--resolution",
        "512x910",
        "--json",
    ]))
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "SUCCESS");
    assert!(v["video_url"].as_str().unwrap().starts_with("http"));

    // Exit codes.
    let coffee = harness::fixture("coffee.png");
    let o = run(args(&["submit", coffee.to_str().unwrap(), "-m", "x", "-v", "en_joe_male", "--resolution", "512x910"]))
        .await;
    assert_eq!(o.status.code(), Some(5), "the job fails: no person\n{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no-person"), "{}", text(&o));
    let o = run(args(&["submit", photo.to_str().unwrap(), "-m", "x", "-v", "nobody"])).await;
    assert_eq!(o.status.code(), Some(3), "refused: unknown voice\n{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown-voice"), "{}", text(&o));
    let o = run(args(&["submit", photo.to_str().unwrap(), "-m", "お誕生日おめでとう！", "-v", "en_joe_male"])).await;
    assert_eq!(o.status.code(), Some(3), "refused: a Japanese message for an English voice\n{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("voice-language-mismatch") && err.contains("ja_alpha_female"), "{}", text(&o));
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "not a photo").unwrap();
    let o = run(args(&["submit", notes.to_str().unwrap(), "-m", "x", "-v", "en_joe_male"])).await;
    assert_eq!(o.status.code(), Some(3), "refused: not a photo\n{}", text(&o));
    let o = run(args(&["submit", "/no/such/photo.jpg", "-m", "x", "-v", "en_joe_male"])).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = run(args(&["submit", photo.to_str().unwrap()])).await;
    assert_eq!(o.status.code(), Some(2), "missing --message and --voice\n{}", text(&o));
    let dead = format!("http://127.0.0.1:{}", harness::free_port());
    let o = tokio::task::spawn_blocking(move || tayori(&dead, &["voices"])).await.unwrap();
    assert_eq!(o.status.code(), Some(6), "nothing listening\n{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_client_says_busy_with_its_own_exit_code() {
    // One job a minute per client: the second is rate-limited (429).
    let env = vec![("TAYORI_RATE_LIMIT_PER_MIN".to_owned(), "1".to_owned())];
    let stack = Stack::start(Options { workers: 0, env, ..Default::default() }).await;
    let photo = harness::fixture("astronaut.png");
    let server = stack.http.clone();
    let o = tokio::task::spawn_blocking(move || {
        let p = photo.to_str().unwrap();
        let _first = tayori(&server, &["submit", p, "-m", "x", "-v", "en_joe_male", "--timeout", "1", "-q"]);
        tayori(&server, &["submit", p, "-m", "x", "-v", "en_joe_male", "--timeout", "1", "-q"])
    })
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("try again in"), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_client_cancels_what_it_submitted() {
    use std::io::{BufRead, BufReader};
    // No workers: the job waits in the queue until it is cancelled.
    let stack = Stack::start(Options { workers: 0, ..Default::default() }).await;
    let server = stack.http.clone();
    let photo = harness::fixture("astronaut.png");
    let mut submit = Command::new(env!("CARGO_BIN_EXE_tayori"))
        .arg("--server")
        .arg(&server)
        .args(["submit", photo.to_str().unwrap(), "-m", "Cancel me.", "-v", "en_joe_male", "--timeout", "60"])
        .env_remove("LANG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = submit.stderr.take().unwrap();
    let (hint, rest) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines();
        let hint = lines.by_ref().map(Result::unwrap).find(|l| l.contains("tayori cancel")).expect("a cancel hint");
        (hint, lines)
    })
    .await
    .unwrap();
    // "(to cancel it: tayori cancel ID --token TOKEN)"
    let words: Vec<&str> = hint.trim_end_matches(')').split_whitespace().collect();
    let at = words.iter().rposition(|w| *w == "cancel").unwrap();
    let (task_id, token) = (words[at + 1].to_owned(), words[at + 3].to_owned());
    assert_eq!(words[at + 2], "--token", "{hint}");

    let run = |args: Vec<String>| {
        let server = server.clone();
        tokio::task::spawn_blocking(move || tayori(&server, &args.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    let o = run(vec!["cancel".into(), task_id.clone(), "--token".into(), "not-the-token".into()]).await.unwrap();
    assert_eq!(o.status.code(), Some(3), "a wrong token is refused\n{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cancel-token-invalid"), "{}", text(&o));
    let o =
        run(vec!["cancel".into(), task_id.clone(), "--token".into(), token.clone(), "--json".into()]).await.unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["task_id"].as_str(), v["status"].as_str()), (Some(task_id.as_str()), Some("REVOKED")), "{v}");

    // The submit that was following the job ends, saying why.
    let (status, err) = tokio::task::spawn_blocking(move || {
        let err: Vec<String> = rest.map(Result::unwrap).collect();
        (submit.wait().unwrap(), err.join("\n"))
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(5), "{err}");
    assert!(err.contains("cancelled"), "{err}");
    let meta = harness::meta(&stack, &task_id).await.expect("the task meta");
    assert_eq!(meta["status"], "REVOKED", "{meta}");
    assert!(!meta.to_string().contains(&token), "the meta never holds the token: {meta}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_whose_answer_is_lost_is_sent_again_and_makes_one_job() {
    use tokio::io::AsyncReadExt;
    let stack = Stack::start(Options { workers: 0, ..Default::default() }).await;
    // A proxy that passes the first request on and then cuts the
    // connection the moment the answer starts: the job is made, the
    // client never hears of it.
    let upstream = stack.http.trim_start_matches("http://").to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let cut = std::mem::replace(&mut first, false);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                if cut {
                    let (mut from_client, _) = client.split();
                    let (mut from_server, mut to_server) = server.split();
                    let mut byte = [0u8; 1];
                    tokio::select! {
                        _ = tokio::io::copy(&mut from_client, &mut to_server) => {}
                        _ = from_server.read(&mut byte) => {}
                    }
                } else {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    let photo = harness::fixture("astronaut.png");
    let o = tokio::task::spawn_blocking(move || {
        let p = photo.to_str().unwrap();
        tayori(&proxy, &["submit", p, "-m", "Only once, please.", "-v", "en_joe_male", "--timeout", "2"])
    })
    .await
    .unwrap();
    // Nothing works the queue: the submit waits out its --timeout.
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("trying again"), "the first answer was lost and the POST sent again\n{}", text(&o));
    assert!(err.contains("task "), "{}", text(&o));
    assert_eq!(harness::queued(&stack).await, 1, "two POSTs, one job\n{}", text(&o));
}
