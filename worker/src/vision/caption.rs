//! Captions drawn into the video's frames: each caption's lines are drawn
//! once (white fill, a dark outline, a half-transparent shadow), turned into
//! yuv420p values with their coverage, and blended into every frame that
//! shows the caption.
//!
//! Written here rather than left to ffmpeg's `subtitles` filter: libass lays
//! the caption out and blends it again on every frame, on ffmpeg's one
//! filter thread ahead of the encoder (0.1 CPU-seconds and 0.09 s of the
//! encoding run for a 13.7 s video at 512x910, 0.3 CPU-seconds at
//! 1080x1920). No crate draws outlined text into yuv420p: glyph outlines
//! come from `ab_glyph`, the rest (outline, shadow, blending) is here.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ab_glyph::{Font, FontVec, PxScale, ScaleFont, point};

use super::VisionError;

/// Debian's `fonts-noto-cjk`: Noto Sans CJK, bold, every region in one
/// collection.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc";
/// The face taken from the collection: Japanese glyph forms.
pub const FAMILY: &str = "Noto Sans CJK JP";

/// A caption font, loaded once per process.
pub struct CaptionFont {
    font: FontVec,
}

impl CaptionFont {
    /// The face of `family` in the font file (or collection) at `path`.
    pub fn load(path: &Path, family: &str) -> Result<CaptionFont, VisionError> {
        let fail = |reason: String| VisionError::FontFile { path: path.display().to_string(), reason };
        let data = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let faces = ttf_parser::fonts_in_collection(&data).unwrap_or(1);
        let named = |face: &ttf_parser::Face<'_>| {
            face.names().into_iter().any(|n| {
                matches!(n.name_id, ttf_parser::name_id::FAMILY | ttf_parser::name_id::TYPOGRAPHIC_FAMILY)
                    && n.to_string().as_deref() == Some(family)
            })
        };
        let index = (0..faces)
            .find(|&i| ttf_parser::Face::parse(&data, i).is_ok_and(|f| named(&f)))
            .ok_or_else(|| fail(format!("no face named {family:?}")))?;
        let font = FontVec::try_from_vec_and_index(data, index).map_err(|e| fail(e.to_string()))?;
        Ok(CaptionFont { font })
    }

    /// The font at `path` for this process: loaded on first use, then kept
    /// (every render uses the same file). A failed load is not kept: the
    /// next render tries again (a font installed meanwhile is found).
    pub fn shared(path: &Path) -> Result<Arc<CaptionFont>, VisionError> {
        static FONT: Mutex<Option<(PathBuf, Arc<CaptionFont>)>> = Mutex::new(None);
        let mut kept = FONT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((loaded, font)) = kept.as_ref()
            && loaded == path
        {
            return Ok(font.clone());
        }
        let font = Arc::new(CaptionFont::load(path, FAMILY)?);
        *kept = Some((path.to_owned(), font.clone()));
        Ok(font)
    }
}

/// Characters drawn as nothing: joiners, variation selectors (the one after
/// an emoji), zero-width spaces, the byte order mark, and any other control
/// or format character. (A character the font lacks is skipped too, not
/// drawn as a box: Noto Sans CJK has no emoji.)
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}')
        || ('\u{E0100}'..='\u{E01EF}').contains(&c)
}

/// How a caption looks, in pixels of the frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Style {
    /// The font's height (ascent to descent), as a subtitle's font size.
    pub size: f32,
    /// Width of the dark outline around each glyph.
    pub outline: f32,
    /// How far down and right the shadow lies.
    pub shadow: usize,
    /// Space between the frame's bottom edge and the lowest line.
    pub margin_bottom: usize,
}

impl Style {
    /// The look for a `w` x `h` frame: a 22nd of the height (large enough
    /// for a phone), an outline a tenth of that (3 px at least), the lines
    /// centred in the band below the face, a 12th of the height up.
    pub fn for_frame(h: u32) -> Style {
        let size = h / 22;
        Style { size: size as f32, outline: (size / 10).max(3) as f32, shadow: 1, margin_bottom: (h / 12) as usize }
    }
}

/// Colours (RGB) and opacities of the caption's layers.
const FILL: [f32; 3] = [255.0, 255.0, 255.0];
const OUTLINE: [f32; 3] = [32.0, 32.0, 32.0];
const SHADOW_OPACITY: f32 = 0.5;

/// A caption ready to blend: the yuv420p values it puts in its box of the
/// frame and how much each covers (0-255). The box's corner and size are
/// even, so that it covers whole chroma samples.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    x: usize,
    y: usize,
    w: usize,
    h: usize,
    luma: Vec<u8>,
    luma_alpha: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
    chroma_alpha: Vec<u8>,
}

impl Overlay {
    /// `lines` (already broken to fit) centred at the bottom of a
    /// `frame_w` x `frame_h` frame. Nothing to draw gives an empty overlay.
    pub fn draw(font: &CaptionFont, lines: &[String], frame_w: usize, frame_h: usize, style: Style) -> Overlay {
        // Whole chroma samples only (the render's frames are even anyway).
        let (frame_w, frame_h) = (frame_w & !1, frame_h & !1);
        let scaled = font.font.as_scaled(PxScale::from(style.size));
        let line_h = scaled.height();
        // Each line's glyphs at their pen positions, and its width.
        let laid: Vec<(Vec<(ab_glyph::GlyphId, f32)>, f32)> = lines
            .iter()
            .map(|line| {
                let (mut pen, mut prev, mut glyphs) = (0.0f32, None, Vec::new());
                for c in line.chars().filter(|&c| !is_invisible(c)) {
                    let id = scaled.glyph_id(c);
                    if id.0 == 0 {
                        continue; // Not in the font: nothing rather than a box.
                    }
                    if let Some(p) = prev {
                        pen += scaled.kern(p, id);
                    }
                    glyphs.push((id, pen));
                    pen += scaled.h_advance(id);
                    prev = Some(id);
                }
                (glyphs, pen)
            })
            .collect();
        if laid.iter().all(|(g, _)| g.is_empty()) {
            return Overlay::default();
        }
        // The canvas: the text block with room for the outline and shadow,
        // clipped to the frame, its corner and size even.
        let pad = style.outline.ceil() as usize + style.shadow + 2;
        let block_w = laid.iter().map(|(_, w)| *w).fold(0.0, f32::max).ceil() as usize;
        let block_h = (line_h * lines.len() as f32).ceil() as usize;
        let top = frame_h.saturating_sub(style.margin_bottom + block_h + pad) & !1;
        let left = (frame_w.saturating_sub(block_w) / 2).saturating_sub(pad) & !1;
        let w = (((block_w + 2 * pad + 1) & !1).min(frame_w - left)) & !1;
        let h = (((block_h + 2 * pad + 1) & !1).min(frame_h - top)) & !1;
        if w == 0 || h == 0 {
            return Overlay::default();
        }
        // Glyph coverage in canvas coordinates.
        let mut fill = vec![0f32; w * h];
        let block_top = frame_h.saturating_sub(style.margin_bottom) as f32 - line_h * lines.len() as f32;
        for (k, (glyphs, line_w)) in laid.iter().enumerate() {
            let x0 = (frame_w as f32 - line_w) / 2.0 - left as f32;
            let baseline = block_top + line_h * k as f32 + scaled.ascent() - top as f32;
            for &(id, pen) in glyphs {
                let glyph = id.with_scale_and_position(style.size, point(x0 + pen, baseline));
                let Some(outlined) = font.font.outline_glyph(glyph) else { continue };
                let b = outlined.px_bounds();
                outlined.draw(|gx, gy, c| {
                    let (x, y) = (b.min.x as i64 + i64::from(gx), b.min.y as i64 + i64::from(gy));
                    if (0..w as i64).contains(&x) && (0..h as i64).contains(&y) {
                        let at = y as usize * w + x as usize;
                        // The rasterizer's running sums leave a glyph's
                        // inside a hair under 1: snapped, so that the
                        // outline is spread from edge pixels only.
                        let v = fill[at] + c;
                        fill[at] = if v > 0.996 { 1.0 } else { v };
                    }
                });
            }
        }
        let outline = dilate(&fill, w, h, style.outline);
        let shadow = shifted(&outline, w, h, style.shadow);
        // The layers one over the other (shadow, outline, fill): colour
        // and coverage per pixel.
        let mut rgb = vec![[0f32; 3]; w * h];
        let mut alpha = vec![0f32; w * h];
        for i in 0..w * h {
            let mut c = [0f32; 3];
            let mut a = shadow[i] * SHADOW_OPACITY;
            for (colour, cover) in [(OUTLINE, outline[i]), (FILL, fill[i])] {
                for ch in 0..3 {
                    c[ch] = colour[ch] * cover + c[ch] * (1.0 - cover);
                }
                a = cover + a * (1.0 - cover);
            }
            // `c` is premultiplied by `a` (the shadow is black).
            rgb[i] = c;
            alpha[i] = a;
        }
        let mut o = Overlay {
            x: left,
            y: top,
            w,
            h,
            luma: vec![0; w * h],
            luma_alpha: vec![0; w * h],
            u: vec![0; w * h / 4],
            v: vec![0; w * h / 4],
            chroma_alpha: vec![0; w * h / 4],
        };
        let straight = |c: [f32; 3], a: f32| if a > 0.0 { c.map(|v| v / a) } else { [0.0; 3] };
        for i in 0..w * h {
            let [r, g, b] = straight(rgb[i], alpha[i]);
            o.luma[i] = super::zoom::luma(r, g, b);
            o.luma_alpha[i] = (alpha[i] * 255.0).round() as u8;
        }
        for cy in 0..h / 2 {
            for cx in 0..w / 2 {
                let (mut c, mut a) = ([0f32; 3], 0f32);
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let i = (2 * cy + dy) * w + 2 * cx + dx;
                    for ch in 0..3 {
                        c[ch] += rgb[i][ch];
                    }
                    a += alpha[i];
                }
                let [r, g, b] = straight(c, a);
                let at = cy * (w / 2) + cx;
                (o.u[at], o.v[at]) = super::zoom::chroma(r, g, b);
                o.chroma_alpha[at] = (a / 4.0 * 255.0).round() as u8;
            }
        }
        o
    }

    /// Whether there is nothing to blend.
    pub fn is_empty(&self) -> bool {
        self.w == 0 || self.h == 0
    }

    /// Blend into one yuv420p frame of `frame_w` x `frame_h` (even sizes,
    /// the size the overlay was drawn for).
    pub fn blend(&self, frame: &mut [u8], frame_w: usize, frame_h: usize) {
        if self.w < 2 || self.h < 2 || frame.len() < frame_w * frame_h * 3 / 2 {
            return;
        }
        let (luma, chroma) = frame.split_at_mut(frame_w * frame_h);
        let (u, v) = chroma.split_at_mut(frame_w * frame_h / 4);
        blend_plane(luma, frame_w, (self.x, self.y), self.w, &self.luma, &self.luma_alpha);
        let corner = (self.x / 2, self.y / 2);
        blend_plane(u, frame_w / 2, corner, self.w / 2, &self.u, &self.chroma_alpha);
        blend_plane(v, frame_w / 2, corner, self.w / 2, &self.v, &self.chroma_alpha);
    }
}

/// `plane[y][x] = value * a + plane * (1 - a)` over the box at `corner`,
/// `w` wide, in a plane of `stride` bytes a row.
fn blend_plane(plane: &mut [u8], stride: usize, corner: (usize, usize), w: usize, value: &[u8], alpha: &[u8]) {
    for (row, (vals, alphas)) in value.chunks_exact(w).zip(alpha.chunks_exact(w)).enumerate() {
        let start = (corner.1 + row) * stride + corner.0;
        let Some(dst) = plane.get_mut(start..start + w) else { return };
        for ((d, &v), &a) in dst.iter_mut().zip(vals).zip(alphas) {
            if a != 0 {
                let (a, v, p) = (u32::from(a), u32::from(v), u32::from(*d));
                *d = ((v * a + p * (255 - a) + 127) / 255) as u8;
            }
        }
    }
}

/// The coverage grown by `r` pixels all round (a round pen, soft at its
/// edge): each pixel takes the most of any covered pixel near it, less as
/// it lies farther than `r` (a covered pixel's own edge is half a pixel
/// beyond its centre, so the pen's edge is `r + 0.5` from it). Only pixels at the edge of the coverage are
/// spread (inside, the coverage already is 1).
fn dilate(cover: &[f32], w: usize, h: usize, r: f32) -> Vec<f32> {
    let mut out = cover.to_vec();
    let reach = r.ceil() as i64 + 1;
    let span = (2 * reach + 1) as usize;
    // The pen, row by row: the weight at each horizontal offset.
    let pen: Vec<(i64, Vec<f32>)> = (-reach..=reach)
        .map(|dy| {
            let row = (-reach..=reach)
                .map(|dx| (r + 1.0 - ((dx * dx + dy * dy) as f32).sqrt()).clamp(0.0, 1.0))
                .collect::<Vec<f32>>();
            (dy, row)
        })
        .filter(|(_, row)| row.iter().any(|&v| v > 0.0))
        .collect();
    let full = |x: i64, y: i64| -> bool {
        (0..w as i64).contains(&x) && (0..h as i64).contains(&y) && cover[y as usize * w + x as usize] >= 1.0
    };
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let c = cover[y as usize * w + x as usize];
            if c <= 0.0 || (c >= 1.0 && full(x - 1, y) && full(x + 1, y) && full(x, y - 1) && full(x, y + 1)) {
                continue;
            }
            // The pen's rows as contiguous runs, clipped to the canvas.
            let x0 = x - reach;
            let lo = (-x0).max(0) as usize;
            let hi = ((w as i64 - x0).max(0) as usize).min(span);
            for (dy, weights) in &pen {
                let py = y + dy;
                if lo >= hi || !(0..h as i64).contains(&py) {
                    continue;
                }
                let start = py as usize * w + (x0 + lo as i64) as usize;
                for (o, &wt) in out[start..start + hi - lo].iter_mut().zip(&weights[lo..hi]) {
                    *o = o.max(c * wt);
                }
            }
        }
    }
    out
}

/// The coverage moved `d` pixels down and right.
fn shifted(cover: &[f32], w: usize, h: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0f32; w * h];
    for y in d..h {
        for x in d..w {
            out[y * w + x] = cover[(y - d) * w + x - d];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn font() -> Arc<CaptionFont> {
        CaptionFont::shared(Path::new(DEFAULT_FONT)).expect("fonts-noto-cjk is installed")
    }

    /// Luma of a grey frame with `lines` blended in, and the overlay.
    fn drawn(lines: &[&str], w: usize, h: usize) -> (Vec<u8>, Overlay) {
        let lines: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        let o = Overlay::draw(&font(), &lines, w, h, Style::for_frame(h as u32));
        let mut frame = vec![128u8; w * h * 3 / 2];
        o.blend(&mut frame, w, h);
        (frame, o)
    }

    #[test]
    fn the_japanese_face_is_found_in_the_collection() {
        let f = font();
        assert_ne!(f.font.glyph_id('誕').0, 0, "kanji");
        assert_ne!(f.font.glyph_id('ア').0, 0, "kana");
        assert_ne!(f.font.glyph_id('A').0, 0, "Latin");
        let missing = CaptionFont::load(Path::new(DEFAULT_FONT), "No Such Family");
        assert!(matches!(missing, Err(VisionError::FontFile { .. })));
        assert!(matches!(CaptionFont::load(Path::new("/nonexistent.ttc"), FAMILY), Err(VisionError::FontFile { .. })));
    }

    /// White letters with a dark edge, in the band at the bottom, centred,
    /// and nothing outside the overlay's box touched.
    #[test]
    fn a_caption_is_white_with_a_dark_outline_at_the_bottom_centre() {
        let (w, h) = (512, 910);
        let (frame, o) = drawn(&["お誕生日おめでとう", "ございます。"], w, h);
        let luma = &frame[..w * h];
        let white: Vec<(usize, usize)> = (0..w * h).filter(|&i| luma[i] >= 230).map(|i| (i % w, i / w)).collect();
        let dark = (0..w * h).filter(|&i| luma[i] <= 50).count();
        assert!(white.len() > 2000, "white fill: {} px", white.len());
        assert!(dark > white.len() / 3, "outline: {dark} dark px for {} white", white.len());
        let (min_y, max_y) = (white.iter().map(|p| p.1).min().unwrap(), white.iter().map(|p| p.1).max().unwrap());
        let (min_x, max_x) = (white.iter().map(|p| p.0).min().unwrap(), white.iter().map(|p| p.0).max().unwrap());
        let style = Style::for_frame(h as u32);
        assert!(max_y < h - style.margin_bottom && max_y > h - style.margin_bottom - style.size as usize, "{max_y}");
        assert!(min_y > h * 3 / 4, "two lines in the bottom quarter: from {min_y}");
        let centre = (min_x + max_x) / 2;
        assert!(centre.abs_diff(w / 2) <= 8, "centred: {min_x}..{max_x}");
        // Untouched outside the box; chroma of white and dark grey stays grey.
        for (i, &p) in luma.iter().enumerate() {
            let (x, y) = (i % w, i / w);
            if x < o.x || x >= o.x + o.w || y < o.y || y >= o.y + o.h {
                assert_eq!(p, 128, "({x}, {y}) outside the overlay");
            }
        }
        assert!(frame[w * h..].iter().all(|&c| c.abs_diff(128) <= 1), "no colour in a white/grey caption");
    }

    /// Each line is as wide as its text: twice the characters, about twice
    /// as wide; and the same text twice as large at twice the frame size.
    #[test]
    fn lines_are_laid_out_by_the_glyphs_advances() {
        let width = |lines: &[&str], w: usize, h: usize| {
            let (frame, _) = drawn(lines, w, h);
            let xs: Vec<usize> = (0..w * h).filter(|&i| frame[i] >= 230).map(|i| i % w).collect();
            xs.iter().max().unwrap() - xs.iter().min().unwrap()
        };
        let one = width(&["ありがとう"], 512, 910);
        let two = width(&["ありがとうありがとう"], 512, 910);
        assert!((1.85..2.15).contains(&(two as f64 / one as f64)), "{one} -> {two}");
        let big = width(&["ありがとう"], 1080, 1920);
        assert!((1.9..2.4).contains(&(big as f64 / one as f64)), "{one} -> {big} at 1080x1920");
        let (_, empty) = drawn(&[], 512, 910);
        assert!(empty.is_empty());
        assert_eq!(width(&["あり\tがとう\u{7}"], 512, 910), one, "control characters take no room");
        // Emoji (not in the font) and the invisible characters around them
        // add nothing: no box.
        assert_eq!(width(&["ありがとう\u{1F382}\u{2764}\u{FE0F}\u{200D}"], 512, 910), one, "emoji take no room");
        let (frame, o) = drawn(&["\u{1F600}\u{FE0F}"], 512, 910);
        assert!(frame[..512 * 910].iter().all(|&p| p == 128), "an emoji alone draws nothing: {o:?}");
        // A line wider than the frame is clipped to it, not a panic.
        let (frame, o) = drawn(&["Supercalifragilisticexpialidocious-and-then-some-more-letters"], 512, 910);
        assert!(o.w <= 512 && frame.len() == 512 * 910 * 3 / 2);
    }

    #[test]
    fn dilation_grows_a_dot_into_a_round_pen() {
        let (w, h) = (21, 21);
        let mut dot = vec![0f32; w * h];
        dot[10 * w + 10] = 1.0;
        let grown = dilate(&dot, w, h, 4.0);
        assert_eq!(grown[10 * w + 14], 1.0, "4 px right");
        assert_eq!(grown[6 * w + 10], 1.0, "4 px up");
        assert_eq!(grown[10 * w + 16], 0.0, "6 px right");
        assert!(
            (grown[10 * w + 15] - 0.0).abs() < 1e-6 && grown[7 * w + 13] > 0.7,
            "{:?}",
            &grown[7 * w + 10..7 * w + 16]
        );
        assert!(grown[(10 - 4) * w + 14] < 0.1, "the corner of the square is not in a round pen");
        assert_eq!(shifted(&dot, w, h, 1)[11 * w + 11], 1.0);
    }
}
