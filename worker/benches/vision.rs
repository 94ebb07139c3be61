//! Face detection and background removal on a real photo, per model:
//! `cargo bench -p worker --bench vision [-- PHOTO]` (default: astronaut.png
//! from the asset cache). Prints the model load time and per-run times.

use std::path::{Path, PathBuf};
use std::time::Instant;

use worker::vision::{detect, load_upright, segment};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let data = root.join("data");
    let photo_path = std::env::args().skip(1).find(|a| !a.starts_with('-')).map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("TAYORI_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".cache"))
            .join("fixtures/astronaut.png")
    });
    let t = Instant::now();
    let photo = load_upright(&photo_path).expect("photo");
    println!("decode {}x{}: {:.1} ms", photo.width(), photo.height(), ms(t));
    let mut people = Vec::new();
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        people = detect::people(&detect::model_path(&data), &photo).expect("detect");
        times.push(ms(t));
    }
    println!("detect: {} people, runs {}", people.len(), list(&times));
    let Some(person) = people.first() else { return };
    let crop = detect::crop(&photo, person.body);
    let only = std::env::var("MODEL").ok();
    for model in [segment::Model::U2netp, segment::Model::IsNet]
        .into_iter()
        .filter(|m| only.as_ref().is_none_or(|o| o.parse::<segment::Model>().ok() == Some(*m)))
    {
        let t = Instant::now();
        let seg = segment::segmenter(&data, model).expect("model");
        let load = ms(t);
        for &side in model.sides() {
            let times: Vec<f64> = (0..6)
                .map(|_| {
                    let t = Instant::now();
                    seg.mask_shown(&crop, side).expect("mask");
                    ms(t)
                })
                .collect();
            println!(
                "{model:?} at {side} on a {}x{} crop: load {load:.0} ms, runs {}",
                crop.width(),
                crop.height(),
                list(&times)
            );
        }
    }
    // The render's slow zoom: 390 frames (13 s) at 1080x1920, resampled only.
    let frame = image::RgbImage::from_fn(1080, 1920, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
    let planes = worker::vision::zoom::Planes::from_rgb(&frame);
    let t = Instant::now();
    let mut buf = Vec::with_capacity(planes.frame_len());
    for n in 0..390 {
        buf.clear();
        planes.zoomed(1.0 + 0.06 * n as f64 / 389.0, 0.5, 0.4, &mut buf);
    }
    println!("zoom frames 1080x1920: 390 in {:.0} ms ({:.2} ms each)", ms(t), ms(t) / 390.0);
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let rss = status.lines().find(|l| l.starts_with("VmHWM")).unwrap_or("");
        println!("peak resident: {}", rss.trim_start_matches("VmHWM:").trim());
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn list(v: &[f64]) -> String {
    v.iter().map(|x| format!("{x:.0} ms")).collect::<Vec<_>>().join(", ")
}
