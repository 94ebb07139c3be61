//! Sample-level audio work that speech, mixing and catalog tasks share:
//! the click-free joins of spoken sentences, the worker's one loudness meter
//! (EBU R 128 integrated loudness and true peak, `ebur128` crate), and the
//! filter that makes a music track loop-ready.

/// Pause between sentences.
const PAUSE_SECS: f32 = 0.25;
/// Fade at each end of a sentence, so that the joins do not click.
const FADE_SECS: f32 = 0.005;

/// Spoken sentences joined, and where each one is in the whole.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    pub samples: Vec<f32>,
    /// Each part's first sample and the sample after its last.
    pub spans: Vec<(usize, usize)>,
}

impl Joined {
    /// The spans in seconds, with the sentences they are.
    pub fn timing(&self, sentences: &[String], rate: u32) -> shared::text::SpeechTiming {
        let secs = |n: usize| n as f64 / f64::from(rate.max(1));
        shared::text::SpeechTiming {
            sentences: sentences
                .iter()
                .zip(&self.spans)
                .map(|(text, &(a, b))| shared::text::SentenceTime { text: text.clone(), start: secs(a), end: secs(b) })
                .collect(),
        }
    }
}

/// Sentences joined with pauses, each faded in and out over a few ms.
pub fn join_speech(parts: Vec<Vec<f32>>, rate: u32) -> Joined {
    let fade = ((rate as f32 * FADE_SECS) as usize).max(1);
    let pause = vec![0.0f32; (rate as f32 * PAUSE_SECS) as usize];
    let mut out = Vec::new();
    let mut spans = Vec::with_capacity(parts.len());
    for (k, mut part) in parts.into_iter().enumerate() {
        let n = part.len();
        for i in 0..fade.min(n) {
            let g = i as f32 / fade as f32;
            part[i] *= g;
            part[n - 1 - i] *= g;
        }
        if k > 0 {
            out.extend_from_slice(&pause);
        }
        spans.push((out.len(), out.len() + n));
        out.extend(part);
    }
    Joined { samples: out, spans }
}

/// A measured loudness.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loudness {
    /// Integrated loudness, LUFS (at least -70: silence reads as -70).
    pub integrated_lufs: f64,
    /// True peak over all channels, dBTP.
    pub true_peak_dbtp: f64,
}

/// Measure interleaved samples of `channels` channels at `rate` Hz.
pub fn measure(interleaved: &[f32], channels: u32, rate: u32) -> Option<Loudness> {
    let mut m = ebur128::EbuR128::new(channels, rate, ebur128::Mode::I | ebur128::Mode::TRUE_PEAK).ok()?;
    m.add_frames_f32(interleaved).ok()?;
    let integrated = m.loudness_global().ok().filter(|l| l.is_finite()).unwrap_or(-70.0).max(-70.0);
    let tp = (0..channels).filter_map(|c| m.true_peak(c).ok()).fold(0.0f64, f64::max);
    Some(Loudness { integrated_lufs: integrated, true_peak_dbtp: 20.0 * tp.max(1e-9).log10() })
}

/// Measure raw f32 little-endian interleaved samples (as ffmpeg writes them
/// with `-f f32le`); silence if there are none.
pub fn measure_pcm_f32le(pcm: &[u8], channels: u32, rate: u32) -> Loudness {
    let samples: Vec<f32> = pcm.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    measure(&samples, channels, rate).unwrap_or(Loudness { integrated_lufs: -70.0, true_peak_dbtp: -180.0 })
}

/// Integrated loudness of mono samples, LUFS (`None` for silence).
pub fn loudness_lufs(samples: &[f32], rate: u32) -> Option<f64> {
    measure(samples, 1, rate).map(|l| l.integrated_lufs).filter(|&l| l > -70.0)
}

/// Seconds of a track's end that are crossfaded into its start.
pub const LOOP_XF: f64 = 2.0;

/// The filter that makes a track loop-ready (the same as scripts/assets.sh
/// does for the system tracks): its last `LOOP_XF` seconds are crossfaded
/// into its first ones and the result starts after them, so the end flows
/// into the start when it is played in a loop. `None` for tracks too short
/// to spare the seconds (they loop as they are).
pub fn loop_ready_filter(duration: f64) -> Option<String> {
    if duration < 4.0 * LOOP_XF {
        return None;
    }
    let end = duration - LOOP_XF;
    Some(format!(
        "[0:a]asplit=3[a][b][c];[a]atrim=0:{LOOP_XF},asetpts=PTS-STARTPTS[head];\
         [b]atrim={LOOP_XF}:{end:.3},asetpts=PTS-STARTPTS[body];[c]atrim={end:.3},asetpts=PTS-STARTPTS[tail];\
         [tail][head]acrossfade=d={:.2}:c1=qsin:c2=qsin[seam];[body][seam]concat=n=2:v=0:a=1[out]",
        LOOP_XF - 0.1
    ))
}
