//! The Kokoro style blend nearest a reference recording, by a speaker
//! embedding: each of the five voices, then blends of the nearest two and three,
//! speak the same short passage; the one whose d-vector is most like the
//! recording's wins. This is voice matching, not cloning: the result is a
//! mix of the shipped voices, nearer the recording than any one of them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::{KokoroError, Style, VOICES, dir};
use crate::speaker::{self, Embedder};

/// What every candidate says (about three seconds: eight candidates, the
/// first five made once per worker, fit well inside the gateway's minute
/// for a catalog task on a busy 2-core machine).
pub const PASSAGE: &str = "こんにちは。今日はとても良い天気ですね。";

/// A blend and how alike it sounds to the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Kokoro voices and their weights (adding up to one).
    pub blend: Vec<(String, f32)>,
    /// Cosine similarity of its d-vector to the reference's.
    pub similarity: f32,
}

/// The outcome of a search.
#[derive(Debug, Clone)]
pub struct Matched {
    pub best: Candidate,
    /// The nearest single voice, for comparison.
    pub best_single: Candidate,
    /// The best candidate's passage, mono 16 kHz (to measure its pitch).
    pub speech: Vec<f32>,
    /// The nearest single voice's passage.
    pub single_speech: Vec<f32>,
    pub tried: usize,
}

/// A candidate's passage (mono 16 kHz) and its d-vector.
type Spoken = (Vec<f32>, Vec<f32>);

/// The single voices' passages and d-vectors, made once per worker.
static SINGLES: OnceLock<Mutex<HashMap<String, Spoken>>> = OnceLock::new();

/// The passage spoken by `blend`, and its d-vector.
async fn speak_blend(
    lib: &Path,
    data_dir: &Path,
    blend: &[(String, f32)],
    scratch: &Path,
    timeout: Duration,
) -> Result<Spoken, KokoroError> {
    let (data, b) = (data_dir.to_owned(), blend.to_vec());
    let style = tokio::task::spawn_blocking(move || Style::named_blend(&data, &b))
        .await
        .map_err(|e| KokoroError::Inference(e.to_string()))??;
    let speech = passage(lib, data_dir, style, scratch, timeout).await?;
    let d = embed(lib, data_dir, speech.clone()).await?;
    Ok((speech, d))
}

/// The passage spoken with `style`, mono 16 kHz.
async fn passage(
    lib: &Path,
    data_dir: &Path,
    style: Style,
    scratch: &Path,
    timeout: Duration,
) -> Result<Vec<f32>, KokoroError> {
    let sentences = shared::text::sentences(PASSAGE);
    let parts = super::speak_sentences(lib, data_dir, style, &sentences, scratch, timeout).await?;
    let joined = crate::audio::join_speech(parts, super::SAMPLE_RATE).samples;
    let wav = scratch.join("passage.wav");
    let w = wav.clone();
    tokio::task::spawn_blocking(move || crate::media::write_wav(&w, &joined, super::SAMPLE_RATE))
        .await
        .map_err(|e| KokoroError::Inference(e.to_string()))?
        .map_err(|e| KokoroError::Inference(e.to_string()))?;
    // The passage is a few seconds: a minute bounds it well.
    Ok(crate::media::decode_mono(&wav, crate::media::Format::Wav, speaker::RATE, 60, timeout).await?)
}

async fn embed(lib: &Path, data_dir: &Path, samples: Vec<f32>) -> Result<Vec<f32>, KokoroError> {
    let (lib, data) = (lib.to_owned(), data_dir.to_owned());
    tokio::task::spawn_blocking(move || Embedder::get(&lib, &data)?.embed(&samples))
        .await
        .map_err(|e| KokoroError::Inference(e.to_string()))?
        .map_err(|e| KokoroError::Inference(e.to_string()))
}

/// Voices farther than this from the reference's median pitch are not
/// candidates (unless none is nearer): the embedder alone, on these
/// synthetic voices, once chose two female voices for a male reference,
/// which then needed an octave's shift down.
pub const MAX_PITCH_GAP_SEMITONES: f64 = 6.0;

fn median_f0(speech: &[f32]) -> f64 {
    crate::voice_analysis::analyse(speech, speaker::RATE).map(|f| f.median_f0_hz).unwrap_or(0.0)
}

/// The blend nearest the reference's d-vector `target`, among the voices
/// of its `gender` (`female`, `male`; any other: every voice) within
/// [`MAX_PITCH_GAP_SEMITONES`] of its median pitch `target_f0_hz`.
pub async fn closest(
    lib: &Path,
    data_dir: &Path,
    target: &[f32],
    target_f0_hz: f64,
    gender: Option<&str>,
    scratch: &Path,
    timeout: Duration,
) -> Result<Matched, KokoroError> {
    let singles = SINGLES.get_or_init(Default::default);
    let mut scored: Vec<(Candidate, Vec<f32>)> = Vec::new();
    let prefix = match gender {
        Some("female") => "jf_",
        Some("male") => "jm_",
        _ => "j",
    };
    for name in VOICES.into_iter().filter(|n| n.starts_with(prefix)) {
        let blend = vec![(name.to_owned(), 1.0)];
        let known = singles.lock().expect("singles lock").get(name).cloned();
        let (speech, d) = match known {
            Some(k) => k,
            None => {
                let spoken = speak_blend(lib, data_dir, &blend, scratch, timeout).await?;
                singles.lock().expect("singles lock").insert(name.to_owned(), spoken.clone());
                spoken
            }
        };
        scored.push((Candidate { blend, similarity: speaker::similarity(target, &d) }, speech));
    }
    // Within reach of the reference's pitch; the nearest in pitch if none is.
    let gap = |speech: &[f32]| {
        let f0 = median_f0(speech);
        if f0 > 0.0 && target_f0_hz > 0.0 { (12.0 * (f0 / target_f0_hz).log2()).abs() } else { f64::MAX }
    };
    let gaps: Vec<f64> = scored.iter().map(|(_, speech)| gap(speech)).collect();
    let limit = MAX_PITCH_GAP_SEMITONES.max(gaps.iter().cloned().fold(f64::MAX, f64::min));
    let mut scored: Vec<(Candidate, Vec<f32>)> =
        scored.into_iter().zip(gaps).filter(|(_, g)| *g <= limit).map(|(c, _)| c).collect();
    scored.sort_by(|a, b| b.0.similarity.total_cmp(&a.0.similarity));
    let (best_single, single_speech) = scored[0].clone();
    let names: Vec<String> = scored.iter().take(3).map(|(c, _)| c.blend[0].0.clone()).collect();
    let mix = |parts: &[(usize, f32)]| -> Option<Vec<(String, f32)>> {
        parts.iter().map(|&(i, w)| names.get(i).map(|n| (n.clone(), w))).collect()
    };
    let blends = [
        mix(&[(0, 0.7), (1, 0.3)]),
        mix(&[(0, 0.5), (1, 0.5)]),
        mix(&[(0, 1.0 / 3.0), (1, 1.0 / 3.0), (2, 1.0 / 3.0)]),
    ];
    for blend in blends.into_iter().flatten() {
        let (speech, d) = speak_blend(lib, data_dir, &blend, scratch, timeout).await?;
        scored.push((Candidate { blend, similarity: speaker::similarity(target, &d) }, speech));
    }
    let tried = scored.len();
    let (best, speech) =
        scored.into_iter().max_by(|a, b| a.0.similarity.total_cmp(&b.0.similarity)).expect("candidates");
    Ok(Matched { best, best_single, speech, single_speech, tried })
}

/// Whether this worker has what the search needs (the Kokoro model and the
/// speaker embedder).
pub fn available(data_dir: &Path) -> bool {
    dir(data_dir).join("model.onnx").is_file() && speaker::model_path(data_dir).is_file()
}
