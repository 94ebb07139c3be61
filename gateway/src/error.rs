//! The gateway's one error type and its single mapping to HTTP.
//!
//! Every error body has the shape `{"error": {"code", "message"}}`. Client
//! mistakes get a 4xx with a stable code; server-side failures are logged in
//! full and answered with a generic message.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shared::catalog::{CatalogError, EntryError};
use shared::storage::StorageError;
use shared::tasks::TaskStoreError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request is wrong: 4xx with a stable code and a helpful message.
    #[error("{message}")]
    Client { status: StatusCode, code: &'static str, message: String },
    /// Not now: 429 (rate limit) or 503 (queue full), with `Retry-After`.
    #[error("{message}")]
    Busy { status: StatusCode, code: &'static str, message: String, retry_after: u64 },
    /// The message is in another language than the chosen voice speaks:
    /// 400 `voice-language-mismatch`, naming the message's language and the
    /// voices that speak it.
    #[error("the message is in {language} but voice {voice} speaks {voice_language}")]
    VoiceLanguage { language: &'static str, voice: String, voice_language: String, voices: Vec<String> },
    /// A finished job failed: its own code and message.
    #[error("job failed: {code}: {message}")]
    JobFailed { code: String, message: String },
    #[error("redis unavailable: {0}")]
    Redis(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("{0}")]
    Internal(String),
}

impl AppError {
    pub fn client(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        AppError::Client { status, code, message: message.into() }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::NOT_FOUND, code, message)
    }
}

impl From<TaskStoreError> for AppError {
    fn from(e: TaskStoreError) -> Self {
        match e {
            TaskStoreError::Redis(e) => AppError::Redis(e.to_string()),
            TaskStoreError::Decode(e) => AppError::Internal(format!("stored task state is invalid: {e}")),
            TaskStoreError::Busy => AppError::Busy {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "task-busy",
                message: "The job is changing state right now; please try again in a moment.".into(),
                retry_after: 1,
            },
        }
    }
}

impl From<EntryError> for AppError {
    fn from(e: EntryError) -> Self {
        match e {
            EntryError::NotFound(id) => Self::not_found("not-found", format!("There is no entry {id:?}.")),
            EntryError::System(id) => Self::client(
                StatusCode::FORBIDDEN,
                "system-entry-protected",
                format!("{id:?} is part of the system catalog and cannot be changed or deleted."),
            ),
            EntryError::Exists(id) => {
                Self::client(StatusCode::CONFLICT, "already-exists", format!("{id:?} already exists."))
            }
            EntryError::Catalog(e) => e.into(),
        }
    }
}

impl From<shared::queue::QueueError> for AppError {
    fn from(e: shared::queue::QueueError) -> Self {
        AppError::Redis(e.to_string())
    }
}

impl From<redis::RedisError> for AppError {
    fn from(e: redis::RedisError) -> Self {
        AppError::Redis(e.to_string())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code, message) = match &self {
            AppError::Client { status, code, message } => (*status, (*code).to_owned(), message.clone()),
            AppError::VoiceLanguage { language, voice, voice_language, voices } => {
                let name = shared::text::language_name(language);
                let message = format!(
                    "The message is written in {name}, but the voice {voice:?} speaks {}. Choose a {name} voice: {}.",
                    shared::text::language_name(voice_language),
                    if voices.is_empty() { "(none is installed)".to_owned() } else { voices.join(", ") }
                );
                (StatusCode::BAD_REQUEST, "voice-language-mismatch".to_owned(), message)
            }
            AppError::Busy { status, code, message, .. } => (*status, (*code).to_owned(), message.clone()),
            AppError::JobFailed { code, message } => (StatusCode::UNPROCESSABLE_ENTITY, code.clone(), message.clone()),
            AppError::Redis(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "queue-unavailable".to_owned(),
                "The job queue is not reachable right now; please try again shortly.".to_owned(),
            ),
            AppError::Storage(e) if e.is_transient() => (
                StatusCode::SERVICE_UNAVAILABLE,
                "storage-unavailable".to_owned(),
                "File storage is not reachable right now; please try again shortly.".to_owned(),
            ),
            AppError::Catalog(CatalogError::Corrupt { .. }) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "catalog-corrupt".to_owned(),
                "The catalog file is damaged, so changes are refused until an operator restores it.".to_owned(),
            ),
            AppError::Storage(_) | AppError::Catalog(_) | AppError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal".to_owned(),
                "Something went wrong on our side. It has been logged.".to_owned(),
            ),
        };
        if let AppError::Redis(_) = &self {
            shared::metrics::count_error(shared::metrics::Service::Redis);
        }
        if status.is_server_error() && !matches!(self, AppError::Busy { .. }) {
            tracing::error!(error = %self, %code, "request failed");
        }
        let mut body = json!({"error": {"code": code, "message": message}});
        if let AppError::VoiceLanguage { language, voices, .. } = &self {
            body["error"]["language"] = json!(language);
            body["error"]["voices"] = json!(voices);
        }
        let mut resp = (status, Json(body)).into_response();
        if let AppError::Busy { retry_after, .. } = &self {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(*retry_after));
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("5"));
        }
        resp
    }
}

pub type AppResult<T> = Result<T, AppError>;
