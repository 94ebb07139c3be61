//! Redis with Sentinel: the master is SIGKILLed while jobs are queued and
//! running, and every job the gateway accepted completes exactly once on
//! the promoted replica.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::harness::{self, Options, Stack, Topology};

const JOB: &[(&str, &str)] =
    &[("message", "Happy birthday to you."), ("voice_profile_id", "en_joe_male"), ("resolution", "512x910")];

/// Which server the sentinels name as the master now.
async fn master_port(stack: &Stack) -> Option<u16> {
    for port in &stack.sentinel_ports {
        let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else { continue };
        let Ok(mut c) = client.get_multiplexed_async_connection().await else { continue };
        let addr: redis::RedisResult<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(harness::SENTINEL_MASTER)
            .query_async(&mut c)
            .await;
        if let Ok((_, p)) = addr {
            return Some(p);
        }
    }
    None
}

async fn status(stack: &Stack, task_id: &str) -> String {
    let body: serde_json::Value = reqwest::get(format!("{}/api/video/status/{task_id}", stack.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or_default();
    body["status"].as_str().unwrap_or("").to_owned()
}

/// The value of `field=` in a log line (quotes removed).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    line[at..].split_whitespace().next().map(|v| v.trim_matches('"'))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_accepted_job_completes_once_when_the_master_is_killed() {
    let mut stack = Stack::start(Options { topology: Topology::Sentinel, ..Default::default() }).await;
    let replica = stack.replica_port.unwrap();
    assert_ne!(master_port(&stack).await, Some(replica), "the replica is not the master yet");
    let photo = std::fs::read(harness::fixture("astronaut.png")).unwrap();

    // Jobs queued and running.
    let mut accepted = Vec::new();
    for _ in 0..6 {
        let (code, body) = harness::submit(&stack, photo.clone(), "a.png", JOB).await;
        assert_eq!(code, 202, "{body}");
        accepted.push(body["task_id"].as_str().unwrap().to_owned());
    }
    let t0 = Instant::now();
    loop {
        let mut running = 0;
        for id in &accepted {
            if !matches!(status(&stack, id).await.as_str(), "PENDING" | "") {
                running += 1;
            }
        }
        if running > 0 && harness::queued(&stack).await > 0 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no job started\n{}", stack.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let queued_at_kill = harness::queued(&stack).await;
    let before_kill = accepted.len();

    // The master dies (SIGKILL: nothing written out, connections cut).
    let killed = Instant::now();
    let killed_at = chrono::Utc::now();
    stack.stop_redis("KILL");

    // Keep submitting through the failover.
    let (mut refused, mut first_accepted_after, mut promoted_after) = (0, None, None);
    while killed.elapsed() < Duration::from_secs(12) {
        if promoted_after.is_none() && master_port(&stack).await == Some(replica) {
            promoted_after = Some(killed.elapsed());
        }
        let (code, body) = harness::submit(&stack, photo.clone(), "a.png", JOB).await;
        if code == 202 {
            first_accepted_after.get_or_insert(killed.elapsed());
            accepted.push(body["task_id"].as_str().unwrap().to_owned());
        } else {
            // Refused plainly while no master answers; never accepted and lost.
            assert_eq!(code, 503, "{body}");
            refused += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let promoted_after = promoted_after.expect("the sentinels promoted the replica");
    let first_accepted_after = first_accepted_after.expect("a job was accepted after the failover");

    // Every accepted job completes.
    let mut pending: BTreeSet<String> = accepted.iter().cloned().collect();
    while !pending.is_empty() {
        for id in pending.clone() {
            match status(&stack, &id).await.as_str() {
                "SUCCESS" => {
                    pending.remove(&id);
                }
                "FAILURE" | "REVOKED" => panic!("job {id} failed after the failover\n{}", stack.logs()),
                _ => {}
            }
        }
        assert!(killed.elapsed() < Duration::from_secs(240), "jobs never completed: {pending:?}\n{}", stack.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // When each finished, by its meta's `date_done` (the polling above
    // only begins once the submitting is over).
    let mut done_after = Vec::new();
    for id in &accepted {
        let meta = harness::meta(&stack, id).await.expect("the meta is kept");
        let done: chrono::DateTime<chrono::Utc> = meta["date_done"].as_str().unwrap().parse().unwrap();
        done_after.push((done - killed_at).num_milliseconds() as f64 / 1000.0);
    }
    let first_done_after = done_after.iter().copied().filter(|d| *d > 0.0).fold(f64::INFINITY, f64::min);
    let all_done_after = done_after.iter().copied().fold(0.0, f64::max);

    // Exactly once: one success per job, and its video is there.
    let log: String = stack.worker_log().lines().map(harness::plain).collect::<Vec<_>>().join("\n");
    let mut successes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut stage_runs: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for line in log.lines() {
        if line.contains("job succeeded") {
            *successes.entry(field(line, "task_id").unwrap_or("?")).or_default() += 1;
        }
        if line.contains("stage done") {
            let key = (field(line, "task_id").unwrap_or("?"), field(line, "stage").unwrap_or("?"));
            *stage_runs.entry(key).or_default() += 1;
        }
    }
    for id in &accepted {
        assert_eq!(successes.get(id.as_str()), Some(&1), "job {id} succeeded {:?} times", successes.get(id.as_str()));
        let result: serde_json::Value =
            reqwest::get(format!("{}/api/video/result/{id}", stack.http)).await.unwrap().json().await.unwrap();
        let video = reqwest::get(result["video_url"].as_str().unwrap()).await.unwrap();
        assert_eq!(video.status(), 200, "{id}");
        assert!(video.bytes().await.unwrap().len() > 10_000, "{id}: a video");
    }
    assert_eq!(successes.len(), accepted.len(), "a success of a job nobody accepted: {successes:?}");
    let repeated_stages: usize = stage_runs.values().map(|n| n - 1).sum();
    assert_eq!(repeated_stages, 0, "stages run twice: {stage_runs:?}");
    // The workers moved to the promoted replica.
    assert!(log.contains("moved to the master the sentinels name"), "{}", stack.logs());

    eprintln!(
        "FAILOVER: {} jobs accepted ({before_kill} before the kill, {queued_at_kill} of them still queued; {} during), \
         {refused} refused (503) during the failover, 0 lost, 0 duplicated, {repeated_stages} stages repeated; \
         replica promoted {:.1} s after the kill, first job accepted again after {:.1} s, \
         first completed after {:.1} s, all completed after {:.1} s",
        accepted.len(),
        accepted.len() - before_kill,
        promoted_after.as_secs_f64(),
        first_accepted_after.as_secs_f64(),
        first_done_after,
        all_done_after,
    );
}
