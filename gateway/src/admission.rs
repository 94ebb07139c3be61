//! Who may make work now: per-client rate limits kept in Redis (so every
//! gateway instance shares them) and bounds on the queues' depth, so that a
//! flood is answered with 429/503 and `Retry-After` instead of growing the
//! queues without limit.
//!
//! A client is its address as the last trusted hop saw it: the connection's
//! peer, or behind `TAYORI_TRUSTED_PROXY_HOPS` proxies the entry of
//! `X-Forwarded-For` that many places from the right (the one the outermost
//! trusted proxy appended), never an entry the client wrote itself. IPv6
//! clients are counted per /64, the block one subscriber usually holds.
//!
//! Only requests that passed validation are counted: a route first
//! [`Limit::check`]s that the client has room (before reading a body, so a
//! refused flood costs no disk), then [`Limit::take`]s a slot once the
//! request is known to be good. A typo costs the client nothing.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use shared::redis_conn::ConnectionManager;

use crate::error::AppError;
use crate::state::AppState;

/// Sliding one-minute window of request times in a sorted set: old entries
/// dropped; with room, 0 (and in `take` mode the new entry is added);
/// without, the milliseconds until the oldest leaves the window.
// Timed by Redis's clock, so gateways on several machines agree.
static RATE_LIMIT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    shared::redis_conn::with_clock(
        r#"
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
if ARGV[4] == 'take' then
  redis.call('ZADD', KEYS[1], now, now .. '-' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
end
return 0
"#,
    )
});

pub const WINDOW: Duration = Duration::from_secs(60);

/// The client's address (see the module docs).
pub struct ClientIp(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        Ok(ClientIp(client_address(peer, &parts.headers, &state.cfg.proxies)))
    }
}

/// The proxies in front of the gateway: how many append to
/// `X-Forwarded-For`, and the networks they connect from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies {
    pub hops: u32,
    pub nets: Vec<Net>,
}

/// An address block (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    bits: u8,
}

impl Net {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.bits)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Net, String> {
        let (a, bits) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.trim().parse().map_err(|_| format!("{s:?} is not an address block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = if bits.is_empty() { max } else { bits.trim().parse().map_err(|_| format!("{s:?}: bad prefix"))? };
        if bits > max {
            return Err(format!("{s:?}: prefix longer than {max}"));
        }
        Ok(Net { addr, bits })
    }
}

/// `TAYORI_TRUSTED_PROXY_NETS`: comma-separated blocks, or `private` for
/// loopback and the private ranges (where proxies of one's own sit).
pub fn parse_nets(raw: &str) -> Result<Vec<Net>, String> {
    let mut nets = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        if item == "private" {
            for n in ["127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "::1/128", "fc00::/7"] {
                nets.push(n.parse()?);
            }
        } else {
            nets.push(item.parse()?);
        }
    }
    Ok(nets)
}

/// The client behind `hops` trusted proxies: the `X-Forwarded-For` entry
/// `hops` places from the right (every header line, in order). With fewer
/// entries than hops, the leftmost (each was appended by a trusted proxy);
/// without a usable entry, with no trusted proxies, or when the peer is not
/// in one of the proxies' networks (a client that reached the gateway
/// directly), the peer.
pub fn client_address(peer: Option<IpAddr>, headers: &HeaderMap, proxies: &TrustedProxies) -> Option<IpAddr> {
    let hops = proxies.hops;
    if hops == 0 || !peer.is_some_and(|p| proxies.nets.iter().any(|n| n.contains(p))) {
        return peer.map(canonical);
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let Some(first) = entries.first() else { return peer.map(canonical) };
    let chosen = entries.len().checked_sub(hops as usize).map_or(*first, |i| entries[i]);
    parse_entry(chosen).or(peer).map(canonical)
}

/// An `X-Forwarded-For` entry: an address, possibly with a port
/// (`203.0.113.7:4711`, `[2001:db8::1]:443`).
fn parse_entry(e: &str) -> Option<IpAddr> {
    e.parse::<IpAddr>().ok().or_else(|| e.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// What a rate limit counts: an IPv4 address, or an IPv6 /64.
pub fn client_key(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// The work a client can ask for, each with its own window and allowance
/// (a multiple of `TAYORI_RATE_LIMIT_PER_MIN`, the video allowance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Video jobs (`ratelimit:{client}`).
    Videos,
    /// Photo upload policies: a person may try a few photos per video.
    Uploads,
    /// People lookups in an uploaded photo (a detection run each).
    People,
    /// Music and voice uploads (a transcode and analysis each).
    CatalogUploads,
    /// Voice and music previews that have to be made (a cached one is free).
    Previews,
    /// Cancel requests (each try, right token or not).
    Cancels,
    /// Wrong admin tokens (a right one is never counted).
    Admin,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Videos => "",
            Scope::Uploads => "uploads",
            Scope::People => "people",
            Scope::CatalogUploads => "catalog-uploads",
            Scope::Previews => "previews",
            Scope::Cancels => "cancels",
            Scope::Admin => "admin",
        }
    }

    fn multiple(self) -> u32 {
        match self {
            Scope::Videos | Scope::CatalogUploads => 1,
            Scope::Uploads | Scope::People | Scope::Previews | Scope::Cancels | Scope::Admin => 4,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Scope::Videos => "videos",
            Scope::Uploads => "uploads",
            Scope::People => "photo checks",
            Scope::CatalogUploads => "music and voice uploads",
            Scope::Previews => "previews",
            Scope::Cancels => "cancel requests",
            Scope::Admin => "admin sign-in attempts",
        }
    }
}

/// One client's allowance in one scope.
pub struct Limit {
    conn: ConnectionManager,
    key: Option<String>,
    per_minute: u32,
    scope: Scope,
}

/// Wrong admin tokens one client may send a minute.
pub const ADMIN_FAILURES_PER_MIN: u32 = 20;

impl Limit {
    /// `ip` in `scope`; `per_minute_videos` 0 (or an unknown client) turns it off.
    pub fn new(state: &AppState, ip: &ClientIp, scope: Scope) -> Limit {
        // Wrong admin tokens are bounded whatever the rate limit is (even
        // off): a guessed token is a break-in, not a load.
        let per_minute = match scope {
            Scope::Admin => ADMIN_FAILURES_PER_MIN,
            _ => state.cfg.rate_limit_per_min.saturating_mul(scope.multiple()),
        };
        let key = ip.0.filter(|_| per_minute > 0).map(|ip| {
            let client = client_key(ip);
            if scope == Scope::Videos {
                format!("ratelimit:{client}")
            } else {
                format!("ratelimit:{client}:{}", scope.name())
            }
        });
        Limit { conn: state.redis.clone(), key, per_minute, scope }
    }

    /// `Err` 429 if the client has no room now; counts nothing.
    pub async fn check(&mut self) -> Result<(), AppError> {
        self.call("check").await
    }

    /// Count this request; `Err` 429 if the client has no room.
    pub async fn take(&mut self) -> Result<(), AppError> {
        self.call("take").await
    }

    async fn call(&mut self, mode: &str) -> Result<(), AppError> {
        let Some(key) = &self.key else { return Ok(()) };
        let wait_ms: i64 = RATE_LIMIT
            .key(key)
            .arg(WINDOW.as_millis() as u64)
            .arg(self.per_minute)
            .arg(uuid::Uuid::new_v4().simple().to_string())
            .arg(mode)
            .invoke_async(&mut self.conn)
            .await?;
        if wait_ms > 0 {
            let secs = (wait_ms as u64).div_ceil(1000).max(1);
            return Err(AppError::Busy {
                status: axum::http::StatusCode::TOO_MANY_REQUESTS,
                code: "rate-limited",
                message: format!(
                    "Too many {} from your address: at most {} a minute. Try again in {secs} s.",
                    self.scope.what(),
                    self.per_minute
                ),
                retry_after: secs,
            });
        }
        Ok(())
    }
}

fn busy(message: String, retry_after: u64) -> AppError {
    AppError::Busy { status: axum::http::StatusCode::SERVICE_UNAVAILABLE, code: "server-busy", message, retry_after }
}

/// Refuse new work while more than `max_depth` jobs wait (0: no bound).
pub async fn queue_room(state: &AppState) -> Result<(), AppError> {
    let max = state.cfg.max_queue_depth;
    if max == 0 {
        return Ok(());
    }
    let depth = state.queue.stats().await?.waiting;
    if depth >= max {
        return Err(busy(format!("The server is busy ({depth} videos waiting). Try again in 30 s."), 30));
    }
    Ok(())
}

/// Refuse a catalog task (analysis, preview, people lookup) while more than
/// `TAYORI_MAX_CATALOG_QUEUE_DEPTH` of them wait (0: no bound).
pub async fn catalog_queue_room(state: &AppState) -> Result<(), AppError> {
    let max = state.cfg.max_catalog_queue_depth;
    if max == 0 {
        return Ok(());
    }
    let depth = state.catalog_queue.stats().await?.waiting;
    if depth >= max {
        return Err(busy(format!("The server is busy ({depth} tasks waiting). Try again in 10 s."), 10));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn proxies(hops: u32) -> TrustedProxies {
        TrustedProxies { hops, nets: parse_nets("private").unwrap() }
    }

    #[test]
    fn address_blocks_contain_what_they_should() {
        let n: Net = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains("10.255.0.1".parse().unwrap()) && !n.contains("11.0.0.1".parse().unwrap()));
        let n: Net = "2001:db8::/32".parse().unwrap();
        assert!(n.contains("2001:db8:ffff::1".parse().unwrap()) && !n.contains("2001:db9::1".parse().unwrap()));
        assert!("0.0.0.0/0".parse::<Net>().unwrap().contains("203.0.113.1".parse().unwrap()));
        assert!("203.0.113.7".parse::<Net>().unwrap().contains("203.0.113.7".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Net>().is_err() && "nonsense".parse::<Net>().is_err());
        assert_eq!(parse_nets("private, 203.0.113.0/24").unwrap().len(), 7);
    }

    #[test]
    fn a_client_that_reaches_the_gateway_directly_cannot_pose_as_a_proxy() {
        let public_peer = ip("198.51.100.20");
        assert_eq!(client_address(public_peer, &xff(&["203.0.113.7"]), &proxies(1)), public_peer);
        assert_eq!(client_address(ip("10.1.2.3"), &xff(&["203.0.113.7"]), &proxies(1)), ip("203.0.113.7"));
    }

    #[test]
    fn the_client_is_what_the_trusted_proxy_appended() {
        let peer = ip("10.0.0.2");
        // The client wrote "6.6.6.6"; the proxy appended what it saw.
        assert_eq!(client_address(peer, &xff(&["6.6.6.6, 203.0.113.7"]), &proxies(1)), ip("203.0.113.7"));
        assert_eq!(client_address(peer, &xff(&["6.6.6.6", "203.0.113.7"]), &proxies(1)), ip("203.0.113.7"));
        // Two proxies: the outer one's entry, one before the inner one's.
        assert_eq!(client_address(peer, &xff(&["6.6.6.6, 203.0.113.7, 10.0.0.1"]), &proxies(2)), ip("203.0.113.7"));
        // Fewer entries than hops: the leftmost.
        assert_eq!(client_address(peer, &xff(&["203.0.113.7"]), &proxies(2)), ip("203.0.113.7"));
        // Not trusted, no header, garbage: the peer.
        assert_eq!(client_address(peer, &xff(&["203.0.113.7"]), &proxies(0)), peer);
        assert_eq!(client_address(peer, &HeaderMap::new(), &proxies(1)), peer);
        assert_eq!(client_address(peer, &xff(&["6.6.6.6, not-an-address"]), &proxies(1)), peer);
        // Ports and mapped addresses.
        assert_eq!(client_address(peer, &xff(&["203.0.113.7:4711"]), &proxies(1)), ip("203.0.113.7"));
        assert_eq!(client_address(peer, &xff(&["[2001:db8::1]:443"]), &proxies(1)), ip("2001:db8::1"));
        assert_eq!(client_address(ip("::ffff:192.0.2.1"), &HeaderMap::new(), &proxies(0)), ip("192.0.2.1"));
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let key = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::/64");
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
        assert_eq!(key("203.0.113.7"), "203.0.113.7");
        assert_eq!(key("::ffff:203.0.113.7"), "203.0.113.7");
    }
}
