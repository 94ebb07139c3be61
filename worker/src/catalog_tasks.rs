//! Catalog tasks: measuring uploaded music (duration, tempo, loudness) and
//! cutting previews, on behalf of the gateway.

use std::path::Path;
use std::sync::Arc;

use shared::catalog_task::{CatalogTask, CatalogTaskKind, CatalogTaskResult, TrackFacts};

use crate::media::{self, Format};
use crate::process::{Arg, ProcessError};
use crate::runner::Runner;

/// Sample rate used for analysis.
const RATE: u32 = 22_050;

/// Run a task within its deadline: `None` when the deadline passed (before
/// it started, while it ran, or before its answer could be given), in which
/// case whatever it wrote for its caller is removed, since nobody will
/// reference it. The scratch directory goes with the task's future and its
/// tools are killed with it.
pub async fn handle(runner: &Arc<Runner>, task: CatalogTask) -> Option<CatalogTaskResult> {
    let Some(deadline) = task.deadline else { return Some(run(runner, &task).await) };
    let left = (deadline - chrono::Utc::now()).to_std().unwrap_or_default();
    let result = if left.is_zero() { None } else { tokio::time::timeout(left, run(runner, &task)).await.ok() };
    if result.is_some() && chrono::Utc::now() < deadline {
        return result;
    }
    tracing::warn!(id = %task.id, %deadline, "the caller stopped waiting; removing what the task wrote");
    for key in [task.kind.target_key(), task.kind.source_upload()].into_iter().flatten() {
        if let Err(e) = runner.storage.delete(key).await {
            tracing::warn!(%key, error = %e, "could not remove an object of a task past its deadline");
        }
    }
    None
}

/// The answer to a task delivered `deliveries` times without finishing.
pub fn gave_up(deliveries: u64) -> CatalogTaskResult {
    CatalogTaskResult::Failed {
        code: "gave-up".into(),
        message: format!("The task was started {deliveries} times without finishing; please try again."),
    }
}

async fn run(runner: &Arc<Runner>, task: &CatalogTask) -> CatalogTaskResult {
    let dir = match tempfile::Builder::new().prefix("tayori-catalog-").tempdir_in(&runner.cfg.work_dir) {
        Ok(d) => d,
        Err(e) => return failed_as("worker-disk", format!("scratch directory: {e}")),
    };
    let r = match &task.kind {
        CatalogTaskKind::AnalyseTrack { source_key, target_key } => {
            analyse_track(runner, dir.path(), source_key, target_key).await
        }
        CatalogTaskKind::TrackPreview { source_key, target_key } => {
            preview(runner, dir.path(), source_key, target_key).await
        }
        CatalogTaskKind::AnalyseVoice { source_key, target_key, language, gender } => {
            analyse_voice(runner, dir.path(), source_key, target_key, language, gender.as_deref()).await
        }
        CatalogTaskKind::VoicePreview { profile_id, target_key } => {
            voice_preview(runner, dir.path(), profile_id, target_key).await
        }
        CatalogTaskKind::DetectPeople { source_key, upload_id } => {
            detect_people(runner, dir.path(), source_key, upload_id).await
        }
    };
    r.unwrap_or_else(|e| e)
}

async fn ffmpeg(runner: &Runner, args: Vec<Arg>) -> Result<Vec<u8>, ProcessError> {
    media::ffmpeg(args, runner.cfg.tool_timeout).await
}

fn failed(e: impl std::fmt::Display) -> CatalogTaskResult {
    failed_as("catalog-task-failed", e)
}

fn failed_as(code: &str, e: impl std::fmt::Display) -> CatalogTaskResult {
    CatalogTaskResult::Failed { code: code.into(), message: e.to_string() }
}

fn rejected(code: &str, message: impl Into<String>) -> CatalogTaskResult {
    CatalogTaskResult::Rejected { code: code.into(), message: message.into() }
}

/// A tool that could not read the upload: the file's fault, said in words.
fn unreadable(what: &'static str) -> impl Fn(ProcessError) -> CatalogTaskResult {
    move |e| match e {
        ProcessError::Failed { .. } => rejected("audio-unreadable", format!("The {what} could not be read as audio.")),
        other => failed(other),
    }
}

/// An uploaded audio file, checked before anything decodes it: its format
/// by content (then pinned for every tool that opens it), an audio stream,
/// and its length as the container states it, at most `max_secs`.
async fn probe_upload(
    runner: &Runner,
    path: &Path,
    what: &'static str,
    max_secs: f64,
    too_long: impl Fn(f64) -> CatalogTaskResult,
) -> Result<(Format, f64), CatalogTaskResult> {
    let format = media::audio_format(path).await.map_err(failed)?.ok_or_else(|| {
        rejected("unsupported-audio-type", format!("The {what} must be an MP3, M4A, WAV or OGG file."))
    })?;
    let probe = media::probe(path, format, runner.cfg.tool_timeout).await.map_err(unreadable(what))?;
    if probe.audio.is_none() {
        return Err(rejected("audio-unreadable", format!("The {what} has no sound in it.")));
    }
    if probe.duration > max_secs {
        return Err(too_long(probe.duration));
    }
    Ok((format, probe.duration))
}

/// Longest music accepted: 10 minutes. The container's stated length is
/// checked before decoding, and decoding stops there too, whatever the file
/// claims (a few MB of low-bitrate audio could otherwise decode to GBs).
pub const MAX_TRACK_SECS: u32 = 600;
/// Shortest music accepted.
const MIN_TRACK_SECS: f64 = 1.0;

async fn analyse_track(
    runner: &Runner,
    dir: &Path,
    source_key: &str,
    target_key: &str,
) -> Result<CatalogTaskResult, CatalogTaskResult> {
    let raw = dir.join("upload");
    runner.storage.get_to_file(source_key, &raw).await.map_err(failed)?;
    let outcome = analyse_track_file(runner, dir, &raw, target_key).await;
    let _ = runner.storage.delete(source_key).await;
    outcome
}

async fn analyse_track_file(
    runner: &Runner,
    dir: &Path,
    raw: &Path,
    target_key: &str,
) -> Result<CatalogTaskResult, CatalogTaskResult> {
    let too_long = |secs: f64| {
        rejected(
            "audio-too-long",
            format!(
                "The music is {:.0} minutes long; at most {} minutes are accepted.",
                secs / 60.0,
                MAX_TRACK_SECS / 60
            ),
        )
    };
    let (format, _) = probe_upload(runner, raw, "music file", f64::from(MAX_TRACK_SECS), too_long).await?;
    // Decoded first (to learn its length), then made loop-ready and
    // encoded, so that the mix can loop it without a seam.
    let wav = dir.join("track.wav");
    let mp3 = dir.join("track.mp3");
    let mut args = media::input(raw, format);
    args.extend(crate::args!["-map_metadata", "-1", "-vn", "-t", Arg::num(MAX_TRACK_SECS)]);
    args.extend(crate::args!["-ar", "44100", "-ac", "2", "-c:a", "pcm_s16le", &wav]);
    ffmpeg(runner, args).await.map_err(unreadable("music file"))?;
    let w = wav.clone();
    let secs = tokio::task::spawn_blocking(move || media::wav_duration(&w)).await.ok().and_then(Result::ok);
    if secs.is_none_or(|s| s < MIN_TRACK_SECS) {
        return Err(rejected("audio-too-short", "The music file holds less than a second of sound."));
    }
    let mut args = media::input(&wav, Format::Wav);
    if let Some(filter) = secs.and_then(crate::audio::loop_ready_filter) {
        args.extend(crate::args!["-filter_complex", Arg::composed(filter), "-map", "[out]"]);
    }
    args.extend(crate::args!["-c:a", "libmp3lame", "-b:a", "192k", &mp3]);
    ffmpeg(runner, args).await.map_err(failed)?;
    let duration = media::probe(&mp3, Format::Mp3, runner.cfg.tool_timeout).await.map_err(failed)?.duration;
    let samples = decode(runner, &mp3, Format::Mp3, RATE, MAX_TRACK_SECS).await.map_err(failed)?;
    let (bpm, loudness) =
        shared::rt::blocking(move || (estimate_bpm(&samples, RATE), crate::audio::loudness_lufs(&samples, RATE)))
            .await
            .map_err(failed)?;
    runner.storage.put_file(target_key, &mp3, "audio/mpeg").await.map_err(failed)?;
    Ok(CatalogTaskResult::Track(TrackFacts { duration_seconds: duration, bpm, loudness_lufs: loudness }))
}

async fn preview(
    runner: &Runner,
    dir: &Path,
    source_key: &str,
    target_key: &str,
) -> Result<CatalogTaskResult, CatalogTaskResult> {
    let src = dir.join("track");
    if let Some(local) = runner.catalog.resolve(source_key).filter(|p| p.is_file()) {
        tokio::fs::copy(&local, &src).await.map_err(failed)?;
    } else {
        runner.storage.get_to_file(source_key, &src).await.map_err(failed)?;
    }
    let format = media::audio_format(&src)
        .await
        .map_err(failed)?
        .ok_or_else(|| failed(format!("track {source_key} is not an audio file tayori reads")))?;
    let out = dir.join("preview.mp3");
    let mut args = media::input(&src, format);
    args.extend(crate::args!["-t", "15", "-af", "afade=t=in:d=0.5,afade=t=out:st=13.5:d=1.5"]);
    args.extend(crate::args!["-c:a", "libmp3lame", "-b:a", "128k", &out]);
    ffmpeg(runner, args).await.map_err(failed)?;
    runner.storage.put_file(target_key, &out, "audio/mpeg").await.map_err(failed)?;
    Ok(CatalogTaskResult::Preview { key: target_key.to_owned() })
}

/// Shortest and longest accepted reference recordings, seconds.
pub const REFERENCE_SECS: (f64, f64) = (3.0, 30.0);
const VOICE_RATE: u32 = 16_000;

async fn decode(
    runner: &Runner,
    path: &Path,
    format: Format,
    rate: u32,
    max_secs: u32,
) -> Result<Vec<f32>, ProcessError> {
    media::decode_mono(path, format, rate, max_secs, runner.cfg.tool_timeout).await
}

async fn analyse_voice(
    runner: &Runner,
    dir: &Path,
    source_key: &str,
    target_key: &str,
    language: &str,
    gender: Option<&str>,
) -> Result<CatalogTaskResult, CatalogTaskResult> {
    let raw = dir.join("reference");
    runner.storage.get_to_file(source_key, &raw).await.map_err(failed)?;
    let outcome = analyse_voice_file(runner, &raw, target_key, language, gender).await;
    let _ = runner.storage.delete(source_key).await;
    outcome
}

fn reference_length(secs: f64) -> CatalogTaskResult {
    rejected(
        "reference-audio-length",
        format!("The recording is {secs:.1} s long; it must be 3 to 30 seconds of speech."),
    )
}

async fn analyse_voice_file(
    runner: &Runner,
    raw: &Path,
    target_key: &str,
    language: &str,
    gender: Option<&str>,
) -> Result<CatalogTaskResult, CatalogTaskResult> {
    let (format, _) = probe_upload(runner, raw, "recording", REFERENCE_SECS.1, reference_length).await?;
    // A second more than the longest allowed is decoded, to tell a file
    // that runs on (whatever its header says) from one that fits.
    let max = REFERENCE_SECS.1 as u32 + 1;
    let samples = decode(runner, raw, format, VOICE_RATE, max).await.map_err(unreadable("recording"))?;
    let secs = samples.len() as f64 / VOICE_RATE as f64;
    if !(REFERENCE_SECS.0..=REFERENCE_SECS.1).contains(&secs) {
        return Err(reference_length(secs));
    }
    let reference = samples.clone();
    let target = tokio::task::spawn_blocking(move || crate::voice_analysis::analyse(&samples, VOICE_RATE))
        .await
        .map_err(failed)?
        .ok_or_else(|| rejected("no-voice-found", "No speaking voice was found in the recording."))?;

    let doc = runner.catalog.voices_async().await.map_err(failed)?;
    let data_dir = runner.catalog.data_dir();
    if language == "ja" && crate::kokoro::matching::available(data_dir) {
        let scratch = raw.with_extension("match");
        tokio::fs::create_dir_all(&scratch).await.map_err(failed)?;
        let matched = kokoro_match(runner, &doc, &reference, &target, gender, &scratch).await;
        let _ = tokio::fs::remove_dir_all(&scratch).await;
        let (base, embedding) = matched?;
        return voice_result(runner, raw, format, max, target_key, secs, base, embedding).await;
    }

    // The closest base voice of the language, by median pitch.
    let mut best: Option<(&shared::catalog::VoiceProfile, crate::voice_analysis::VoiceFeatures)> = None;
    for p in doc.profiles.iter().filter(|p| p.kind == shared::catalog::EntryType::System && p.language == language) {
        let f = base_features(runner, p).await?;
        let distance = |f: &crate::voice_analysis::VoiceFeatures| (f.median_f0_hz / target.median_f0_hz).ln().abs();
        if best.as_ref().is_none_or(|(_, b)| distance(&f) < distance(b)) {
            best = Some((p, f));
        }
    }
    let (base, base_features) = best.ok_or_else(|| failed(format!("no system voice for language {language}")))?;
    let (pitch, speed) = crate::voice_analysis::shift_toward(&target, &base_features);
    let embedding = serde_json::json!({
        "version": "1.0",
        "method": "voice matching (pitch and speed of a base voice), not cloning",
        "engine": base.metadata.engine,
        "base_voice": base.metadata.base_voice,
        "base_profile": base.id,
        "pitch_semitones": pitch,
        "speed": speed,
        "features": target,
        "base_features": base_features,
    });
    voice_result(runner, raw, format, max, target_key, secs, base, embedding).await
}

/// A Japanese recording matched to Kokoro: the blend of its voices whose
/// speech is nearest the recording by speaker embedding, then shifted in
/// pitch and speed toward it like any base voice.
async fn kokoro_match<'a>(
    runner: &Runner,
    doc: &'a shared::catalog::VoicesFile,
    reference: &[f32],
    target: &crate::voice_analysis::VoiceFeatures,
    gender: Option<&str>,
    scratch: &Path,
) -> Result<(&'a shared::catalog::VoiceProfile, serde_json::Value), CatalogTaskResult> {
    let data_dir = runner.catalog.data_dir().to_owned();
    let lib = crate::onnx::runtime_path(&data_dir);
    let (l, d, r) = (lib.clone(), data_dir.clone(), reference.to_vec());
    let d_target = tokio::task::spawn_blocking(move || crate::speaker::Embedder::get(&l, &d)?.embed(&r))
        .await
        .map_err(failed)?
        .map_err(failed)?;
    let m = crate::kokoro::matching::closest(
        &lib,
        &data_dir,
        &d_target,
        target.median_f0_hz,
        gender,
        scratch,
        runner.cfg.tool_timeout,
    )
    .await
    .map_err(failed)?;
    let top = m.best.blend.iter().max_by(|a, b| a.1.total_cmp(&b.1)).map(|(n, _)| n.clone()).unwrap_or_default();
    let base = doc
        .profiles
        .iter()
        .find(|p| {
            p.kind == shared::catalog::EntryType::System
                && p.metadata.engine == "kokoro"
                && p.metadata.base_voice.ends_with(&format!("/{top}.npy"))
        })
        .ok_or_else(|| failed(format!("no system profile speaks Kokoro voice {top}")))?;
    let speech = m.speech.clone();
    let base_features = tokio::task::spawn_blocking(move || crate::voice_analysis::analyse(&speech, VOICE_RATE))
        .await
        .map_err(failed)?
        .ok_or_else(|| failed("no voice measured in the matched blend's speech"))?;
    let (pitch, speed) = crate::voice_analysis::shift_toward(target, &base_features);
    let round = |x: f32| (x * 1000.0).round() / 1000.0;
    let embedding = serde_json::json!({
        "version": "1.0",
        "method": "voice matching (a blend of Kokoro voices chosen by a speaker embedding, with pitch and speed), not cloning",
        "engine": "kokoro",
        "base_voice": base.metadata.base_voice,
        "base_profile": base.id,
        "kokoro_blend": m.best.blend.iter().map(|(n, w)| (n.clone(), round(*w))).collect::<Vec<_>>(),
        "similarity": round(m.best.similarity),
        "best_single": m.best_single.blend[0].0,
        "similarity_best_single": round(m.best_single.similarity),
        "candidates_tried": m.tried,
        "pitch_semitones": pitch,
        "speed": speed,
        "features": target,
        "base_features": base_features,
    });
    Ok((base, embedding))
}

/// The matched profile's result: the recording kept as a 24 kHz WAV, and
/// the embedding.
#[allow(clippy::too_many_arguments)]
async fn voice_result(
    runner: &Runner,
    raw: &Path,
    format: Format,
    max: u32,
    target_key: &str,
    secs: f64,
    base: &shared::catalog::VoiceProfile,
    embedding: serde_json::Value,
) -> Result<CatalogTaskResult, CatalogTaskResult> {
    let wav = raw.with_extension("wav");
    let mut args = media::input(raw, format);
    args.extend(crate::args!["-t", Arg::num(max), "-ac", "1", "-ar", "24000", "-c:a", "pcm_s16le", &wav]);
    ffmpeg(runner, args).await.map_err(failed)?;
    runner.storage.put_file(target_key, &wav, "audio/wav").await.map_err(failed)?;
    Ok(CatalogTaskResult::Voice(shared::catalog_task::VoiceMatch {
        base_profile_id: base.id.clone(),
        engine: base.metadata.engine.clone(),
        base_voice: base.metadata.base_voice.clone(),
        embedding,
        duration_seconds: (secs * 10.0).round() / 10.0,
        sample_rate: 24_000,
    }))
}

/// A few sentences of ordinary speech, spoken by each base voice to learn
/// its typical pitch and rate (the median pitch depends on what is said, so
/// a longer passage gives a steadier reference than one short greeting).
fn calibration_text(language: &str) -> &'static str {
    match language {
        "ja" => {
            "こんにちは。今日はとても良い天気ですね。最近は仕事が忙しくて、なかなか会えませんでしたが、元気にしていましたか。今度の週末に、一緒に食事でもしましょう。楽しみにしています。"
        }
        _ => {
            "Hello there! The weather is lovely today. I have been busy with work lately, so we have not seen each other for a while. How have you been? Let us have dinner together this weekend. I am looking forward to it."
        }
    }
}

/// Features of a system base voice, measured once per worker process.
async fn base_features(
    runner: &Runner,
    profile: &shared::catalog::VoiceProfile,
) -> Result<crate::voice_analysis::VoiceFeatures, CatalogTaskResult> {
    if let Some(f) = runner.base_voice_features.lock().expect("features lock").get(&profile.id) {
        return Ok(f.clone());
    }
    let dir = tempfile::Builder::new().prefix("tayori-calibrate-").tempdir_in(&runner.cfg.work_dir).map_err(failed)?;
    let wav = dir.path().join("calibration.wav");
    let text = calibration_text(&profile.language);
    crate::pipeline::speech::speak(&runner.catalog, profile, text, dir.path(), &wav, runner.cfg.tool_timeout)
        .await
        .map_err(failed)?;
    let samples = decode(runner, &wav, Format::Wav, VOICE_RATE, 120).await.map_err(failed)?;
    let f = tokio::task::spawn_blocking(move || crate::voice_analysis::analyse(&samples, VOICE_RATE))
        .await
        .map_err(failed)?
        .ok_or_else(|| failed(format!("no voice measured for base voice {}", profile.id)))?;
    runner.base_voice_features.lock().expect("features lock").insert(profile.id.clone(), f.clone());
    Ok(f)
}

/// Sample sentences for voice previews.
fn sample_text(language: &str) -> &'static str {
    match language {
        "ja" => "こんにちは。これは私の声のサンプルです。",
        _ => "Hello! This is a sample of my voice.",
    }
}

async fn voice_preview(
    runner: &Runner,
    dir: &Path,
    profile_id: &str,
    target_key: &str,
) -> Result<CatalogTaskResult, CatalogTaskResult> {
    let profile = runner
        .catalog
        .voice(profile_id)
        .await
        .map_err(failed)?
        .ok_or_else(|| rejected("voice-not-found", format!("There is no voice profile {profile_id:?}.")))?;
    let spoken = dir.join("spoken.wav");
    let timeout = runner.cfg.tool_timeout;
    crate::pipeline::speech::speak(&runner.catalog, &profile, sample_text(&profile.language), dir, &spoken, timeout)
        .await
        .map_err(failed)?;
    let shaped = dir.join("preview.wav");
    crate::pipeline::speech::shape(&runner.catalog, &profile, &spoken, &shaped, timeout).await.map_err(failed)?;
    runner.storage.put_file(target_key, &shaped, "audio/wav").await.map_err(failed)?;
    Ok(CatalogTaskResult::Preview { key: target_key.to_owned() })
}

/// Tempo from the autocorrelation of an onset envelope (positive changes
/// of short-time energy), searched between 60 and 180 BPM. Written here
/// because no maintained crate does tempo estimation on plain samples.
pub fn estimate_bpm(samples: &[f32], rate: u32) -> Option<u32> {
    const HOP: usize = 128;
    let frames = samples.len() / HOP;
    if frames < 64 {
        return None;
    }
    let energy: Vec<f32> = samples.chunks_exact(HOP).map(|c| c.iter().map(|s| s * s).sum::<f32>().sqrt()).collect();
    let mut onset: Vec<f32> = energy.windows(2).map(|w| (w[1] - w[0]).max(0.0)).collect();
    let mean = onset.iter().sum::<f32>() / onset.len() as f32;
    onset.iter_mut().for_each(|v| *v -= mean);
    let fps = rate as f32 / HOP as f32;
    let lag_for = |bpm: f32| (fps * 60.0 / bpm).round() as usize;
    let (min_lag, max_lag) = (lag_for(180.0), lag_for(60.0));
    if max_lag >= onset.len() / 2 {
        return None;
    }
    let ac = |lag: usize| -> f32 { onset.iter().zip(&onset[lag..]).map(|(a, b)| a * b).sum() };
    let scores: Vec<f32> = (min_lag - 1..=max_lag + 1).map(ac).collect();
    let top = scores.iter().copied().fold(f32::MIN, f32::max);
    if top <= 0.0 {
        return None;
    }
    // Multiples of the beat period score about as high as the period
    // itself: take the shortest lag that is a local peak close to the top.
    let best = (1..scores.len() - 1)
        .find(|&i| scores[i] >= 0.8 * top && scores[i] >= scores[i - 1] && scores[i] >= scores[i + 1])
        .map(|i| i + min_lag - 1)?;
    let score = ac(best);
    // Refine to a fractional lag with a parabola through the neighbours.
    let (a, b, c) = (ac(best - 1), score, ac(best + 1));
    let denom = a - 2.0 * b + c;
    let shift = if denom.abs() > f32::EPSILON { 0.5 * (a - c) / denom } else { 0.0 };
    let lag = best as f32 + shift.clamp(-0.5, 0.5);
    Some((fps * 60.0 / lag).round() as u32)
}

/// Find the people in an uploaded photo and store a preview of each, so
/// that the page can show them to pick from before the job is made.
async fn detect_people(
    runner: &Runner,
    dir: &Path,
    source_key: &str,
    upload_id: &str,
) -> Result<CatalogTaskResult, CatalogTaskResult> {
    use crate::vision::{self, VisionError, detect};
    use shared::catalog_task::{PeopleFound, PersonFound};
    let photo = dir.join("photo");
    runner.storage.get_to_file(source_key, &photo).await.map_err(failed)?;
    let model = detect::model_path(runner.catalog.data_dir());
    let out = dir.to_owned();
    let found = tokio::task::spawn_blocking(move || {
        let img = vision::load_upright(&photo)?;
        let people = detect::people(&model, &img)?;
        let default = detect::choose(&people, None)?;
        for (n, p) in people.iter().enumerate() {
            let preview = detect::preview(&detect::crop(&img, p.body));
            vision::save_jpeg(&preview, &out.join(format!("person_{n}.jpg")), 85)?;
        }
        Ok::<_, VisionError>((img.width(), img.height(), people, default))
    })
    .await
    .map_err(failed)?;
    let (width, height, people, default) = match found {
        Ok(f) => f,
        // The photo's fault: the same words a job would fail with.
        Err(e @ (VisionError::NoPerson | VisionError::Decode(_))) => {
            let err = crate::pipeline::PipelineError::Vision(e).to_job_error();
            return Err(rejected(&err.code, err.message));
        }
        Err(e) => return Err(failed(e)),
    };
    let uploads = people.iter().enumerate().map(|(n, p)| {
        let key = shared::keys::objects::person_preview(upload_id, n);
        let file = dir.join(format!("person_{n}.jpg"));
        let r = |r: detect::Rect| [r.x, r.y, r.w, r.h];
        let person = PersonFound { index: n as u32, face: r(p.face), body: r(p.body), preview_key: key.clone() };
        async move {
            runner.storage.put_file(&key, &file, "image/jpeg").await?;
            Ok::<_, shared::storage::StorageError>(person)
        }
    });
    let people = futures::future::try_join_all(uploads).await.map_err(failed)?;
    Ok(CatalogTaskResult::People(PeopleFound { width, height, people, default_index: default as u32 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decaying noise bursts every beat, like a drum.
    fn clicks(bpm: f32, secs: f32, rate: u32) -> Vec<f32> {
        let n = (secs * rate as f32) as usize;
        let period = (60.0 / bpm * rate as f32) as usize;
        let mut seed = 12345u32;
        (0..n)
            .map(|i| {
                let t = i % period;
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let noise = (seed >> 16) as f32 / 32768.0 - 1.0;
                noise * (-(t as f32) / (0.01 * rate as f32)).exp()
            })
            .collect()
    }

    #[test]
    fn finds_the_tempo_of_a_click_track() {
        for bpm in [72.0, 90.0, 120.0, 150.0] {
            let got = estimate_bpm(&clicks(bpm, 20.0, RATE), RATE).unwrap();
            assert!((got as f32 - bpm).abs() <= 2.0, "{bpm} BPM estimated as {got}");
        }
    }

    #[test]
    fn silence_and_short_input_have_no_tempo() {
        assert_eq!(estimate_bpm(&[0.0; 1000], RATE), None);
        assert_eq!(estimate_bpm(&vec![0.0; RATE as usize * 10], RATE), None);
    }

    #[test]
    fn a_full_scale_sine_is_about_minus_three_lufs() {
        let rate = 48_000;
        let s: Vec<f32> =
            (0..rate * 5).map(|i| (i as f32 * 2.0 * std::f32::consts::PI * 1000.0 / rate as f32).sin()).collect();
        let l = crate::audio::loudness_lufs(&s, rate).unwrap();
        assert!((l - -3.0).abs() < 0.3, "{l}");
    }
}
