//! Connecting to Redis: one multiplexed, self-reconnecting connection per
//! process (the `redis` crate's ConnectionManager), with bounded timeouts so
//! that a dead Redis yields an error instead of a hang.

use std::time::Duration;

pub use redis::aio::ConnectionManager;

#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `TAYORI_REDIS_URL`, default `redis://127.0.0.1:6379/0`.
    pub url: String,
    /// `TAYORI_REDIS_TIMEOUT_MS`, default 5000: connect and response timeout.
    pub timeout: Duration,
}

impl RedisConfig {
    pub fn from_env() -> Result<Self, crate::env::EnvError> {
        Ok(RedisConfig {
            url: crate::env::var("TAYORI_REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379/0".into()),
            timeout: crate::env::millis("TAYORI_REDIS_TIMEOUT_MS", 5000)?,
        })
    }

    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        redis::Client::open(self.url.as_str())
    }

    /// A managed connection that reconnects by itself after Redis restarts.
    pub async fn connect(&self) -> redis::RedisResult<ConnectionManager> {
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(2));
        self.client()?.get_connection_manager_with_config(cfg).await
    }
}

/// Whether a Redis error is worth retrying (connection trouble, timeouts,
/// a server still loading its data) rather than a bug or bad data.
pub fn is_transient(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
                | redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain)
        )
}

/// The prelude of every Lua script that needs the time: `now`, Redis's own
/// clock in milliseconds (processes on machines whose clocks disagree still
/// agree on it).
pub const LUA_CLOCK: &str =
    "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// A script whose body can use `now` ([`LUA_CLOCK`]).
pub fn with_clock(body: &str) -> redis::Script {
    redis::Script::new(&format!("{LUA_CLOCK}{body}"))
}
