//! Music under the voice: the track looped to the voice's length plus a
//! short intro and outro, faded in and out, lowered under the voice.

use std::path::{Path, PathBuf};

use shared::catalog::BgmTrack;
use shared::keys::objects;

use super::{Job, PipelineError};
use crate::media;

/// Seconds of music before the voice starts and after it ends.
pub const INTRO: f64 = 1.0;
pub const OUTRO: f64 = 1.5;

/// The filter graph: input 0 is the voice, input 1 (if any) the looped track.
pub fn mix_filter(total: f64, with_music: bool) -> String {
    let delay_ms = (INTRO * 1000.0).round() as u64;
    let voice = format!(
        "[0:a]aformat=sample_rates=48000:channel_layouts=stereo,adelay={delay_ms}|{delay_ms},apad=whole_dur={total:.3}[v]"
    );
    if !with_music {
        return format!("{voice};[v]atrim=0:{total:.3}[out]");
    }
    let fade_out_start = (total - OUTRO).max(0.0);
    format!(
        "{voice};[1:a]aformat=sample_rates=48000:channel_layouts=stereo,atrim=0:{total:.3},volume=0.22,\
         afade=t=in:st=0:d={INTRO},afade=t=out:st={fade_out_start:.3}:d={OUTRO}[m];\
         [v][m]amix=inputs=2:duration=first:normalize=0,atrim=0:{total:.3}[out]"
    )
}

/// Where the worker reads a track: the data directory if the file is
/// there, else the S3 object of the same key.
async fn track_file(j: &Job<'_>, track: &BgmTrack) -> Result<PathBuf, PipelineError> {
    if let Some(local) = j.catalog.resolve(&track.file_path).filter(|p| p.is_file()) {
        return Ok(local);
    }
    let path = j.path("bgm_track");
    j.storage.get_to_file(&track.file_path, &path).await?;
    Ok(path)
}

pub async fn mix(j: &Job<'_>, track: Option<&BgmTrack>, voice: &Path) -> Result<PathBuf, PipelineError> {
    let speech = media::probe(voice, j.cfg.tool_timeout).await?.duration;
    let total = INTRO + speech + OUTRO;
    let out = j.path("final_mixed.mp3");
    let mut args: Vec<std::ffi::OsString> = vec!["-i".into()];
    args.push(voice.into());
    if let Some(t) = track {
        args.extend(["-stream_loop", "-1", "-i"].iter().map(Into::into));
        args.push(track_file(j, t).await?.into());
    }
    args.extend(["-filter_complex".into(), mix_filter(total, track.is_some()).into(), "-map".into(), "[out]".into()]);
    args.extend(["-c:a", "libmp3lame", "-b:a", "192k", "-ar", "48000"].iter().map(Into::into));
    args.push(out.clone().into());
    media::ffmpeg(args, j.cfg.tool_timeout).await?;
    j.storage.put_file(&objects::final_mixed(j.task_id()), &out, "audio/mpeg").await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_graph_pads_the_voice_and_fades_the_music() {
        let f = mix_filter(10.0, true);
        assert!(f.contains("adelay=1000|1000"));
        assert!(f.contains("apad=whole_dur=10.000"));
        assert!(f.contains("afade=t=out:st=8.500:d=1.5"));
        assert!(f.ends_with("atrim=0:10.000[out]"));
        let f = mix_filter(4.0, false);
        assert!(!f.contains("[1:a]"));
    }
}
