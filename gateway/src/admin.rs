//! Who may use `/admin`: the holder of `TAYORI_ADMIN_TOKEN`.
//!
//! - No token configured: every `/admin` path answers 404, as an unknown
//!   path does (nothing tells a stranger it exists).
//! - A script sends the token: `Authorization: Bearer T` (or `X-Admin-Token`).
//! - A browser signs in once through the form at `/admin`, which sets the
//!   session cookie: HttpOnly, SameSite=Strict, scoped to `/admin`, holding a
//!   SHA-256 of the token (never the token), so changing the token ends every
//!   session. A request that changes something and is signed in only by the
//!   cookie must also carry `X-Tayori-Admin: 1`, which no other site's page
//!   can add (cross-site request forgery).
//! - Each wrong token (or session cookie) counts against the client, at most
//!   [`crate::admission::ADMIN_FAILURES_PER_MIN`] a minute, whatever the
//!   public rate limit is; the right one never counts.
//!
//! Tokens are compared as SHA-256 digests in constant time.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use sha2::{Digest, Sha256};

use crate::admission::{ClientIp, Limit, Scope};
use crate::error::AppError;
use crate::state::AppState;

/// The shortest admin token the gateway starts with.
pub const MIN_TOKEN_CHARS: usize = 16;
/// The session cookie's name.
pub const COOKIE: &str = "tayori_admin";
/// The header a cookie-signed request that changes something carries.
pub const CSRF_HEADER: &str = "x-tayori-admin";
/// How long a browser stays signed in.
pub const SESSION_SECS: u64 = 12 * 3600;

/// An operator's request, checked.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

/// The 404 of a gateway without an admin token (the fallback's own words).
pub fn absent() -> AppError {
    AppError::not_found("no-such-endpoint", "There is no such endpoint; see the README for the API.")
}

fn digest(domain: &str, token: &str) -> [u8; 32] {
    Sha256::new().chain_update(domain).chain_update([0]).chain_update(token.as_bytes()).finalize().into()
}

fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `given` is the configured token.
pub fn token_matches(configured: &str, given: &str) -> bool {
    same(&digest("tayori admin token", configured), &digest("tayori admin token", given.trim()))
}

/// The session cookie's value for `token`.
pub fn session_value(token: &str) -> String {
    hex::encode(digest("tayori admin session", token))
}

/// The `Set-Cookie` that signs a browser in (`max_age` 0 signs it out).
pub fn session_cookie(value: &str, max_age: u64) -> String {
    format!("{COOKIE}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age}")
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
}

/// How a request proves itself.
enum Proof<'a> {
    Token(&'a str),
    Session(&'a str),
    None,
}

fn proof(headers: &HeaderMap) -> Proof<'_> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    if let Some(t) = bearer.or_else(|| headers.get("x-admin-token").and_then(|v| v.to_str().ok())) {
        return Proof::Token(t);
    }
    match cookie(headers, COOKIE) {
        Some(c) => Proof::Session(c),
        None => Proof::None,
    }
}

/// Check one sign-in attempt of `ip` with `given`: `Ok` for the right
/// token; a wrong one is counted and answered 401 (429 once the client has
/// used up its attempts).
pub async fn check_attempt(state: &AppState, ip: &ClientIp, ok: bool) -> Result<(), AppError> {
    let mut limit = Limit::new(state, ip, Scope::Admin);
    limit.check().await?;
    if ok {
        return Ok(());
    }
    limit.take().await?;
    Err(unauthorized())
}

fn unauthorized() -> AppError {
    AppError::client(
        StatusCode::UNAUTHORIZED,
        "admin-token-invalid",
        "This needs the admin token: send it as `Authorization: Bearer …`, or sign in at /admin.",
    )
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(token) = state.cfg.admin_token.as_deref() else { return Err(absent()) };
        let Ok(ip) = ClientIp::from_request_parts(parts, state).await;
        let ok = match proof(&parts.headers) {
            Proof::Token(given) => token_matches(token, given),
            Proof::Session(value) => {
                let right = hex::decode(value).ok().and_then(|v| <[u8; 32]>::try_from(v).ok());
                let ok = right.is_some_and(|v| same(&v, &digest("tayori admin session", token)));
                if ok
                    && parts.method != Method::GET
                    && parts.method != Method::HEAD
                    && parts.headers.get(CSRF_HEADER).is_none_or(|v| v != "1")
                {
                    return Err(AppError::client(
                        StatusCode::FORBIDDEN,
                        "admin-csrf",
                        "A change made with the session cookie must carry the header X-Tayori-Admin: 1.",
                    ));
                }
                ok
            }
            Proof::None => {
                // Nothing guessed (a signed-out dashboard asking): not counted.
                Limit::new(state, &ip, Scope::Admin).check().await?;
                return Err(unauthorized());
            }
        };
        check_attempt(state, &ip, ok).await?;
        Ok(Admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_cookies_are_read_and_compared() {
        assert!(token_matches("a-long-admin-token", "a-long-admin-token"));
        assert!(!token_matches("a-long-admin-token", "a-long-admin-tokem"));
        assert!(!token_matches("a-long-admin-token", ""));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "other=1; tayori_admin=abc; x=2".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        h.insert(header::COOKIE, "tayori_admin_x=abc".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE), None, "a longer name is another cookie");
        assert_ne!(session_value("a-long-admin-token"), "a-long-admin-token");
        assert!(!session_value("a-long-admin-token").contains("admin-token"));
    }
}
