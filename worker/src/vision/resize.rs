//! Image resizing with SIMD convolution (the `fast_image_resize` crate), for
//! the resizes on a job's critical path: the cut-out scaled into the frame,
//! the model's input, the mask back to the photo, the thumbnail. The `image`
//! crate's own resize (scalar, f32) took 64-72 ms to scale a 400x500
//! cut-out to 787x1574 with Catmull-Rom, the largest part of making a
//! 1080x1920 frame.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{GrayImage, ImageBuffer, Pixel, RgbImage, RgbaImage};

/// The filters used here.
#[derive(Debug, Clone, Copy)]
pub enum Filter {
    /// Triangle (bilinear; widened when shrinking, as `image`'s Triangle).
    Triangle,
    /// Catmull-Rom (bicubic, sharper).
    CatmullRom,
}

fn resize<P: Pixel<Subpixel = u8>>(
    img: &ImageBuffer<P, Vec<u8>>,
    w: u32,
    h: u32,
    filter: Filter,
    pixel: PixelType,
) -> ImageBuffer<P, Vec<u8>> {
    if w == 0 || h == 0 || img.width() == 0 || img.height() == 0 {
        return ImageBuffer::new(w, h);
    }
    let src = ImageRef::new(img.width(), img.height(), img.as_raw(), pixel).expect("a buffer of its own size");
    let mut dst = Image::new(w, h, pixel);
    let filter = match filter {
        Filter::Triangle => FilterType::Bilinear,
        Filter::CatmullRom => FilterType::CatmullRom,
    };
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter));
    Resizer::new().resize(&src, &mut dst, &options).expect("same pixel type on both sides");
    ImageBuffer::from_raw(w, h, dst.into_vec()).expect("w*h pixels")
}

/// An RGB image resized to `w` x `h`.
pub fn rgb(img: &RgbImage, w: u32, h: u32, filter: Filter) -> RgbImage {
    resize(img, w, h, filter, PixelType::U8x3)
}

/// An RGBA image resized to `w` x `h` (colours weighted by alpha, so that
/// transparent pixels do not bleed into the edge).
pub fn rgba(img: &RgbaImage, w: u32, h: u32, filter: Filter) -> RgbaImage {
    resize(img, w, h, filter, PixelType::U8x4)
}

/// A grey image (a mask) resized to `w` x `h`.
pub fn gray(img: &GrayImage, w: u32, h: u32, filter: Filter) -> GrayImage {
    resize(img, w, h, filter, PixelType::U8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::imageops::FilterType::Triangle;

    /// The same result as the `image` crate's resize, within rounding (grey
    /// and RGB, Triangle and Catmull-Rom; an opaque RGBA image too, where
    /// weighting by alpha changes nothing).
    #[test]
    fn resizes_like_the_image_crate() {
        // A smooth picture with one hard edge.
        let src = RgbImage::from_fn(400, 500, |x, y| {
            let edge = if x > 200 { 200 } else { 20 };
            image::Rgb([(x * 255 / 400) as u8, (y * 255 / 500) as u8, edge])
        });
        for (w, h) in [(1024, 1024), (787, 1574), (120, 150)] {
            let ours = rgb(&src, w, h, Filter::Triangle);
            let theirs = image::imageops::resize(&src, w, h, image::imageops::FilterType::Triangle);
            let worst = ours.as_raw().iter().zip(theirs.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
            assert!(worst <= 3, "{w}x{h}: largest difference {worst}");
        }
        let grey = image::imageops::grayscale(&src);
        let (ours, theirs) =
            (gray(&grey, 300, 200, Filter::Triangle), image::imageops::resize(&grey, 300, 200, Triangle));
        assert!(ours.as_raw().iter().zip(theirs.as_raw()).all(|(a, b)| a.abs_diff(*b) <= 3));
        let opaque = RgbaImage::from_fn(400, 500, |x, y| {
            let p = src.get_pixel(x, y);
            image::Rgba([p[0], p[1], p[2], 255])
        });
        let ours = rgba(&opaque, 787, 1574, Filter::CatmullRom);
        let theirs = image::imageops::resize(&opaque, 787, 1574, image::imageops::FilterType::CatmullRom);
        let worst = ours.as_raw().iter().zip(theirs.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        assert!(worst <= 3, "Catmull-Rom RGBA: largest difference {worst}");
        assert_eq!(rgb(&src, 0, 10, Filter::Triangle).dimensions(), (0, 10), "an empty size stays empty");
    }

    /// A transparent pixel's colour does not bleed into its opaque
    /// neighbours (colours are weighted by alpha).
    #[test]
    fn transparent_colour_does_not_bleed() {
        let img =
            RgbaImage::from_fn(
                8,
                8,
                |x, _| if x < 4 { image::Rgba([0, 255, 0, 0]) } else { image::Rgba([255, 0, 0, 255]) },
            );
        let big = rgba(&img, 32, 32, Filter::CatmullRom);
        for p in big.pixels().filter(|p| p[3] > 0) {
            assert!(p[1] <= 2, "green from the transparent half shows in {p:?}");
        }
    }
}
