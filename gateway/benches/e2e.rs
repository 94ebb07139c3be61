//! End-to-end timing, run on demand: `cargo bench -p gateway --bench e2e`.
//!
//! Starts the real stack (redis-server, gateway with embedded S3, one
//! worker), submits a Japanese message of about ten seconds of speech at
//! 1080x1920 and at 512x910, and prints for each run: time from submit to a
//! working download link, time from enqueue to the first progress event of
//! the first step, the speech and video lengths, and each step's seconds.

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
    let stack = Stack::start(Options { workers: 1, env, ..Default::default() }).await;
    // Let the worker load and warm the model before the clock starts.
    tokio::time::sleep(Duration::from_secs(6)).await;
    println!("segmentation model: {model}; voice: {voice}");
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();
    let http = reqwest::Client::new();
    println!("resolution  run  submit->link(s)  enqueue->first-step(ms)  speech(s)  video(s)");
    for resolution in ["1080x1920", "512x910"] {
        let mut totals = Vec::new();
        for run in 1..=runs {
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
            let ts =
                |e: &serde_json::Value| chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).unwrap();
            let first = events.iter().find(|e| e["step_index"] == 1).unwrap();
            let pickup = (ts(first) - ts(&events[0])).num_milliseconds();
            let dir = tempfile::tempdir().unwrap();
            let speech = dir.path().join("voice.wav");
            stack.storage().get_to_file(&format!("voices/generated/{id}/base_voice.wav"), &speech).await.unwrap();
            println!(
                "{resolution:<10}  {run:>3}  {total:>15.2}  {pickup:>23}  {:>9.2}  {:>8.2}",
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
            totals.push(total);
        }
        totals.sort_by(f64::total_cmp);
        println!("{resolution:<10}  median submit->link {:.2}s over {runs} runs", totals[totals.len() / 2]);
    }
    let (peak, now) = stack.worker_memory_kb(0);
    println!("worker resident memory: peak {} MB, now {} MB", peak / 1024, now / 1024);
}
