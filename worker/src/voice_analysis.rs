//! Voice features of a reference recording (median and range of F0,
//! speaking rate, loudness) and the matching of a base voice to them.
//!
//! This is voice *matching*: a built-in voice is shifted in pitch and
//! speed toward the recording; it does not clone a voice. The DSP is
//! written here (normalised autocorrelation pitch tracking and energy-peak
//! syllable counting) because it is a few dozen lines and keeps the worker
//! free of a large dependency.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoiceFeatures {
    pub median_f0_hz: f64,
    pub f0_p10_hz: f64,
    pub f0_p90_hz: f64,
    pub syllables_per_second: f64,
    pub loudness_lufs: Option<f64>,
    pub duration_seconds: f64,
}

fn percentile(sorted: &[f32], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64
}

fn frame_rms(samples: &[f32], hop: usize, len: usize) -> Vec<f32> {
    (0..samples.len().saturating_sub(len) / hop)
        .map(|i| {
            let f = &samples[i * hop..i * hop + len];
            (f.iter().map(|s| s * s).sum::<f32>() / len as f32).sqrt()
        })
        .collect()
}

/// F0 (Hz) of each voiced 40 ms frame, 10 ms apart, searched in 60-800 Hz
/// (a female voice shifted up a few semitones goes well past 400 Hz).
pub fn f0_track(samples: &[f32], rate: u32) -> Vec<f32> {
    let (len, hop) = ((rate as usize * 40) / 1000, (rate as usize * 10) / 1000);
    let rms = frame_rms(samples, hop, len);
    let mut sorted = rms.clone();
    sorted.sort_by(f32::total_cmp);
    if sorted.is_empty() {
        return Vec::new();
    }
    let loud = sorted[(sorted.len() - 1) * 95 / 100];
    let (min_lag, max_lag) = (rate as usize / 800, rate as usize / 60);
    let mut out = Vec::new();
    for (i, r) in rms.iter().enumerate() {
        if *r < 0.1 * loud || loud <= 0.0 {
            continue;
        }
        let f = &samples[i * hop..(i * hop + len + max_lag).min(samples.len())];
        if f.len() < len + max_lag {
            break;
        }
        let x = &f[..len];
        let ex: f32 = x.iter().map(|v| v * v).sum();
        let scores: Vec<f32> = (min_lag..=max_lag)
            .map(|l| {
                let y = &f[l..l + len];
                let ey: f32 = y.iter().map(|v| v * v).sum();
                let xy: f32 = x.iter().zip(y).map(|(a, b)| a * b).sum();
                if ex > 0.0 && ey > 0.0 { xy / (ex * ey).sqrt() } else { 0.0 }
            })
            .collect();
        let top = scores.iter().copied().fold(f32::MIN, f32::max);
        if top < 0.6 {
            continue;
        }
        // The period and its multiples all correlate: take the shortest lag
        // that is a local peak close to the best.
        let Some(k) = (1..scores.len() - 1)
            .find(|&k| scores[k] >= 0.9 * top && scores[k] >= scores[k - 1] && scores[k] >= scores[k + 1])
        else {
            continue;
        };
        let (a, b, c) = (scores[k - 1], scores[k], scores[k + 1]);
        let d = a - 2.0 * b + c;
        let shift = if d.abs() > f32::EPSILON { (0.5 * (a - c) / d).clamp(-0.5, 0.5) } else { 0.0 };
        out.push(rate as f32 / ((k + min_lag) as f32 + shift));
    }
    out
}

/// Syllable-like energy peaks per second of active speech.
pub fn syllable_rate(samples: &[f32], rate: u32) -> f64 {
    let hop = rate as usize / 100;
    let rms = frame_rms(samples, hop, hop * 2);
    if rms.len() < 10 {
        return 0.0;
    }
    let smooth: Vec<f32> = (0..rms.len())
        .map(|i| {
            let w = &rms[i.saturating_sub(2)..(i + 3).min(rms.len())];
            w.iter().sum::<f32>() / w.len() as f32
        })
        .collect();
    let mut sorted = smooth.clone();
    sorted.sort_by(f32::total_cmp);
    let loud = sorted[(sorted.len() - 1) * 95 / 100];
    let threshold = 0.25 * loud;
    let active = smooth.iter().filter(|v| **v > threshold).count();
    if active == 0 {
        return 0.0;
    }
    let peaks = (0..smooth.len())
        .filter(|&i| {
            let w = &smooth[i.saturating_sub(5)..(i + 6).min(smooth.len())];
            smooth[i] > threshold && w.iter().all(|v| *v <= smooth[i])
        })
        .count();
    peaks as f64 / (active as f64 / 100.0)
}

/// Every feature of a recording; `None` if no voiced speech is found.
pub fn analyse(samples: &[f32], rate: u32) -> Option<VoiceFeatures> {
    let mut f0 = f0_track(samples, rate);
    if f0.len() < 20 {
        return None;
    }
    f0.sort_by(f32::total_cmp);
    Some(VoiceFeatures {
        median_f0_hz: percentile(&f0, 0.5),
        f0_p10_hz: percentile(&f0, 0.1),
        f0_p90_hz: percentile(&f0, 0.9),
        syllables_per_second: syllable_rate(samples, rate),
        loudness_lufs: crate::audio::loudness_lufs(samples, rate),
        duration_seconds: samples.len() as f64 / rate as f64,
    })
}

/// How a base voice is shifted toward a target: semitones and speed.
pub fn shift_toward(target: &VoiceFeatures, base: &VoiceFeatures) -> (f64, f64) {
    let semitones = (12.0 * (target.median_f0_hz / base.median_f0_hz).log2()).clamp(-12.0, 12.0);
    let speed = if base.syllables_per_second > 0.0 && target.syllables_per_second > 0.0 {
        (target.syllables_per_second / base.syllables_per_second).clamp(0.7, 1.4)
    } else {
        1.0
    };
    ((semitones * 100.0).round() / 100.0, (speed * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voiced(f0: f32, secs: f32, rate: u32) -> Vec<f32> {
        (0..(secs * rate as f32) as usize)
            .map(|i| {
                let t = i as f32 / rate as f32;
                (1..6).map(|h| (2.0 * std::f32::consts::PI * f0 * h as f32 * t).sin() / h as f32).sum::<f32>() * 0.3
            })
            .collect()
    }

    #[test]
    fn finds_the_pitch_of_a_harmonic_tone() {
        for f0 in [90.0, 140.0, 220.0, 310.0] {
            let f = analyse(&voiced(f0, 2.0, 16_000), 16_000).unwrap();
            assert!((f.median_f0_hz - f0 as f64).abs() < f0 as f64 * 0.02, "{f0} Hz found as {}", f.median_f0_hz);
        }
        assert!(analyse(&vec![0.0; 32_000], 16_000).is_none(), "silence has no voice");
    }

    #[test]
    fn an_octave_up_is_twelve_semitones() {
        let f = |hz: f64| VoiceFeatures {
            median_f0_hz: hz,
            f0_p10_hz: hz,
            f0_p90_hz: hz,
            syllables_per_second: 5.0,
            loudness_lufs: None,
            duration_seconds: 3.0,
        };
        assert_eq!(shift_toward(&f(220.0), &f(110.0)), (12.0, 1.0));
        assert_eq!(shift_toward(&f(110.0), &f(220.0)), (-12.0, 1.0));
    }

    /// Real speech from the system voices (fetched by scripts/assets.sh):
    /// the female voices are measured higher than the male ones.
    #[test]
    fn real_voices_fall_in_their_ranges() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/voices/system");
        let measure = |name: &str| {
            let out = std::process::Command::new("ffmpeg")
                .args(["-nostdin", "-loglevel", "error", "-i"])
                .arg(dir.join(name))
                .args(["-ac", "1", "-ar", "16000", "-f", "f32le", "-"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{name}: run scripts/assets.sh");
            let s: Vec<f32> =
                out.stdout.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            analyse(&s, 16_000).unwrap()
        };
        let mei = measure("ja_mei_female.wav");
        let nitech = measure("ja_nitech_male.wav");
        // Mei is a high voice: an independent YIN estimate gives a 421 Hz median.
        assert!((300.0..500.0).contains(&mei.median_f0_hz), "{mei:?}");
        assert!((70.0..180.0).contains(&nitech.median_f0_hz), "{nitech:?}");
        assert!(mei.median_f0_hz > nitech.median_f0_hz * 1.3);
        assert!((2.0..12.0).contains(&mei.syllables_per_second), "{mei:?}");
    }
}
