//! Seeing the person in the photo: decoding with EXIF orientation, face
//! detection and person boxes (`detect`), background removal with a
//! segmentation model (`segment`), and composing the portrait frame
//! (`compose`). All of it is CPU work: call it from the blocking pool.

pub mod caption;
pub mod compose;
pub mod detect;
pub mod resize;
pub mod segment;
pub mod zoom;

use std::io::BufReader;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::onnx::OnnxError;

#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error("the photo could not be decoded: {0}")]
    Decode(String),
    #[error("no person was found in the photo")]
    NoPerson,
    #[error("person {asked} was asked for but the photo shows {found}")]
    NoSuchPerson { asked: u32, found: usize },
    #[error("model file {path} is missing or unreadable: {reason}")]
    ModelFile { path: String, reason: String },
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("image could not be written: {0}")]
    Encode(String),
    #[error("caption font {path} is missing or unreadable: {reason}")]
    FontFile { path: String, reason: String },
}

/// Largest photo decoded (pixels): the gateway refuses bigger ones before
/// this, and this keeps a worker safe from any that get through.
pub const MAX_PIXELS: u64 = 50_000_000;

/// Decode the photo as upright RGB: the EXIF orientation (JPEG, PNG, WebP)
/// is applied, so a phone's portrait shot stands up.
pub fn load_upright(path: &Path) -> Result<RgbImage, VisionError> {
    let bad = |e: &dyn std::fmt::Display| VisionError::Decode(e.to_string());
    let file = std::fs::File::open(path).map_err(|e| bad(&e))?;
    let mut reader = ImageReader::new(BufReader::new(file)).with_guessed_format().map_err(|e| bad(&e))?;
    // Only the photo formats the gateway accepts are opened (by content).
    if !matches!(reader.format(), Some(image::ImageFormat::Jpeg | image::ImageFormat::Png | image::ImageFormat::WebP)) {
        return Err(VisionError::Decode("not a JPEG, PNG or WebP image".into()));
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 4);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| bad(&e))?;
    let (w, h) = decoder.dimensions();
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(VisionError::Decode(format!("{w}x{h} is too many pixels")));
    }
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| bad(&e))?;
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// Save as JPEG at quality `q`.
pub fn save_jpeg(img: &RgbImage, path: &Path, q: u8) -> Result<(), VisionError> {
    let enc = |e: &dyn std::fmt::Display| VisionError::Encode(format!("{}: {e}", path.display()));
    let file = std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| enc(&e))?);
    image::codecs::jpeg::JpegEncoder::new_with_quality(file, q).encode_image(img).map_err(|e| enc(&e))
}

/// Save as PNG with fast compression (these files are intermediate).
pub fn save_png<P, C>(img: &image::ImageBuffer<P, C>, path: &Path) -> Result<(), VisionError>
where
    P: image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
    C: std::ops::Deref<Target = [P::Subpixel]>,
{
    use image::ImageEncoder;
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let enc = |e: &dyn std::fmt::Display| VisionError::Encode(format!("{}: {e}", path.display()));
    let file = std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| enc(&e))?);
    PngEncoder::new_with_quality(file, CompressionType::Fast, FilterType::Sub)
        .write_image(image::EncodableLayout::as_bytes(&**img), img.width(), img.height(), P::COLOR_TYPE)
        .map_err(|e| enc(&e))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use super::*;

    pub fn data_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data")
    }

    pub fn fixture(name: &str) -> PathBuf {
        let cache = std::env::var_os("TAYORI_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache"));
        let p = cache.join("fixtures").join(name);
        assert!(p.is_file(), "{} is missing: run scripts/assets.sh first", p.display());
        p
    }

    /// Mean of `mask` over a box, 0-1.
    fn mean_alpha(mask: &image::GrayImage, x: u32, y: u32, w: u32, h: u32) -> f64 {
        let view = image::imageops::crop_imm(mask, x, y, w, h);
        let px: Vec<u8> = view.to_image().pixels().map(|p| p[0]).collect();
        px.iter().map(|&v| f64::from(v)).sum::<f64>() / px.len() as f64 / 255.0
    }

    fn cut_out_astronaut(model: segment::Model) {
        let data = data_dir();
        let photo = load_upright(&fixture("astronaut.png")).unwrap();
        let t0 = std::time::Instant::now();
        let people = detect::people(&detect::model_path(&data), &photo).unwrap();
        let t_detect = t0.elapsed();
        assert_eq!(people.len(), 1, "one person in astronaut.png: {people:?}");
        let person = people[0];
        let crop = detect::crop(&photo, person.body);
        let seg = segment::segmenter(&data, model).unwrap();
        let t1 = std::time::Instant::now();
        let mask = seg.mask(&crop).unwrap();
        let t_seg = t1.elapsed();
        // The face box, in crop coordinates.
        let f = person.face;
        let (fx, fy) = (f.x - person.body.x, f.y - person.body.y);
        let face = mean_alpha(&mask, fx, fy, f.w, f.h);
        let c = (crop.width() / 10).max(4);
        let cw = crop.width();
        let corners = [(0, 0), (cw - c, 0)].map(|(x, y)| mean_alpha(&mask, x, y, c, c));
        // The whole photo: the person kept, the background gone at the photo's top corners.
        let full = seg.mask(&photo).unwrap();
        let s = photo.width() / 10;
        let top_corners = [(0, 0), (photo.width() - s, 0)].map(|(x, y)| mean_alpha(&full, x, y, s, s));
        let soft = mask.pixels().filter(|p| (20..235).contains(&p[0])).count();
        println!(
            "{model:?}: detect {:.0} ms, segment {:.0} ms; person {:?}; face alpha {face:.3}, crop top corners {corners:?}, photo top corners {top_corners:?}, soft pixels {soft}",
            t_detect.as_secs_f64() * 1000.0,
            t_seg.as_secs_f64() * 1000.0,
            person
        );
        assert!(face > 0.9, "face covered: {face}");
        assert!(corners.iter().all(|&a| a < 0.1), "crop corners transparent: {corners:?}");
        assert!(top_corners.iter().all(|&a| a < 0.1), "photo corners transparent: {top_corners:?}");
        assert!(soft > 100, "edges are soft, not a hard threshold ({soft} partial pixels)");
    }

    #[test]
    fn isnet_cuts_out_the_astronaut() {
        cut_out_astronaut(segment::Model::IsNet);
    }

    #[test]
    fn u2netp_cuts_out_the_astronaut() {
        cut_out_astronaut(segment::Model::U2netp);
    }

    /// IS-Net at [`segment::REDUCED_SIDE`] against 1024 (the longer side;
    /// the crop's proportions kept), as a 512x910 video shows the cut-out
    /// (both masks scaled to the person's size in that frame).
    /// - The astronaut: the crop the worker makes, and the top of the photo
    ///   upscaled three times (a phone photo's size): the masks agree on at
    ///   least 95 % (IoU of alpha > 0.5; seen 96.0 and 99.2 %). Where they
    ///   differ it is the helmet at the crop's edge, which 1024 keeps more
    ///   of (squashed square, before issue 15: 99.4-99.9 %).
    /// - The cameraman, a harder photo: they agree on 90 % (seen 93 %). Both
    ///   keep his face and coat and drop the sky and the grass.
    #[test]
    fn isnet_at_896_cuts_out_what_1024_does() {
        let data = data_dir();
        let photo = load_upright(&fixture("astronaut.png")).unwrap();
        let people = detect::people(&detect::model_path(&data), &photo).unwrap();
        let crop = detect::crop(&photo, people[0].body);
        let big = image::imageops::resize(&photo, 1536, 1536, image::imageops::FilterType::Lanczos3);
        let top = image::imageops::crop_imm(&big, 200, 0, 1100, 1536).to_image();
        let camera = load_upright(&fixture("camera.png")).unwrap();
        let seg = segment::segmenter(&data, segment::Model::IsNet).unwrap();
        for (name, img, least_iou) in [("crop", &crop, 0.95), ("3x top", &top, 0.95), ("cameraman", &camera, 0.9)] {
            let (_, _, pw, ph) = compose::placement(img.width(), img.height(), 512, 910);
            assert!(pw.max(ph) <= segment::REDUCED_SIDE);
            assert_eq!(segment::Model::IsNet.side_for(pw.max(ph)), segment::REDUCED_SIDE);
            let (full, reduced) = (seg.mask(img).unwrap(), seg.mask_shown(img, pw.max(ph)).unwrap());
            let segment::Agreement { iou, mean_difference: mean, covered } =
                segment::agreement(&full, &reduced, pw, ph);
            println!("{name}: shown {pw}x{ph}, IoU {iou:.4}, mean difference {mean:.2} of 255");
            assert!(covered > 0.2, "{name}: a person was found ({covered:.2} of the picture)");
            assert!(iou >= least_iou, "{name}: IoU {iou}");
            assert!(mean < 12.0, "{name}: mean difference {mean}");
            if name == "crop" {
                for (side, m) in [(1024, &full), (segment::REDUCED_SIDE, &reduced)] {
                    let f = people[0].face;
                    let face = mean_alpha(m, f.x - people[0].body.x, f.y - people[0].body.y, f.w, f.h);
                    let suit = mean_alpha(m, 60, 300, 80, 80);
                    let corner = mean_alpha(m, 0, 0, 40, 40);
                    println!("astronaut at {side}: face {face:.3}, suit {suit:.3}, top left {corner:.3}");
                    assert!(face > 0.9 && suit > 0.9, "at {side}: face {face}, suit {suit}");
                    assert!(corner < 0.05, "at {side}: top left corner {corner}");
                }
            }
            if name == "cameraman" {
                for (side, m) in [(1024, &full), (segment::REDUCED_SIDE, &reduced)] {
                    let face = mean_alpha(m, 200, 70, 40, 50);
                    let coat = mean_alpha(m, 20, 150, 60, 250);
                    let (sky, grass) = (mean_alpha(m, 400, 0, 112, 60), mean_alpha(m, 420, 420, 92, 92));
                    println!("cameraman at {side}: face {face:.3}, coat {coat:.3}, sky {sky:.3}, grass {grass:.3}");
                    assert!(face > 0.9 && coat > 0.8, "at {side}: face {face}, coat {coat}");
                    assert!(sky < 0.05 && grass < 0.05, "at {side}: sky {sky}, grass {grass}");
                }
            }
        }
    }

    #[test]
    fn coffee_has_no_person() {
        let photo = load_upright(&fixture("coffee.png")).unwrap();
        let people = detect::people(&detect::model_path(&data_dir()), &photo).unwrap();
        assert!(people.is_empty(), "{people:?}");
        assert!(matches!(detect::choose(&people, None), Err(VisionError::NoPerson)));
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A 4x2 JPEG tagged "rotate 90° clockwise" (orientation 6) decodes as 2x4.
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.jpg");
        save_jpeg(&RgbImage::from_pixel(4, 2, image::Rgb([200, 10, 10])), &plain, 90).unwrap();
        let bytes = std::fs::read(&plain).unwrap();
        // APP1 Exif segment: big-endian TIFF, one IFD entry 0x0112 = 6.
        let mut tiff = b"MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x06\0\0\0\0\0\0".to_vec();
        let mut app1 = b"Exif\0\0".to_vec();
        app1.append(&mut tiff);
        let len = (app1.len() + 2) as u16;
        let mut tagged = vec![0xFF, 0xD8, 0xFF, 0xE1];
        tagged.extend(len.to_be_bytes());
        tagged.extend(app1);
        tagged.extend(&bytes[2..]);
        let rotated = dir.path().join("rotated.jpg");
        std::fs::write(&rotated, tagged).unwrap();
        assert_eq!(load_upright(&plain).unwrap().dimensions(), (4, 2));
        assert_eq!(load_upright(&rotated).unwrap().dimensions(), (2, 4));
    }
}
