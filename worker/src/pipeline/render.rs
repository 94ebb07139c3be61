//! Render the portrait MP4 (H.264 yuv420p + AAC, 30 fps, faststart) and a
//! JPEG thumbnail, then upload both.

use std::path::Path;

use shared::job::VideoResult;
use shared::keys::objects;

use super::{Job, PipelineError};
use crate::process::Arg;
use crate::{media, vision};

/// The message split into caption lines: at sentence ends (。！？.!?) and
/// line breaks, long sentences cut at about `max_chars` characters.
pub fn caption_lines(message: &str, max_chars: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for ch in message.chars() {
        if ch == '\n' {
            if !cur.trim().is_empty() {
                lines.push(cur.trim().to_owned());
            }
            cur.clear();
            continue;
        }
        cur.push(ch);
        let end = matches!(ch, '。' | '！' | '？' | '.' | '!' | '?');
        if end || (cur.chars().count() >= max_chars && (ch == ' ' || ch == '、' || ch == ',' || !ch.is_ascii())) {
            if !cur.trim().is_empty() {
                lines.push(cur.trim().to_owned());
            }
            cur.clear();
        }
    }
    if !cur.trim().is_empty() {
        lines.push(cur.trim().to_owned());
    }
    lines
}

fn ass_time(t: f64) -> String {
    let cs = (t.max(0.0) * 100.0).round() as u64;
    format!("{}:{:02}:{:02}.{:02}", cs / 360_000, (cs / 6000) % 60, (cs / 100) % 60, cs % 100)
}

/// An ASS subtitle file: one caption line after another, each shown for a
/// share of the speech proportional to its length, in Noto Sans CJK JP
/// (Japanese glyphs), white with a dark outline, near the bottom.
pub fn captions_ass(message: &str, start: f64, speech: f64, w: u32, h: u32) -> String {
    let font_size = h / 26;
    let max_chars = if message.is_ascii() { 32 } else { 16 };
    let lines = caption_lines(message, max_chars);
    let total: usize = lines.iter().map(|l| l.chars().count()).sum::<usize>().max(1);
    let mut out = format!(
        "[Script Info]\nScriptType: v4.00+\nPlayResX: {w}\nPlayResY: {h}\nWrapStyle: 0\n\n\
         [V4+ Styles]\nFormat: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding\n\
         Style: Caption,Noto Sans CJK JP,{font_size},&H00FFFFFF,&H00FFFFFF,&H00202020,&H80000000,1,0,0,0,100,100,0,0,1,{outline},1,2,{margin},{margin},{margin_v},1\n\n\
         [Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n",
        outline = (font_size / 12).max(2),
        margin = w / 12,
        margin_v = h / 10,
    );
    let mut t = start;
    for line in &lines {
        let d = speech * line.chars().count() as f64 / total as f64;
        let text = line.replace('{', "(").replace('}', ")");
        out.push_str(&format!("Dialogue: 0,{},{},Caption,,0,0,0,,{text}\n", ass_time(t), ass_time(t + d)));
        t += d;
    }
    out
}

/// How much closer the picture is at the end than at the start.
pub const ZOOM: f64 = 0.06;
/// The point the zoom closes in on (share of width, of height): a little
/// above the centre, where the face of a person standing on the bottom edge is.
const FOCUS: (f64, f64) = (0.5, 0.4);
const FPS: u32 = 30;
/// The zoom moves every this many frames (10 times a second): at 6 % over
/// ten seconds or more a step is under 0.3 px even at the frame's edge, so
/// it looks as smooth as moving every frame, while the repeated frames cost
/// neither resampling nor much encoding (render step at 1080x1920, e2e
/// bench: 4.4 s moving every frame, 3.8 s every third).
const ZOOM_EVERY: u32 = 3;

/// Frames of the slow zoom over `frames` frames, made on the blocking pool
/// and sent one by one (the channel holds a few, so memory stays flat); a
/// repeated frame is the same buffer sent again, not a copy.
fn zoom_frames(planes: vision::zoom::Planes, frames: u32) -> tokio::sync::mpsc::Receiver<bytes::Bytes> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut frame = bytes::Bytes::new();
        for n in 0..frames {
            if n % ZOOM_EVERY == 0 {
                let z = 1.0 + ZOOM * f64::from(n) / f64::from(frames.max(2) - 1);
                let mut next = Vec::with_capacity(planes.frame_len());
                planes.zoomed(z, FOCUS.0, FOCUS.1, &mut next);
                frame = bytes::Bytes::from(next);
            }
            if tx.blocking_send(frame.clone()).is_err() {
                return; // ffmpeg is gone (failed or cancelled).
            }
        }
    });
    rx
}

/// Encode the video: raw zoom frames on stdin, captions drawn by libass
/// (so they stay still), the mix as AAC.
async fn encode(
    j: &Job<'_>,
    frame: &Path,
    ass: &Path,
    audio: &Path,
    duration: f64,
    video: &Path,
) -> Result<(), PipelineError> {
    let (w, h) = (j.job.resolution.width(), j.job.resolution.height());
    let path = frame.to_owned();
    let planes = tokio::task::spawn_blocking(move || {
        let img = vision::load_upright(&path)?;
        let img = if img.dimensions() == (w, h) {
            img
        } else {
            image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle)
        };
        Ok::<_, vision::VisionError>(vision::zoom::Planes::from_rgb(&img))
    })
    .await
    .map_err(|e| PipelineError::Vision(vision::VisionError::Inference(e.to_string())))??;
    let frames = (duration * f64::from(FPS)).ceil() as u32;
    let size = format!("{w}x{h}");
    let graph = format!("[0:v]subtitles=filename={}[v]", filter_path(ass));
    let duration_arg = format!("{duration:.3}");
    let mut args = media::input_with(
        Path::new("-"),
        media::Format::RawVideoStdin,
        crate::args!["-pix_fmt", "yuv420p", "-s", Arg::composed(size), "-framerate", Arg::num(FPS)],
    );
    args.extend(media::input(audio, media::Format::Mp3));
    args.extend(crate::args![
        "-filter_complex",
        Arg::composed(graph),
        "-map",
        "[v]",
        "-map",
        "1:a",
        "-t",
        Arg::composed(duration_arg),
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-r",
        Arg::num(FPS),
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "160k",
        "-movflags",
        "+faststart",
        video,
    ]);
    media::ffmpeg_fed(args, zoom_frames(planes, frames), j.cfg.tool_timeout).await?;
    Ok(())
}

/// A path quoted for an ffmpeg filter argument.
fn filter_path(p: &Path) -> String {
    let s = p.display().to_string();
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'").replace(':', "\\:"))
}

pub async fn render_and_upload(
    j: &Job<'_>,
    frame: &Path,
    speech: &Path,
    audio: &Path,
) -> Result<VideoResult, PipelineError> {
    let (w, h) = (j.job.resolution.width(), j.job.resolution.height());
    let video = j.path("final_video.mp4");
    let speech_secs = media::speech_seconds(speech, j.cfg.tool_timeout).await?;
    let ass = j.path("captions.ass");
    tokio::fs::write(&ass, captions_ass(&j.job.message, super::mix::INTRO, speech_secs, w, h)).await?;
    // The mix is cut to exactly this long (see mix::mix_filter).
    let duration = super::mix::INTRO + speech_secs + super::mix::OUTRO;
    let thumb = j.path("thumbnail.jpg");
    let mut thumb_args = media::input(frame, media::Format::Png);
    thumb_args.extend(crate::args!["-vf", "scale=360:-2", "-q:v", "3", &thumb]);
    let thumbnail = media::ffmpeg(thumb_args, j.cfg.tool_timeout);
    let (encoded, thumbnail) = tokio::join!(encode(j, frame, &ass, audio, duration, &video), thumbnail);
    encoded?;
    thumbnail?;
    let video_key = objects::final_video(j.task_id());
    let thumbnail_key = objects::thumbnail(j.task_id());
    // Thumbnail first: the video's presence is what marks the result complete.
    let (probe, thumbnail_bytes) = tokio::join!(
        media::probe(&video, media::Format::Mp4Video, j.cfg.tool_timeout),
        j.storage.put_file(&thumbnail_key, &thumb, "image/jpeg")
    );
    let (probe, thumbnail_bytes) = (probe?, thumbnail_bytes?);
    let video_bytes = j.storage.put_file(&video_key, &video, "video/mp4").await?;
    Ok(VideoResult {
        video_key,
        thumbnail_key,
        duration_seconds: probe.duration,
        width: w,
        height: h,
        video_bytes,
        thumbnail_bytes,
        pipeline_metrics: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_follow_sentences() {
        assert_eq!(
            caption_lines("お誕生日おめでとう！いつもありがとう。\nまたね", 16),
            vec!["お誕生日おめでとう！", "いつもありがとう。", "またね"]
        );
        assert_eq!(caption_lines("Happy birthday! See you soon.", 32), vec!["Happy birthday!", "See you soon."]);
        let long = caption_lines("This is a rather long sentence that should be cut into shorter caption lines", 32);
        assert!(long.len() >= 2 && long.iter().all(|l| l.chars().count() <= 40), "{long:?}");
    }

    #[test]
    fn captions_share_the_speech_time_in_order() {
        let ass = captions_ass("おはよう。こんにちは。", 1.0, 4.0, 1080, 1920);
        assert!(ass.contains("Noto Sans CJK JP"));
        assert!(ass.contains("Dialogue: 0,0:00:01.00,0:00:02.82,Caption,,0,0,0,,おはよう。"), "{ass}");
        assert!(ass.contains("Dialogue: 0,0:00:02.82,0:00:05.00,Caption,,0,0,0,,こんにちは。"), "{ass}");
        assert_eq!(ass_time(3725.5), "1:02:05.50");
    }

    /// The zoom reaches the video: a dark band 40 px wide at the left edge
    /// of the still is 40 px wide in the first frame of the encoded video
    /// and 40 * 1.06 - 256 * 0.06 = 27 px in the last.
    #[tokio::test]
    async fn the_encoded_picture_slowly_zooms_in() {
        let dir = tempfile::tempdir().unwrap();
        let img = image::RgbImage::from_fn(512, 910, |x, _| image::Rgb(if x < 40 { [0; 3] } else { [230; 3] }));
        let video = dir.path().join("z.mp4");
        let mut args = media::input_with(
            Path::new("-"),
            media::Format::RawVideoStdin,
            crate::args!["-pix_fmt", "yuv420p", "-s", "512x910", "-framerate", "30"],
        );
        args.extend(crate::args!["-c:v", "libx264", &video]);
        let frames = zoom_frames(vision::zoom::Planes::from_rgb(&img), 60);
        media::ffmpeg_fed(args, frames, std::time::Duration::from_secs(60)).await.unwrap();
        let band = |seek: &str| -> usize {
            let out = std::process::Command::new("ffmpeg")
                .args(["-nostdin", "-loglevel", "error", "-ss", seek, "-i"])
                .arg(&video)
                .args(["-frames:v", "1", "-vf", "format=gray,crop=512:1:0:455", "-f", "rawvideo", "-"])
                .output()
                .unwrap();
            out.stdout.iter().take_while(|&&v| v < 100).count()
        };
        let (first, last) = (band("0"), band("1.94"));
        assert!((39..=41).contains(&first), "first frame: band {first} px");
        assert!((25..=29).contains(&last), "last frame: band {last} px");
    }

    #[test]
    fn filter_paths_are_quoted() {
        assert_eq!(filter_path(Path::new("/tmp/a:b/c'd.ass")), r"'/tmp/a\:b/c\'d.ass'");
    }
}
