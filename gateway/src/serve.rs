//! Serving HTTP with bounds on slow clients, for the gateway and the
//! embedded S3 endpoint alike. `axum::serve` has no header timeout, so a
//! client that sends its request head a byte at a time (a slowloris) would
//! hold a connection forever; here hyper's HTTP/1 server is driven directly:
//! - each request head must arrive within `header_timeout`;
//! - each request body within `body_timeout` of the request's start, however
//!   it trickles in (past it, the handler's read fails, its spool files are
//!   dropped and the client gets 408 and a closed connection);
//! - HTTP/1 only: cleartext HTTP/2 (h2c) is not spoken, so its streams
//!   cannot sidestep these rules (a TLS proxy in front may speak HTTP/2);
//! - connections bounded in all and per client (past either bound a new
//!   connection is closed at once), so no one client can hold the server's
//!   sockets, or the memory of many uploads in flight;
//! - WebSocket upgrades kept, the peer address given to handlers as
//!   `ConnectInfo`, and a graceful stop that waits a bounded time for open
//!   connections.
//!
//! Written here rather than with `axum::serve` (no header timeout) or
//! hyper-util's `auto` server (it speaks h2c on upgradeable connections
//! whatever it is told).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Longest a stop waits for open connections (WebSocket viewers) to end.
const DRAIN: Duration = Duration::from_secs(10);

/// How long clients get for the parts of a request, and how many
/// connections they may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// Open connections in all; past it, new ones are closed at once.
    pub max_connections: usize,
    /// Open connections per client (an IPv4 address or IPv6 /64 of the
    /// peer); 0: no bound (behind a proxy, every peer is the proxy).
    pub max_per_client: usize,
}

/// Who holds how many connections.
#[derive(Default)]
struct Connections {
    total: usize,
    per_client: std::collections::HashMap<String, usize>,
}

/// One admitted connection; its slots are given back when it is dropped.
struct Slot {
    table: Arc<std::sync::Mutex<Connections>>,
    client: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.table.lock().expect("connection table");
        t.total -= 1;
        if let Some(n) = t.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                t.per_client.remove(&self.client);
            }
        }
    }
}

/// A slot for a connection from `peer`, if both bounds have room.
fn admit(table: &Arc<std::sync::Mutex<Connections>>, limits: &Limits, peer: SocketAddr) -> Option<Slot> {
    let client = crate::admission::client_key(peer.ip());
    let mut t = table.lock().expect("connection table");
    let held = t.per_client.get(&client).copied().unwrap_or(0);
    if t.total >= limits.max_connections || (limits.max_per_client > 0 && held >= limits.max_per_client) {
        return None;
    }
    t.total += 1;
    *t.per_client.entry(client.clone()).or_insert(0) += 1;
    Some(Slot { table: table.clone(), client })
}

/// Serve `app` until `shutdown` completes.
///
/// Written on hyper's HTTP/1 connection directly: hyper-util's `auto`
/// builder, whose graceful shutdown this replaces, still answers HTTP/2
/// prior knowledge on upgradeable connections even when told `http1_only`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let body_timeout = limits.body_timeout;
    let app = app.layer(axum::middleware::from_fn(move |req, next| body_deadline(body_timeout, req, next)));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    // Each connection holds a receiver: told to stop, it finishes the
    // request in hand and closes; the sender sees when all are gone.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let table = Arc::new(std::sync::Mutex::new(Connections::default()));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers go out as soon as they are written: with Nagle's algorithm
        // a response body sent after its head waited for the client's
        // delayed ACK, 40 ms on Linux (seen on the worker's S3 GETs of the
        // embedded endpoint: 47 ms for four small objects, 7 ms without).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let Some(slot) = admit(&table, &limits, peer) else {
            // Closed at once: a client holding its share, or a full server.
            tracing::debug!(%peer, "connection refused: too many open");
            drop(stream);
            continue;
        };
        let svc = TowerToHyperService::new(app.clone().layer(axum::Extension(ConnectInfo::<SocketAddr>(peer))));
        let conn = http1.serve_connection(TokioIo::new(stream), svc).with_upgrades();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                () = async { drop(stop.wait_for(|s| *s).await) } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(true);
    if tokio::time::timeout(DRAIN, stop_tx.closed()).await.is_err() {
        tracing::warn!("open connections did not end within {DRAIN:?}; stopping anyway");
    }
    Ok(())
}

/// Give the request's body a deadline; if it passed while the handler read
/// the body, answer 408 whatever the handler made of the failed read.
async fn body_deadline(timeout: Duration, req: Request, next: Next) -> Response {
    let expired = Arc::new(AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    let body = Body::new(DeadlineBody {
        inner: body,
        sleep: Box::pin(tokio::time::sleep(timeout)),
        expired: expired.clone(),
        done: false,
    });
    let resp = next.run(Request::from_parts(parts, body)).await;
    if !expired.load(Ordering::Relaxed) {
        return resp;
    }
    tracing::info!(timeout_secs = timeout.as_secs(), "request body too slow; cut off");
    let mut resp = (
        http::StatusCode::REQUEST_TIMEOUT,
        axum::Json(serde_json::json!({"error": {
            "code": "request-timeout",
            "message": format!("The upload did not arrive within {} s; please try again on a faster connection.", timeout.as_secs()),
        }})),
    )
        .into_response();
    resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    resp
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

/// A request body that fails once its deadline passes.
struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<AtomicBool>,
    done: bool,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.done = true;
            self.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
        }
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            self.done = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
