//! Reading multipart uploads: files are spooled to disk (memory stays flat
//! whatever the size) and bounded while they stream; text fields are small.

use axum::extract::Multipart;
use axum::extract::multipart::{Field, MultipartError};
use axum::http::StatusCode;
use tokio::io::AsyncWriteExt;

use crate::error::{AppError, AppResult};

pub const MAX_TEXT_FIELD: usize = 8 * 1024;

/// The body limit of an upload route. Up to twice the file limit is read,
/// so that an upload somewhat over the limit can be read to its end and
/// answered with a clean 413 (closing while a client still sends makes most
/// clients report a broken pipe instead of the answer); beyond it, we close.
pub fn body_limit(max_file_bytes: u64) -> usize {
    (max_file_bytes as usize).saturating_mul(2) + 64 * 1024
}

/// Map a multipart error; `too_big` is the caller's 413 for its file kind.
pub fn error(e: MultipartError, too_big: fn() -> AppError) -> AppError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_big()
    } else {
        AppError::bad_request("invalid-multipart", format!("The upload could not be read: {}", e.body_text()))
    }
}

/// Spool a file field to a temp file in `dir`. `Ok(None)` if it is larger
/// than `max` (the rest of the field has then been read and discarded).
pub async fn spool(
    field: &mut Field<'_>,
    dir: &std::path::Path,
    max: u64,
    too_big: fn() -> AppError,
) -> AppResult<Option<(tempfile::TempPath, u64)>> {
    let io = |e: std::io::Error| AppError::Internal(format!("spooling upload: {e}"));
    let (file, path) = tempfile::NamedTempFile::new_in(dir).map_err(io)?.into_parts();
    let mut file = tokio::fs::File::from_std(file);
    let mut n = 0u64;
    while let Some(chunk) = field.chunk().await.map_err(|e| error(e, too_big))? {
        n += chunk.len() as u64;
        if n > max {
            while let Ok(Some(_)) = field.chunk().await {}
            return Ok(None);
        }
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.flush().await.map_err(io)?;
    Ok(Some((path, n)))
}

/// A small UTF-8 text field.
pub async fn text(field: &mut Field<'_>, name: &str, too_big: fn() -> AppError) -> AppResult<String> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| error(e, too_big))? {
        buf.extend_from_slice(&chunk);
        if buf.len() > MAX_TEXT_FIELD {
            return Err(AppError::bad_request("field-too-long", format!("The field {name} is too long.")));
        }
    }
    String::from_utf8(buf)
        .map_err(|_| AppError::bad_request("invalid-field", format!("The field {name} is not UTF-8 text.")))
}

/// Read and discard the rest of the request (bounded by the body limit), so
/// that the client is done sending when the error answer comes.
pub async fn drain(mut mp: Multipart) {
    while let Ok(Some(mut field)) = mp.next_field().await {
        while let Ok(Some(_)) = field.chunk().await {}
    }
}

/// Put a text value in its slot, refusing a repeated field.
pub fn set_once(slot: &mut Option<String>, name: &str, value: String) -> AppResult<()> {
    if slot.is_some() {
        return Err(AppError::bad_request("duplicate-field", format!("The field {name} appears twice.")));
    }
    *slot = Some(value);
    Ok(())
}
