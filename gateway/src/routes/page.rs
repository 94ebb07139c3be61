//! The web page: `/` (make a video), `/voices` and `/music` (manage the
//! catalog), their script and style under `/static/`, and `/api/steps`
//! (the pipeline's step names and messages in Japanese and English).
//!
//! The files are compiled into the binary: no build step, nothing to deploy
//! beside it. The page's language is taken from `Accept-Language` (Japanese
//! or English) and can be switched on the page.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use shared::progress::Step;

use crate::state::AppState;

const INDEX_HTML: &str = include_str!("../../static/index.html");
const VOICES_HTML: &str = include_str!("../../static/voices.html");
const MUSIC_HTML: &str = include_str!("../../static/music.html");
const APP_JS: &str = include_str!("../../static/app.js");
const MANAGE_JS: &str = include_str!("../../static/manage.js");
const COMMON_JS: &str = include_str!("../../static/common.js");
const APP_CSS: &str = include_str!("../../static/app.css");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|State(s): State<AppState>, h: HeaderMap| async move { page(&s, INDEX_HTML, &h) }))
        .route("/voices", get(|State(s): State<AppState>, h: HeaderMap| async move { page(&s, VOICES_HTML, &h) }))
        .route("/music", get(|State(s): State<AppState>, h: HeaderMap| async move { page(&s, MUSIC_HTML, &h) }))
        .route("/static/app.js", get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/static/manage.js", get(|| async { asset(MANAGE_JS, "text/javascript; charset=utf-8") }))
        .route("/static/common.js", get(|| async { asset(COMMON_JS, "text/javascript; charset=utf-8") }))
        .route("/static/app.css", get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }))
        .route("/api/steps", get(steps))
}

/// `ja` when the client's first listed language (by order, then `q`) is
/// Japanese, else `en`.
pub fn language(headers: &HeaderMap) -> &'static str {
    let Some(list) = headers.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()) else { return "en" };
    let mut best: Option<(f32, &str)> = None;
    for item in list.split(',') {
        let mut parts = item.trim().split(';');
        let tag = parts.next().unwrap_or("").trim();
        let q = parts.find_map(|p| p.trim().strip_prefix("q=")).and_then(|q| q.parse::<f32>().ok()).unwrap_or(1.0);
        if tag.is_empty() || q <= 0.0 {
            continue;
        }
        if best.is_none_or(|(bq, _)| q > bq) {
            best = Some((q, tag));
        }
    }
    match best {
        Some((_, tag)) if tag.to_ascii_lowercase().starts_with("ja") => "ja",
        _ => "en",
    }
}

/// The pages' Content-Security-Policy: scripts, styles and connections to
/// this origin only, plus the S3 endpoint (uploads, people previews, audio
/// previews and the video), which may be on another host or port.
pub fn content_security_policy(s3_origin: &str) -> String {
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: {s3_origin}; \
         media-src 'self' blob: {s3_origin}; connect-src 'self' {s3_origin}; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    )
}

pub(crate) fn page(state: &AppState, html: &'static str, headers: &HeaderMap) -> Response {
    let lang = language(headers);
    let body = html.replacen("<html lang=\"en\">", &format!("<html lang=\"{lang}\">"), 1);
    let mut resp = Html(body).into_response();
    let h = resp.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("Accept-Language"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if let Ok(csp) = HeaderValue::from_str(&content_security_policy(&state.storage.public_origin())) {
        h.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    resp
}

pub(crate) fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        body,
    )
        .into_response()
}

async fn steps() -> impl IntoResponse {
    let steps: Vec<_> = Step::ALL
        .iter()
        .map(|s| {
            json!({
                "name": s.name(),
                "index": s.index(),
                "percentage": s.start_percentage(),
                "message": {"ja": s.message(), "en": s.message_en()},
            })
        })
        .collect();
    Json(json!({"steps": steps, "total_steps": Step::ALL.len()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lang(v: &str) -> &'static str {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_str(v).unwrap());
        language(&h)
    }

    #[test]
    fn the_first_preferred_language_decides() {
        assert_eq!(lang("ja,en-US;q=0.9,en;q=0.8"), "ja");
        assert_eq!(lang("ja-JP"), "ja");
        assert_eq!(lang("en-US,en;q=0.9,ja;q=0.8"), "en");
        assert_eq!(lang("en;q=0.5, ja;q=0.9"), "ja");
        assert_eq!(lang("fr-FR,fr;q=0.9"), "en");
        assert_eq!(lang("ja;q=0"), "en");
        assert_eq!(lang(""), "en");
        assert_eq!(language(&HeaderMap::new()), "en");
    }
}
