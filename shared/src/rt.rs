//! Runtime helpers every crate uses: one of each.

/// Aborts a background task when dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Work on the blocking pool panicked (a bug, never the input's fault or a
/// passing fault: not worth retrying).
#[derive(Debug, thiserror::Error)]
#[error("blocking work stopped unexpectedly: {0}")]
pub struct Panicked(pub String);

/// Run CPU-bound or blocking work (file system, image decoding, inference)
/// on the blocking pool, never on an async thread.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Panicked> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Panicked(e.to_string()))
}
