//! Catalog tasks: measuring uploaded music (duration, tempo, loudness) and
//! cutting previews, on behalf of the gateway.

use std::path::Path;
use std::sync::Arc;

use shared::catalog_task::{CatalogTask, CatalogTaskKind, CatalogTaskResult, TrackFacts};

use crate::media;
use crate::process::ProcessError;
use crate::runner::Runner;

/// Sample rate used for analysis.
const RATE: u32 = 22_050;
/// Longest stretch analysed (a 10 MB upload is at most a few minutes).
const MAX_ANALYSE_SECS: u32 = 600;

pub async fn handle(runner: &Arc<Runner>, task: CatalogTask) -> CatalogTaskResult {
    let dir = match tempfile::Builder::new().prefix("tayori-catalog-").tempdir_in(&runner.cfg.work_dir) {
        Ok(d) => d,
        Err(e) => return CatalogTaskResult::Failed { message: format!("scratch directory: {e}") },
    };
    let r = match &task.kind {
        CatalogTaskKind::AnalyseTrack { source_key, target_key } => {
            analyse_track(runner, dir.path(), source_key, target_key).await
        }
        CatalogTaskKind::TrackPreview { source_key, target_key } => {
            preview(runner, dir.path(), source_key, target_key).await
        }
    };
    r.unwrap_or_else(|e| e)
}

async fn ffmpeg(runner: &Runner, args: Vec<std::ffi::OsString>) -> Result<Vec<u8>, ProcessError> {
    media::ffmpeg(args, runner.cfg.tool_timeout).await
}

fn failed(e: impl std::fmt::Display) -> CatalogTaskResult {
    CatalogTaskResult::Failed { message: e.to_string() }
}

async fn analyse_track(
    runner: &Runner,
    dir: &Path,
    source_key: &str,
    target_key: &str,
) -> Result<CatalogTaskResult, CatalogTaskResult> {
    let raw = dir.join("upload");
    runner.storage.get_to_file(source_key, &raw).await.map_err(failed)?;
    let mp3 = dir.join("track.mp3");
    let transcoded = ffmpeg(
        runner,
        vec![
            "-i".into(),
            raw.clone().into(),
            "-map_metadata".into(),
            "-1".into(),
            "-vn".into(),
            "-ar".into(),
            "44100".into(),
            "-ac".into(),
            "2".into(),
            "-c:a".into(),
            "libmp3lame".into(),
            "-b:a".into(),
            "192k".into(),
            mp3.clone().into(),
        ],
    )
    .await;
    if let Err(e) = transcoded {
        let _ = runner.storage.delete(source_key).await;
        return Err(match e {
            ProcessError::Failed { .. } => CatalogTaskResult::Rejected {
                code: "audio-unreadable".into(),
                message: "The file could not be read as audio.".into(),
            },
            other => failed(other),
        });
    }
    let duration = media::probe(&mp3, runner.cfg.tool_timeout).await.map_err(failed)?.duration;
    let pcm = ffmpeg(
        runner,
        vec![
            "-i".into(),
            mp3.clone().into(),
            "-t".into(),
            MAX_ANALYSE_SECS.to_string().into(),
            "-ac".into(),
            "1".into(),
            "-ar".into(),
            RATE.to_string().into(),
            "-f".into(),
            "f32le".into(),
            "-".into(),
        ],
    )
    .await
    .map_err(failed)?;
    let samples: Vec<f32> = pcm.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let (bpm, loudness) =
        tokio::task::spawn_blocking(move || (estimate_bpm(&samples, RATE), loudness_lufs(&samples, RATE)))
            .await
            .map_err(failed)?;
    runner.storage.put_file(target_key, &mp3, "audio/mpeg").await.map_err(failed)?;
    let _ = runner.storage.delete(source_key).await;
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
    let out = dir.join("preview.mp3");
    ffmpeg(
        runner,
        vec![
            "-i".into(),
            src.into(),
            "-t".into(),
            "15".into(),
            "-af".into(),
            "afade=t=in:d=0.5,afade=t=out:st=13.5:d=1.5".into(),
            "-c:a".into(),
            "libmp3lame".into(),
            "-b:a".into(),
            "128k".into(),
            out.clone().into(),
        ],
    )
    .await
    .map_err(failed)?;
    runner.storage.put_file(target_key, &out, "audio/mpeg").await.map_err(failed)?;
    Ok(CatalogTaskResult::Preview { key: target_key.to_owned() })
}

/// Integrated loudness (EBU R 128) of mono samples, in LUFS.
pub fn loudness_lufs(samples: &[f32], rate: u32) -> Option<f64> {
    let mut m = ebur128::EbuR128::new(1, rate, ebur128::Mode::I).ok()?;
    m.add_frames_f32(samples).ok()?;
    m.loudness_global().ok().filter(|l| l.is_finite())
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
        let l = loudness_lufs(&s, rate).unwrap();
        assert!((l - -3.0).abs() < 0.3, "{l}");
    }
}
