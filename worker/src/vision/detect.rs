//! Faces found by the SeetaFace frontal detector (`rustface`, model from
//! the crate's own release, fetched by scripts/assets.sh into
//! `data/models/`), and a person box built around each face.

use std::path::Path;
use std::sync::OnceLock;

use image::RgbImage;

use super::VisionError;
use super::resize::Filter;

/// A box in photo pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

impl Rect {
    pub fn area(&self) -> u64 {
        u64::from(self.w) * u64::from(self.h)
    }
}

/// One person: the detected face and the box around head and upper body.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Person {
    pub face: Rect,
    pub body: Rect,
    pub score: f64,
}

static MODEL: OnceLock<Result<rustface::Model, String>> = OnceLock::new();

/// The detector model file in the data directory.
pub fn model_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("models/seeta_fd_frontal_v1.0.bin")
}

fn model(path: &Path) -> Result<rustface::Model, VisionError> {
    MODEL
        .get_or_init(|| {
            let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
            rustface::read_model(std::io::BufReader::new(file)).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|reason| VisionError::ModelFile { path: path.display().to_string(), reason })
}

/// Longest side the detector looks at: larger photos are scaled down first
/// (faces of a portrait stay far above the 20 px minimum; time stays flat).
const DETECT_SIDE: u32 = 800;
/// Detector score below which a window is not a face (rustface's examples
/// use 2.0; higher is stricter).
const SCORE_THRESHOLD: f64 = 2.0;

/// The people in `photo`, left to right. Blocking.
pub fn people(model_file: &Path, photo: &RgbImage) -> Result<Vec<Person>, VisionError> {
    let (w, h) = photo.dimensions();
    let scale = (DETECT_SIDE as f64 / w.max(h) as f64).min(1.0);
    let gray = image::imageops::grayscale(photo);
    let gray = if scale < 1.0 {
        let (sw, sh) = (((w as f64) * scale).round() as u32, ((h as f64) * scale).round() as u32);
        super::resize::gray(&gray, sw.max(1), sh.max(1), Filter::Triangle)
    } else {
        gray
    };
    let mut detector = rustface::create_detector_with_model(model(model_file)?);
    detector.set_min_face_size(20);
    detector.set_score_thresh(SCORE_THRESHOLD);
    detector.set_pyramid_scale_factor(0.8);
    detector.set_slide_window_step(4, 4);
    let faces = detector.detect(&rustface::ImageData::new(&gray, gray.width(), gray.height()));
    let mut people: Vec<Person> = faces
        .iter()
        .filter_map(|f| {
            let b = f.bbox();
            let to = |v: f64| (v / scale).round().max(0.0);
            let x = to(b.x() as f64).min(w as f64 - 1.0) as u32;
            let y = to(b.y() as f64).min(h as f64 - 1.0) as u32;
            let fw = (to(b.width() as f64) as u32).min(w - x);
            let fh = (to(b.height() as f64) as u32).min(h - y);
            (fw > 0 && fh > 0).then(|| {
                let face = Rect { x, y, w: fw, h: fh };
                Person { face, body: body_box(face, w, h), score: f.score() }
            })
        })
        .collect();
    people.sort_by_key(|p| p.face.x);
    Ok(people)
}

/// The person box around a face: hair above, shoulders to the sides and the
/// upper body below (proportions of a head-and-shoulders portrait),
/// clipped to the photo.
pub fn body_box(face: Rect, photo_w: u32, photo_h: u32) -> Rect {
    let (fx, fy, fw, fh) = (face.x as f64, face.y as f64, face.w as f64, face.h as f64);
    let cx = fx + fw / 2.0;
    let left = (cx - 2.0 * fw).max(0.0);
    let right = (cx + 2.0 * fw).min(photo_w as f64);
    let top = (fy - 0.8 * fh).max(0.0);
    let bottom = (fy + 6.5 * fh).min(photo_h as f64);
    Rect { x: left as u32, y: top as u32, w: ((right - left) as u32).max(1), h: ((bottom - top) as u32).max(1) }
}

/// Which person a job uses: `asked` if given, else the one with the largest face.
pub fn choose(people: &[Person], asked: Option<u32>) -> Result<usize, VisionError> {
    if people.is_empty() {
        return Err(VisionError::NoPerson);
    }
    match asked {
        Some(i) if (i as usize) < people.len() => Ok(i as usize),
        Some(i) => Err(VisionError::NoSuchPerson { asked: i, found: people.len() }),
        None => Ok(people.iter().enumerate().max_by_key(|(_, p)| p.face.area()).map(|(i, _)| i).unwrap_or(0)),
    }
}

/// The part of `photo` inside `r`.
pub fn crop(photo: &RgbImage, r: Rect) -> RgbImage {
    image::imageops::crop_imm(photo, r.x, r.y, r.w, r.h).to_image()
}

/// A small preview of a person's crop (256 pixels wide at most), for the
/// person picker.
pub fn preview(crop: &RgbImage) -> RgbImage {
    let pw = 256.min(crop.width());
    let ph = ((crop.height() as u64 * pw as u64) / crop.width().max(1) as u64).max(1) as u32;
    super::resize::rgb(crop, pw, ph, Filter::Triangle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_box_grows_around_the_face_and_stays_inside() {
        let b = body_box(Rect { x: 200, y: 100, w: 100, h: 100 }, 1000, 2000);
        assert_eq!(b, Rect { x: 50, y: 20, w: 400, h: 730 });
        let edge = body_box(Rect { x: 0, y: 0, w: 100, h: 100 }, 300, 300);
        assert_eq!((edge.x, edge.y), (0, 0));
        assert!(edge.x + edge.w <= 300 && edge.y + edge.h <= 300);
    }

    #[test]
    fn the_largest_face_is_chosen_unless_one_is_asked_for() {
        let p = |x, w| Person { face: Rect { x, y: 0, w, h: w }, body: Rect { x, y: 0, w, h: w }, score: 5.0 };
        let people = [p(0, 50), p(100, 90), p(300, 60)];
        assert_eq!(choose(&people, None).unwrap(), 1);
        assert_eq!(choose(&people, Some(2)).unwrap(), 2);
        assert!(matches!(choose(&people, Some(3)), Err(VisionError::NoSuchPerson { asked: 3, found: 3 })));
        assert!(matches!(choose(&[], None), Err(VisionError::NoPerson)));
    }
}
