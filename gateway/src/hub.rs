//! Relays progress events from Redis pub/sub to this gateway's WebSocket
//! viewers: one pattern subscription per gateway process, fanned out to
//! per-task broadcast channels that exist only while someone watches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use futures::StreamExt;
use shared::keys;
use shared::progress::ProgressEvent;
use tokio::sync::broadcast;

/// Events buffered per task for slow viewers before they must resync from
/// the Redis log.
const PER_TASK_BUFFER: usize = 64;

#[derive(Clone, Default)]
pub struct ProgressHub {
    tasks: Arc<Mutex<HashMap<String, broadcast::Sender<Relayed>>>>,
}

/// An event as relayed to viewers: read once here, however many watch, and
/// its text shared (cloning it is a reference count).
#[derive(Clone, Debug)]
pub struct Relayed {
    /// Its sequence number; `None` when the payload could not be read (the
    /// viewer then takes the events from the log).
    pub seq: Option<u64>,
    pub terminal: bool,
    pub text: Utf8Bytes,
}

impl Relayed {
    fn new(payload: String) -> Self {
        let ev = serde_json::from_str::<ProgressEvent>(&payload).ok();
        Relayed {
            seq: ev.as_ref().map(|e| e.seq),
            terminal: ev.is_some_and(|e| e.status.is_terminal()),
            text: Utf8Bytes::from(payload),
        }
    }
}

/// A viewer's subscription; unregisters the task when the last one drops.
pub struct Subscription {
    hub: ProgressHub,
    task_id: String,
    pub rx: broadcast::Receiver<Relayed>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut tasks = self.hub.tasks.lock().expect("hub lock");
        if let Some(tx) = tasks.get(&self.task_id) {
            // This receiver is still counted until the struct is gone.
            if tx.receiver_count() <= 1 {
                tasks.remove(&self.task_id);
            }
        }
    }
}

impl ProgressHub {
    pub fn subscribe(&self, task_id: &str) -> Subscription {
        let mut tasks = self.tasks.lock().expect("hub lock");
        let rx = tasks.entry(task_id.to_owned()).or_insert_with(|| broadcast::channel(PER_TASK_BUFFER).0).subscribe();
        Subscription { hub: self.clone(), task_id: task_id.to_owned(), rx }
    }

    /// Number of tasks with at least one viewer here.
    pub fn watched_tasks(&self) -> usize {
        self.tasks.lock().expect("hub lock").len()
    }

    fn dispatch(&self, task_id: &str, payload: String) {
        let Some(tx) = self.tasks.lock().expect("hub lock").get(task_id).cloned() else { return };
        let _ = tx.send(Relayed::new(payload));
    }

    /// Keep a pattern subscription open, reconnecting with backoff, until
    /// the task is dropped. Events missed while disconnected are recovered
    /// by each viewer's periodic check of the progress log.
    pub async fn run(self, endpoint: shared::redis_conn::Endpoint) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match endpoint.pubsub().await {
                Ok(mut pubsub) => match pubsub.psubscribe(keys::PROGRESS_CHANNEL_PATTERN).await {
                    Ok(()) => {
                        tracing::info!("progress relay subscribed");
                        backoff = Duration::from_millis(100);
                        let mut stream = pubsub.on_message();
                        while let Some(msg) = stream.next().await {
                            let channel = msg.get_channel_name().to_owned();
                            let Some(task_id) = keys::task_id_from_channel(&channel) else { continue };
                            let Ok(payload) = msg.get_payload::<String>() else { continue };
                            self.dispatch(task_id, payload);
                        }
                        tracing::warn!("progress relay lost its Redis subscription; reconnecting");
                    }
                    Err(e) => tracing::warn!(error = %e, "progress relay could not subscribe"),
                },
                Err(e) => tracing::warn!(error = %e, "progress relay cannot reach Redis"),
            }
            shared::metrics::count_error(shared::metrics::Service::Redis);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
