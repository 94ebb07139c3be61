//! Render the portrait MP4 (H.264 yuv420p + AAC, 30 fps, faststart) and a
//! JPEG thumbnail, then upload both.

use std::path::Path;

use shared::job::VideoResult;
use shared::keys::objects;

use super::{Job, PipelineError};
use crate::process::Arg;
use crate::{media, vision};

/// A character as wide as a full em (kana, kanji, full-width forms).
fn is_wide(c: char) -> bool {
    shared::text::is_japanese(c) || ('\u{3000}'..='\u{303F}').contains(&c) || ('\u{FF00}'..='\u{FFEF}').contains(&c)
}

/// Never at the start of a Japanese line (kinsoku): closing punctuation,
/// the long-vowel mark, small kana.
fn no_line_start(c: char) -> bool {
    "、。，．,.!?！？」』）】〉》・ー〜…：；ぁぃぅぇぉっゃゅょゎァィゥェォッャュョヮヵヶ".contains(c)
}

/// Never at the end of a line: opening brackets.
fn no_line_end(c: char) -> bool {
    "「『（【〈《(".contains(c)
}

/// Width of text in ems (Latin letters about half an em).
fn width(s: &str) -> f64 {
    s.chars().map(|c| if is_wide(c) { 1.0 } else { 0.55 }).sum()
}

/// One caption's text broken into lines of at most `max_em` ems: Latin
/// text at spaces, Japanese between any two characters except before a
/// character that may not start a line (it stays on the line before, a
/// little over the width) or after an opening bracket.
pub fn wrap(text: &str, max_em: f64) -> Vec<String> {
    // Units that are never split: a Latin word with its trailing space, or
    // one wide character, with its kinsoku neighbours attached.
    let mut units: Vec<String> = Vec::new();
    let mut glue_next = false;
    for c in text.chars() {
        let attach = match units.last() {
            None => false,
            Some(_) if glue_next => true,
            Some(_) if no_line_start(c) => true,
            Some(last) => !is_wide(c) && c != ' ' && !last.ends_with(' ') && !last.chars().last().is_some_and(is_wide),
        };
        match units.last_mut() {
            Some(last) if attach || c == ' ' => last.push(c),
            _ => units.push(c.to_string()),
        }
        glue_next = no_line_end(c);
    }
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for u in units {
        if !cur.is_empty() && width(cur.trim_end()) + width(u.trim_end()) > max_em {
            lines.push(cur.trim().to_owned());
            cur.clear();
        }
        cur.push_str(&u);
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

/// Lines shown at once.
const LINES_PER_CAPTION: usize = 2;

/// The captions as an ASS subtitle file: each sentence from the moment it
/// is spoken (`timing`, measured by the speech step; without it, a share of
/// the speech by length) until the next one starts, at most two lines at a
/// time (a longer sentence is shown in parts, timed by their length);
/// Noto Sans CJK JP, bold, white with a dark outline, in the band below
/// the face (bottom centre), large enough for a phone (a 22nd of the
/// height).
pub fn captions_ass(
    message: &str,
    timing: Option<&shared::text::SpeechTiming>,
    start: f64,
    speech: f64,
    w: u32,
    h: u32,
) -> String {
    let font_size = h / 22;
    let margin = w / 14;
    let max_em = f64::from(w - 2 * margin) / f64::from(font_size);
    let mut out = format!(
        "[Script Info]\nScriptType: v4.00+\nPlayResX: {w}\nPlayResY: {h}\nWrapStyle: 2\n\n\
         [V4+ Styles]\nFormat: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding\n\
         Style: Caption,Noto Sans CJK JP,{font_size},&H00FFFFFF,&H00FFFFFF,&H00202020,&H80000000,1,0,0,0,100,100,0,0,1,{outline},1,2,{margin},{margin},{margin_v},1\n\n\
         [Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n",
        outline = (font_size / 10).max(3),
        margin_v = h / 12,
    );
    let spans: Vec<(String, f64, f64)> = match timing {
        Some(t) => t.sentences.iter().map(|s| (s.text.clone(), s.start, s.end)).collect(),
        None => {
            let sentences = shared::text::sentences(message);
            let total: usize = sentences.iter().map(|s| s.chars().count()).sum::<usize>().max(1);
            let mut t = 0.0;
            sentences
                .into_iter()
                .map(|s| {
                    let d = speech * s.chars().count() as f64 / total as f64;
                    t += d;
                    (s, t - d, t)
                })
                .collect()
        }
    };
    for (k, (text, from, to)) in spans.iter().enumerate() {
        // Shown until the next sentence starts (no blank flicker between).
        let until = spans.get(k + 1).map_or(speech.max(*to), |n| n.1);
        let lines = wrap(&text.replace(['{', '}'], "").replace('\\', "＼"), max_em);
        let parts: Vec<&[String]> = lines.chunks(LINES_PER_CAPTION).collect();
        let total: f64 = parts.iter().map(|p| width(&p.concat())).sum::<f64>().max(1.0);
        let mut t = *from;
        for (i, part) in parts.iter().enumerate() {
            let end = if i + 1 == parts.len() { until } else { t + (to - from) * width(&part.concat()) / total };
            out.push_str(&format!(
                "Dialogue: 0,{},{},Caption,,0,0,0,,{}\n",
                ass_time(start + t),
                ass_time(start + end),
                part.join("\\N")
            ));
            t = end;
        }
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

/// The sentence times the speech step stored (`None` for a job whose
/// speech was made by a worker from before they were stored).
pub async fn speech_timing(j: &Job<'_>) -> Result<Option<shared::text::SpeechTiming>, PipelineError> {
    let path = j.path("speech_timing.json");
    match j.storage.get_to_file(&objects::speech_timing(j.task_id()), &path).await {
        Ok(_) => {
            let bytes = tokio::fs::read(&path).await?;
            Ok(Some(serde_json::from_slice(&bytes).map_err(|e| PipelineError::BadOutput(e.to_string()))?))
        }
        Err(shared::storage::StorageError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub async fn render_and_upload(
    j: &Job<'_>,
    frame: &Path,
    speech: &Path,
    audio: &Path,
    timing: Option<&shared::text::SpeechTiming>,
) -> Result<VideoResult, PipelineError> {
    let (w, h) = (j.job.resolution.width(), j.job.resolution.height());
    let video = j.path("final_video.mp4");
    let speech_secs = media::speech_seconds(speech, j.cfg.tool_timeout).await?;
    let ass = j.path("captions.ass");
    let captions = captions_ass(&j.job.message, timing, super::mix::INTRO, speech_secs, w, h);
    tokio::fs::write(&ass, captions).await?;
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
    fn captions_break_lines_where_japanese_and_english_allow() {
        // Never a line starting with 。、 or a small kana.
        let ja = wrap("きょうはとってもたのしかったね、ありがとう。またあそぼうね。", 8.0);
        assert!(ja.len() >= 3, "{ja:?}");
        for l in &ja[1..] {
            let first = l.chars().next().unwrap();
            assert!(!no_line_start(first), "{l:?} starts a line in {ja:?}");
        }
        assert_eq!(ja.concat(), "きょうはとってもたのしかったね、ありがとう。またあそぼうね。");
        assert!(wrap("「ありがとう」", 1.0).iter().all(|l| !l.ends_with('「')));
        // English at spaces; one curly apostrophe does not change the width.
        let en = wrap("It’s a rather long sentence that should be cut into shorter caption lines", 16.0);
        assert!(en.len() >= 3 && en.iter().all(|l| width(l) <= 16.0 + 0.01), "{en:?}");
        assert_eq!(en.join(" "), "It’s a rather long sentence that should be cut into shorter caption lines");
        let plain = wrap("Its a rather long sentence that should be cut into shorter caption lines", 16.0);
        assert_eq!(en.len(), plain.len());
    }

    #[test]
    fn captions_follow_the_measured_sentence_times() {
        use shared::text::{SentenceTime, SpeechTiming};
        let timing = SpeechTiming {
            sentences: vec![
                SentenceTime { text: "おはよう。".into(), start: 0.0, end: 1.2 },
                SentenceTime { text: "こんにちは。".into(), start: 1.6, end: 3.0 },
            ],
        };
        let ass = captions_ass("", Some(&timing), 1.0, 3.0, 1080, 1920);
        assert!(ass.contains("Noto Sans CJK JP"));
        assert!(ass.contains("Dialogue: 0,0:00:01.00,0:00:02.60,Caption,,0,0,0,,おはよう。"), "{ass}");
        assert!(ass.contains("Dialogue: 0,0:00:02.60,0:00:04.00,Caption,,0,0,0,,こんにちは。"), "{ass}");
        // Without times: a share of the speech by length, same sentences.
        let ass = captions_ass("おはよう。こんにちは。", None, 1.0, 4.4, 1080, 1920);
        assert!(ass.contains("Dialogue: 0,0:00:01.00,0:00:03.00,Caption,,0,0,0,,おはよう。"), "{ass}");
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
