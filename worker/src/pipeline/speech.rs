//! Speech: the message spoken by the profile's base voice (Open JTalk for
//! Japanese, Flite for English), then shaped by the profile's embedding
//! (pitch shift and speed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shared::catalog::{Catalog, VoiceProfile};
use shared::keys::objects;

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

pub async fn synthesize(j: &Job<'_>, profile: &VoiceProfile) -> Result<PathBuf, PipelineError> {
    let out = j.path("base_voice.wav");
    speak(j.catalog, profile, &j.job.message, &j.dir, &out, j.cfg.tool_timeout).await?;
    j.storage.put_file(&objects::base_voice(j.task_id()), &out, "audio/wav").await?;
    Ok(out)
}

/// Speak `message` with the profile's base voice into the WAV file `out`.
pub async fn speak(
    catalog: &Catalog,
    profile: &VoiceProfile,
    message: &str,
    scratch: &Path,
    out: &Path,
    timeout: Duration,
) -> Result<(), PipelineError> {
    let text = scratch.join("message.txt");
    tokio::fs::write(&text, format!("{message}\n")).await?;
    match profile.metadata.engine.as_str() {
        "openjtalk" => {
            let voice = catalog.resolve(&profile.metadata.base_voice).filter(|p| p.is_file()).ok_or_else(|| {
                bad_voice(
                    profile,
                    format!("voice file {} is missing (run scripts/assets.sh)", profile.metadata.base_voice),
                )
            })?;
            process::run(
                "open_jtalk",
                [
                    "-x".as_ref(),
                    OPEN_JTALK_DIC.as_ref(),
                    "-m".as_ref(),
                    voice.as_os_str(),
                    "-ow".as_ref(),
                    out.as_os_str(),
                    text.as_os_str(),
                ],
                None,
                timeout,
            )
            .await?;
        }
        "flite" => {
            process::run(
                "flite",
                [
                    "-voice".as_ref(),
                    profile.metadata.base_voice.as_ref(),
                    "-f".as_ref(),
                    text.as_os_str(),
                    "-o".as_ref(),
                    out.as_os_str(),
                ],
                None,
                timeout,
            )
            .await?;
        }
        "piper" => {
            let model = catalog.resolve(&profile.metadata.base_voice).filter(|p| p.is_file()).ok_or_else(|| {
                bad_voice(
                    profile,
                    format!("voice model {} is missing (run scripts/assets.sh)", profile.metadata.base_voice),
                )
            })?;
            let lib = crate::onnx::runtime_path(catalog.data_dir());
            crate::piper::speak(&lib, &model, message, out, timeout)
                .await
                .map_err(|e| bad_voice(profile, e.to_string()))?;
        }
        other => return Err(bad_voice(profile, format!("unknown engine {other:?}"))),
    }
    Ok(())
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

pub async fn adjust_prosody(j: &Job<'_>, profile: &VoiceProfile, input: &Path) -> Result<PathBuf, PipelineError> {
    let out = j.path("prosody_adjusted.wav");
    shape(j.catalog, profile, input, &out, j.cfg.tool_timeout).await?;
    j.storage.put_file(&objects::prosody_adjusted(j.task_id()), &out, "audio/wav").await?;
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
    let filter = prosody_filter(&emb);
    crate::media::ffmpeg(
        [
            "-i".as_ref(),
            input.as_os_str(),
            "-af".as_ref(),
            filter.as_ref(),
            "-c:a".as_ref(),
            "pcm_s16le".as_ref(),
            out.as_os_str(),
        ],
        timeout,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neutral_profiles_are_only_resampled() {
        let f = prosody_filter(&Embedding { pitch_semitones: 0.0, speed: 1.0 });
        assert_eq!(f, "aresample=48000,aformat=channel_layouts=mono");
    }

    #[test]
    fn an_octave_up_doubles_the_pitch_ratio() {
        let f = prosody_filter(&Embedding { pitch_semitones: 12.0, speed: 1.1 });
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
