//! The slow zoom of the rendered video, frame by frame, as raw yuv420p for
//! ffmpeg's stdin.
//!
//! Written here rather than with ffmpeg's filters: `zoompan` crops at whole
//! pixels (the picture shivers as the crop steps) and re-creates its scaler
//! every frame (3 s of CPU more than a still at 1080x1920); a `scale` with
//! per-frame sizes cannot feed a fixed-size crop. Here each frame is one
//! bilinear resample of the still's Y, U and V planes at a sub-pixel zoom,
//! with the per-column and per-row taps computed once per frame.

use image::RgbImage;

/// BT.601 limited-range luma of an RGB colour (0-255 each), as ffmpeg's
/// rgb24 -> yuv420p conversion computes it.
pub fn luma(r: f32, g: f32, b: f32) -> u8 {
    (16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0).round() as u8
}

/// BT.601 limited-range chroma (U, V) of an RGB colour.
pub fn chroma(r: f32, g: f32, b: f32) -> (u8, u8) {
    let u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0;
    let v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0;
    (u.round().clamp(0.0, 255.0) as u8, v.round().clamp(0.0, 255.0) as u8)
}

/// The still as BT.601 limited-range yuv420p planes (what ffmpeg's
/// rgb24 -> yuv420p conversion produces by default).
pub struct Planes {
    pub w: usize,
    pub h: usize,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
}

impl Planes {
    /// `img` must have even width and height.
    pub fn from_rgb(img: &RgbImage) -> Planes {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let raw = img.as_raw();
        let mut y = vec![0u8; w * h];
        for (i, px) in raw.chunks_exact(3).enumerate() {
            let (r, g, b) = (f32::from(px[0]), f32::from(px[1]), f32::from(px[2]));
            y[i] = luma(r, g, b);
        }
        let (cw, ch) = (w / 2, h / 2);
        let (mut u, mut v) = (vec![0u8; cw * ch], vec![0u8; cw * ch]);
        for cy in 0..ch {
            for cx in 0..cw {
                let (mut r, mut g, mut b) = (0f32, 0f32, 0f32);
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let i = ((2 * cy + dy) * w + 2 * cx + dx) * 3;
                    r += f32::from(raw[i]);
                    g += f32::from(raw[i + 1]);
                    b += f32::from(raw[i + 2]);
                }
                let (r, g, b) = (r / 4.0, g / 4.0, b / 4.0);
                (u[cy * cw + cx], v[cy * cw + cx]) = chroma(r, g, b);
            }
        }
        Planes { w, h, y, u, v }
    }

    /// Bytes of one yuv420p frame.
    pub fn frame_len(&self) -> usize {
        self.w * self.h * 3 / 2
    }

    /// The frame at zoom `z` (1 = the still) around the point at
    /// (`fx` * width, `fy` * height), appended to `out`.
    pub fn zoomed(&self, z: f64, fx: f64, fy: f64, out: &mut Vec<u8>) {
        resample(&self.y, self.w, self.h, z, fx, fy, out);
        resample(&self.u, self.w / 2, self.h / 2, z, fx, fy, out);
        resample(&self.v, self.w / 2, self.h / 2, z, fx, fy, out);
    }
}

/// Source index and 8-bit weight of the next sample, for each output
/// position along one axis.
fn taps(n: usize, z: f64, focus: f64) -> Vec<(usize, u32)> {
    let c = focus * n as f64;
    (0..n)
        .map(|i| {
            // Pixel centres: output i+0.5 maps to c + (i+0.5-c)/z.
            let s = (c + (i as f64 + 0.5 - c) / z - 0.5).clamp(0.0, (n - 1) as f64);
            let i0 = (s.floor() as usize).min(n.saturating_sub(2));
            let f = ((s - i0 as f64) * 256.0).round().clamp(0.0, 256.0) as u32;
            (i0, f)
        })
        .collect()
}

/// Appends the plane `src` (`w` x `h`) resampled at zoom `z` around
/// (`fx` * w, `fy` * h) to `out`.
///
/// Vertical pass first, in 16 bits (256 * 255 fits), over only the source
/// columns the horizontal taps read, then the horizontal pass written
/// straight into `out`. The horizontal pass goes run by run: at a zoom a
/// little over 1 the left tap of output column x is x + k, with k the same
/// over long runs of columns, so each run reads two plain slices of the
/// row (which the compiler vectorizes) instead of gathering two samples a
/// column (vision bench at 1080x1920: 4.15 ms a frame gathering).
fn resample(src: &[u8], w: usize, h: usize, z: f64, fx: f64, fy: f64, out: &mut Vec<u8>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { resample_avx2(src, w, h, z, fx, fy, out) };
    }
    resample_body(src, w, h, z, fx, fy, out);
}

/// [`resample_body`] compiled for AVX2: eight 32-bit products at once
/// where the baseline x86-64 build (SSE2) has no 32-bit multiply and does
/// four in several steps (vision bench at 1080x1920: 1.45 ms a frame, against 2.71 ms for the
/// baseline build of the same code and 4.15 ms gathering).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn resample_avx2(src: &[u8], w: usize, h: usize, z: f64, fx: f64, fy: f64, out: &mut Vec<u8>) {
    resample_body(src, w, h, z, fx, fy, out);
}

#[inline(always)]
fn resample_body(src: &[u8], w: usize, h: usize, z: f64, fx: f64, fy: f64, out: &mut Vec<u8>) {
    let xs = taps(w, z, fx);
    let ys = taps(h, z, fy);
    // Taps are monotonic: the first and last bound the columns read.
    let lo = xs.first().map_or(0, |t| t.0);
    let hi = xs.last().map_or(0, |t| t.0 + 2).min(w);
    let weights: Vec<u32> = xs.iter().map(|t| t.1).collect();
    let runs = runs(&xs, lo);
    // One spare element: a 1-wide plane's single tap reads it at weight 0.
    let mut row = vec![0u16; hi - lo + 1];
    let start = out.len();
    out.resize(start + w * h, 0);
    for (&(y0, wy), dst) in ys.iter().zip(out[start..].chunks_exact_mut(w)) {
        let a = &src[y0 * w + lo..y0 * w + hi];
        let y1 = (y0 + 1).min(h - 1);
        let b = &src[y1 * w + lo..y1 * w + hi];
        let (wa, wb) = (256 - wy as u16, wy as u16);
        for ((r, &p), &q) in row.iter_mut().zip(a).zip(b) {
            *r = u16::from(p) * wa + u16::from(q) * wb;
        }
        for &(from, to, at) in &runs {
            let n = to - from;
            let (left, right) = (&row[at..at + n], &row[at + 1..at + 1 + n]);
            for (((d, &p), &q), &wx) in dst[from..to].iter_mut().zip(left).zip(right).zip(&weights[from..to]) {
                *d = ((u32::from(p) * (256 - wx) + u32::from(q) * wx + (1 << 15)) >> 16) as u8;
            }
        }
    }
}

/// The output columns in runs `(from, to, at)` whose left taps are
/// consecutive: columns `from..to` read the row (which starts at source
/// column `lo`) from `at` on.
fn runs(xs: &[(usize, u32)], lo: usize) -> Vec<(usize, usize, usize)> {
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    for (x, &(x0, _)) in xs.iter().enumerate() {
        match runs.last_mut() {
            Some((from, to, at)) if *at + (x - *from) == x0 - lo => *to = x + 1,
            _ => runs.push((x, x + 1, x0 - lo)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain formula: each output pixel from its four source pixels.
    fn reference(src: &[u8], w: usize, h: usize, z: f64, fx: f64, fy: f64) -> Vec<u8> {
        let (xs, ys) = (taps(w, z, fx), taps(h, z, fy));
        let px = |x: usize, y: usize| u32::from(src[y.min(h - 1) * w + x.min(w - 1)]);
        let mut out = Vec::new();
        for &(y0, wy) in &ys {
            for &(x0, wx) in &xs {
                let left = px(x0, y0) * (256 - wy) + px(x0, y0 + 1) * wy;
                let right = px(x0 + 1, y0) * (256 - wy) + px(x0 + 1, y0 + 1) * wy;
                out.push(((left * (256 - wx) + right * wx + (1 << 15)) >> 16) as u8);
            }
        }
        out
    }

    #[test]
    fn the_resample_matches_the_plain_bilinear_formula() {
        for (w, h) in [(1, 1), (2, 2), (7, 5), (64, 33)] {
            let src: Vec<u8> = (0..w * h).map(|i| (i * 37 % 251) as u8).collect();
            for z in [1.0, 1.013, 1.06, 1.7] {
                let expected = reference(&src, w, h, z, 0.5, 0.4);
                let mut out = vec![9];
                resample(&src, w, h, z, 0.5, 0.4, &mut out);
                assert_eq!(out[0], 9, "appends");
                assert_eq!(&out[1..], &expected[..], "{w}x{h} at {z}");
                // The baseline build too, where the CPU's own is for AVX2.
                let mut plain = Vec::new();
                resample_body(&src, w, h, z, 0.5, 0.4, &mut plain);
                assert_eq!(plain, expected, "{w}x{h} at {z}, baseline build");
            }
        }
    }

    #[test]
    fn zoom_one_is_the_still_and_zooming_magnifies_around_the_focus() {
        let img =
            RgbImage::from_fn(64, 32, |x, _| if x < 8 { image::Rgb([0, 0, 0]) } else { image::Rgb([255, 255, 255]) });
        let planes = Planes::from_rgb(&img);
        assert_eq!((planes.y[0], planes.y[63]), (16, 235), "limited-range luma");
        assert_eq!((planes.u[5], planes.v[5]), (128, 128), "grey has neutral chroma");
        let mut still = Vec::new();
        planes.zoomed(1.0, 0.5, 0.4, &mut still);
        assert_eq!(still.len(), planes.frame_len());
        assert_eq!(&still[..64 * 32], &planes.y[..]);
        // At 2x around the centre, output x = 0 shows source x = 16: the
        // 8 dark columns at the left edge are pushed out of the frame.
        let mut zoomed = Vec::new();
        planes.zoomed(2.0, 0.5, 0.4, &mut zoomed);
        assert!(zoomed[..64].iter().all(|&v| v > 200), "{:?}", &zoomed[..64]);
        // At 1.25x the band (8 px) becomes 8*1.25 - 32*0.25 = 2 px wide.
        let mut z125 = Vec::new();
        planes.zoomed(1.25, 0.5, 0.4, &mut z125);
        let dark = z125[..64].iter().take_while(|&&v| v < 126).count();
        assert_eq!(dark, 2, "{:?}", &z125[..64]);
    }
}
