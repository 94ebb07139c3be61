//! Which web pages may call tayori from a browser. The page the gateway
//! serves itself is same-origin and needs nothing; other origins are allowed
//! only when listed in `TAYORI_CORS_ORIGINS` (comma-separated, exact
//! `scheme://host[:port]`; no wildcard). The embedded S3 endpoint (another
//! port, so another origin) additionally allows pages from its own host, so
//! that the gateway's page can upload to and play from it.

use std::time::Duration;

use axum::http::{HeaderValue, Method, header, request::Parts};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Parse `TAYORI_CORS_ORIGINS`.
pub fn parse_origins(raw: &str) -> Result<Vec<HeaderValue>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|o| {
            let valid = o.is_ascii()
                && (o.starts_with("http://") || o.starts_with("https://"))
                && !o.ends_with('/')
                && o.split("://").nth(1).is_some_and(|h| !h.is_empty() && !h.contains(['/', '*', ' ']));
            if !valid {
                return Err(format!("{o:?} is not an origin like https://app.example.com (no path, no wildcard)"));
            }
            HeaderValue::from_str(o).map_err(|e| format!("{o:?}: {e}"))
        })
        .collect()
}

/// CORS for the gateway's API: only the listed origins; none listed, no
/// CORS headers at all (same-origin only).
pub fn api(origins: &[HeaderValue]) -> Option<CorsLayer> {
    (!origins.is_empty()).then(|| {
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.iter().cloned()))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::CONTENT_TYPE,
                header::HeaderName::from_static(crate::idempotency::HEADER),
                header::HeaderName::from_static("x-cancel-token"),
            ])
            .expose_headers([header::RETRY_AFTER, header::HeaderName::from_static(crate::idempotency::REPLAYED)])
            .max_age(Duration::from_secs(600))
    })
}

/// The host part of an origin or a Host header, without the port.
fn host_of(s: &str) -> &str {
    let s = s.split("://").nth(1).unwrap_or(s);
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    s.split(':').next().unwrap_or("")
}

/// Whether `origin` is a page on the same host as the request's `Host`.
fn same_host(origin: &HeaderValue, parts: &Parts) -> bool {
    let (Ok(origin), Some(Ok(host))) = (origin.to_str(), parts.headers.get(header::HOST).map(|h| h.to_str())) else {
        return false;
    };
    let h = host_of(origin);
    !h.is_empty() && h.eq_ignore_ascii_case(host_of(host))
}

/// CORS for the embedded S3 endpoint: listed origins and pages from its own
/// host (the gateway's page, on another port).
pub fn embedded_s3(origins: &[HeaderValue]) -> CorsLayer {
    let listed = origins.to_vec();
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, parts| listed.contains(origin) || same_host(origin, parts)))
        .allow_methods([Method::GET, Method::HEAD, Method::PUT, Method::POST])
        .allow_headers(tower_http::cors::Any)
        .expose_headers([header::ETAG, header::CONTENT_LENGTH])
        .max_age(Duration::from_secs(600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_exact() {
        let ok = parse_origins(" https://app.example.com, http://localhost:3000 ,").unwrap();
        assert_eq!(ok.len(), 2);
        for bad in [
            "*",
            "https://*.example.com",
            "https://app.example.com/",
            "app.example.com",
            "https://",
            "https://bücher.example",
        ] {
            assert!(parse_origins(bad).is_err(), "{bad}");
        }
        assert!(parse_origins("").unwrap().is_empty());
    }

    #[test]
    fn same_host_ignores_the_port_only() {
        let parts = |host: &str| {
            let (parts, _) = axum::http::Request::builder().header("host", host).body(()).unwrap().into_parts();
            parts
        };
        let o = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(same_host(&o("http://192.168.1.5:8080"), &parts("192.168.1.5:9000")));
        assert!(same_host(&o("http://[::1]:8080"), &parts("[::1]:9000")));
        assert!(!same_host(&o("http://evil.example:9000"), &parts("192.168.1.5:9000")));
        assert!(!same_host(&o("null"), &parts("192.168.1.5:9000")));
    }
}
