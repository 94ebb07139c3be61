//! The page in a real browser: Debian's Chromium driven by Playwright
//! (`gateway/tests/browser/e2e.mjs`) against a whole stack. Screenshots and
//! the downloaded video are kept in `target/browser-artifacts/`.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{self, Options, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_makes_a_video_in_chromium() {
    let browser_dir = harness::repo_root().join("gateway/tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run scripts/browser-deps.sh (scripts/test.sh does)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(std::path::Path::new(&chromium).is_file(), "{chromium} is missing: run scripts/browser-deps.sh");
    let stack = Stack::start(Options { workers: 1, own_data: true, ..Default::default() }).await;
    let artifacts = harness::repo_root().join("target/browser-artifacts");
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).unwrap();
    let fixtures = harness::fixture("astronaut.png").parent().unwrap().to_owned();
    // A photo of two people: the astronaut twice, side by side.
    let twins = artifacts.join("twins.png");
    let made = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-i"])
        .arg(harness::fixture("astronaut.png"))
        .arg("-i")
        .arg(harness::fixture("astronaut.png"))
        .args(["-filter_complex", "hstack"])
        .arg(&twins)
        .status()
        .unwrap();
    assert!(made.success());

    let t0 = Instant::now();
    let mut child = tokio::process::Command::new("node")
        .arg("e2e.mjs")
        .current_dir(&browser_dir)
        .env("TAYORI_URL", format!("{}/", stack.http))
        .env("FIXTURES", &fixtures)
        .env("TWINS", &twins)
        .env("DATA_DIR", &stack.data_dir)
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node is needed for the browser test");
    // Stdout is read line by line: "DROP" asks for the gateway to be
    // killed and started again while the page follows a job.
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let err = tokio::spawn(async move {
        let mut s = String::new();
        let mut r = stderr;
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut r, &mut s).await;
        s
    });
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut out = String::new();
    let mut stack = stack;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(420);
    loop {
        let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            Ok(_) => break,
            Err(_) => panic!("the browser test ran past 420 s\n{out}\n{}", stack.logs()),
        };
        println!("{line}");
        if line == "DROP" {
            stack.kill_gateway();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            stack.start_gateway().await;
            std::fs::write(artifacts.join("gateway-restarted"), b"").unwrap();
        }
        out.push_str(&line);
        out.push('\n');
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("node exits");
    let err = err.await.unwrap();
    eprintln!("{err}");
    assert!(status.unwrap().success(), "the browser test failed:\n{out}\n{err}\n{}", stack.logs());
    println!("browser test took {:.1} s; artifacts in {}", t0.elapsed().as_secs_f64(), artifacts.display());
    for shot in ["01-error-text-file", "03-form-filled", "04-progress", "05-result", "06-phone-ja", "07-voices"] {
        let p = artifacts.join(format!("{shot}.png"));
        assert!(std::fs::metadata(&p).map(|m| m.len() > 5_000).unwrap_or(false), "{} missing", p.display());
    }
    let (vcodec, w, h, acodec, dur) = harness::ffprobe(&artifacts.join("downloaded.mp4"));
    assert_eq!((vcodec.as_str(), w, h, acodec.as_str()), ("h264", 512, 910, "aac"));
    assert!(dur > 2.0, "{dur}");
    // The browser ran in its own processes, which are gone.
    let left = Command::new("pgrep").args(["-f", "chromium.*--use-fake-device-for-media-stream"]).output().unwrap();
    assert!(left.stdout.is_empty(), "Chromium processes left behind");
}
