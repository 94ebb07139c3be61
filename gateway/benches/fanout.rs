//! WebSocket fan-out, run on demand: `cargo bench -p gateway --bench fanout`.
//!
//! One gateway (and redis-server), BENCH_VIEWERS progress viewers (default
//! 10,000) spread over BENCH_TASKS jobs (default 100), all connected at once.
//! Progress events are published into Redis the way workers publish them
//! (the publish script: log, snapshot, pub/sub); the gateway relays them.
//! Prints the delay from publish to receipt over every delivery (p50, p99,
//! max), deliveries missing, and the gateway's resident memory.

#[path = "../tests/it/harness.rs"]
mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use harness::{Options, Stack};
use shared::progress::{ProgressEvent, Step, TaskMeta};
use shared::tasks::{TaskStore, Ttls};
use tokio_tungstenite::tungstenite::Message;

#[derive(serde::Deserialize)]
struct Seq {
    seq: u64,
}

/// Rounds of events: step events per job, then its end.
const ROUNDS: usize = 9;
/// Rounds published all at once; the rest (but the last) spread out.
const BURST_ROUNDS: usize = 4;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let viewers = env_or("BENCH_VIEWERS", 10_000);
    let tasks = env_or("BENCH_TASKS", 100);
    // Every viewer connects from 127.0.0.1 here: the per-client connection
    // bound (64 by default) is for real clients, so it is off.
    let env = vec![
        ("TAYORI_MAX_CONNECTIONS_PER_CLIENT".to_owned(), "0".to_owned()),
        ("TAYORI_MAX_CONNECTIONS".to_owned(), (viewers + 1000).to_string()),
    ];
    let stack = Stack::start(Options { workers: 0, env, ..Default::default() }).await;
    let conn = shared::redis_conn::RedisConfig::new(stack.redis_url.as_str()).connect().await.unwrap();
    let store = TaskStore::new(
        conn,
        Ttls {
            task_meta: Duration::from_secs(3600),
            progress: Duration::from_secs(3600),
            ws_session: Duration::from_secs(600),
        },
    );
    let ids: Vec<String> = (0..tasks).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for id in &ids {
        store.put_meta(&TaskMeta::pending(id, chrono::Utc::now())).await.unwrap();
    }
    let (idle_peak, idle_now) = stack.gateway_memory_kb();

    // Connect every viewer; each records (task, seq, when received).
    let connected = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(viewers);
    let gate = Arc::new(tokio::sync::Semaphore::new(256)); // connects in flight
    for v in 0..viewers {
        let task = v % tasks;
        let url = stack.ws_url(&ids[task]);
        let (connected, gate) = (connected.clone(), gate.clone());
        handles.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.unwrap();
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("connect");
            drop(permit);
            connected.fetch_add(1, Ordering::Relaxed);
            let mut got: Vec<(usize, u64, Instant)> = Vec::with_capacity(ROUNDS);
            while let Some(msg) = ws.next().await {
                match msg {
                    Ok(Message::Text(t)) => {
                        let at = Instant::now();
                        let ev: Seq = serde_json::from_str(t.as_str()).unwrap();
                        got.push((task, ev.seq, at));
                    }
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            got
        }));
    }
    while connected.load(Ordering::Relaxed) < viewers {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "only {} viewers connected",
            connected.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_time = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, connected_now) = stack.gateway_memory_kb();

    // Publish: every job gets one event per round, rounds 300 ms apart. In
    // the first half of the rounds all jobs publish at once (a burst of
    // `viewers` deliveries); in the second half their events are spread
    // evenly over the round (a steady stream, heavier than real jobs make:
    // they publish about ten events in five seconds or more).
    let mut published: Vec<Vec<Instant>> = vec![Vec::new(); tasks];
    let steps = [Step::DetectPerson, Step::BackgroundRemoval, Step::PrepareImage, Step::SynthesizeVoice];
    let round_len = Duration::from_millis(300);
    for round in 0..ROUNDS {
        let paced = round >= BURST_ROUNDS && round + 1 < ROUNDS;
        let start = Instant::now();
        for (t, id) in ids.iter().enumerate() {
            if paced {
                let due = start + round_len.mul_f64(t as f64 / tasks as f64);
                tokio::time::sleep_until(due.into()).await;
            }
            let ev = if round + 1 == ROUNDS {
                ProgressEvent::succeeded(id, 0)
            } else {
                ProgressEvent::step(id, steps[round % steps.len()], 0)
            };
            published[t].push(Instant::now());
            let seq = store.publish(&ev).await.unwrap();
            assert_eq!(seq as usize, round);
        }
        tokio::time::sleep_until((start + round_len).into()).await;
    }
    let (mut burst, mut paced, mut last) = (Vec::new(), Vec::new(), Vec::new());
    for h in handles {
        for (task, seq, at) in tokio::time::timeout(Duration::from_secs(60), h).await.expect("viewer ended").unwrap() {
            let delay = at.duration_since(published[task][seq as usize]);
            match seq as usize {
                s if s < BURST_ROUNDS => burst.push(delay),
                s if s + 1 < ROUNDS => paced.push(delay),
                _ => last.push(delay),
            }
        }
    }
    let (peak, _) = stack.gateway_memory_kb();
    let expected = viewers * ROUNDS;
    println!(
        "{viewers} viewers on {tasks} jobs, connected in {:.1} s; {} of {expected} deliveries ({} missing)",
        connect_time.as_secs_f64(),
        burst.len() + paced.len() + last.len(),
        expected - burst.len() - paced.len() - last.len()
    );
    for (name, delays) in [
        ("all jobs at once", &mut burst),
        ("spread over the round", &mut paced),
        ("the final events, all at once, each followed by a close", &mut last),
    ] {
        delays.sort();
        let pct = |p: f64| delays[((delays.len() as f64 * p) as usize).min(delays.len() - 1)].as_secs_f64() * 1000.0;
        println!(
            "publish -> receipt, {name} ({tasks} events a round, {} deliveries): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            delays.len(),
            pct(0.50),
            pct(0.99),
            delays.last().unwrap().as_secs_f64() * 1000.0
        );
    }
    println!(
        "gateway memory: idle {:.0} MB (peak {:.0}), with {viewers} viewers {:.0} MB, peak {:.0} MB",
        idle_now as f64 / 1024.0,
        idle_peak as f64 / 1024.0,
        connected_now as f64 / 1024.0,
        peak as f64 / 1024.0
    );
}
