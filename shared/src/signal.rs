//! Process shutdown: the first SIGTERM or Ctrl-C asks for a graceful stop;
//! a second one asks to stop at once.
//!
//! Both binaries run their service under [`run_until_stopped`], which owns
//! the runtime: a second signal drops every task (their subprocesses are
//! killed on drop) and leaves within a second, instead of the signal being
//! swallowed by a handler that was installed once.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// How many stop signals have arrived (0, 1, 2...).
#[derive(Clone)]
pub struct Signals(watch::Receiver<u32>);

impl Signals {
    /// Start listening for SIGTERM and Ctrl-C (inside a runtime).
    pub fn listen() -> Signals {
        let (tx, rx) = watch::channel(0u32);
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        let mut int =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).expect("SIGINT handler");
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = term.recv() => {},
                    Some(()) = int.recv() => {},
                    else => return,
                }
                tx.send_modify(|n| *n += 1);
            }
        });
        Signals(rx)
    }

    async fn count(&self, n: u32) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|c| *c >= n).await;
    }

    /// Completes on the first signal.
    pub fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let s = self.clone();
        async move {
            s.count(1).await;
            tracing::info!("shutdown requested");
        }
    }

    /// Completes on the second signal.
    pub async fn forced(&self) {
        self.count(2).await;
    }
}

/// Exit status after a second signal (128 + SIGINT, as shells report it).
pub const FORCED_EXIT: u8 = 130;

/// Build a multi-threaded runtime, run `service(stop)` on it, where `stop`
/// completes on the first signal, and return its result; a second signal
/// ends it at once with [`FORCED_EXIT`]. Either way every task left is
/// dropped and blocking work is waited for at most a second.
pub fn run_until_stopped<F, Fut, E>(service: F) -> std::process::ExitCode
where
    F: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async {
        let signals = Signals::listen();
        tokio::select! {
            r = service(Box::pin(signals.requested())) => Some(match r {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "stopped with an error");
                    eprintln!("error: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }),
            () = signals.forced() => {
                tracing::warn!("second stop signal: exiting at once");
                None
            }
        }
    });
    // Dropping the tasks kills their subprocesses (`kill_on_drop`); blocking
    // work is waited for a second after a graceful stop, not after a second
    // signal.
    rt.shutdown_timeout(if code.is_some() { Duration::from_secs(1) } else { Duration::from_millis(100) });
    match code {
        Some(code) => code,
        // Blocking work (a model's inference) may still be running: leave
        // without running exit handlers and static destructors under it
        // (ONNX Runtime's crash the process when they do).
        // SAFETY: `_exit` ends the process at once; nothing runs after it.
        None => unsafe { libc::_exit(i32::from(FORCED_EXIT)) },
    }
}
