//! What kind of media a file is, from its first bytes (never its name or
//! declared type). The gateway sniffs uploads with this before storing
//! them; the worker sniffs again before it opens a file, and pins the
//! container format it found so that nothing else is probed.

/// Audio formats accepted for music uploads and reference recordings.
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

/// The audio format from the file's first bytes (16 are enough).
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

/// The audio format of the file at `path`, by its first 16 bytes.
pub async fn sniff_audio_file(path: &std::path::Path) -> std::io::Result<Option<AudioKind>> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 16];
    let mut f = tokio::fs::File::open(path).await?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]).await? {
            0 => break,
            k => n += k,
        }
    }
    Ok(sniff_audio(&head[..n]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_is_known_by_its_magic_bytes() {
        assert_eq!(sniff_audio(b"ID3\x04\0\0\0\0\0\0"), Some(AudioKind::Mp3));
        assert_eq!(sniff_audio(&[0xFF, 0xFB, 0x90, 0x00]), Some(AudioKind::Mp3));
        assert_eq!(sniff_audio(b"RIFF\0\0\0\0WAVEfmt "), Some(AudioKind::Wav));
        assert_eq!(sniff_audio(b"OggS\0\x02"), Some(AudioKind::Ogg));
        assert_eq!(sniff_audio(b"\0\0\0\x20ftypM4A \0\0"), Some(AudioKind::M4a));
        assert_eq!(sniff_audio(b"RIFF\x24\0\0\0WEBPVP8 "), None);
        assert_eq!(sniff_audio(b"#EXTM3U\n#EXT-X"), None);
        assert_eq!(sniff_audio(b"ffconcat version 1.0"), None);
        assert_eq!(sniff_audio(b""), None);
    }
}
