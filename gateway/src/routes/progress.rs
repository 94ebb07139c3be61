//! `GET /ws/progress/{task_id}`: live progress over a WebSocket.
//!
//! On connect the viewer gets every event kept for the job (the last one is
//! the current snapshot), then live events, then a normal close once the job
//! has ended. Events carry a sequence number; a gap (a slow viewer, a lost
//! pub/sub connection, a gateway restart) is filled from the Redis log, and
//! a periodic check of the snapshot catches anything pub/sub did not bring.

use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use redis::AsyncCommands;
use serde_json::json;
use shared::keys;
use shared::progress::{ProgressEvent, TOTAL_STEPS, TaskMeta, TaskStatus, now_rfc3339};
use tokio::sync::broadcast::error::RecvError;

use crate::error::AppResult;
use crate::intake::check_task_id;
use crate::state::AppState;

/// How often the server pings, and how often it checks Redis for events
/// pub/sub may have missed.
const PING_EVERY: Duration = Duration::from_secs(20);
const RESYNC_EVERY: Duration = Duration::from_secs(3);
/// A viewer that stops reading cannot park its task: a send that does not
/// complete within this ends the session.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The session record in Redis is refreshed at most this often, however
/// fast a viewer pings (a ping in between is answered by a refresh when the
/// interval is up).
const TOUCH_EVERY: Duration = Duration::from_secs(1);

/// Close codes (4000-4999 are for applications).
const CLOSE_UNKNOWN_TASK: u16 = 4404;
const CLOSE_UNAVAILABLE: u16 = 4503;

pub fn router() -> Router<AppState> {
    Router::new().route("/ws/progress/{task_id}", get(upgrade))
}

async fn upgrade(
    State(state): State<AppState>,
    Path(task_id): Path<String>,
    ws: WebSocketUpgrade,
) -> AppResult<Response> {
    let task_id = check_task_id(&task_id)?;
    // Viewers send only pings and pongs, and each event is small: small
    // buffers (tungstenite's defaults are 128 KiB each way) keep ten
    // thousand viewers within a few hundred MB.
    let ws = ws.read_buffer_size(4 * 1024).write_buffer_size(0).max_message_size(16 * 1024).max_frame_size(16 * 1024);
    Ok(ws.on_upgrade(move |socket| async move {
        if let Err(e) = serve(state, task_id.clone(), socket).await {
            tracing::debug!(%task_id, error = %e, "progress socket ended with an error");
        }
    }))
}

/// A final event built from the task meta, for a viewer that arrives after
/// the progress log has expired.
fn event_from_meta(meta: &TaskMeta) -> ProgressEvent {
    match (&meta.status, &meta.error) {
        (TaskStatus::Failure, Some(err)) => ProgressEvent::failed(&meta.task_id, TOTAL_STEPS, 100, err, u64::MAX),
        (TaskStatus::Success, _) => ProgressEvent::succeeded(&meta.task_id, u64::MAX),
        _ => {
            let mut ev = ProgressEvent::queued(&meta.task_id);
            ev.status = meta.status;
            ev.seq = u64::MAX;
            ev
        }
    }
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason.to_owned()) }))
}

type Sink = futures::stream::SplitSink<WebSocket, Message>;

async fn send(sink: &mut Sink, msg: Message) -> anyhow::Result<()> {
    tokio::time::timeout(SEND_TIMEOUT, sink.send(msg))
        .await
        .map_err(|_| anyhow::anyhow!("the viewer stopped reading"))??;
    Ok(())
}

/// Send every kept event from `next_seq` on; returns whether the job ended.
async fn send_from_log(state: &AppState, task_id: &str, next_seq: &mut u64, sink: &mut Sink) -> anyhow::Result<bool> {
    let events = state.tasks.events_since(task_id, *next_seq).await?;
    for ev in events {
        if ev.seq < *next_seq {
            continue;
        }
        *next_seq = ev.seq + 1;
        send(sink, Message::Text(serde_json::to_string(&ev)?.into())).await?;
        if ev.status.is_terminal() {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn serve(state: AppState, task_id: String, socket: WebSocket) -> anyhow::Result<()> {
    let _viewer = state.metrics.viewer();
    let (mut sink, mut stream) = socket.split();
    // Subscribe before reading the log so that nothing falls in between.
    let mut sub = state.hub.subscribe(&task_id);

    let meta = match state.tasks.meta(&task_id).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            send(&mut sink, close(CLOSE_UNKNOWN_TASK, "unknown task id")).await?;
            return Ok(());
        }
        Err(e) => {
            send(&mut sink, close(CLOSE_UNAVAILABLE, "progress store unavailable, retry")).await?;
            return Err(e.into());
        }
    };

    let session_id = uuid::Uuid::new_v4().simple().to_string();
    let session_key = keys::ws_session(&session_id);
    let connected_at = now_rfc3339();
    let mut redis = state.redis.clone();
    let ttl = state.tasks.ttls().ws_session.as_secs().max(1);
    let touch_session = |mut redis: shared::redis_conn::ConnectionManager| {
        let body = json!({"session_id": session_id, "task_id": task_id, "connected_at": connected_at, "last_ping": now_rfc3339()}).to_string();
        let key = session_key.clone();
        async move {
            let r: redis::RedisResult<()> = redis.set_ex(key, body, ttl).await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "could not refresh ws session");
            }
        }
    };
    touch_session(redis.clone()).await;
    let mut last_touch = tokio::time::Instant::now();
    let mut touch_due = false;

    let mut next_seq = 0u64;
    let mut ended = send_from_log(&state, &task_id, &mut next_seq, &mut sink).await?;
    if !ended && meta.status.is_terminal() {
        // The log expired (5 minutes after the end), or the final event was
        // lost; the meta still says how it ended.
        send(&mut sink, Message::Text(serde_json::to_string(&event_from_meta(&meta))?.into())).await?;
        ended = true;
    }

    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    resync.tick().await;
    while !ended {
        tokio::select! {
            ev = sub.rx.recv() => match ev {
                Ok(ev) => match ev.seq {
                    Some(seq) if seq == next_seq => {
                        next_seq += 1;
                        send(&mut sink, Message::Text(ev.text)).await?;
                        ended = ev.terminal;
                        // Events are flowing: no need to look in Redis yet.
                        resync.reset();
                    }
                    Some(seq) if seq < next_seq => {} // already sent from the log
                    // A gap (or an event we cannot read): take it from the log.
                    _ => ended = send_from_log(&state, &task_id, &mut next_seq, &mut sink).await?,
                },
                Err(RecvError::Lagged(_)) => {
                    ended = send_from_log(&state, &task_id, &mut next_seq, &mut sink).await?;
                }
                Err(RecvError::Closed) => break,
            },
            _ = resync.tick() => {
                // Nothing heard for a while: read what Redis holds. Events
                // missed (a gap, a lost message) come from the log; and the
                // meta is the last word, so a final event that was never
                // published (or has expired) cannot leave the viewer waiting.
                if let Ok(Some(snap)) = state.tasks.snapshot(&task_id).await
                    && snap.seq >= next_seq
                {
                    ended = send_from_log(&state, &task_id, &mut next_seq, &mut sink).await?;
                }
                if !ended
                    && let Ok(Some(meta)) = state.tasks.meta(&task_id).await
                    && meta.status.is_terminal()
                {
                    ended = send_from_log(&state, &task_id, &mut next_seq, &mut sink).await?;
                    if !ended {
                        send(&mut sink, Message::Text(serde_json::to_string(&event_from_meta(&meta))?.into())).await?;
                        ended = true;
                    }
                }
            }
            () = tokio::time::sleep_until(last_touch + TOUCH_EVERY), if touch_due => {
                touch_session(redis.clone()).await;
                last_touch = tokio::time::Instant::now();
                touch_due = false;
            }
            _ = ping.tick() => {
                send(&mut sink, Message::Ping(Default::default())).await?;
            }
            msg = stream.next() => match msg {
                Some(Ok(Message::Pong(_))) | Some(Ok(Message::Ping(_))) => touch_due = true,
                Some(Ok(Message::Text(t))) if t.as_str() == "ping" => {
                    touch_due = true;
                    send(&mut sink, Message::Text("pong".into())).await?;
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    if ended {
        let _ = send(&mut sink, close(1000, "job finished")).await;
    }
    let _: redis::RedisResult<()> = redis.del(&session_key).await;
    Ok(())
}
