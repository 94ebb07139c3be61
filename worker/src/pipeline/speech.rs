//! Speech: the message spoken by the profile's base voice (Open JTalk for
//! Japanese, Flite for English), then shaped by the profile's embedding
//! (pitch shift and speed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shared::catalog::{Catalog, VoiceProfile};
use shared::keys::objects;
use shared::text::SpeechTiming;

use super::{Job, PipelineError};
use crate::process;

/// Open JTalk's dictionary as installed by Debian's open-jtalk-mecab-naist-jdic.
pub const OPEN_JTALK_DIC: &str = "/var/lib/mecab/dic/open-jtalk/naist-jdic";

/// A profile's voice features (the "embedding" file).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Embedding {
    #[serde(default)]
    pub pitch_semitones: f64,
    #[serde(default = "one")]
    pub speed: f64,
    /// For a Kokoro profile matched to a recording: the Kokoro voices it
    /// blends, with their weights.
    #[serde(default)]
    pub kokoro_blend: Vec<(String, f32)>,
}

fn one() -> f64 {
    1.0
}

impl Embedding {
    pub fn is_neutral(&self) -> bool {
        self.pitch_semitones.abs() < 0.01 && (self.speed - 1.0).abs() < 0.005
    }
}

fn bad_voice(p: &VoiceProfile, reason: impl Into<String>) -> PipelineError {
    PipelineError::BadVoice { id: p.id.clone(), reason: reason.into() }
}

/// The message spoken (`base_voice.wav`) and when each sentence is in it.
pub async fn synthesize(j: &Job<'_>, profile: &VoiceProfile) -> Result<(PathBuf, SpeechTiming), PipelineError> {
    let out = j.path("base_voice.wav");
    let timing = speak(j.catalog, profile, &j.job.message, &j.dir, &out, j.cfg.tool_timeout).await?;
    j.storage.put_file(&objects::base_voice(j.task_id()), &out, "audio/wav").await?;
    Ok((out, timing))
}

/// Speak `message` with the profile's base voice into the WAV file `out`,
/// sentence by sentence (the sentences of [`shared::text::sentences`], the
/// same the captions show), joined here with click-free pauses; the
/// answer is where each sentence is in `out`.
pub async fn speak(
    catalog: &Catalog,
    profile: &VoiceProfile,
    message: &str,
    scratch: &Path,
    out: &Path,
    timeout: Duration,
) -> Result<SpeechTiming, PipelineError> {
    let engine = profile.metadata.engine.as_str();
    let voice = match engine {
        "openjtalk" | "piper" | "kokoro" => {
            catalog.resolve(&profile.metadata.base_voice).filter(|p| p.is_file()).ok_or_else(|| {
                bad_voice(
                    profile,
                    format!("voice file {} is missing (run scripts/assets.sh)", profile.metadata.base_voice),
                )
            })?
        }
        "flite" => PathBuf::from(&profile.metadata.base_voice),
        other => return Err(bad_voice(profile, format!("unknown engine {other:?}"))),
    };
    let sentences = shared::text::sentences(message);
    if sentences.is_empty() {
        return Err(PipelineError::BadOutput("the message has nothing to speak".into()));
    }
    let lib = crate::onnx::runtime_path(catalog.data_dir());
    let (parts, rate) = match engine {
        "piper" => crate::piper::speak_sentences(&lib, &voice, &sentences, timeout).await.map_err(|e| match e {
            crate::piper::PiperError::Model { .. } | crate::piper::PiperError::Onnx(_) => {
                bad_voice(profile, e.to_string())
            }
            crate::piper::PiperError::Process(p) => PipelineError::Process(p),
            crate::piper::PiperError::Inference(m) => PipelineError::Speech(m),
        })?,
        "kokoro" => {
            use crate::kokoro::KokoroError;
            let blend = load_embedding(catalog, profile).await?.kokoro_blend;
            let (data, path) = (catalog.data_dir().to_owned(), voice.clone());
            let style = shared::rt::blocking(move || crate::kokoro::Style::for_profile(&data, &path, &blend))
                .await?
                .map_err(|e| bad_voice(profile, e.to_string()))?;
            let parts = crate::kokoro::speak_sentences(&lib, catalog.data_dir(), style, &sentences, scratch, timeout)
                .await
                .map_err(|e| match e {
                    KokoroError::Model { .. } | KokoroError::Onnx(_) => bad_voice(profile, e.to_string()),
                    KokoroError::Process(p) => PipelineError::Process(p),
                    KokoroError::Inference(m) => PipelineError::Speech(m),
                })?;
            (parts, crate::kokoro::SAMPLE_RATE)
        }
        _ => speak_each(engine, &voice, &sentences, scratch, timeout).await?,
    };
    let path = out.to_owned();
    let timing = shared::rt::blocking(move || {
        let joined = crate::audio::join_speech(parts, rate);
        crate::media::write_wav(&path, &joined.samples, rate)?;
        Ok::<_, PipelineError>(joined.timing(&sentences, rate))
    })
    .await??;
    check_audible(out).await?;
    Ok(timing)
}

/// Below this RMS level (about -46 dBFS) speech is taken for silence.
const SILENCE_RMS: f32 = 0.005;

/// Speech that came out silent is an error, never a silent video (an
/// engine that read nothing it could say, or was fed something else).
pub async fn check_audible(path: &Path) -> Result<(), PipelineError> {
    let p = path.to_owned();
    let (samples, _) = shared::rt::blocking(move || crate::media::read_wav(&p))
        .await?
        .map_err(|e| PipelineError::BadOutput(e.to_string()))?;
    let rms = (samples.iter().map(|x| x * x).sum::<f32>() / samples.len().max(1) as f32).sqrt();
    if rms < SILENCE_RMS { Err(PipelineError::SilentSpeech) } else { Ok(()) }
}

/// Flite's built-in voices: a profile names one of these (Flite would also
/// load a voice from any file or URL given to `-voice`).
fn flite_voice(name: &Path) -> Option<&'static str> {
    ["slt", "kal", "kal16", "awb", "rms"].into_iter().find(|v| name == Path::new(v))
}

/// Open JTalk or Flite, one process per sentence (two at a time): the
/// samples of each sentence and their rate.
pub async fn speak_each(
    engine: &str,
    voice: &Path,
    sentences: &[String],
    scratch: &Path,
    timeout: Duration,
) -> Result<(Vec<Vec<f32>>, u32), PipelineError> {
    use futures::StreamExt;
    let program = if engine == "openjtalk" { "open_jtalk" } else { "flite" };
    let mut jobs = Vec::with_capacity(sentences.len());
    for (i, sentence) in sentences.iter().enumerate() {
        let text = scratch.join(format!("sentence_{i}.txt"));
        let wav = scratch.join(format!("sentence_{i}.wav"));
        tokio::fs::write(&text, format!("{sentence}\n")).await?;
        let args = match engine {
            "openjtalk" => crate::args!["-x", OPEN_JTALK_DIC, "-m", voice, "-ow", &wav, text],
            _ => {
                let name = flite_voice(voice).ok_or_else(|| PipelineError::BadVoice {
                    id: voice.display().to_string(),
                    reason: "not one of Flite's built-in voices".into(),
                })?;
                crate::args!["-voice", name, "-f", text, "-o", &wav]
            }
        };
        jobs.push(async move { process::run(program, args, None, timeout).await.map(|_| wav) });
    }
    let wavs: Vec<PathBuf> =
        futures::stream::iter(jobs).buffered(2).collect::<Vec<_>>().await.into_iter().collect::<Result<_, _>>()?;
    shared::rt::blocking(move || {
        let mut rate = 0;
        let mut audio = Vec::with_capacity(wavs.len());
        for w in &wavs {
            let (samples, r) = crate::media::read_wav(w).map_err(|e| PipelineError::BadOutput(e.to_string()))?;
            if rate != 0 && r != rate {
                return Err(PipelineError::BadOutput(format!("sentence sample rates differ: {r} Hz after {rate} Hz")));
            }
            rate = r;
            audio.push(samples);
        }
        Ok((audio, rate))
    })
    .await?
}

async fn load_embedding(catalog: &Catalog, profile: &VoiceProfile) -> Result<Embedding, PipelineError> {
    let path = catalog
        .resolve(&profile.embedding_path)
        .ok_or_else(|| bad_voice(profile, "embedding path leaves the data directory"))?;
    let bytes =
        tokio::fs::read(&path).await.map_err(|e| bad_voice(profile, format!("embedding {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| bad_voice(profile, format!("embedding {}: {e}", path.display())))
}

/// The ffmpeg audio filter for a profile: 48 kHz mono, pitch and tempo
/// changed (rubberband, formants kept) only when the profile asks for it.
pub fn prosody_filter(e: &Embedding) -> String {
    let mut f = String::from("aresample=48000,aformat=channel_layouts=mono");
    if !e.is_neutral() {
        let pitch = 2f64.powf(e.pitch_semitones / 12.0);
        f.push_str(&format!(",rubberband=pitch={pitch:.5}:tempo={:.4}:formant=preserved", e.speed));
    }
    f
}

/// The speech shaped to the profile (`prosody_adjusted.wav`), and its
/// sentence times (moved by the profile's tempo) stored beside it for the
/// render's captions.
pub async fn adjust_prosody(
    j: &Job<'_>,
    profile: &VoiceProfile,
    input: &Path,
    timing: &SpeechTiming,
) -> Result<PathBuf, PipelineError> {
    let out = j.path("prosody_adjusted.wav");
    let emb = load_embedding(j.catalog, profile).await?;
    let neutral = emb.is_neutral();
    if neutral {
        // Nothing to change: the speech as spoken (the mix resamples it),
        // without an ffmpeg run (0.13 CPU-seconds just to start).
        tokio::fs::copy(input, &out).await?;
    } else {
        shape_with(&emb, input, &out, j.cfg.tool_timeout).await?;
    }
    let timing = timing.at_tempo(if neutral { 1.0 } else { emb.speed });
    let json = serde_json::to_vec(&timing).map_err(|e| PipelineError::BadOutput(e.to_string()))?;
    let keys = (objects::prosody_adjusted(j.task_id()), objects::speech_timing(j.task_id()));
    tokio::try_join!(
        j.storage.put_file(&keys.0, &out, "audio/wav"),
        j.storage.put_bytes(&keys.1, json, "application/json"),
    )?;
    Ok(out)
}

/// Shape speech to the profile's embedding (pitch and speed) into `out`.
pub async fn shape(
    catalog: &Catalog,
    profile: &VoiceProfile,
    input: &Path,
    out: &Path,
    timeout: Duration,
) -> Result<(), PipelineError> {
    let emb = load_embedding(catalog, profile).await?;
    shape_with(&emb, input, out, timeout).await
}

/// Apply an embedding's pitch and speed to the speech in `input`.
pub async fn shape_with(emb: &Embedding, input: &Path, out: &Path, timeout: Duration) -> Result<(), PipelineError> {
    let filter = prosody_filter(emb);
    let mut args = crate::media::input(input, crate::media::Format::Wav);
    args.extend(crate::args!["-af", crate::process::Arg::composed(filter), "-c:a", "pcm_s16le", out]);
    crate::media::ffmpeg(args, timeout).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_fade_to_silence_so_they_do_not_click() {
        // Two loud square-ish parts that would click if butted together.
        let part = vec![0.8f32; 4800];
        let joined = crate::audio::join_speech(vec![part.clone(), part], 48_000);
        assert_eq!(joined.spans, vec![(0, 4800), (4800 + 12_000, 4800 * 2 + 12_000)]);
        let joined = joined.samples;
        assert_eq!(joined.len(), 4800 * 2 + 12_000);
        let max_step = joined.windows(2).map(|w| (w[1] - w[0]).abs()).fold(0.0, f32::max);
        assert!(max_step < 0.01, "largest sample-to-sample step {max_step}");
        assert_eq!((joined[0], joined[4800 + 6000]), (0.0, 0.0));
    }

    fn rms(s: &[f32]) -> f32 {
        (s.iter().map(|x| x * x).sum::<f32>() / s.len().max(1) as f32).sqrt()
    }

    /// Speak `text` into the WAV file `out` with Open JTalk or Flite.
    async fn say(engine: &str, voice: &Path, text: &str, scratch: &Path, out: &Path, t: Duration) {
        let (parts, rate) = speak_each(engine, voice, &shared::text::sentences(text), scratch, t).await.unwrap();
        crate::media::write_wav(out, &crate::audio::join_speech(parts, rate).samples, rate).unwrap();
    }

    fn data() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data")
    }

    /// Real Open JTalk (Mei) and Flite (slt): audible speech, longer for a
    /// longer message, sentences joined.
    #[tokio::test]
    async fn japanese_and_english_speech_is_audible_and_grows_with_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let t = Duration::from_secs(60);
        let mei = data().join("voices/system/mei_normal.htsvoice");
        let cases = [
            (
                "openjtalk",
                mei.as_path(),
                "こんにちは。",
                "こんにちは。お誕生日おめでとうございます。素敵な一年になりますように。",
            ),
            ("flite", Path::new("slt"), "Hello.", "Hello. Happy birthday to you. I hope this year is a wonderful one."),
        ];
        for (engine, voice, short, long) in cases {
            let mut secs = Vec::new();
            for (k, text) in [short, long].into_iter().enumerate() {
                let scratch = dir.path().join(format!("{engine}-{k}"));
                std::fs::create_dir_all(&scratch).unwrap();
                let out = scratch.join("out.wav");
                say(engine, voice, text, &scratch, &out, t).await;
                let (samples, rate) = crate::media::read_wav(&out).unwrap();
                let level = rms(&samples);
                assert!(level > 0.02, "{engine} {text:?}: rms {level} is near silence");
                secs.push(samples.len() as f64 / f64::from(rate));
            }
            println!("{engine}: {:.2} s -> {:.2} s", secs[0], secs[1]);
            assert!(secs[1] > secs[0] * 2.0, "{engine}: {secs:?}");
        }
    }

    /// A profile 4 semitones up measures higher (median F0) than its base
    /// voice: about 2^(4/12) = 1.26 times.
    #[tokio::test]
    async fn four_semitones_up_raises_the_measured_pitch() {
        let dir = tempfile::tempdir().unwrap();
        let t = Duration::from_secs(60);
        let base = dir.path().join("base.wav");
        let text = "こんにちは。今日はとても良い天気ですね。お誕生日おめでとうございます。";
        let mei = data().join("voices/system/mei_normal.htsvoice");
        say("openjtalk", &mei, text, dir.path(), &base, t).await;
        let neutral = dir.path().join("neutral.wav");
        shape_with(&Embedding { pitch_semitones: 0.0, speed: 1.0, kokoro_blend: vec![] }, &base, &neutral, t)
            .await
            .unwrap();
        let up = dir.path().join("up.wav");
        shape_with(&Embedding { pitch_semitones: 4.0, speed: 1.0, kokoro_blend: vec![] }, &base, &up, t).await.unwrap();
        let f0 = |p: &Path| {
            let (s, rate) = crate::media::read_wav(p).unwrap();
            crate::voice_analysis::analyse(&s, rate).unwrap().median_f0_hz
        };
        let (a, b) = (f0(&neutral), f0(&up));
        let semitones = 12.0 * (b / a).log2();
        println!("median F0 {a:.1} Hz -> {b:.1} Hz ({semitones:.2} semitones)");
        assert!(b > a, "{a} -> {b}");
        assert!((3.0..5.0).contains(&semitones), "{semitones} semitones");
    }

    #[test]
    fn neutral_profiles_are_only_resampled() {
        let f = prosody_filter(&Embedding { pitch_semitones: 0.0, speed: 1.0, kokoro_blend: vec![] });
        assert_eq!(f, "aresample=48000,aformat=channel_layouts=mono");
    }

    #[test]
    fn an_octave_up_doubles_the_pitch_ratio() {
        let f = prosody_filter(&Embedding { pitch_semitones: 12.0, speed: 1.1, kokoro_blend: vec![] });
        assert!(f.contains("rubberband=pitch=2.00000:tempo=1.1000"), "{f}");
    }

    #[test]
    fn shipped_system_embeddings_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/voices/system");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.to_string_lossy().ends_with(".embedding.json") {
                let e: Embedding = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                assert!(e.speed > 0.0);
                n += 1;
            }
        }
        assert!(n >= 2);
    }
}
