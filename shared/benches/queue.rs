//! Queue benchmark: no-op jobs through the real queue backend and one local
//! redis-server. Prints enqueue rates (single pushes, many in flight; and
//! batched pushes) and consume rates with 1 and 4 worker processes.
//!
//! `cargo bench -p tayori-shared --bench queue` (BENCH_JOBS, default 50,000).
//! The worker processes are this binary started again with
//! `TAYORI_QUEUE_BENCH_ROLE=consume`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use shared::queue::{Queue, QueueConfig};

#[derive(Serialize, Deserialize)]
struct Noop {
    n: u64,
}

async fn noop(_job: Noop) -> Result<(), BoxDynError> {
    Ok(())
}

fn config(name: &str) -> QueueConfig {
    QueueConfig { name: name.into(), lease: Duration::from_secs(10), idle_wait: Duration::from_millis(1000) }
}

/// A consuming process: wait for the go signal, then work until killed.
async fn consume(url: &str, name: &str, concurrency: usize) {
    let mut conn = shared::redis_conn::RedisConfig::new(url).connect().await.unwrap();
    let _: i64 = redis::cmd("INCR").arg("bench:ready").query_async(&mut conn).await.unwrap();
    while redis::cmd("GET").arg("bench:go").query_async::<Option<String>>(&mut conn).await.unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let q: Queue<Noop> = Queue::new(conn, name, &config(name));
    let worker = WorkerBuilder::new(format!("bench-{}", std::process::id()).as_str())
        .backend(q.consumer(concurrency))
        .concurrency(concurrency)
        .build(noop);
    let _ = worker.run().await;
}

struct Kill(Vec<Child>);
impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn consume_rate(redis: &support::RedisServer, jobs: u64, processes: usize, concurrency: usize) -> f64 {
    let name = format!("bench-consume-{processes}-{concurrency}");
    let mut conn = redis.manager().await;
    let _: () = redis::pipe().del("bench:ready").del("bench:go").query_async(&mut conn).await.unwrap();
    let q: Queue<Noop> = Queue::new(conn.clone(), &name, &config(&name));
    let all: Vec<Noop> = (0..jobs).map(|n| Noop { n }).collect();
    for chunk in all.chunks(1000) {
        q.push_many(chunk).await.unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let _children = Kill(
        (0..processes)
            .map(|_| {
                Command::new(&exe)
                    .env("TAYORI_QUEUE_BENCH_ROLE", "consume")
                    .env("TAYORI_QUEUE_BENCH_URL", &redis.url)
                    .env("TAYORI_QUEUE_BENCH_NAME", &name)
                    .env("TAYORI_QUEUE_BENCH_CONCURRENCY", concurrency.to_string())
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    while redis::cmd("GET").arg("bench:ready").query_async::<Option<usize>>(&mut conn).await.unwrap().unwrap_or(0)
        < processes
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t0 = Instant::now();
    let _: () = redis::cmd("SET").arg("bench:go").arg(1).query_async(&mut conn).await.unwrap();
    loop {
        let s = q.stats().await.unwrap();
        if s.stored == 0 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "consumers stalled: {s:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    jobs as f64 / t0.elapsed().as_secs_f64()
}

async fn bench() {
    let jobs: u64 = std::env::var("BENCH_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let redis = support::RedisServer::start();
    let conn = redis.manager().await;

    // Enqueue: one push per job, 64 in flight on one multiplexed connection.
    let q: Queue<Noop> = Queue::new(conn.clone(), "bench-push", &config("bench-push"));
    let t0 = Instant::now();
    futures::stream::iter(0..jobs)
        .for_each_concurrent(64, |n| {
            let q = q.clone();
            async move {
                q.push(&Noop { n }).await.unwrap();
            }
        })
        .await;
    let single = jobs as f64 / t0.elapsed().as_secs_f64();
    assert_eq!(q.stats().await.unwrap().waiting, jobs);
    // Enqueue: batches of 1,000 in one transaction each.
    let qb: Queue<Noop> = Queue::new(conn.clone(), "bench-bulk", &config("bench-bulk"));
    let all: Vec<Noop> = (0..jobs).map(|n| Noop { n }).collect();
    let t0 = Instant::now();
    for chunk in all.chunks(1000) {
        qb.push_many(chunk).await.unwrap();
    }
    let bulk = jobs as f64 / t0.elapsed().as_secs_f64();
    println!("enqueue {jobs} jobs: single pushes (64 in flight) {single:.0}/s; batches of 1,000 {bulk:.0}/s");
    // Concurrency 64: jobs that wait (I/O); 1: how video workers run.
    for (processes, concurrency) in [(1, 64), (4, 64), (1, 1), (4, 1)] {
        let rate = consume_rate(&redis, jobs, processes, concurrency).await;
        println!("consume {jobs} jobs: {processes} worker process(es), concurrency {concurrency} each: {rate:.0}/s");
    }
}

#[tokio::main]
async fn main() {
    match std::env::var("TAYORI_QUEUE_BENCH_ROLE").as_deref() {
        Ok("consume") => {
            let url = std::env::var("TAYORI_QUEUE_BENCH_URL").unwrap();
            let name = std::env::var("TAYORI_QUEUE_BENCH_NAME").unwrap();
            let concurrency = std::env::var("TAYORI_QUEUE_BENCH_CONCURRENCY").unwrap().parse().unwrap();
            consume(&url, &name, concurrency).await
        }
        _ => {
            if std::env::args().any(|a| a == "--bench") || std::env::args().len() == 1 {
                bench().await
            }
        }
    }
}
