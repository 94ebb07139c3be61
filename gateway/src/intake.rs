//! Validation of what a person submits: the photo (by content, never by
//! file name) and the message. Pure functions, tested below.

use axum::http::StatusCode;

use crate::error::AppError;

pub const MAX_MESSAGE_CHARS: usize = 500;

/// Accepted photo formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Jpeg,
    Png,
    Webp,
}

impl ImageKind {
    pub fn ext(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "jpg",
            ImageKind::Png => "png",
            ImageKind::Webp => "webp",
        }
    }
    pub fn mime(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "image/jpeg",
            ImageKind::Png => "image/png",
            ImageKind::Webp => "image/webp",
        }
    }
}

/// The format from the file's first bytes (magic numbers).
pub fn sniff(head: &[u8]) -> Option<ImageKind> {
    if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageKind::Jpeg)
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageKind::Png)
    } else if head.len() >= 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        Some(ImageKind::Webp)
    } else {
        None
    }
}

pub use shared::sniff::AudioKind;

/// A photo that passed [`check_image`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedImage {
    pub kind: ImageKind,
    pub width: u32,
    pub height: u32,
    /// Bytes kept: the image up to its end marker.
    pub bytes: u64,
}

/// [`check_image`] on the blocking pool (it reads the file); the file is
/// handed back cut to the image's end (a phone's trailer dropped).
pub async fn check_image_file(
    file: tempfile::TempPath,
    max_pixels: u64,
) -> Result<(tempfile::TempPath, CheckedImage), AppError> {
    tokio::task::spawn_blocking(move || {
        let c = check_image(&file, max_pixels)?;
        let io = |e: std::io::Error| AppError::Internal(format!("cutting the upload to its image: {e}"));
        let f = std::fs::OpenOptions::new().write(true).open(&file).map_err(io)?;
        if f.metadata().map_err(io)?.len() > c.bytes {
            f.set_len(c.bytes).map_err(io)?;
        }
        Ok((file, c))
    })
    .await
    .map_err(|e| AppError::Internal(format!("image check panicked: {e}")))?
}

/// Check a spooled photo: a supported format whose header gives sane
/// dimensions and whose structure is whole. Nothing is decoded, so a huge
/// declared size costs nothing. A JPEG may carry data after its end marker
/// (phones append motion-photo videos, gain maps and vendor trailers):
/// only the image is kept ([`CheckedImage::bytes`]); a PNG or WebP with
/// anything after its end is refused.
pub fn check_image(path: &std::path::Path, max_pixels: u64) -> Result<CheckedImage, AppError> {
    use std::io::Read;
    let mut head = [0u8; 16];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| AppError::Internal(format!("reading spooled upload: {e}")))?;
    let kind = sniff(&head[..n]).ok_or_else(|| {
        AppError::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-image-type",
            "The photo must be a JPEG, PNG or WebP image.",
        )
    })?;
    let size = imagesize::size(path).map_err(|_| {
        AppError::client(
            StatusCode::UNPROCESSABLE_ENTITY,
            "image-unreadable",
            "The photo looks damaged or incomplete; please choose another file.",
        )
    })?;
    let (w, h) = (size.width as u64, size.height as u64);
    if w == 0 || h == 0 {
        return Err(AppError::client(StatusCode::UNPROCESSABLE_ENTITY, "image-unreadable", "The photo has no pixels."));
    }
    if w.saturating_mul(h) > max_pixels || w > 20_000 || h > 20_000 {
        return Err(AppError::client(
            StatusCode::UNPROCESSABLE_ENTITY,
            "image-dimensions-too-large",
            format!("The photo is {w}x{h} pixels; at most {max_pixels} pixels are accepted."),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| AppError::Internal(format!("reading spooled upload: {e}")))?;
    let checked = |end: usize| CheckedImage { kind, width: w as u32, height: h as u32, bytes: end as u64 };
    match structure(kind, &bytes) {
        Structure::Whole => Ok(checked(bytes.len())),
        Structure::ExtraData(end) if kind == ImageKind::Jpeg => Ok(checked(end)),
        Structure::Truncated => Err(AppError::client(
            StatusCode::UNPROCESSABLE_ENTITY,
            "image-truncated",
            "The photo file is cut short (the upload or the file is incomplete); please choose it again.",
        )),
        Structure::ExtraData(_) => Err(AppError::client(
            StatusCode::UNPROCESSABLE_ENTITY,
            "image-extra-data",
            "The photo file carries other data after the image (something hidden in it); \
             please save it as a plain JPEG, PNG or WebP.",
        )),
    }
}

/// What walking a file's container structure (no pixel decoding) found.
#[derive(Debug, PartialEq, Eq)]
pub enum Structure {
    Whole,
    /// The image ends before its structure does.
    Truncated,
    /// Bytes follow the image's end, which is at this offset (a phone's
    /// trailer, a polyglot or an appended file).
    ExtraData(usize),
}

/// Walk the container: PNG chunks to `IEND`, JPEG segments to `EOI`, the
/// WebP RIFF size. Pixel data is not decoded (the worker does that, bounded).
/// Written here: image decoders stop at the image's end and ignore what
/// follows, which is exactly what a polyglot relies on.
pub fn structure(kind: ImageKind, b: &[u8]) -> Structure {
    let end = match kind {
        ImageKind::Png => png_end(b),
        ImageKind::Jpeg => jpeg_end(b),
        ImageKind::Webp => {
            let size = b.get(4..8).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize);
            size.map(|s| s + 8 + (s & 1)).filter(|e| *e <= b.len())
        }
    };
    match end {
        None => Structure::Truncated,
        // Zero padding after the end is harmless (some writers add it).
        Some(e) if b[e..].iter().all(|x| *x == 0) => Structure::Whole,
        Some(e) => Structure::ExtraData(e),
    }
}

/// Offset just past the `IEND` chunk.
fn png_end(b: &[u8]) -> Option<usize> {
    let mut pos = 8;
    loop {
        let len = u32::from_be_bytes(b.get(pos..pos + 4)?.try_into().ok()?) as usize;
        let kind = b.get(pos + 4..pos + 8)?;
        let next = pos.checked_add(12)?.checked_add(len)?;
        if next > b.len() {
            return None;
        }
        if kind == b"IEND" {
            return Some(next);
        }
        pos = next;
    }
}

/// Offset just past the `EOI` marker that ends the image (markers inside
/// APPn segments, such as an EXIF thumbnail, are skipped with their segment).
fn jpeg_end(b: &[u8]) -> Option<usize> {
    let mut pos = 2;
    loop {
        if *b.get(pos)? != 0xFF {
            return None;
        }
        let mut m = *b.get(pos + 1)?;
        while m == 0xFF {
            pos += 1;
            m = *b.get(pos + 1)?;
        }
        pos += 2;
        match m {
            0xD9 => return Some(pos),
            0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let len = u16::from_be_bytes([*b.get(pos)?, *b.get(pos + 1)?]) as usize;
        pos = pos.checked_add(len).filter(|p| *p <= b.len() && len >= 2)?;
        if m == 0xDA {
            // Entropy-coded data: stuffed FF00 and restart markers belong
            // to it; any other marker ends it.
            loop {
                let i = pos + b.get(pos..)?.iter().position(|x| *x == 0xFF)?;
                match *b.get(i + 1)? {
                    0x00 | 0xD0..=0xD7 | 0xFF => pos = i + 1,
                    _ => {
                        pos = i;
                        break;
                    }
                }
            }
        }
    }
}

/// Normalize and check the message: line breaks kept, other control
/// characters removed, surrounding white space trimmed, 1 to 500 characters.
pub fn check_message(raw: &str) -> Result<String, AppError> {
    let cleaned: String = raw.replace("\r\n", "\n").chars().filter(|c| *c == '\n' || !c.is_control()).collect();
    let msg = cleaned.trim().to_owned();
    if msg.is_empty() {
        return Err(AppError::bad_request("message-empty", "Please type a message to speak."));
    }
    let n = msg.chars().count();
    if n > MAX_MESSAGE_CHARS {
        return Err(AppError::bad_request(
            "message-too-long",
            format!("The message has {n} characters; at most {MAX_MESSAGE_CHARS} are allowed."),
        ));
    }
    // Punctuation and symbols alone ("--", "!!!", emoji) give a voice
    // nothing to say: refused here rather than made into a silent video.
    if !msg.chars().any(char::is_alphanumeric) {
        return Err(AppError::bad_request(
            "message-unspeakable",
            "The message has no words to speak (only punctuation or symbols); please type some words.",
        ));
    }
    Ok(msg)
}

/// Task ids are UUIDs (v4, unguessable); anything else is refused before
/// it reaches Redis.
pub fn check_task_id(id: &str) -> Result<String, AppError> {
    uuid::Uuid::parse_str(id)
        .ok()
        .filter(|u| u.get_version_num() == 4 && u.hyphenated().to_string() == id)
        .map(|u| u.hyphenated().to_string())
        .ok_or_else(|| AppError::bad_request("invalid-task-id", "That is not a valid task id."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: AppError) -> &'static str {
        match e {
            AppError::Client { code, .. } => code,
            other => panic!("not a client error: {other:?}"),
        }
    }

    #[test]
    fn sniffs_by_content() {
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0]), Some(ImageKind::Jpeg));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Some(ImageKind::Png));
        assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8 "), Some(ImageKind::Webp));
        assert_eq!(sniff(b"hello, I am text"), None);
        assert_eq!(sniff(b"GIF89a"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn messages_are_trimmed_and_bounded() {
        assert_eq!(check_message("  こんにちは\r\n世界 ").unwrap(), "こんにちは\n世界");
        assert_eq!(check_message("a\u{0007}b").unwrap(), "ab");
        assert_eq!(code(check_message("").unwrap_err()), "message-empty");
        assert_eq!(code(check_message(" \n\t\u{0001} ").unwrap_err()), "message-empty");
        assert!(check_message(&"あ".repeat(500)).is_ok());
        assert_eq!(code(check_message(&"あ".repeat(501)).unwrap_err()), "message-too-long");
        for nothing in ["--", "- !", "。。。", "🎉🎂"] {
            assert_eq!(code(check_message(nothing).unwrap_err()), "message-unspeakable", "{nothing:?}");
        }
        // Messages that look like options are ordinary text.
        for text in ["-f/etc/passwd", "--help", "-v", " -q", "- Happy birthday", "--stdin", "お祝い", "3"] {
            assert!(check_message(text).is_ok(), "{text:?}");
        }
    }

    #[test]
    fn task_ids_must_be_v4_uuids() {
        let id = uuid::Uuid::new_v4().to_string();
        assert_eq!(check_task_id(&id).unwrap(), id);
        assert!(check_task_id("../etc/passwd").is_err());
        assert!(check_task_id("%2e%2e").is_err());
        assert!(check_task_id(&id.to_uppercase()).is_err());
        assert!(check_task_id("00000000-0000-1000-8000-000000000000").is_err());
    }

    #[test]
    fn real_and_fake_images_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("x.jpg");
        std::fs::write(&fake, b"just some text pretending to be a photo").unwrap();
        assert_eq!(code(check_image(&fake, 1 << 30).unwrap_err()), "unsupported-image-type");
        // A PNG header that declares 30000x30000 pixels is refused unread.
        let mut bomb = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        bomb.extend_from_slice(&30000u32.to_be_bytes());
        bomb.extend_from_slice(&30000u32.to_be_bytes());
        bomb.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        let p = dir.path().join("bomb.png");
        std::fs::write(&p, &bomb).unwrap();
        assert_eq!(code(check_image(&p, 40_000_000).unwrap_err()), "image-dimensions-too-large");
        // A truncated PNG (signature only) is unreadable.
        let t = dir.path().join("t.png");
        std::fs::write(&t, b"\x89PNG\r\n\x1a\n").unwrap();
        assert_eq!(code(check_image(&t, 40_000_000).unwrap_err()), "image-unreadable");
    }

    fn fixture(name: &str) -> Option<Vec<u8>> {
        let cache = std::env::var_os("TAYORI_CACHE_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache"));
        std::fs::read(cache.join("fixtures").join(name)).ok()
    }

    /// A small baseline JPEG: SOI, APP0, an APP1 holding a whole "thumbnail"
    /// (SOI..EOI inside the segment), SOS with stuffed and restart bytes, EOI.
    fn jpeg() -> Vec<u8> {
        let mut j = vec![0xFF, 0xD8];
        j.extend_from_slice(&[0xFF, 0xE0, 0x00, 0x06, b'J', b'F', b'I', b'F']);
        j.extend_from_slice(&[0xFF, 0xE1, 0x00, 0x08, 0xFF, 0xD8, 0x12, 0x34, 0xFF, 0xD9]);
        j.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x04, 0x01, 0x02]);
        j.extend_from_slice(&[0x11, 0xFF, 0x00, 0x22, 0xFF, 0xD3, 0x33, 0xFF, 0xFF, 0x00]);
        j.extend_from_slice(&[0xFF, 0xD9]);
        j
    }

    #[test]
    fn truncated_and_polyglot_files_are_found_by_their_structure() {
        let png = fixture("astronaut.png").expect("scripts/assets.sh fetched astronaut.png");
        assert_eq!(structure(ImageKind::Png, &png), Structure::Whole);
        assert_eq!(structure(ImageKind::Png, &png[..png.len() - 100]), Structure::Truncated);
        assert_eq!(structure(ImageKind::Png, &png[..png.len() - 4]), Structure::Truncated, "IEND's CRC cut");
        let mut html = png.clone();
        html.extend_from_slice(b"<html><script>alert(1)</script></html>");
        assert_eq!(structure(ImageKind::Png, &html), Structure::ExtraData(png.len()));
        let mut zip = png.clone();
        zip.extend_from_slice(b"PK\x03\x04 an appended archive");
        assert_eq!(structure(ImageKind::Png, &zip), Structure::ExtraData(png.len()));
        let mut padded = png.clone();
        padded.extend_from_slice(&[0; 64]);
        assert_eq!(structure(ImageKind::Png, &padded), Structure::Whole);

        let j = jpeg();
        assert_eq!(structure(ImageKind::Jpeg, &j), Structure::Whole);
        assert_eq!(structure(ImageKind::Jpeg, &j[..j.len() - 2]), Structure::Truncated);
        assert_eq!(structure(ImageKind::Jpeg, &j[..14]), Structure::Truncated, "cut inside the thumbnail");
        let mut motion = j.clone();
        motion.extend_from_slice(b"\0\0\0\x18ftypmp42 an appended video");
        assert_eq!(structure(ImageKind::Jpeg, &motion), Structure::ExtraData(j.len()));

        let mut webp = b"RIFF\x08\0\0\0WEBPVP8 ".to_vec();
        assert_eq!(structure(ImageKind::Webp, &webp), Structure::Whole);
        webp.extend_from_slice(b"more");
        assert_eq!(structure(ImageKind::Webp, &webp), Structure::ExtraData(16));
        assert_eq!(structure(ImageKind::Webp, &webp[..10]), Structure::Truncated);
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        /// A real PNG (the test photo's header region) and JPEG, mutated.
        fn image_bytes() -> impl Strategy<Value = Vec<u8>> {
            let dir = tempfile::tempdir().unwrap();
            let png = dir.path().join("s.png");
            let jpg = dir.path().join("s.jpg");
            for (out, extra) in [(&png, &[][..]), (&jpg, &["-q:v", "5"][..])] {
                let ok = std::process::Command::new("ffmpeg")
                    .args(["-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=s=64x48", "-frames:v", "1"])
                    .args(extra)
                    .arg(out)
                    .status()
                    .unwrap()
                    .success();
                assert!(ok);
            }
            let seeds = [std::fs::read(&png).unwrap(), std::fs::read(&jpg).unwrap()];
            (
                0..seeds.len(),
                any::<prop::sample::Index>(),
                any::<u8>(),
                0..3u8,
                proptest::collection::vec(any::<u8>(), 0..64),
            )
                .prop_map(move |(which, at, byte, how, junk)| {
                    let mut b = seeds[which].clone();
                    let i = at.index(b.len());
                    match how {
                        0 => b[i] = byte,
                        1 => b.truncate(i),
                        _ => b = junk,
                    }
                    b
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

            /// No input makes the photo check panic; what it accepts is an
            /// image its magic bytes name, of a size within the bound.
            #[test]
            fn the_photo_check_never_panics_and_accepts_only_bounded_images(bytes in image_bytes()) {
                let dir = tempfile::tempdir().unwrap();
                let p = dir.path().join("upload");
                std::fs::write(&p, &bytes).unwrap();
                if let Ok(c) = check_image(&p, 1_000_000) {
                    prop_assert_eq!(sniff(&bytes[..bytes.len().min(16)]), Some(c.kind));
                    prop_assert!(c.width > 0 && c.height > 0 && u64::from(c.width) * u64::from(c.height) <= 1_000_000);
                    prop_assert!(c.bytes <= bytes.len() as u64);
                }
            }

            /// Any text: an accepted message is trimmed, 1-500 characters,
            /// with no control characters but line breaks.
            #[test]
            fn accepted_messages_are_clean(raw in "\\PC{0,40}|[\\x00-\\x1f \\u{3000}a-z\\n\\r\\t]{0,600}") {
                match check_message(&raw) {
                    Ok(m) => {
                        let n = m.chars().count();
                        prop_assert!((1..=500).contains(&n));
                        prop_assert_eq!(m.trim(), m.as_str());
                        prop_assert!(m.chars().all(|c| c == '\n' || !c.is_control()));
                    }
                    Err(e) => prop_assert!(["message-empty", "message-too-long", "message-unspeakable"].contains(&code(e))),
                }
            }

            /// Real v4 ids pass; the same ids with anything around them do not.
            #[test]
            fn v4_ids_pass_and_decorated_ones_do_not(bits in any::<u128>(), prefix in "[./%]{0,3}", suffix in "[./%a]{0,3}") {
                let id = uuid::Builder::from_random_bytes(bits.to_le_bytes()).into_uuid().hyphenated().to_string();
                prop_assert_eq!(check_task_id(&id).ok(), Some(id.clone()));
                let decorated = format!("{prefix}{id}{suffix}");
                prop_assert_eq!(check_task_id(&decorated).is_ok(), decorated == id);
            }

            /// Only v4 UUIDs pass as task ids, so no id reaches a key with a path in it.
            #[test]
            fn task_ids_never_carry_paths(raw in "[0-9a-f./%-]{0,40}") {
                if let Ok(id) = check_task_id(&raw) {
                    prop_assert!(!id.contains('/') && !id.contains('.') && !id.contains('%'));
                    prop_assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
                }
            }
        }
    }
}
