//! The web page at `/`.

use axum::Router;
use axum::response::Html;
use axum::routing::get;

use crate::state::AppState;

const INDEX_HTML: &str = include_str!("../../static/index.html");

pub fn router() -> Router<AppState> {
    Router::new().route("/", get(|| async { Html(INDEX_HTML) }))
}
