//! English speech with a Piper voice (VITS, ONNX) run by ONNX Runtime,
//! with phonemes from espeak-ng, as Piper itself does.
//!
//! The runtime library is loaded once per process (`TAYORI_ORT_LIB`), and
//! each voice model once; inference runs on the blocking pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;

use crate::process;

#[derive(Debug, thiserror::Error)]
pub enum PiperError {
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
    #[error("Piper voice {path}: {reason}")]
    Model { path: String, reason: String },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error(transparent)]
    Process(#[from] process::ProcessError),
}

#[derive(Debug, Deserialize)]
struct VoiceConfig {
    audio: AudioConfig,
    espeak: EspeakConfig,
    inference: InferenceConfig,
    phoneme_id_map: HashMap<String, Vec<i64>>,
}
#[derive(Debug, Deserialize)]
struct AudioConfig {
    sample_rate: u32,
}
#[derive(Debug, Deserialize)]
struct EspeakConfig {
    voice: String,
}
#[derive(Debug, Deserialize)]
struct InferenceConfig {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

pub struct PiperVoice {
    session: Mutex<Session>,
    config: VoiceConfig,
}

static VOICES: OnceLock<Mutex<HashMap<PathBuf, Arc<PiperVoice>>>> = OnceLock::new();

/// The voice at `model` (with `model.json` beside it), loaded once. Blocking.
pub fn voice(lib: &Path, model: &Path) -> Result<Arc<PiperVoice>, PiperError> {
    let voices = VOICES.get_or_init(Default::default);
    if let Some(v) = voices.lock().expect("voices lock").get(model) {
        return Ok(v.clone());
    }
    let bad = |reason: String| PiperError::Model { path: model.display().to_string(), reason };
    let config_path = PathBuf::from(format!("{}.json", model.display()));
    let config: VoiceConfig = serde_json::from_slice(&std::fs::read(&config_path).map_err(|e| bad(e.to_string()))?)
        .map_err(|e| bad(e.to_string()))?;
    // Lean (no pre-planned activation block): with IS-Net, Kokoro and Joe
    // loaded, 1445 MB -> 1405 MB resident, Joe's speed unchanged
    // (benches/voices.rs, 10 s of speech in 0.32-0.34 s either way).
    let session = crate::onnx::session(lib, model, crate::onnx::default_threads(), true)?;
    let v = Arc::new(PiperVoice { session: Mutex::new(session), config });
    voices.lock().expect("voices lock").insert(model.to_owned(), v.clone());
    Ok(v)
}

/// The espeak-ng voices Piper voices are made for (a voice's config names
/// one; only these names are passed on).
fn espeak_voice(name: &str) -> Option<&'static str> {
    ["en-us", "en", "en-gb", "en-gb-x-rp", "ja"].into_iter().find(|v| *v == name)
}

/// Split text into sentences, each with its clause punctuation kept, the
/// way Piper feeds espeak-ng's clauses back with their terminators.
pub fn clause_marks(text: &str) -> Vec<char> {
    text.chars().filter(|c| matches!(c, '.' | ',' | '!' | '?' | ';' | ':')).collect()
}

impl PiperVoice {
    pub fn sample_rate(&self) -> u32 {
        self.config.audio.sample_rate
    }

    /// Phoneme ids of one sentence: BOS, each phoneme followed by PAD, EOS.
    pub fn ids(&self, phonemes: &str) -> Vec<i64> {
        let map = &self.config.phoneme_id_map;
        let get = |s: &str| map.get(s).cloned().unwrap_or_default();
        let pad = get("_");
        let mut ids = get("^");
        ids.extend(&pad);
        for ch in phonemes.chars() {
            if let Some(v) = map.get(ch.encode_utf8(&mut [0; 4]) as &str) {
                ids.extend(v);
                ids.extend(&pad);
            }
        }
        ids.extend(get("$"));
        ids
    }

    /// Audio samples (mono, at `sample_rate`) for one sentence's ids. Blocking.
    pub fn infer(&self, ids: Vec<i64>) -> Result<Vec<f32>, PiperError> {
        let n = ids.len();
        let i = &self.config.inference;
        let err = |e: ort::Error| PiperError::Inference(e.to_string());
        let input = Tensor::from_array(([1usize, n], ids)).map_err(err)?;
        let lengths = Tensor::from_array(([1usize], vec![n as i64])).map_err(err)?;
        let scales = Tensor::from_array(([3usize], vec![i.noise_scale, i.length_scale, i.noise_w])).map_err(err)?;
        let mut session = self.session.lock().expect("session lock");
        let outputs = session
            .run(ort::inputs! {"input" => input, "input_lengths" => lengths, "scales" => scales})
            .map_err(err)?;
        let (_, audio) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
        Ok(audio.to_vec())
    }

    /// Phonemes of `text` from espeak-ng: one line per clause, each given
    /// back its punctuation; sentences end at `.`, `!` or `?`.
    pub async fn phonemize(&self, text: &str, timeout: Duration) -> Result<Vec<String>, PiperError> {
        // The text goes on stdin: as an argument, a message starting with
        // `-` would be an option (`-f FILE` reads any file).
        let voice = espeak_voice(&self.config.espeak.voice).ok_or_else(|| PiperError::Model {
            path: "espeak voice".into(),
            reason: format!("{:?} is not a known espeak-ng voice", self.config.espeak.voice),
        })?;
        let out = process::run_with_stdin(
            "espeak-ng",
            crate::args!["-q", "--ipa", "-v", voice],
            text.as_bytes().to_vec(),
            timeout,
        )
        .await?;
        let lines: Vec<String> =
            String::from_utf8_lossy(&out).lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect();
        let marks = clause_marks(text);
        let mut sentences = Vec::new();
        let mut current = String::new();
        for (k, line) in lines.iter().enumerate() {
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(line);
            // Only when espeak-ng's clauses line up with the text's marks
            // can the punctuation be put back.
            let mark = if marks.len() >= lines.len() - 1 { marks.get(k).copied() } else { None };
            if let Some(m) = mark {
                current.push(m);
            }
            if matches!(mark, Some('.' | '!' | '?')) || k + 1 == lines.len() {
                sentences.push(std::mem::take(&mut current));
            }
        }
        Ok(sentences)
    }
}

/// Speak each sentence with the Piper voice `model`: the samples of each,
/// in order, and their rate. A sentence espeak-ng cuts into clauses is
/// spoken clause by clause and joined.
pub async fn speak_sentences(
    lib: &Path,
    model: &Path,
    sentences: &[String],
    timeout: Duration,
) -> Result<(Vec<Vec<f32>>, u32), PiperError> {
    let (lib2, model2) = (lib.to_owned(), model.to_owned());
    let voice = tokio::task::spawn_blocking(move || voice(&lib2, &model2))
        .await
        .map_err(|e| PiperError::Inference(e.to_string()))??;
    let mut clauses = Vec::with_capacity(sentences.len());
    for s in sentences {
        clauses.push(voice.phonemize(s, timeout).await?);
    }
    let rate = voice.sample_rate();
    let parts = tokio::task::spawn_blocking(move || {
        clauses
            .iter()
            .map(|c| {
                let audio = c.iter().map(|p| voice.infer(voice.ids(p))).collect::<Result<Vec<_>, _>>()?;
                Ok(crate::audio::join_speech(audio, rate).samples)
            })
            .collect::<Result<Vec<_>, PiperError>>()
    })
    .await
    .map_err(|e| PiperError::Inference(e.to_string()))??;
    Ok((parts, rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clause_marks_keep_punctuation_but_not_apostrophes() {
        assert_eq!(clause_marks("Hello there! It's lovely, isn't it?"), vec!['!', ',', '?']);
    }

    /// The real voice (fetched by scripts/assets.sh) speaks real English,
    /// longer for a longer sentence.
    #[tokio::test]
    async fn joe_speaks_a_sentence() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
        let lib = crate::onnx::runtime_path(&data);
        let model = data.join("voices/system/en_US-joe-medium.onnx");
        let t0 = std::time::Instant::now();
        let sentences = ["Happy birthday!", "I hope you have a wonderful year, and see you very soon, my friend."]
            .map(str::to_owned);
        let (parts, rate) = speak_sentences(&lib, &model, &sentences, Duration::from_secs(30)).await.unwrap();
        assert_eq!((parts.len(), rate), (2, 22_050));
        let secs: Vec<f32> = parts.iter().map(|p| p.len() as f32 / rate as f32).collect();
        println!("{secs:?} s of speech in {:.2}s", t0.elapsed().as_secs_f32());
        assert!((0.5..3.0).contains(&secs[0]) && secs[1] > secs[0] * 2.0, "{secs:?}");
        for p in &parts {
            let rms = (p.iter().map(|s| s * s).sum::<f32>() / p.len() as f32).sqrt();
            assert!(rms > 0.02, "not silent: {rms}");
        }
    }

    #[test]
    fn wav_header_is_44_bytes_and_sized() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.wav");
        crate::media::write_wav(&p, &[0.0, 0.5, -0.5], 22_050).unwrap();
        let b = std::fs::read(&p).unwrap();
        assert_eq!(b.len(), 44 + 6);
        assert_eq!(&b[0..4], b"RIFF");
        assert_eq!(u32::from_le_bytes([b[40], b[41], b[42], b[43]]), 6);
    }
}
