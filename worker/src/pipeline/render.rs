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

/// Width of text in ems (Latin letters about half an em; joiners,
/// variation selectors and other invisible characters none).
fn width(s: &str) -> f64 {
    s.chars().filter(|&c| !vision::caption::is_invisible(c)).map(|c| if is_wide(c) { 1.0 } else { 0.55 }).sum()
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

/// Lines shown at once.
const LINES_PER_CAPTION: usize = 2;

/// One caption: its lines, and when it shows (seconds of the video).
#[derive(Debug, Clone, PartialEq)]
pub struct Caption {
    pub lines: Vec<String>,
    pub from: f64,
    pub to: f64,
}

/// The captions: each sentence from the moment it is spoken (`timing`,
/// measured by the speech step; without it, a share of the speech by
/// length) until the next one starts, at most two lines at a time (a longer
/// sentence is shown in parts, timed by their length), lines broken to fit
/// a `w` wide frame with side margins of a 14th of it, at the size
/// [`vision::caption::Style::for_frame`] gives.
pub fn captions(
    message: &str,
    timing: Option<&shared::text::SpeechTiming>,
    start: f64,
    speech: f64,
    w: u32,
    h: u32,
) -> Vec<Caption> {
    let style = vision::caption::Style::for_frame(h);
    let margin = w / 14;
    let max_em = f64::from(w - 2 * margin) / f64::from(style.size);
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
    let mut out = Vec::new();
    for (k, (text, from, to)) in spans.iter().enumerate() {
        // Shown until the next sentence starts (no blank flicker between).
        let until = spans.get(k + 1).map_or(speech.max(*to), |n| n.1);
        let lines = wrap(text, max_em);
        let parts: Vec<&[String]> = lines.chunks(LINES_PER_CAPTION).collect();
        let total: f64 = parts.iter().map(|p| width(&p.concat())).sum::<f64>().max(1.0);
        let mut t = *from;
        for (i, part) in parts.iter().enumerate() {
            let end = if i + 1 == parts.len() { until } else { t + (to - from) * width(&part.concat()) / total };
            out.push(Caption { lines: part.to_vec(), from: start + t, to: start + end });
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
/// it looks as smooth as moving every frame (render step at 1080x1920, e2e
/// bench: 4.4 s moving every frame, 3.8 s every third).
const ZOOM_EVERY: u32 = 3;

/// The frames (of `frames` at [`FPS`]) where the zoom moves: every
/// [`ZOOM_EVERY`]th one counted back from the last, and the first. The last
/// frame is always one of them, so the picture lasts as long as the sound.
fn zoom_ticks(frames: u32) -> impl Iterator<Item = u32> {
    let shift = zoom_shift(frames);
    (0..).map(move |k: u32| if k == 0 { 0 } else { ZOOM_EVERY * k - shift }).take_while(move |&n| n < frames.max(1))
}

/// How far before the regular grid (`ZOOM_EVERY * k`) the ticks lie.
fn zoom_shift(frames: u32) -> u32 {
    (ZOOM_EVERY - frames.saturating_sub(1) % ZOOM_EVERY) % ZOOM_EVERY
}

/// The first frame (at [`FPS`]) at or past `t` seconds.
fn frame_at(t: f64) -> u32 {
    (t * f64::from(FPS) - 1e-6).ceil().max(0.0) as u32
}

/// The frames where the picture changes, in order, each with the caption
/// it shows (an index into `captions`): the zoom's ([`zoom_ticks`]) and
/// those where a caption appears or goes. Every other frame repeats the one
/// before it, so only these are encoded, each at its own time: a variable
/// frame rate stream that plays exactly like the 30 fps one, with a third
/// of the frames to encode (x264 spent as long on a repeated frame as on
/// half a new one: 10.5 against 5.1 CPU-seconds for 13.7 s at 1080x1920).
fn picture_frames(frames: u32, captions: &[Caption]) -> Vec<(u32, Option<usize>)> {
    let spans: Vec<(u32, u32)> = captions.iter().map(|c| (frame_at(c.from), frame_at(c.to))).collect();
    let mut at: Vec<u32> = zoom_ticks(frames).chain(spans.iter().flat_map(|&(a, b)| [a, b])).collect();
    at.retain(|&n| n < frames.max(1));
    at.sort_unstable();
    at.dedup();
    at.into_iter().map(|n| (n, spans.iter().rposition(|&(a, b)| a <= n && n < b))).collect()
}

/// The pictures of [`picture_frames`]: the slow zoom (moving at each tick,
/// held in between) with the captions blended in, made on the blocking
/// pool, once `planes` come, and sent one by one (the channel holds a few,
/// so memory stays flat). Each caption is drawn when it first shows. The
/// task's handle tells whether it ended without a panic (a panic there would
/// otherwise look to ffmpeg like the end of its input); it also ends, making
/// nothing, when the planes never come (the caller has that error).
fn zoom_frames(
    planes: tokio::sync::oneshot::Receiver<vision::zoom::Planes>,
    frames: u32,
    font: std::sync::Arc<vision::caption::CaptionFont>,
    captions: Vec<Caption>,
) -> (tokio::sync::mpsc::Receiver<Vec<u8>>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let made = tokio::task::spawn_blocking(move || {
        // No planes: they could not be made (the caller reports why).
        let Ok(planes) = planes.blocking_recv() else { return };
        let (w, h) = (planes.w, planes.h);
        let style = vision::caption::Style::for_frame(h as u32);
        let mut overlays: Vec<Option<vision::caption::Overlay>> = vec![None; captions.len()];
        let shift = zoom_shift(frames);
        for (n, caption) in picture_frames(frames, &captions) {
            // The zoom as of the last tick at or before this frame (a
            // caption's frame between ticks is zoomed again: cheaper than
            // keeping a copy of every tick's picture).
            let k = (n + shift) / ZOOM_EVERY;
            let tick = if k == 0 { 0 } else { ZOOM_EVERY * k - shift };
            let z = 1.0 + ZOOM * f64::from(tick) / f64::from(frames.max(2) - 1);
            let mut next = Vec::with_capacity(planes.frame_len());
            planes.zoomed(z, FOCUS.0, FOCUS.1, &mut next);
            if let Some(i) = caption {
                let o = overlays[i]
                    .get_or_insert_with(|| vision::caption::Overlay::draw(&font, &captions[i].lines, w, h, style));
                o.blend(&mut next, w, h);
            }
            if tx.blocking_send(next).is_err() {
                return; // ffmpeg is gone (failed or cancelled).
            }
        }
    });
    (rx, made)
}

/// The video filter: each picture of [`picture_frames`] at its frame's
/// time, `3 * N` plus a step for each gap between two pictures that is not
/// the zoom's three frames.
fn video_graph(times: &[u32]) -> String {
    let mut pts = format!("{ZOOM_EVERY}*N");
    for (i, gap) in times.windows(2).map(|p| p[1] - p[0]).enumerate() {
        let step = i64::from(gap) - i64::from(ZOOM_EVERY);
        if step != 0 {
            pts.push_str(&format!("{}gte(N,{})*{}", if step < 0 { '-' } else { '+' }, i + 1, step.abs()));
        }
    }
    format!("[0:v]settb=1/{FPS},setpts='{pts}'[v]")
}

/// The video's sound, as the mix step made it.
#[derive(Debug, Clone)]
pub enum Audio {
    /// AAC in an M4A, copied into the video as it is.
    Aac(std::path::PathBuf),
    /// An MP3 (from a worker that made no AAC), encoded to AAC here.
    Mp3(std::path::PathBuf),
}

impl Audio {
    /// The arguments that open the sound (the second input) and those that
    /// put it in the output: copied, or encoded to AAC; the index at the
    /// front for playback while downloading.
    fn args(&self) -> (Vec<Arg>, Vec<Arg>) {
        let (input, mut output) = match self {
            Audio::Aac(p) => (media::input(p, media::Format::Mp4), crate::args!["-map", "1:a", "-c:a", "copy"]),
            Audio::Mp3(p) => (
                media::input(p, media::Format::Mp3),
                crate::args!["-map", "1:a", "-c:a", "aac", "-b:a", super::mix::AAC_BITRATE],
            ),
        };
        output.extend(crate::args!["-movflags", "+faststart"]);
        (input, output)
    }
}

/// The video's sound: the mix if it was done when the render started
/// (the encoder is then started at once, with it), else asked for again
/// once the picture is ready to be encoded (frame decoded, thumbnail made),
/// so that a mix finished meanwhile still goes into the one encoding run.
pub struct Sound<N, L> {
    /// The mix, if the voice stage was done when the render started.
    pub ready: Option<Audio>,
    /// The mix if the voice stage is done once the picture is ready, else
    /// `None` (awaited only when `ready` is `None`).
    pub now: N,
    /// The mix once the voice stage is done (awaited only after `now` gave
    /// `None`): the picture is encoded alone meanwhile, then put with it
    /// ([`mux`]).
    pub later: L,
}

/// Put the encoded picture (`video`, no sound) and `audio` together in
/// `out`, cut to `duration`, the picture copied as it is (and the sound
/// too when it is AAC).
pub async fn mux(
    video: &Path,
    audio: &Audio,
    duration: f64,
    out: &Path,
    timeout: std::time::Duration,
) -> Result<(), PipelineError> {
    let mut args = media::input(video, media::Format::Mp4Video);
    let (audio_in, audio_out) = audio.args();
    args.extend(audio_in);
    args.extend(crate::args!["-map", "0:v", "-t", Arg::composed(format!("{duration:.3}")), "-c:v", "copy"]);
    args.extend(audio_out);
    args.push(Arg::from(out));
    media::ffmpeg(args, timeout).await?;
    Ok(())
}

/// Width of the JPEG thumbnail (its height keeps the frame's shape).
const THUMBNAIL_WIDTH: u32 = 360;

/// The render's picture from the composed frame: its planes for the zoom,
/// and the thumbnail, made here from the decoded frame (an ffmpeg run
/// costs 0.13 CPU-seconds just to start).
async fn picture(j: &Job<'_>, frame: &Path, thumbnail: &Path) -> Result<vision::zoom::Planes, PipelineError> {
    let (w, h) = (j.job.resolution.width(), j.job.resolution.height());
    let (path, thumb) = (frame.to_owned(), thumbnail.to_owned());
    let planes = tokio::task::spawn_blocking(move || {
        let img = vision::load_upright(&path)?;
        let img = if img.dimensions() == (w, h) {
            img
        } else {
            vision::resize::rgb(&img, w, h, vision::resize::Filter::Triangle)
        };
        let th = (h * THUMBNAIL_WIDTH / w).next_multiple_of(2);
        let small = vision::resize::rgb(&img, THUMBNAIL_WIDTH, th, vision::resize::Filter::Triangle);
        vision::save_jpeg(&small, &thumb, 88)?;
        Ok::<_, vision::VisionError>(vision::zoom::Planes::from_rgb(&img))
    })
    .await
    .map_err(|e| PipelineError::Vision(vision::VisionError::Inference(e.to_string())))??;
    Ok(planes)
}

/// Encode the slow zoom over `planes` for `duration` seconds with
/// `captions` drawn in `font` into `video` (H.264 in MP4), with `audio` as
/// its sound, or none (see [`mux`]). Not cut to `duration`: the last
/// picture (at the last frame's time, just under `duration`) would end past
/// it and be dropped.
///
/// ffmpeg is started before the planes are awaited: loading its 200-odd
/// shared libraries takes it about 0.06 CPU-seconds, done on the other core
/// while the frame is decoded. An error making the planes is the one
/// returned (ffmpeg then sees its input end with no picture).
async fn encode_planes(
    planes: impl std::future::Future<Output = Result<vision::zoom::Planes, PipelineError>>,
    (w, h): (u32, u32),
    (font, captions): (std::sync::Arc<vision::caption::CaptionFont>, &[Caption]),
    audio: Option<&Audio>,
    duration: f64,
    video: &Path,
    timeout: std::time::Duration,
) -> Result<(), PipelineError> {
    let frames = (duration * f64::from(FPS)).ceil() as u32;
    let size = format!("{w}x{h}");
    let times: Vec<u32> = picture_frames(frames, captions).into_iter().map(|(n, _)| n).collect();
    let mut args = media::input_with(
        Path::new("-"),
        media::Format::RawVideoStdin,
        crate::args!["-pix_fmt", "yuv420p", "-s", Arg::composed(size), "-framerate", Arg::num(FPS)],
    );
    let (audio_in, audio_out) = audio.map_or_else(|| (Vec::new(), crate::args!["-an"]), Audio::args);
    args.extend(audio_in);
    args.extend(crate::args![
        "-filter_complex",
        Arg::composed(video_graph(&times)),
        "-map",
        "[v]",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-x264-params",
        X264_PARAMS,
        "-fps_mode",
        "vfr",
        "-pix_fmt",
        "yuv420p",
    ]);
    args.extend(audio_out);
    args.extend(crate::args!["-f", "mp4", video]);
    let (planes_tx, planes_rx) = tokio::sync::oneshot::channel();
    let (pictures, made) = zoom_frames(planes_rx, frames, font, captions.to_vec());
    let given = async {
        let p = planes.await?;
        if (p.w, p.h) != (w as usize, h as usize) {
            return Err(PipelineError::BadOutput(format!("a {}x{} picture for a {w}x{h} video", p.w, p.h)));
        }
        // The producer is waiting for them unless ffmpeg already failed.
        let _ = planes_tx.send(p);
        Ok(())
    };
    let (given, encoded) = tokio::join!(given, media::ffmpeg_fed(args, pictures, timeout));
    given?;
    made.await.map_err(|e| shared::rt::Panicked(e.to_string()))?;
    encoded?;
    Ok(())
}

/// x264 options beyond `veryfast`, the same at every size, measured on the
/// zoom pictures of 13.7 s (astronaut), options compared in the same run:
/// - Sub-pixel refinement 1 instead of 2. At 1080x1920 x264 took 2.0-2.1
///   CPU-seconds instead of 3.2-3.6, for SSIM 0.98857 against 0.98863,
///   PSNR 45.70 against 45.74 dB, a file 6 % larger. At 512x910, with the
///   captions and frame selection of the render: 0.69 against 0.86-1.00
///   CPU-seconds for the whole ffmpeg run (0.47 against 0.55-0.68 s), SSIM
///   0.98412 against 0.98425, a file 3.6 % larger.
/// - No inter sub-partitions (`partitions=i8x8,i4x4`: a slow zoom moves
///   whole blocks alike): 12-18 % less x264 CPU at both sizes, SSIM 0.00014-
///   0.00017 and PSNR 0.04-0.05 dB lower, files 6 % smaller at 1080x1920
///   and 0.5 % larger at 512x910.
/// - Not taken: `rc-lookahead=5` (a fifth smaller but SSIM 0.0036 lower),
///   no B-frames (0.1 s less, a file 40 % larger), `me=dia`, `weightp=0`,
///   `b-adapt=0`, `psy=0` (no CPU saved).
const X264_PARAMS: &str = "subme=1:partitions=i8x8,i4x4";

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

/// Render the video and its thumbnail and upload both. With the mix made
/// before the render started, ffmpeg starts with it at once; else the sound
/// is asked for once the picture is ready to be encoded: the mix if it is
/// done by then (one encoding run), else the picture is encoded first and
/// the mix awaited only to be put with it.
pub async fn render_and_upload<N, L>(
    j: &Job<'_>,
    frame: &Path,
    speech: &Path,
    timing: Option<&shared::text::SpeechTiming>,
    sound: Sound<N, L>,
) -> Result<VideoResult, PipelineError>
where
    N: std::future::Future<Output = Result<Option<Audio>, PipelineError>>,
    L: std::future::Future<Output = Result<Audio, PipelineError>>,
{
    let (w, h) = (j.job.resolution.width(), j.job.resolution.height());
    let video = j.path("final_video.mp4");
    let speech_secs = media::speech_seconds(speech, j.cfg.tool_timeout).await?;
    let captions = captions(&j.job.message, timing, super::mix::INTRO, speech_secs, w, h);
    let font_path = j.cfg.caption_font.clone();
    let font = shared::rt::blocking(move || vision::caption::CaptionFont::shared(&font_path)).await??;
    // The mix is cut to exactly this long (see mix::mix_filter).
    let duration = super::mix::INTRO + speech_secs + super::mix::OUTRO;
    let thumb = j.path("thumbnail.jpg");
    let video_key = objects::final_video(j.task_id());
    let thumbnail_key = objects::thumbnail(j.task_id());
    let put_thumbnail = async { Ok(j.storage.put_file(&thumbnail_key, &thumb, "image/jpeg").await?) };
    let picture = picture(j, frame, &thumb);
    let timeout = j.cfg.tool_timeout;
    let text = (font, captions.as_slice());
    // Nothing is stored until the mix has come (a job whose voice stage
    // fails meanwhile leaves no part of a result). Thumbnail before the
    // video: the video's presence is what marks the result complete.
    let thumbnail_bytes = match sound.ready {
        Some(audio) => {
            encode_planes(picture, (w, h), text, Some(&audio), duration, &video, timeout).await?;
            put_thumbnail.await?
        }
        None => {
            let planes = picture.await?;
            match sound.now.await? {
                Some(audio) => {
                    let planes = std::future::ready(Ok(planes));
                    encode_planes(planes, (w, h), text, Some(&audio), duration, &video, timeout).await?;
                    put_thumbnail.await?
                }
                None => {
                    let picture = j.path("picture.mp4");
                    let planes = std::future::ready(Ok(planes));
                    encode_planes(planes, (w, h), text, None, duration, &picture, timeout).await?;
                    let audio = sound.later.await?;
                    let muxed = mux(&picture, &audio, duration, &video, timeout);
                    tokio::try_join!(muxed, put_thumbnail)?.1
                }
            }
        }
    };
    // The duration from the MP4's own header (an ffprobe run costs a
    // process start on the critical path); ffprobe only if it is unreadable.
    let path = video.clone();
    let duration = match tokio::task::spawn_blocking(move || media::mp4_duration(&path)).await {
        Ok(Ok(Some(d))) => d,
        _ => media::probe(&video, media::Format::Mp4Video, j.cfg.tool_timeout).await?.duration,
    };
    let video_bytes = j.storage.put_file(&video_key, &video, "video/mp4").await?;
    Ok(VideoResult {
        video_key,
        thumbnail_key,
        duration_seconds: duration,
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
        let caption = |text: &str, from: f64, to: f64| Caption { lines: vec![text.into()], from, to };
        let shown = captions("", Some(&timing), 1.0, 3.0, 1080, 1920);
        assert_eq!(shown, [caption("おはよう。", 1.0, 2.6), caption("こんにちは。", 2.6, 4.0)]);
        // Without times: a share of the speech by length, same sentences.
        let shown = captions("おはよう。こんにちは。", None, 1.0, 4.4, 1080, 1920);
        assert_eq!(shown[0], caption("おはよう。", 1.0, 3.0));
        // A sentence longer than two lines is shown in parts, in order.
        let long = "きょうはとってもたのしかったね、ありがとう。またあそぼうね、こんどはうみにいこうね、やくそくだよ。";
        let parts = captions(long, None, 1.0, 6.0, 512, 910);
        assert!(parts.len() >= 2 && parts.iter().all(|c| c.lines.len() <= LINES_PER_CAPTION), "{parts:?}");
        assert!(parts.windows(2).all(|p| (p[0].to - p[1].from).abs() < 1e-9 && p[0].from < p[1].from), "{parts:?}");
        // Text is drawn as it is (no markup to escape).
        assert_eq!(captions("{\\b1}あ。", None, 0.0, 1.0, 512, 910)[0].lines.concat(), "{\\b1}あ。");
    }

    /// The zoom reaches the video: a dark band 40 px wide at the left edge
    /// of the still is 40 px wide in the first frame of the encoded video
    /// and 40 * 1.06 - 256 * 0.06 = 27 px in the last. Only the frames that
    /// change are stored (the zoom's, 10 a second, and a caption's first),
    /// each at its time on the 30 fps grid.
    #[tokio::test]
    async fn the_encoded_picture_slowly_zooms_in() {
        let dir = tempfile::tempdir().unwrap();
        let t = std::time::Duration::from_secs(60);
        let img = image::RgbImage::from_fn(512, 910, |x, _| image::Rgb(if x < 40 { [0; 3] } else { [230; 3] }));
        let video = dir.path().join("z.mp4");
        // The sound as the mix step makes it (AAC, copied into the video),
        // and as an MP3 (which has no movie header, below).
        let (audio, mp3) = (dir.path().join("a.m4a"), dir.path().join("a.mp3"));
        let mut tone = media::generated("sine=f=440:d=2:r=48000");
        tone.extend(crate::args!["-c:a", "aac", "-f", "mp4", &audio, "-c:a", "libmp3lame", &mp3]);
        media::ffmpeg(tone, t).await.unwrap();
        // A caption from 1.03 s, between two zoom steps, to 1.4 s.
        let timing = shared::text::SpeechTiming {
            sentences: vec![shared::text::SentenceTime { text: "はい。".into(), start: 0.53, end: 0.9 }],
        };
        let captions = captions("", Some(&timing), 0.5, 0.9, 512, 910);
        let font = || vision::caption::CaptionFont::shared(Path::new(vision::caption::DEFAULT_FONT)).unwrap();
        // One run, the mix ready (its AAC copied in).
        let planes = || std::future::ready(Ok(vision::zoom::Planes::from_rgb(&img)));
        let size = (512, 910);
        encode_planes(planes(), size, (font(), &captions), Some(&Audio::Aac(audio.clone())), 2.0, &video, t)
            .await
            .unwrap();
        // One frame's part (`crop`), as grey levels (ffmpeg, the judge).
        let grey = |seek: &str, crop: &str| -> Vec<u8> {
            let out = std::process::Command::new("ffmpeg")
                .args(["-nostdin", "-loglevel", "error", "-ss", seek, "-i"])
                .arg(&video)
                .args(["-frames:v", "1", "-vf", &format!("format=gray,crop={crop}"), "-f", "rawvideo", "-"])
                .output()
                .unwrap();
            out.stdout
        };
        let band = |seek: &str| grey(seek, "512:1:0:455").iter().take_while(|&&v| v < 100).count();
        let (first, last) = (band("0"), band("1.94"));
        assert!((39..=41).contains(&first), "first frame: band {first} px");
        assert!((25..=29).contains(&last), "last frame: band {last} px");
        // The caption is in the picture while it is shown, and only then:
        // white pixels (the still is light grey, 230 as grey) in the band at
        // the bottom.
        let white = |seek: &str| grey(seek, "512:228:0:682").iter().filter(|&&v| v >= 245).count();
        let (before, during, after) = (white("0.9"), white("1.2"), white("1.6"));
        println!("white caption pixels: {before}, {during}, {after}");
        assert!(before < 20 && after < 20 && during > 150, "white caption pixels: {before}, {during}, {after}");
        // The video's picture times, in order (ffprobe, the test's judge).
        let picture_times = |video: &Path| -> Vec<f64> {
            let out = std::process::Command::new("ffprobe")
                .args(["-v", "error", "-select_streams", "v", "-show_entries", "packet=pts_time", "-of", "csv=p=0"])
                .arg(video)
                .output()
                .unwrap();
            let mut times: Vec<f64> =
                String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
            times.sort_by(f64::total_cmp);
            times
        };
        let times = picture_times(&video);
        // 21 zoom pictures in 2 s (the first frame, then every third
        // counted back from the last, 1.967 s), plus the frames where the
        // caption appears (1.033 s) and goes (1.4 s): 23 of 60.
        assert_eq!(times.len(), 23, "{times:?}");
        assert!((times[22] - 59.0 / 30.0).abs() < 0.002, "{times:?}");
        for (what, at) in [("appears", 1.0333), ("goes", 1.4)] {
            assert!(times.iter().any(|&t| (t - at).abs() < 0.002), "no frame where the caption {what}: {times:?}");
        }
        assert!(
            times.iter().all(|&t| ((t * 30.0) - (t * 30.0).round()).abs() < 0.01),
            "off the 30 fps grid: {times:?}"
        );
        // The duration the result reports, read from the MP4's header, is
        // ffprobe's.
        let probe = media::probe(&video, media::Format::Mp4Video, t).await.unwrap();
        assert_eq!(probe.audio.as_deref(), Some("aac"), "the sound copied in");
        // The picture alone, then the sound put with it: copied, or from a
        // worker that made only the MP3, encoded to AAC by the mux.
        let picture = dir.path().join("p.mp4");
        encode_planes(planes(), size, (font(), &captions), None, 2.0, &picture, t).await.unwrap();
        assert_eq!(media::probe(&picture, media::Format::Mp4Video, t).await.unwrap().audio, None);
        for (n, sound) in [Audio::Aac(audio), Audio::Mp3(mp3.clone())].iter().enumerate() {
            let muxed = dir.path().join(format!("m{n}.mp4"));
            mux(&picture, sound, 2.0, &muxed, t).await.unwrap();
            let other = media::probe(&muxed, media::Format::Mp4Video, t).await.unwrap();
            assert_eq!((other.audio.as_deref(), &other.video), (Some("aac"), &probe.video), "{sound:?}");
            assert!((other.duration - probe.duration).abs() < 0.05, "{sound:?}: {other:?} against {probe:?}");
        }
        let probed = probe.duration;
        let header = media::mp4_duration(&video).unwrap().unwrap();
        assert!((header - probed).abs() < 0.002 && (header - 2.0).abs() < 0.05, "{header} against {probed}");
        assert_eq!(media::mp4_duration(&mp3).unwrap(), None, "an MP3 has no movie header");

        // A length off the frame grid (2.01 s: 61 frames, the last at 2.0 s,
        // ending after 2.01 s) keeps its last picture.
        let (picture, video) = (dir.path().join("p2.mp4"), dir.path().join("z2.mp4"));
        encode_planes(planes(), size, (font(), &captions), None, 2.01, &picture, t).await.unwrap();
        mux(&picture, &Audio::Mp3(mp3), 2.01, &video, t).await.unwrap();
        let last = picture_times(&video).last().copied().unwrap_or_default();
        assert!((last - 2.0).abs() < 0.002, "last picture at {last} s");
    }

    /// The encoder starts before the picture is made: a picture that could
    /// not be made (or is not the video's size) is the error reported, ffmpeg
    /// ends with its input, and no video is left.
    #[tokio::test]
    async fn a_picture_that_fails_while_ffmpeg_waits_is_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let t = std::time::Duration::from_secs(60);
        let font = vision::caption::CaptionFont::shared(Path::new(vision::caption::DEFAULT_FONT)).unwrap();
        let video = dir.path().join("v.mp4");
        let failing = async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            Err(PipelineError::BadOutput("no picture".into()))
        };
        let started = std::time::Instant::now();
        let err = encode_planes(failing, (512, 910), (font.clone(), &[]), None, 2.0, &video, t).await.unwrap_err();
        assert!(matches!(&err, PipelineError::BadOutput(m) if m == "no picture"), "{err:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "ffmpeg ended with its input");
        let small = vision::zoom::Planes::from_rgb(&image::RgbImage::new(64, 64));
        let err = encode_planes(std::future::ready(Ok(small)), (512, 910), (font, &[]), None, 2.0, &video, t)
            .await
            .unwrap_err();
        assert!(matches!(&err, PipelineError::BadOutput(m) if m.contains("64x64")), "{err:?}");
        assert!(!video.exists() || std::fs::metadata(&video).unwrap().len() < 1000, "no video made");
    }

    #[test]
    fn the_zoom_moves_every_third_frame_and_on_the_last() {
        for frames in [1, 2, 3, 4, 60, 61, 62, 411] {
            let ticks: Vec<u32> = zoom_ticks(frames).collect();
            assert_eq!(ticks[0], 0);
            assert_eq!(*ticks.last().unwrap(), frames - 1, "{frames}: {ticks:?}");
            assert!(ticks.windows(2).all(|w| w[1] > w[0] && w[1] - w[0] <= ZOOM_EVERY), "{frames}: {ticks:?}");
        }
    }

    #[test]
    fn caption_edges_get_their_own_frames() {
        let timing = shared::text::SpeechTiming {
            sentences: vec![shared::text::SentenceTime { text: "はい。".into(), start: 0.0, end: 0.9 }],
        };
        // Shown from 1.00 s to 1.90 s: frames 30 and 57 are the first at or past them.
        let shown = captions("", Some(&timing), 1.0, 0.9, 512, 910);
        let frames = picture_frames(90, &shown);
        let ticks: Vec<u32> = zoom_ticks(90).collect();
        let extra: Vec<(u32, Option<usize>)> = frames.iter().copied().filter(|(n, _)| !ticks.contains(n)).collect();
        assert_eq!(extra, [(30, Some(0)), (57, None)]);
        assert_eq!(frames.len(), ticks.len() + 2);
        let caption_of = |n: u32| frames.iter().find(|f| f.0 == n).unwrap().1;
        assert_eq!((caption_of(29), caption_of(32), caption_of(56), caption_of(59)), (None, Some(0), Some(0), None));
        // The filter puts each picture at its frame's time.
        let times: Vec<u32> = frames.iter().map(|f| f.0).collect();
        let graph = video_graph(&times);
        let expr = graph.split('\'').nth(1).unwrap();
        for (n, &at) in times.iter().enumerate() {
            assert_eq!(eval_pts(expr, n as i64), i64::from(at), "picture {n} in {expr}");
        }
    }

    /// The `setpts` expression of [`video_graph`] at picture `n`: `3*N`
    /// followed by `±gte(N,i)*k` terms.
    fn eval_pts(expr: &str, n: i64) -> i64 {
        let rest = expr.strip_prefix("3*N").unwrap();
        let mut total = 3 * n;
        for term in rest.replace('-', " -").replace('+', " +").split_whitespace() {
            let sign = if term.starts_with('-') { -1 } else { 1 };
            let (i, k) = term[1..].strip_prefix("gte(N,").unwrap().split_once(")*").unwrap();
            if n >= i.parse::<i64>().unwrap() {
                total += sign * k.parse::<i64>().unwrap();
            }
        }
        total
    }
}
