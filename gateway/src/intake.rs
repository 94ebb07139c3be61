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

/// Accepted audio formats for music uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioKind {
    Mp3,
    Wav,
    Ogg,
    M4a,
}

impl AudioKind {
    pub fn ext(self) -> &'static str {
        match self {
            AudioKind::Mp3 => "mp3",
            AudioKind::Wav => "wav",
            AudioKind::Ogg => "ogg",
            AudioKind::M4a => "m4a",
        }
    }
}

/// The audio format from the file's first bytes.
pub fn sniff_audio(head: &[u8]) -> Option<AudioKind> {
    if head.starts_with(b"ID3") || (head.len() >= 2 && head[0] == 0xFF && head[1] & 0xE0 == 0xE0) {
        Some(AudioKind::Mp3)
    } else if head.len() >= 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WAVE" {
        Some(AudioKind::Wav)
    } else if head.starts_with(b"OggS") {
        Some(AudioKind::Ogg)
    } else if head.len() >= 12 && &head[4..8] == b"ftyp" {
        Some(AudioKind::M4a)
    } else {
        None
    }
}

/// Check a spooled photo: a supported format whose header gives sane
/// dimensions. Nothing is decoded, so a huge declared size costs nothing.
pub fn check_image(path: &std::path::Path, max_pixels: u64) -> Result<(ImageKind, u32, u32), AppError> {
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
    Ok((kind, w as u32, h as u32))
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
    fn sniffs_audio_by_content() {
        assert_eq!(sniff_audio(b"ID3\x04\0\0\0\0\0\0"), Some(AudioKind::Mp3));
        assert_eq!(sniff_audio(&[0xFF, 0xFB, 0x90, 0x00]), Some(AudioKind::Mp3));
        assert_eq!(sniff_audio(b"RIFF\x24\0\0\0WAVEfmt "), Some(AudioKind::Wav));
        assert_eq!(sniff_audio(b"OggS\0\x02"), Some(AudioKind::Ogg));
        assert_eq!(sniff_audio(b"\0\0\0\x20ftypM4A "), Some(AudioKind::M4a));
        assert_eq!(sniff_audio(b"RIFF\x24\0\0\0WEBPVP8 "), None);
        assert_eq!(sniff_audio(b"plain text"), None);
    }

    #[test]
    fn messages_are_trimmed_and_bounded() {
        assert_eq!(check_message("  こんにちは\r\n世界 ").unwrap(), "こんにちは\n世界");
        assert_eq!(check_message("a\u{0007}b").unwrap(), "ab");
        assert_eq!(code(check_message("").unwrap_err()), "message-empty");
        assert_eq!(code(check_message(" \n\t\u{0001} ").unwrap_err()), "message-empty");
        assert!(check_message(&"あ".repeat(500)).is_ok());
        assert_eq!(code(check_message(&"あ".repeat(501)).unwrap_err()), "message-too-long");
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
}
