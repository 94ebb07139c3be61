//! The hand-off between a job's stages (`worker::handoff`) against a real
//! redis-server: which mark queues the render, the render's wait for the
//! mix, and nothing recorded for a job that has ended.

#[path = "../../shared/tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use shared::job::{JobError, Stage};
use shared::progress::TaskMeta;
use shared::tasks::{TaskStore, Ttls};
use worker::handoff;

const KEEP: Duration = Duration::from_secs(60);

fn store(conn: shared::redis_conn::ConnectionManager) -> TaskStore {
    let d = Duration::from_secs(60);
    TaskStore::new(conn, Ttls { task_meta: d, progress: d, ws_session: d })
}

async fn fail(tasks: &TaskStore, task_id: &str) {
    let mut meta = TaskMeta::pending(task_id, chrono::Utc::now());
    meta.fail(&JobError { code: "no-person".into(), message: "none".into(), retryable: false });
    assert!(tasks.put_meta_unless_done(&meta).await.unwrap());
}

#[tokio::test]
async fn the_render_is_due_once_the_image_is_done_and_the_speech_stored_in_either_order() {
    let redis = support::RedisServer::start();
    let mut conn = redis.manager().await;
    // Image first: its mark does not queue the render, the speech's does.
    assert!(!handoff::mark_done(&mut conn, "a", Stage::Image, &[], KEEP).await.unwrap());
    assert!(!handoff::render_due(&mut conn, "a").await.unwrap());
    assert!(handoff::mark_speech_ready(&mut conn, "a", KEEP).await.unwrap());
    assert!(handoff::render_due(&mut conn, "a").await.unwrap());
    // Speech first: the image stage's mark queues it.
    assert!(!handoff::mark_speech_ready(&mut conn, "b", KEEP).await.unwrap());
    assert!(handoff::mark_done(&mut conn, "b", Stage::Image, &[], KEEP).await.unwrap());
    // The voice stage being done is not what makes it due (the render waits
    // for it instead), and is not needed for it.
    assert!(!handoff::mark_done(&mut conn, "c", Stage::Voice, &[], KEEP).await.unwrap());
    assert!(!handoff::render_due(&mut conn, "c").await.unwrap());

    // Both marks at once, many times over: exactly one of each pair sees the
    // render due.
    for n in 0..50 {
        let id = format!("race-{n}");
        let (mut c1, mut c2) = (conn.clone(), conn.clone());
        let (a, b) = tokio::join!(
            handoff::mark_done(&mut c1, &id, Stage::Image, &[], KEEP),
            handoff::mark_speech_ready(&mut c2, &id, KEEP)
        );
        assert!(a.unwrap() ^ b.unwrap(), "{id}: exactly one mark queues the render");
    }
}

#[tokio::test]
async fn the_render_waits_for_the_voice_stage_and_stops_when_the_job_ends() {
    let redis = support::RedisServer::start();
    let conn = redis.manager().await;
    let tasks = store(conn.clone());

    // The mix is stored 300 ms later: the wait ends then.
    let mut voice = conn.clone();
    let marker = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        handoff::mark_done(&mut voice, "ok", Stage::Voice, &[], KEEP).await.unwrap();
    });
    let t0 = Instant::now();
    handoff::wait_done(&mut conn.clone(), &tasks, "ok", Stage::Voice).await.unwrap();
    let waited = t0.elapsed();
    marker.await.unwrap();
    assert!(waited >= Duration::from_millis(290) && waited < Duration::from_millis(700), "waited {waited:?}");

    // The voice stage fails instead (it forgets the record): the wait ends
    // with the job, not at the time limit.
    let mut other = conn.clone();
    let failer = {
        let tasks = tasks.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            fail(&tasks, "bad").await;
            handoff::forget(&mut other, "bad").await.unwrap();
        })
    };
    let t0 = Instant::now();
    let err = handoff::wait_done(&mut conn.clone(), &tasks, "bad", Stage::Voice).await.unwrap_err();
    failer.await.unwrap();
    assert!(matches!(err, handoff::WaitError::Ended("voice")), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(2), "stopped {:?} after the start", t0.elapsed());
}

#[tokio::test]
async fn nothing_is_recorded_for_a_job_that_has_ended() {
    let redis = support::RedisServer::start();
    let mut conn = redis.manager().await;
    let tasks = store(conn.clone());
    fail(&tasks, "gone").await;
    // A stage starting, or finishing, after the job failed (the other stage
    // failed and forgot the record) makes no new record that would outlive
    // the job's other keys.
    assert_eq!(handoff::count_start(&mut conn, "gone", Stage::Voice, KEEP).await.unwrap(), None);
    assert!(!handoff::mark_speech_ready(&mut conn, "gone", KEEP).await.unwrap());
    assert!(!handoff::mark_done(&mut conn, "gone", Stage::Image, &[], KEEP).await.unwrap());
    let exists: bool = redis::cmd("EXISTS").arg(shared::keys::job_stages("gone")).query_async(&mut conn).await.unwrap();
    assert!(!exists, "no stage record for an ended job");
    // A live job's starts are counted.
    assert_eq!(handoff::count_start(&mut conn, "live", Stage::Voice, KEEP).await.unwrap(), Some(1));
    assert_eq!(handoff::count_start(&mut conn, "live", Stage::Voice, KEEP).await.unwrap(), Some(2));
}
