//! Facts about media files from ffprobe, parsed by pure functions.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::args;
use crate::process::{self, Arg, ProcessError};

#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub duration: f64,
    pub video: Option<(String, u32, u32)>,
    pub audio: Option<String>,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    streams: Vec<RawStream>,
    format: Option<RawFormat>,
}
#[derive(Deserialize)]
struct RawStream {
    codec_type: Option<String>,
    codec_name: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
}
#[derive(Deserialize)]
struct RawFormat {
    duration: Option<String>,
}

/// Parse `ffprobe -print_format json -show_format -show_streams` output.
pub fn parse_probe(json: &[u8]) -> Option<Probe> {
    let raw: Raw = serde_json::from_slice(json).ok()?;
    let duration = raw.format?.duration?.parse().ok()?;
    let video = raw
        .streams
        .iter()
        .find(|s| s.codec_type.as_deref() == Some("video"))
        .map(|s| (s.codec_name.clone().unwrap_or_default(), s.width.unwrap_or(0), s.height.unwrap_or(0)));
    let audio = raw
        .streams
        .iter()
        .find(|s| s.codec_type.as_deref() == Some("audio"))
        .map(|s| s.codec_name.clone().unwrap_or_default());
    Some(Probe { duration, video, audio })
}

/// Where a WAV file's samples are and how they are laid out, from its
/// `fmt ` and `data` chunks (other chunks skipped).
struct WavLayout {
    format: u16,
    channels: usize,
    rate: u32,
    byte_rate: u32,
    bits: u16,
    data_offset: u64,
    data_len: u64,
}

/// Walk the chunks of the WAV file at `path` (a few small reads).
fn wav_layout(path: &Path) -> std::io::Result<(std::fs::File, WavLayout)> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {what}", path.display()));
    let mut f = std::fs::File::open(path)?;
    let mut riff = [0u8; 12];
    f.read_exact(&mut riff)?;
    if &riff[0..4] != b"RIFF" || &riff[8..12] != b"WAVE" {
        return Err(bad("not a RIFF/WAVE file"));
    }
    let mut fmt = None;
    loop {
        let mut head = [0u8; 8];
        f.read_exact(&mut head)?;
        let size = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        match &head[0..4] {
            b"fmt " => {
                let mut body = vec![0u8; size as usize];
                f.read_exact(&mut body)?;
                if body.len() < 16 {
                    return Err(bad("short fmt chunk"));
                }
                let u16at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
                let u32at = |i: usize| u32::from_le_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
                fmt = Some((u16at(0), u16at(2).max(1) as usize, u32at(4), u32at(8), u16at(14)));
                if size % 2 == 1 {
                    f.seek(SeekFrom::Current(1))?;
                }
            }
            b"data" => {
                let (format, channels, rate, byte_rate, bits) = fmt.ok_or_else(|| bad("data before fmt"))?;
                let data_offset = f.stream_position()?;
                // A streamed WAV may leave the size at 0 or 0xFFFFFFFF; a cut
                // one claims more than there is: use what the file holds.
                let held = f.metadata()?.len().saturating_sub(data_offset);
                let data_len = if size == 0 || size == u32::MAX { held } else { u64::from(size).min(held) };
                return Ok((f, WavLayout { format, channels, rate, byte_rate, bits, data_offset, data_len }));
            }
            _ => {
                f.seek(SeekFrom::Current(i64::from(size) + i64::from(size % 2)))?;
            }
        }
    }
}

/// Duration of a PCM WAV file from its header, without starting ffprobe
/// (100 ms a call here). Blocking.
pub fn wav_duration(path: &Path) -> std::io::Result<f64> {
    let (_, w) = wav_layout(path)?;
    if w.byte_rate == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: byte rate 0", path.display())));
    }
    Ok(w.data_len as f64 / f64::from(w.byte_rate))
}

/// Duration of an MP4 file from its movie header (`moov`/`mvhd`: the
/// longest track), without starting ffprobe. `None` if the file has no
/// readable one. Blocking.
pub fn mp4_duration(path: &Path) -> std::io::Result<Option<f64>> {
    use std::io::{Read, Seek, SeekFrom};
    /// A `moov` larger than this is not one the render wrote.
    const MAX_MOOV: u64 = 16 << 20;
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut at = 0u64;
    while at + 8 <= len {
        let mut head = [0u8; 16];
        f.seek(SeekFrom::Start(at))?;
        f.read_exact(&mut head[..8])?;
        let mut size = u64::from(u32::from_be_bytes(head[..4].try_into().expect("4 bytes")));
        let mut body = 8;
        if size == 1 {
            f.read_exact(&mut head[8..])?;
            size = u64::from_be_bytes(head[8..].try_into().expect("8 bytes"));
            body = 16;
        } else if size == 0 {
            size = len - at;
        }
        if size < body || at + size > len {
            return Ok(None);
        }
        if &head[4..8] == b"moov" {
            if size - body > MAX_MOOV {
                return Ok(None);
            }
            let mut moov = vec![0u8; (size - body) as usize];
            f.read_exact(&mut moov)?;
            return Ok(mvhd_duration(&moov));
        }
        at += size;
    }
    Ok(None)
}

/// The duration in an `mvhd` box among the children of a `moov`.
fn mvhd_duration(moov: &[u8]) -> Option<f64> {
    let mut rest = moov;
    while rest.len() >= 8 {
        let size = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
        if size < 8 || size > rest.len() {
            return None;
        }
        if &rest[4..8] == b"mvhd" {
            let b = &rest[8..size];
            let be32 = |o: usize| Some(u32::from_be_bytes(b.get(o..o + 4)?.try_into().ok()?));
            let (scale, duration) = match b.first()? {
                0 => (be32(12)?, u64::from(be32(16)?)),
                1 => (be32(20)?, u64::from_be_bytes(b.get(24..32)?.try_into().ok()?)),
                _ => return None,
            };
            return (scale > 0).then(|| duration as f64 / f64::from(scale));
        }
        rest = &rest[size..];
    }
    None
}

/// Length of speech the pipeline wrote (a WAV): from its header, or from
/// ffprobe if the header cannot be read.
pub async fn speech_seconds(path: &Path, timeout: Duration) -> Result<f64, ProcessError> {
    let wav = path.to_owned();
    match tokio::task::spawn_blocking(move || wav_duration(&wav)).await {
        Ok(Ok(d)) => Ok(d),
        _ => Ok(probe(path, Format::Wav, timeout).await?.duration),
    }
}

/// Write mono f32 samples as a 16-bit PCM WAV file.
pub fn write_wav(path: &Path, samples: &[f32], rate: u32) -> std::io::Result<()> {
    let data_len = (samples.len() * 2) as u32;
    let mut b = Vec::with_capacity(44 + data_len as usize);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // PCM
    b.extend_from_slice(&1u16.to_le_bytes()); // mono
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * 2).to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        b.extend_from_slice(&((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes());
    }
    std::fs::write(path, b)
}

/// Samples (-1..1, channels averaged) and rate of a 16-bit PCM WAV file. Blocking.
pub fn read_wav(path: &Path) -> std::io::Result<(Vec<f32>, u32)> {
    use std::io::{Read, Seek, SeekFrom};
    let (mut f, w) = wav_layout(path)?;
    if !(w.format == 1 || w.format == 0xFFFE) || w.bits != 16 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: not 16-bit PCM", path.display()),
        ));
    }
    f.seek(SeekFrom::Start(w.data_offset))?;
    let mut body = vec![0u8; w.data_len as usize];
    f.read_exact(&mut body)?;
    let samples = body
        .chunks_exact(2 * w.channels)
        .map(|frame| {
            frame.chunks_exact(2).map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0).sum::<f32>()
                / w.channels as f32
        })
        .collect();
    Ok((samples, w.rate))
}

/// A container format that ffmpeg may open. Every input is opened with its
/// format pinned (`-f`), that demuxer the only one allowed
/// (`-format_whitelist`, so nothing nested such as an HLS playlist or a
/// concat script can be probed) and local files the only protocol
/// (`-protocol_whitelist file`): a file cannot make ffmpeg read another
/// file or fetch a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Wav,
    Mp3,
    Ogg,
    /// MP4 / M4A / MOV (one demuxer) of audio, with external data references off.
    Mp4,
    /// The MP4 video the worker rendered itself (H.264 and AAC).
    Mp4Video,
    Png,
    Jpeg,
    /// Raw frames on stdin.
    RawVideoStdin,
    /// A filter graph that generates its input (tests).
    Lavfi,
}

impl Format {
    fn demuxer(self) -> &'static str {
        match self {
            Format::Wav => "wav",
            Format::Mp3 => "mp3",
            Format::Ogg => "ogg",
            Format::Mp4 | Format::Mp4Video => "mov",
            Format::Png => "png_pipe",
            Format::Jpeg => "jpeg_pipe",
            Format::RawVideoStdin => "rawvideo",
            Format::Lavfi => "lavfi",
        }
    }

    /// The only decoders such a file may reach (cover art included: MP3
    /// and M4A files often carry a JPEG or PNG picture); `None` for a
    /// generated input.
    fn decoders(self) -> Option<&'static str> {
        match self {
            Format::Wav => Some(
                "pcm_s16le,pcm_s24le,pcm_s32le,pcm_f32le,pcm_f64le,pcm_u8,pcm_alaw,pcm_mulaw,adpcm_ms,adpcm_ima_wav",
            ),
            Format::Mp3 => Some("mp3float,mp3,mjpeg,png"),
            Format::Ogg => Some("vorbis,opus,libopus,flac,mjpeg,png"),
            Format::Mp4 => Some("aac,aac_fixed,alac,mp3float,mp3,mjpeg,png"),
            Format::Mp4Video => Some("h264,aac"),
            Format::Png => Some("png"),
            Format::Jpeg => Some("mjpeg"),
            Format::RawVideoStdin => Some("rawvideo"),
            Format::Lavfi => None,
        }
    }

    /// The format of an uploaded audio file, by its content.
    pub fn of_audio(kind: shared::sniff::AudioKind) -> Format {
        use shared::sniff::AudioKind;
        match kind {
            AudioKind::Mp3 => Format::Mp3,
            AudioKind::Wav => Format::Wav,
            AudioKind::Ogg => Format::Ogg,
            AudioKind::M4a => Format::Mp4,
        }
    }
}

/// The pinned format of an audio file the worker did not make itself (an
/// upload, a catalog track), by its content; `None` if it is no audio
/// format tayori accepts.
pub async fn audio_format(path: &Path) -> std::io::Result<Option<Format>> {
    Ok(shared::sniff::sniff_audio_file(path).await?.map(Format::of_audio))
}

/// The arguments that open one input: options before `-i` (a seek, a
/// loop) go in `before`.
pub fn input_with(path: &Path, format: Format, before: Vec<Arg>) -> Vec<Arg> {
    let mut a = before;
    a.extend(args!["-f", format.demuxer(), "-format_whitelist", format.demuxer()]);
    if let Some(decoders) = format.decoders() {
        a.extend(args!["-codec_whitelist", decoders]);
    }
    if matches!(format, Format::Mp4 | Format::Mp4Video) {
        // Tracks whose samples live in other files (data references) stay closed.
        a.extend(args!["-enable_drefs", "0", "-use_absolute_path", "0"]);
    }
    let protocol = if format == Format::RawVideoStdin { "pipe" } else { "file" };
    a.extend(args!["-protocol_whitelist", protocol, "-i"]);
    if format == Format::RawVideoStdin {
        a.push(Arg::from("pipe:0"));
    } else {
        a.push(Arg::from(path));
    }
    a
}

/// [`input_with`] without options of its own.
pub fn input(path: &Path, format: Format) -> Vec<Arg> {
    input_with(path, format, Vec::new())
}

/// A generated input (`-f lavfi -i GRAPH`).
pub fn generated(graph: &'static str) -> Vec<Arg> {
    args!["-f", "lavfi", "-format_whitelist", "lavfi", "-protocol_whitelist", "file", "-i", graph]
}

/// Every `-i` must come from [`input_with`]: between it and the input
/// before it, its format pinned (`-f`), that demuxer the only one allowed
/// (`-format_whitelist`), and its protocols listed just before it.
fn check_inputs(program: &str, args: &[Arg]) -> Result<(), ProcessError> {
    let mut group_start = 0;
    for (k, a) in args.iter().enumerate() {
        if a.as_os_str() == "-i" {
            let group = &args[group_start..k];
            let has = |opt: &str| group.iter().any(|g| g.as_os_str() == opt);
            let pinned = k >= 2 && args[k - 2].as_os_str() == "-protocol_whitelist";
            if !pinned || !has("-f") || !has("-format_whitelist") {
                return Err(ProcessError::Refused {
                    program: program.to_owned(),
                    reason: "an input without a pinned format and protocol list".into(),
                });
            }
            group_start = k + 2;
        }
    }
    Ok(())
}

/// Decode an audio file (of a known format) to mono f32 samples at `rate`,
/// at most `max_secs` of it.
pub async fn decode_mono(
    path: &Path,
    format: Format,
    rate: u32,
    max_secs: u32,
    timeout: Duration,
) -> Result<Vec<f32>, ProcessError> {
    let mut args = input(path, format);
    args.extend(crate::args!["-t", Arg::num(max_secs), "-ac", "1", "-ar", Arg::num(rate), "-f", "f32le", "-"]);
    let pcm = ffmpeg(args, timeout).await?;
    Ok(pcm.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// When a tool last started.
struct LastRun(std::sync::Mutex<Option<std::time::Instant>>);

impl LastRun {
    /// Note a run starting now; whether the one before was more than
    /// `cold_after` ago (or there was none).
    fn note(&self, cold_after: Duration) -> bool {
        let mut last = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let cold = last.is_none_or(|t| t.elapsed() > cold_after);
        *last = Some(std::time::Instant::now());
        cold
    }
}

/// When this process last started ffmpeg or ffprobe (or had its libraries
/// read in by [`warm_up_if_idle`]).
static FFMPEG_LAST_RUN: LastRun = LastRun(std::sync::Mutex::new(None));

/// Past this long without a run, ffmpeg's libraries may no longer be in the
/// page cache. A machine may drop file pages that no process maps once they
/// have gone unused for a while: this one pages them out after 60 s unused
/// (DAMON reclaim), and reads up to 8 MB around each page then faulted back
/// in. ffmpeg links some 215 libraries (246 MB): its first run after that
/// took 214 major faults and 0.3-0.65 s longer (the mix's ffmpeg run:
/// 1.06-1.45 s cold, 0.78-0.91 s hot or with the libraries read in
/// beforehand). A Kokoro job at 512x910 after 60 s idle took -0.15 to 1.06 s
/// longer than the job right after it (median 0.26 s, seven pairs), most of
/// it in the mix step; with this warm-up 0.01-0.35 s (median 0.15 s, four
/// pairs), the mix step no longer slower.
const COLD_AFTER: Duration = Duration::from_secs(30);

/// When ffmpeg has not run for [`COLD_AFTER`], have its libraries read back
/// into memory now, in the background (`ffmpeg -version` maps them all, and
/// the read-ahead brings most of each back), so that the step that needs
/// ffmpeg later, after the speech is made or the render's inputs fetched,
/// does not wait for the disk. Costs 0.05-0.13 CPU-seconds. Call within a
/// tokio runtime.
pub fn warm_up_if_idle(timeout: Duration) {
    use tracing::Instrument;
    if !FFMPEG_LAST_RUN.note(COLD_AFTER) {
        return;
    }
    tokio::spawn(
        async move {
            let t = std::time::Instant::now();
            match process::run("ffmpeg", args!["-nostdin", "-hide_banner", "-version"], None, timeout).await {
                Ok(_) => tracing::debug!(ms = t.elapsed().as_millis() as u64, "ffmpeg's libraries read in"),
                Err(e) => tracing::warn!(error = %e, "ffmpeg could not be started ahead of its step"),
            }
        }
        .in_current_span(),
    );
}

/// Run ffmpeg quietly (no stdin, errors only, overwrite outputs) with `args`.
pub async fn ffmpeg(args: Vec<Arg>, timeout: Duration) -> Result<Vec<u8>, ProcessError> {
    check_inputs("ffmpeg", &args)?;
    FFMPEG_LAST_RUN.note(COLD_AFTER);
    let mut all = args!["-nostdin", "-hide_banner", "-loglevel", "error", "-y"];
    all.extend(args);
    process::run("ffmpeg", all, None, timeout).await
}

/// Run ffmpeg (errors only, overwrite outputs) with its stdin fed from `input`.
pub async fn ffmpeg_fed<B: AsRef<[u8]>>(
    args: Vec<Arg>,
    input: tokio::sync::mpsc::Receiver<B>,
    timeout: Duration,
) -> Result<Vec<u8>, ProcessError> {
    check_inputs("ffmpeg", &args)?;
    FFMPEG_LAST_RUN.note(COLD_AFTER);
    let mut all = args!["-hide_banner", "-loglevel", "error", "-y"];
    all.extend(args);
    process::run_fed("ffmpeg", all, input, timeout).await
}

/// Integrated loudness (LUFS) and true peak (dBTP) from the summary that
/// ffmpeg's `ebur128=peak=true` filter prints at the end of its stderr.
/// Tests only: an independent judge of the worker's own meter (`audio`).
#[cfg(test)]
pub fn parse_ebur128_summary(stderr: &str) -> Option<(f64, Option<f64>)> {
    let summary = &stderr[stderr.rfind("Summary:")?..];
    let value = |label: &str| -> Option<f64> {
        let line = summary.lines().find(|l| l.trim_start().starts_with(label))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((value("I:")?, value("Peak:")))
}

/// Measure a file with ffmpeg's EBU R128 meter: (integrated LUFS, true peak
/// dBTP). Tests only, as the judge of `audio::measure`.
#[cfg(test)]
pub async fn ebur128(path: &Path, format: Format, timeout: Duration) -> Result<(f64, Option<f64>), ProcessError> {
    let mut all = args!["-nostdin", "-hide_banner", "-nostats"];
    all.extend(input(path, format));
    all.extend(args!["-af", "ebur128=peak=true", "-f", "null", "-"]);
    check_inputs("ffmpeg", &all)?;
    let (_, stderr) = process::run_full("ffmpeg", all, None, timeout).await?;
    parse_ebur128_summary(&String::from_utf8_lossy(&stderr)).ok_or_else(|| ProcessError::Failed {
        program: "ffmpeg ebur128".into(),
        status: "no summary in its output".into(),
        stderr_tail: process::tail(&stderr, 300),
    })
}

/// ffprobe a file, opened like an ffmpeg input (format pinned, local files only).
pub async fn probe(path: &Path, format: Format, timeout: Duration) -> Result<Probe, ProcessError> {
    let mut all = args!["-v", "error", "-print_format", "json", "-show_format", "-show_streams"];
    all.extend(input(path, format));
    check_inputs("ffprobe", &all)?;
    FFMPEG_LAST_RUN.note(COLD_AFTER);
    let out = process::run("ffprobe", all, None, timeout).await?;
    parse_probe(&out).ok_or_else(|| ProcessError::Failed {
        program: "ffprobe".into(),
        status: "unparsable output".into(),
        stderr_tail: process::tail(&out, 300),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ffmpeg_counts_as_cold_only_after_a_pause() {
        let last = LastRun(std::sync::Mutex::new(None));
        assert!(last.note(Duration::from_secs(3600)), "never run: cold");
        assert!(!last.note(Duration::from_secs(3600)), "run just now: warm");
        std::thread::sleep(Duration::from_millis(30));
        assert!(!last.note(Duration::from_secs(3600)), "30 ms is no pause");
        std::thread::sleep(Duration::from_millis(30));
        assert!(last.note(Duration::from_millis(20)), "a pause longer than cold_after");
        assert!(!last.note(Duration::from_millis(20)), "that run counts too");
    }

    #[test]
    fn wav_duration_reads_the_header_like_ffprobe() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.wav");
        // 1.5 s of 22.05 kHz mono 16-bit written by ffmpeg (with a LIST chunk).
        let ok = std::process::Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "sine=d=1.5:r=22050", "-ac", "1"])
            .arg(&p)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        assert!((wav_duration(&p).unwrap() - 1.5).abs() < 1e-3);
        std::fs::write(dir.path().join("b.wav"), b"not a wav at all").unwrap();
        assert!(wav_duration(&dir.path().join("b.wav")).is_err());
    }

    /// Recorded from ffprobe 5.1 on a tayori video.
    const FIXTURE: &str = r#"{
        "streams": [
            {"index": 0, "codec_name": "h264", "codec_type": "video", "width": 512, "height": 910, "pix_fmt": "yuv420p"},
            {"index": 1, "codec_name": "aac", "codec_type": "audio", "sample_rate": "48000", "channels": 2}
        ],
        "format": {"filename": "final_video.mp4", "nb_streams": 2, "format_name": "mov,mp4,m4a,3gp,3g2,mj2", "duration": "7.541000"}
    }"#;

    #[test]
    fn parses_recorded_ffprobe_output() {
        let p = parse_probe(FIXTURE.as_bytes()).unwrap();
        assert_eq!(p.video, Some(("h264".into(), 512, 910)));
        assert_eq!(p.audio.as_deref(), Some("aac"));
        assert!((p.duration - 7.541).abs() < 1e-9);
    }

    /// Recorded from ffmpeg 5.1's ebur128 filter (peak=true).
    #[test]
    fn parses_recorded_ebur128_summary() {
        let stderr = "[Parsed_ebur128_0 @ 0x5] t: 13.6 TARGET:-23 LUFS M: -14.9 S: -14.2 I: -14.1 LUFS LRA: 3.1 LU FTPK: -2.0 dBFS TPK: -1.6 dBFS\n[Parsed_ebur128_0 @ 0x5] Summary:\n\n  Integrated loudness:\n    I:         -14.3 LUFS\n    Threshold: -24.5 LUFS\n\n  Loudness range:\n    LRA:         3.2 LU\n    Threshold: -34.4 LUFS\n    LRA low:   -16.1 LUFS\n    LRA high:  -12.9 LUFS\n\n  True peak:\n    Peak:       -1.7 dBFS\n";
        assert_eq!(parse_ebur128_summary(stderr), Some((-14.3, Some(-1.7))));
        assert_eq!(parse_ebur128_summary("nothing"), None);
    }

    #[test]
    fn inputs_must_be_pinned_each_on_its_own() {
        let p = Path::new("/tmp/in.wav");
        let mut ok = input(p, Format::Wav);
        ok.extend(input(p, Format::Mp3));
        ok.extend(args!["-c:a", "pcm_s16le", "/tmp/out.wav"]);
        assert!(check_inputs("ffmpeg", &ok).is_ok());
        let bare = args!["-i", "/tmp/in.wav", "/tmp/out.wav"];
        assert!(check_inputs("ffmpeg", &bare).is_err());
        // A second input does not borrow the first one's pins.
        let mut second = input(p, Format::Wav);
        second.extend(args!["-protocol_whitelist", "file", "-i", "/tmp/other.mp3", "/tmp/out.wav"]);
        assert!(check_inputs("ffmpeg", &second).is_err());
    }

    /// The attacks of the trust-boundary tests against ffmpeg itself: an
    /// HLS playlist and an ffconcat script behind an ID3 tag (they pass as
    /// MP3 by their first bytes) make plain ffmpeg open the file they name;
    /// opened with `input`, nothing but the upload is read, and the upload
    /// is refused as unreadable.
    #[tokio::test]
    async fn a_pinned_input_reads_no_other_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("other.wav");
        let made = std::process::Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "sine=d=2"])
            .arg(&target)
            .status()
            .unwrap();
        assert!(made.success());
        let id3 = |body: String| [b"ID3\x03\0\0\0\0\0\x10".as_slice(), &[0u8; 16], body.as_bytes()].concat();
        let cases = [
            ("ffconcat", id3("ffconcat version 1.0\nfile other.wav\n".to_owned())),
            ("hls", id3(format!("#EXTM3U\n#EXTINF:2,\nfile://{}\n#EXT-X-ENDLIST\n", target.display()))),
        ];
        for (what, bytes) in cases {
            let upload = dir.path().join(format!("{what}.mp3"));
            std::fs::write(&upload, bytes).unwrap();
            // Plain ffmpeg follows the ffconcat script to the other file.
            if what == "ffconcat" {
                let plain = std::process::Command::new("ffmpeg")
                    .args(["-nostdin", "-loglevel", "error", "-i"])
                    .arg(&upload)
                    .args(["-f", "s16le", "-"])
                    .output()
                    .unwrap();
                assert!(plain.stdout.len() > 100_000, "{what}: plain ffmpeg read {} bytes", plain.stdout.len());
            }
            let mut a = input(&upload, Format::Mp3);
            a.extend(args!["-f", "s16le", "-"]);
            let out = ffmpeg(a, Duration::from_secs(20)).await;
            assert!(out.as_ref().map_or(true, |o| o.is_empty()), "{what}: pinned ffmpeg produced sound from elsewhere");
        }
    }

    #[test]
    fn garbage_is_not_a_probe() {
        assert_eq!(parse_probe(b"not json"), None);
        assert_eq!(parse_probe(br#"{"streams": []}"#), None);
    }
}
