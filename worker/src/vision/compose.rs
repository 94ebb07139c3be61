//! The portrait frame: a background (colour, soft gradient or the photo
//! blurred) with the cut-out person fitted in, standing on the bottom edge.

use image::{Rgb, RgbImage, RgbaImage};
use shared::job::{Background, parse_hex_color};

use super::resize::Filter;

/// Share of the frame's height the person may take (room above for air).
const PERSON_HEIGHT: f64 = 0.82;

fn hex(c: &str) -> [u8; 3] {
    // Validated when the job was made; a bad value falls back to white.
    parse_hex_color(c).unwrap_or([255, 255, 255])
}

/// The background alone, `w` x `h`.
pub fn background(bg: &Background, photo: &RgbImage, w: u32, h: u32) -> RgbImage {
    match bg {
        Background::Color { color } => RgbImage::from_pixel(w, h, Rgb(hex(color))),
        Background::Gradient { top, bottom } => {
            let (a, b) = (hex(top), hex(bottom));
            let mut img = RgbImage::new(w, h);
            for (y, row) in img.rows_mut().enumerate() {
                let t = y as f32 / (h.max(2) - 1) as f32;
                let px =
                    Rgb(std::array::from_fn(|c| (f32::from(a[c]) * (1.0 - t) + f32::from(b[c]) * t).round() as u8));
                row.for_each(|p| *p = px);
            }
            img
        }
        Background::Blur => {
            // Cover the frame at 1/8 size, blur there, scale up: the same
            // look as a wide Gaussian at full size for a fraction of the work.
            let (sw, sh) = ((w / 8).max(1), (h / 8).max(1));
            let scale = (sw as f64 / photo.width() as f64).max(sh as f64 / photo.height() as f64);
            let cw = ((photo.width() as f64 * scale).ceil() as u32).max(sw);
            let ch = ((photo.height() as f64 * scale).ceil() as u32).max(sh);
            let covered = super::resize::rgb(photo, cw, ch, Filter::Triangle);
            let small = image::imageops::crop_imm(&covered, (cw - sw) / 2, (ch - sh) / 2, sw, sh).to_image();
            let blurred = image::imageops::fast_blur(&small, 3.0);
            super::resize::rgb(&blurred, w, h, Filter::Triangle)
        }
    }
}

/// Where the cut-out goes: scaled to fit the width and the allowed height,
/// centred, standing on the bottom edge. Returns (x, y, width, height).
pub fn placement(cut_w: u32, cut_h: u32, w: u32, h: u32) -> (u32, u32, u32, u32) {
    let scale = (w as f64 / cut_w as f64).min(h as f64 * PERSON_HEIGHT / cut_h as f64);
    let (pw, ph) =
        (((cut_w as f64 * scale).round() as u32).clamp(1, w), ((cut_h as f64 * scale).round() as u32).clamp(1, h));
    ((w - pw) / 2, h - ph, pw, ph)
}

/// The frame: `cutout` over `bg`, alpha-blended.
pub fn frame(bg: &Background, photo: &RgbImage, cutout: &RgbaImage, w: u32, h: u32) -> RgbImage {
    let mut out = background(bg, photo, w, h);
    let (x0, y0, pw, ph) = placement(cutout.width(), cutout.height(), w, h);
    let person = super::resize::rgba(cutout, pw, ph, Filter::CatmullRom);
    for (x, y, p) in person.enumerate_pixels() {
        let a = u16::from(p[3]);
        if a == 0 {
            continue;
        }
        let o = out.get_pixel_mut(x0 + x, y0 + y);
        for c in 0..3 {
            o[c] = ((u16::from(p[c]) * a + u16::from(o[c]) * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_person_stands_on_the_bottom_edge_centred() {
        assert_eq!(placement(400, 800, 1080, 1920), (146, 346, 787, 1574));
        let (x, y, pw, ph) = placement(1000, 500, 512, 910);
        assert_eq!((x, pw), (0, 512));
        assert_eq!(y + ph, 910);
    }

    #[test]
    fn backgrounds_fill_the_frame() {
        let photo = RgbImage::from_fn(64, 48, |x, _| Rgb([(x * 4) as u8, 100, 200]));
        let c = background(&Background::Color { color: "#102030".into() }, &photo, 90, 160);
        assert_eq!((c.dimensions(), c.get_pixel(45, 80).0), ((90, 160), [0x10, 0x20, 0x30]));
        let g = background(&Background::Gradient { top: "#000000".into(), bottom: "#FFFFFF".into() }, &photo, 90, 160);
        assert_eq!((g.get_pixel(0, 0).0, g.get_pixel(0, 159).0), ([0; 3], [255; 3]));
        assert!(g.get_pixel(0, 80)[0].abs_diff(128) <= 2);
        let b = background(&Background::Blur, &photo, 90, 160);
        assert_eq!(b.dimensions(), (90, 160));
        assert!(b.pixels().all(|p| p[2].abs_diff(200) <= 2), "blue channel of the photo kept");
    }

    #[test]
    fn transparent_pixels_show_the_background() {
        let photo = RgbImage::new(10, 10);
        let mut cut = RgbaImage::from_pixel(100, 100, image::Rgba([255, 0, 0, 255]));
        for y in 0..100 {
            for x in 0..30 {
                cut.put_pixel(x, y, image::Rgba([255, 0, 0, 0]));
            }
        }
        let f = frame(&Background::Color { color: "#00FF00".into() }, &photo, &cut, 100, 100);
        assert_eq!(f.get_pixel(0, 0).0, [0, 255, 0], "above the person");
        assert_eq!(f.get_pixel(60, 90).0, [255, 0, 0], "the person");
        assert_eq!(f.get_pixel(15, 90).0, [0, 255, 0], "transparent part");
    }
}
