//! Who may submit a job now: a per-client rate limit kept in Redis (so every
//! gateway instance shares it) and a bound on the queue's depth, so that a
//! flood is answered with 429/503 and `Retry-After` instead of growing the
//! queue without limit.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use shared::redis_conn::ConnectionManager;

use crate::error::AppError;
use crate::state::AppState;

/// Sliding one-minute window of submission times in a sorted set
/// (`ratelimit:{ip}`): old entries dropped, the new one added only if the
/// window has room; otherwise the milliseconds until the oldest leaves it.
const RATE_LIMIT: &str = r#"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tonumber(oldest[2]) + window - now
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
return 0
"#;

pub const WINDOW: Duration = Duration::from_secs(60);

/// The client's address: the connection's peer, or, only when
/// `TAYORI_TRUST_PROXY_HEADERS` is set, the first address of `X-Forwarded-For`.
pub struct ClientIp(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        if state.cfg.trust_proxy_headers
            && let Some(ip) = parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.trim().parse().ok())
        {
            return Ok(ClientIp(Some(ip)));
        }
        Ok(ClientIp(peer))
    }
}

/// Count a submission from `ip`; `Err` 429 with the seconds to wait when
/// it already made `per_minute` in the last minute. 0 turns the limit off.
pub async fn rate_limit(conn: &mut ConnectionManager, ip: Option<IpAddr>, per_minute: u32) -> Result<(), AppError> {
    rate_limit_scoped(conn, "", ip, per_minute).await
}

/// [`rate_limit`] with its own window per `scope` (`ratelimit:{ip}:{scope}`;
/// the empty scope is the video jobs' `ratelimit:{ip}`).
pub async fn rate_limit_scoped(
    conn: &mut ConnectionManager,
    scope: &str,
    ip: Option<IpAddr>,
    per_minute: u32,
) -> Result<(), AppError> {
    let Some(ip) = ip.filter(|_| per_minute > 0) else { return Ok(()) };
    let key = if scope.is_empty() { format!("ratelimit:{ip}") } else { format!("ratelimit:{ip}:{scope}") };
    let what = if scope.is_empty() { "videos" } else { scope };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let wait_ms: i64 = redis::Script::new(RATE_LIMIT)
        .key(key)
        .arg(now)
        .arg(WINDOW.as_millis() as u64)
        .arg(per_minute)
        .arg(format!("{now}-{}", uuid::Uuid::new_v4().simple()))
        .invoke_async(conn)
        .await?;
    if wait_ms > 0 {
        let secs = (wait_ms as u64).div_ceil(1000).max(1);
        return Err(AppError::Busy {
            status: axum::http::StatusCode::TOO_MANY_REQUESTS,
            code: "rate-limited",
            message: format!(
                "Too many {what} from your address: at most {per_minute} a minute. Try again in {secs} s."
            ),
            retry_after: secs,
        });
    }
    Ok(())
}

/// Refuse new work while more than `max_depth` jobs wait (0: no bound).
pub async fn queue_room(state: &AppState) -> Result<(), AppError> {
    let max = state.cfg.max_queue_depth;
    if max == 0 {
        return Ok(());
    }
    let depth = state.queue.stats().await?.waiting;
    if depth >= max {
        return Err(AppError::Busy {
            status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
            code: "server-busy",
            message: format!("The server is busy ({depth} videos waiting). Try again in 30 s."),
            retry_after: 30,
        });
    }
    Ok(())
}
