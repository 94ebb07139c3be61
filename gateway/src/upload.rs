//! Reading multipart uploads: files are spooled to disk (memory stays flat
//! whatever the size) and bounded while they stream; text fields are small.

use axum::extract::multipart::{Field, MultipartError};
use axum::extract::{FromRequest, Multipart};
use axum::http::StatusCode;
use sha2::{Digest, Sha256};
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

/// Spool a file field to a temp file in `dir`, with its SHA-256. `Ok(None)`
/// if it is larger than `max` (the rest of the field has then been read and
/// discarded).
async fn spool(
    field: &mut Field<'_>,
    dir: &std::path::Path,
    max: u64,
    too_big: fn() -> AppError,
) -> AppResult<Option<(tempfile::TempPath, u64, [u8; 32])>> {
    let io = |e: std::io::Error| AppError::Internal(format!("spooling upload: {e}"));
    let (file, path) = tempfile::NamedTempFile::new_in(dir).map_err(io)?.into_parts();
    let mut file = tokio::fs::File::from_std(file);
    let mut n = 0u64;
    let mut sha = Sha256::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| error(e, too_big))? {
        n += chunk.len() as u64;
        if n > max {
            while let Ok(Some(_)) = field.chunk().await {}
            return Ok(None);
        }
        sha.update(&chunk);
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.flush().await.map_err(io)?;
    Ok(Some((path, n, sha.finalize().into())))
}

/// A small UTF-8 text field.
async fn text(field: &mut Field<'_>, name: &str, too_big: fn() -> AppError) -> AppResult<String> {
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

/// A spooled file field.
pub struct SpooledFile {
    pub path: tempfile::TempPath,
    pub bytes: u64,
    /// SHA-256 of the content.
    pub sha256: [u8; 32],
    /// The name the client gave (control characters removed, at most 200
    /// characters); kept as data only, never used as a path.
    pub file_name: Option<String>,
}

/// An upload form: one file field and some text fields.
pub struct Form {
    pub file: Option<SpooledFile>,
    text: std::collections::HashMap<&'static str, String>,
}

impl Form {
    /// A text field's value, if sent.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.text.get(name).map(String::as_str)
    }

    /// The form's fingerprint for an `Idempotency-Key`: the text fields
    /// named in `fields` as sent (or absent) and the file's SHA-256.
    pub fn fingerprint(&self, fields: &[&str]) -> String {
        let file = self.file.as_ref().map(|f| &f.sha256[..]);
        crate::idempotency::fingerprint(
            fields.iter().map(|f| (*f, self.text(f).map(str::as_bytes))).chain([("file", file)]),
        )
    }
}

/// Read a multipart form: the file field `file_field` spooled to `dir` (at
/// most `max` bytes: larger answers `too_big` after reading the rest of
/// the request), the text fields named in `text_fields`, each at most once;
/// other fields are read and ignored (browsers may add some).
pub async fn read_form(
    mut mp: Multipart,
    file_field: &str,
    text_fields: &[&'static str],
    dir: &std::path::Path,
    max: u64,
    too_big: fn() -> AppError,
) -> AppResult<Form> {
    let mut form = Form { file: None, text: Default::default() };
    while let Some(mut field) = mp.next_field().await.map_err(|e| error(e, too_big))? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == file_field {
            if form.file.is_some() {
                return Err(AppError::bad_request("duplicate-field", format!("The form has more than one {name}.")));
            }
            let file_name = field.file_name().map(|f| f.chars().filter(|c| !c.is_control()).take(200).collect());
            match spool(&mut field, dir, max, too_big).await? {
                Some((path, bytes, sha256)) => form.file = Some(SpooledFile { path, bytes, sha256, file_name }),
                None => {
                    drop(field);
                    discard(mp).await;
                    return Err(too_big());
                }
            }
        } else if let Some(key) = text_fields.iter().find(|k| **k == name) {
            let value = text(&mut field, &name, too_big).await?;
            if form.text.insert(key, value).is_some() {
                return Err(AppError::bad_request("duplicate-field", format!("The field {name} appears twice.")));
            }
        } else {
            while field.chunk().await.map_err(|e| error(e, too_big))?.is_some() {}
        }
    }
    Ok(form)
}

/// Read and throw away the rest of a multipart body (at most the route's
/// body limit, for at most 10 s) before a refusal is sent: a client still
/// sending its upload then reads the answer instead of a broken pipe.
pub async fn discard(mut mp: Multipart) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async move {
        while let Ok(Some(mut field)) = mp.next_field().await {
            while let Ok(Some(_)) = field.chunk().await {}
        }
    })
    .await;
}

/// The multipart extractor with tayori's error answer: a request that is
/// not `multipart/form-data` (JSON, a bare body, a missing boundary) gets
/// 415 `multipart-required` in the usual JSON error shape.
pub struct MultipartForm(pub Multipart);

impl<S: Send + Sync> FromRequest<S> for MultipartForm {
    type Rejection = AppError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        Multipart::from_request(req, state).await.map(MultipartForm).map_err(|e| {
            AppError::client(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "multipart-required",
                format!("Send this as a multipart/form-data upload ({e})."),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    const MAX: u64 = 2048;

    fn too_big() -> AppError {
        AppError::client(StatusCode::PAYLOAD_TOO_LARGE, "file-too-large", "too big")
    }

    fn valid_body() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"--BND\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\nhello there\r\n");
        b.extend_from_slice(b"--BND\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n");
        b.extend_from_slice(b"Content-Type: image/png\r\n\r\n");
        b.extend_from_slice(&[0x89, b'P', b'N', b'G', 13, 10, 26, 10]);
        b.extend_from_slice(&[7u8; 300]);
        b.extend_from_slice(b"\r\n--BND--\r\n");
        b
    }

    /// Run `read_form` on `body` as the body of a multipart request.
    async fn read(body: Vec<u8>, dir: &std::path::Path) -> AppResult<Form> {
        let req = axum::http::Request::builder()
            .method("POST")
            .header("content-type", "multipart/form-data; boundary=BND")
            .body(axum::body::Body::from(body))
            .unwrap();
        let mp = Multipart::from_request(req, &()).await.expect("the header is right");
        read_form(mp, "image", &["message"], dir, MAX, too_big).await
    }

    /// Whatever the body, the answer is a form within bounds or a 4xx.
    fn check(body: Vec<u8>) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        match rt.block_on(read(body, dir.path())) {
            Ok(form) => {
                if let Some(f) = &form.file {
                    let on_disk = std::fs::metadata(&f.path).map(|m| m.len()).unwrap_or(u64::MAX);
                    if f.bytes > MAX || on_disk != f.bytes {
                        return Err(format!("file of {} bytes ({} on disk)", f.bytes, on_disk));
                    }
                }
                Ok(())
            }
            Err(e) => {
                let status = e.into_response().status();
                if status.is_client_error() { Ok(()) } else { Err(format!("answered {status}")) }
            }
        }
    }

    #[test]
    fn the_valid_form_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let form = rt.block_on(read(valid_body(), dir.path())).unwrap();
        assert_eq!(form.text("message"), Some("hello there"));
        assert_eq!(form.file.as_ref().unwrap().bytes, 308);
    }

    /// Cases kept from fuzzing and from known multipart pitfalls.
    #[test]
    fn broken_forms_get_a_4xx() {
        let v = valid_body();
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"--BND--\r\n".to_vec(),
            v[..v.len() - 12].to_vec(), // no closing boundary
            v[..40].to_vec(),           // cut inside the headers
            b"--BND\r\n\r\nno disposition\r\n--BND--\r\n".to_vec(),
            b"--BND\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\n\xff\xfe\r\n--BND--\r\n".to_vec(),
            [v.clone(), v.clone()].concat(), // every field twice
            {
                let mut big = v.clone();
                let at = big.len() - 12;
                big.splice(at..at, std::iter::repeat_n(1u8, 4000));
                big
            },
        ];
        for (i, body) in cases.into_iter().enumerate() {
            check(body).unwrap_or_else(|e| panic!("case {i}: {e}"));
        }
    }

    mod fuzz {
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Mutation {
            Truncate(usize),
            Flip(usize, u8),
            Insert(usize, Vec<u8>),
            Repeat(usize, usize),
        }

        fn mutation() -> impl Strategy<Value = Mutation> {
            prop_oneof![
                any::<usize>().prop_map(Mutation::Truncate),
                (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
                (any::<usize>(), proptest::collection::vec(any::<u8>(), 0..64))
                    .prop_map(|(i, v)| Mutation::Insert(i, v)),
                (any::<usize>(), 1usize..200).prop_map(|(i, n)| Mutation::Repeat(i, n)),
            ]
        }

        fn apply(mut body: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
            for m in muts {
                let n = body.len().max(1);
                match m {
                    Mutation::Truncate(i) => body.truncate(i % n),
                    Mutation::Flip(i, b) => {
                        if !body.is_empty() {
                            body[i % n] ^= b | 1;
                        }
                    }
                    Mutation::Insert(i, v) => {
                        let at = i % (body.len() + 1);
                        body.splice(at..at, v.iter().copied());
                    }
                    Mutation::Repeat(i, len) => {
                        let at = i % n;
                        let end = (at + len).min(body.len());
                        let piece = body[at.min(end)..end].to_vec();
                        body.splice(end..end, piece);
                    }
                }
            }
            body
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

            #[test]
            fn a_mangled_form_is_read_within_bounds_or_refused_with_a_4xx(
                muts in proptest::collection::vec(mutation(), 1..6)
            ) {
                let body = apply(super::valid_body(), &muts);
                if let Err(e) = super::check(body) {
                    prop_assert!(false, "{}", e);
                }
            }

            #[test]
            fn random_bytes_never_break_the_reader(body in proptest::collection::vec(any::<u8>(), 0..512)) {
                if let Err(e) = super::check(body) {
                    prop_assert!(false, "{}", e);
                }
            }
        }
    }
}
