//! Japanese speech with Kokoro-82M (int8 ONNX, 24 kHz) run by ONNX Runtime.
//!
//! Per sentence: Open JTalk's text analysis (its trace, `-ot`: readings
//! after its own number and date rules) → [`frontend`] phonemes → token ids
//! → the model (its integer convolutions run as matrix products:
//! [`crate::onnx::int8_conv`], a third less time, the same samples, their
//! float outputs made in one pass: [`crate::onnx::dequant`], about a tenth
//! less CPU, the same samples; its Snake activations and adaptive instance
//! normalizations as one operator each: [`crate::onnx::snake`], 15 % less
//! CPU, and [`crate::onnx::adain`], 4-8 % less, the same sound; its STFT as
//! a convolution: [`crate::onnx::stft`], about 8 % less, the same sound),
//! with the voice's style row for that many tokens; the
//! silence at each end is trimmed. Sentences run in parallel, one model
//! session each (ONNX Runtime runs one call per session at a time); the
//! model, vocabulary and word list are loaded once per worker.
//!
//! The files are in `{data_dir}/voices/system/kokoro/` (scripts/assets.sh):
//! `model.onnx`, `vocab.json`, `ja_words.txt`, and one style table per
//! voice (`.npy`, 510 x 1 x 256 f32), which a profile names as its base voice.

pub mod frontend;
pub mod matching;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ort::session::Session;
use ort::value::Tensor;

use crate::process;

pub const SAMPLE_RATE: u32 = 24_000;
/// The Japanese voices (style tables) that ship.
pub const VOICES: [&str; 5] = ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"];
/// Rows of a style table: one per token count.
const STYLE_ROWS: usize = 510;
const STYLE_DIM: usize = 256;
/// The most tokens one call takes.
const MAX_TOKENS: usize = 500;
/// Trim threshold and the padding kept around the speech.
const TRIM_LEVEL: f32 = 0.01;
const TRIM_PAD: usize = SAMPLE_RATE as usize * 30 / 1000;

#[derive(Debug, thiserror::Error)]
pub enum KokoroError {
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
    #[error("Kokoro file {path}: {reason}")]
    Model { path: String, reason: String },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error(transparent)]
    Process(#[from] process::ProcessError),
}

fn bad(path: &Path, reason: impl ToString) -> KokoroError {
    KokoroError::Model { path: path.display().to_string(), reason: reason.to_string() }
}

/// Where the model and its files are.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("voices/system/kokoro")
}

/// The phoneme vocabulary: character → token id.
pub struct Vocab(HashMap<char, i64>);

impl Vocab {
    pub fn load(path: &Path) -> Result<Vocab, KokoroError> {
        #[derive(serde::Deserialize)]
        struct File {
            vocab: HashMap<String, i64>,
        }
        let f: File =
            serde_json::from_slice(&std::fs::read(path).map_err(|e| bad(path, e))?).map_err(|e| bad(path, e))?;
        Ok(Vocab(f.vocab.into_iter().filter_map(|(k, v)| Some((k.chars().next()?, v))).collect()))
    }

    pub fn id(&self, c: char) -> Option<i64> {
        self.0.get(&c).copied()
    }

    /// Token ids of a phoneme string (characters the model does not know
    /// are left out).
    pub fn tokens(&self, phonemes: &str) -> Vec<i64> {
        phonemes.chars().filter_map(|c| self.id(c)).collect()
    }
}

/// A voice's style table (510 rows of 256), read from a `.npy` file of
/// little-endian f32 (`<f4`) in C order.
#[derive(Clone, Debug)]
pub struct Style(Arc<Vec<f32>>);

impl Style {
    pub fn load(path: &Path) -> Result<Style, KokoroError> {
        let b = std::fs::read(path).map_err(|e| bad(path, e))?;
        Style::parse(&b).map_err(|reason| bad(path, reason))
    }

    /// The npy format: magic, version, a header length, a Python dict
    /// literal naming dtype, order and shape, then the data. Written here
    /// because only this one fixed shape and type is ever read.
    pub fn parse(b: &[u8]) -> Result<Style, String> {
        if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
            return Err("not an .npy file".into());
        }
        let (header_len, start) = match b[6] {
            1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
            2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
            v => return Err(format!("npy version {v} is not supported")),
        };
        let header = b.get(start..start + header_len).ok_or("truncated header")?;
        let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
        let compact: String = header.chars().filter(|c| !c.is_whitespace()).collect();
        if !compact.contains("'descr':'<f4'") || !compact.contains("'fortran_order':False") {
            return Err(format!("expected little-endian f32 in C order, found {header:?}"));
        }
        if !compact.contains(&format!("'shape':({STYLE_ROWS},1,{STYLE_DIM})")) {
            return Err(format!("expected shape ({STYLE_ROWS}, 1, {STYLE_DIM}), found {header:?}"));
        }
        let data = &b[start + header_len..];
        if data.len() != STYLE_ROWS * STYLE_DIM * 4 {
            return Err(format!("{} data bytes, expected {}", data.len(), STYLE_ROWS * STYLE_DIM * 4));
        }
        let v: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if v.iter().any(|x| !x.is_finite()) {
            return Err("the style holds values that are not numbers".into());
        }
        Ok(Style(Arc::new(v)))
    }

    /// A weighted mix of styles (weights need not add up to one: they are
    /// scaled so that they do).
    pub fn blend(parts: &[(Style, f32)]) -> Style {
        let total: f32 = parts.iter().map(|(_, w)| w.max(0.0)).sum::<f32>().max(1e-6);
        let mut v = vec![0.0f32; STYLE_ROWS * STYLE_DIM];
        for (s, w) in parts {
            let w = w.max(0.0) / total;
            for (o, x) in v.iter_mut().zip(s.0.iter()) {
                *o += w * x;
            }
        }
        Style(Arc::new(v))
    }

    /// The style a profile speaks with: its voice's table, or the blend of
    /// the system tables its embedding names (`kokoro_blend`). Blocking.
    pub fn for_profile(data_dir: &Path, voice: &Path, blend: &[(String, f32)]) -> Result<Style, KokoroError> {
        if blend.is_empty() { Style::load(voice) } else { Style::named_blend(data_dir, blend) }
    }

    /// The blend of the system tables named in `blend` (only the voices
    /// that ship). Blocking.
    pub fn named_blend(data_dir: &Path, blend: &[(String, f32)]) -> Result<Style, KokoroError> {
        let parts = blend
            .iter()
            .map(|(name, w)| {
                let path = dir(data_dir).join(format!("{name}.npy"));
                if !VOICES.contains(&name.as_str()) {
                    return Err(bad(&path, "not one of the Kokoro voices"));
                }
                Ok((Style::load(&path)?, *w))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Style::blend(&parts))
    }

    /// The style for a call of `n` tokens.
    pub fn row(&self, n: usize) -> &[f32] {
        let r = n.clamp(1, STYLE_ROWS) - 1;
        &self.0[r * STYLE_DIM..(r + 1) * STYLE_DIM]
    }
}

/// The loaded model: a few sessions (sentences run side by side), the
/// vocabulary and misaki's word list.
pub struct Kokoro {
    sessions: Vec<Mutex<Session>>,
    vocab: Vocab,
    lexicon: HashSet<String>,
}

static MODEL: crate::onnx::LoadOnce<Kokoro> = crate::onnx::LoadOnce::new();

/// Sessions of the model (`TAYORI_KOKORO_SESSIONS`, default 1): sentences
/// synthesized at the same time, the cores shared between them. Each more
/// costs about 220 MB resident (its own activation arena; sharing the
/// prepacked weights saved nothing measurable) for about 5 % less time on
/// 2 cores (benches/voices.rs, before the convolutions were rewritten as
/// products: 13.7 s of speech in 4.68 s with one session of two threads,
/// 4.42 s with two of one; with them, 3.7-4.1 s with one), so one is the default: a
/// worker with IS-Net, Kokoro and Piper loaded stays under 1.5 GB. The
/// next sentences' readings (Open JTalk) are made while a sentence is
/// being synthesized either way.
fn parallel() -> usize {
    shared::env::parse("TAYORI_KOKORO_SESSIONS", 1usize).unwrap_or(1).clamp(1, 8)
}

impl Kokoro {
    /// The model in `dir`, loaded once per process. Blocking.
    pub fn get(lib: &Path, dir: &Path) -> Result<Arc<Kokoro>, KokoroError> {
        MODEL.get_or_load(|| {
            let n = parallel();
            let threads = (crate::onnx::default_threads() / n).max(1);
            let model = dir.join("model.onnx");
            // Its convolutions as integer products, where that is exact (and
            // fast), their float outputs made in one pass; its Snake
            // activations and adaptive instance normalizations as one
            // operator each; its STFT as a convolution.
            let int8_convs = crate::onnx::int8_conv::exact_here();
            let rewrite = crate::onnx::Rewrite {
                int8_convs,
                dequant: int8_convs,
                snake: true,
                adain: true,
                stft: true,
                ..Default::default()
            };
            let sessions = (0..n)
                .map(|_| crate::onnx::session_rewritten(lib, &model, threads, false, rewrite).map(Mutex::new))
                .collect::<Result<Vec<_>, _>>()?;
            let vocab = Vocab::load(&dir.join("vocab.json"))?;
            let words = dir.join("ja_words.txt");
            let text = std::fs::read_to_string(&words).map_err(|e| bad(&words, e))?;
            let lexicon = text.lines().map(|l| l.trim().to_owned()).collect();
            Ok(Kokoro { sessions, vocab, lexicon })
        })
    }

    /// Phonemes of one sentence from Open JTalk's trace of it.
    pub fn phonemes(&self, trace: &str) -> String {
        frontend::phonemes(&frontend::parse_trace(trace), &self.lexicon)
    }

    /// Speech for one sentence's phonemes with session `k`, trimmed of
    /// the silence around it. Blocking.
    pub fn infer(&self, k: usize, phonemes: &str, style: &Style, speed: f32) -> Result<Vec<f32>, KokoroError> {
        let mut out = Vec::new();
        for chunk in chunks(&self.vocab.tokens(phonemes), &self.vocab) {
            let err = |e: ort::Error| KokoroError::Inference(e.to_string());
            let row = style.row(chunk.len()).to_vec();
            let mut ids = Vec::with_capacity(chunk.len() + 2);
            ids.push(0);
            ids.extend_from_slice(chunk);
            ids.push(0);
            let n = ids.len();
            let tokens = Tensor::from_array(([1usize, n], ids)).map_err(err)?;
            let style = Tensor::from_array(([1usize, STYLE_DIM], row)).map_err(err)?;
            let speed = Tensor::from_array(([1usize], vec![speed])).map_err(err)?;
            let mut session = self.sessions[k % self.sessions.len()].lock().expect("session lock");
            let outputs =
                session.run(ort::inputs! {"tokens" => tokens, "style" => style, "speed" => speed}).map_err(err)?;
            let (_, audio) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
            out.extend_from_slice(trim(audio));
        }
        Ok(out)
    }
}

/// Token runs of at most `MAX_TOKENS`, cut after punctuation or a space
/// where a run must be cut.
fn chunks<'a>(tokens: &'a [i64], vocab: &Vocab) -> Vec<&'a [i64]> {
    let breaks: Vec<i64> = " ,.!?、。".chars().filter_map(|c| vocab.id(c)).collect();
    let mut out = Vec::new();
    let mut rest = tokens;
    while rest.len() > MAX_TOKENS {
        let cut = rest[..MAX_TOKENS].iter().rposition(|t| breaks.contains(t)).map_or(MAX_TOKENS, |p| p + 1);
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// The samples from a little before the first to a little after the last
/// one above the trim level.
///
/// About a quarter of what the model makes is silence trimmed here: most
/// of the leading pad (12-14 steps of 25 ms; the sound starts in its last
/// two or three) and the sentence-final vowel, which it holds silent for
/// 15-24 steps. Those frames are decoded all the same: the decoder's
/// instance normalizations average over the whole sentence, so cutting
/// them before the decoder changes every sample. Tried (2026-12-07; three
/// voices, seven messages, DNSMOS P.808): cut where the predicted energy
/// is silence, keeping 50, 200 or 400 ms of it, the model used 16-20, 7 or
/// 4 % less CPU and scored 0.05-0.085, 0.025 or 0.012 lower. One call per
/// message instead of per sentence made only 6 % fewer frames (the model
/// holds each sentence's last vowel silent there too), for the same CPU.
fn trim(audio: &[f32]) -> &[f32] {
    let first = audio.iter().position(|x| x.abs() > TRIM_LEVEL);
    let last = audio.iter().rposition(|x| x.abs() > TRIM_LEVEL);
    match (first, last) {
        (Some(a), Some(b)) => &audio[a.saturating_sub(TRIM_PAD)..(b + TRIM_PAD).min(audio.len())],
        _ => audio,
    }
}

/// Open JTalk's text analysis of one sentence (its trace file), read with
/// the Mei voice loaded (Open JTalk will not run without one; the speech
/// it makes is not kept).
pub async fn trace(
    data_dir: &Path,
    sentence: &str,
    scratch: &Path,
    k: usize,
    timeout: Duration,
) -> Result<String, KokoroError> {
    let text = scratch.join(format!("kokoro_{k}.txt"));
    let trace = scratch.join(format!("kokoro_{k}.trace"));
    tokio::fs::write(&text, format!("{}\n", frontend::prepare_text(sentence)))
        .await
        .map_err(|e| KokoroError::Inference(e.to_string()))?;
    let mei = data_dir.join("voices/system/mei_normal.htsvoice");
    let dic = crate::pipeline::speech::OPEN_JTALK_DIC;
    // The speech it makes is discarded: `-r 4` makes it four times shorter
    // and `-s 8000 -p 40` (8 kHz, the same 5 ms frames) six times fewer
    // samples; the text analysis, all that is read, is the same. 0.06 ->
    // 0.015 CPU-seconds a sentence.
    let args = crate::args!["-x", dic, "-m", &mei, "-r", "4", "-s", "8000", "-p", "40", "-ot", &trace, &text];
    process::run("open_jtalk", args, None, timeout).await?;
    tokio::fs::read_to_string(&trace).await.map_err(|e| KokoroError::Inference(e.to_string()))
}

/// Speak each sentence with `style`: the samples of every sentence, in
/// order, at [`SAMPLE_RATE`].
pub async fn speak_sentences(
    lib: &Path,
    data_dir: &Path,
    style: Style,
    sentences: &[String],
    scratch: &Path,
    timeout: Duration,
) -> Result<Vec<Vec<f32>>, KokoroError> {
    use futures::StreamExt;
    let (lib2, dir2) = (lib.to_owned(), dir(data_dir));
    let model = tokio::task::spawn_blocking(move || Kokoro::get(&lib2, &dir2))
        .await
        .map_err(|e| KokoroError::Inference(e.to_string()))??;
    let n = model.sessions.len();
    // Owned parts only: the futures are held across awaits by the stream.
    let jobs: Vec<_> = sentences
        .iter()
        .cloned()
        .enumerate()
        .map(|(k, s)| {
            let (model, style) = (model.clone(), style.clone());
            let (data_dir, scratch) = (data_dir.to_owned(), scratch.to_owned());
            async move {
                let trace = trace(&data_dir, &s, &scratch, k, timeout).await?;
                tokio::task::spawn_blocking(move || {
                    let ph = model.phonemes(&trace);
                    tracing::debug!(sentence = k, phonemes = %ph, "kokoro");
                    model.infer(k, &ph, &style, 1.0)
                })
                .await
                .map_err(|e| KokoroError::Inference(e.to_string()))?
            }
        })
        .collect();
    // One more in flight than there are sessions: its readings are made
    // while the sessions synthesize (it then waits for a free session).
    futures::stream::iter(jobs).buffered(n + 1).collect::<Vec<_>>().await.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data")
    }

    #[test]
    fn style_tables_are_checked_when_read() {
        let s = Style::load(&dir(&data()).join("jf_alpha.npy")).unwrap();
        assert_eq!(s.row(1).len(), STYLE_DIM);
        assert_ne!(s.row(1), s.row(100));
        assert_eq!(s.row(10_000), s.row(STYLE_ROWS));
        let mut b = std::fs::read(dir(&data()).join("jm_kumo.npy")).unwrap();
        b.truncate(b.len() - 4);
        assert!(Style::parse(&b).unwrap_err().contains("data bytes"));
        assert!(Style::parse(b"RIFF....WAVE").is_err());
        // A blend lies between its parts; unknown names are refused.
        let kumo = Style::load(&dir(&data()).join("jm_kumo.npy")).unwrap();
        let half = Style::blend(&[(s.clone(), 1.0), (kumo.clone(), 1.0)]);
        assert!((half.row(5)[0] - (s.row(5)[0] + kumo.row(5)[0]) / 2.0).abs() < 1e-6);
        let named = Style::for_profile(&data(), Path::new("x"), &[("jf_alpha".into(), 0.5), ("jm_kumo".into(), 0.5)]);
        assert_eq!(named.unwrap().row(5), half.row(5));
        assert!(Style::for_profile(&data(), Path::new("x"), &[("../../etc/passwd".into(), 1.0)]).is_err());
    }

    #[test]
    fn long_token_runs_are_cut_after_punctuation() {
        let vocab = Vocab::load(&dir(&data()).join("vocab.json")).unwrap();
        let comma = vocab.id(',').unwrap();
        let mut t = vec![43i64; 300];
        t.push(comma);
        t.extend(vec![43i64; 300]);
        let c = chunks(&t, &vocab);
        assert_eq!(c.iter().map(|c| c.len()).collect::<Vec<_>>(), vec![301, 300]);
        assert_eq!(chunks(&[43; 10], &vocab).len(), 1);
    }

    /// The trace made at 8 kHz and four times the speed reads the words as
    /// one made at the voice's own rate and speed does.
    #[tokio::test]
    async fn the_fast_trace_reads_as_the_full_one() {
        let dir_ = tempfile::tempdir().unwrap();
        let t = Duration::from_secs(60);
        for (k, sentence) in
            ["2026年12月1日、お誕生日おめでとう！", "いつも優しく見守ってくれて本当にありがとう。"].iter().enumerate()
        {
            let fast = trace(&data(), sentence, dir_.path(), k, t).await.unwrap();
            let (text, full) = (dir_.path().join("full.txt"), dir_.path().join("full.trace"));
            std::fs::write(&text, format!("{}\n", frontend::prepare_text(sentence))).unwrap();
            let mei = data().join("voices/system/mei_normal.htsvoice");
            let dic = crate::pipeline::speech::OPEN_JTALK_DIC;
            process::run("open_jtalk", crate::args!["-x", dic, "-m", &mei, "-ot", &full, &text], None, t)
                .await
                .unwrap();
            let full = std::fs::read_to_string(&full).unwrap();
            let (a, b) = (frontend::parse_trace(&fast), frontend::parse_trace(&full));
            assert!(a.len() > 3, "{fast}");
            assert_eq!(a, b);
        }
    }

    /// The real model says a real sentence: audible, about as long as it
    /// should be, and the trace's readings become the phonemes.
    #[tokio::test]
    async fn kokoro_speaks_japanese() {
        let dir_ = tempfile::tempdir().unwrap();
        let lib = crate::onnx::runtime_path(&data());
        let t = Duration::from_secs(60);
        let trace = trace(&data(), "2026年12月1日、お誕生日おめでとう！", dir_.path(), 0, t).await.unwrap();
        let model = tokio::task::spawn_blocking({
            let (l, d) = (lib.clone(), dir(&data()));
            move || Kokoro::get(&l, &d)
        })
        .await
        .unwrap()
        .unwrap();
        let ph = model.phonemes(&trace);
        println!("{ph}");
        // Open JTalk's date rules: 一日 is ツイタチ.
        assert!(ph.starts_with("ɲi seɴ") && ph.contains("ʦɨitaʨi,"), "{ph}");
        assert!(ph.contains("otaɲʥoː") && ph.contains("omedetoː"), "{ph}");
        let sentences = vec!["こんにちは。".to_owned(), "お誕生日おめでとうございます！".to_owned()];
        let t0 = std::time::Instant::now();
        let style = Style::load(&dir(&data()).join("jf_alpha.npy")).unwrap();
        let parts = speak_sentences(&lib, &data(), style, &sentences, dir_.path(), t).await.unwrap();
        let secs: Vec<f32> = parts.iter().map(|p| p.len() as f32 / SAMPLE_RATE as f32).collect();
        println!("{secs:?} s of speech in {:.2} s", t0.elapsed().as_secs_f32());
        assert!((0.5..2.5).contains(&secs[0]) && (1.5..5.0).contains(&secs[1]), "{secs:?}");
        for p in &parts {
            let rms = (p.iter().map(|x| x * x).sum::<f32>() / p.len() as f32).sqrt();
            assert!(rms > 0.02, "rms {rms}");
            // Trimmed: it starts and ends within the padding of the speech.
            assert!(p[..TRIM_PAD / 2].iter().all(|x| x.abs() <= TRIM_LEVEL * 4.0));
        }
    }
}
