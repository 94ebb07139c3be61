//! Logging set-up shared by the binaries: human-readable by default, JSON
//! with `LOG_FORMAT=json`; levels from `RUST_LOG` (default `info`).

/// Whether logs are JSON (`LOG_FORMAT=json`): then nothing but JSON lines
/// goes to stdout.
pub fn json_logs() -> bool {
    std::env::var("LOG_FORMAT").as_deref() == Ok("json")
}

pub fn init() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if json_logs() {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
}
