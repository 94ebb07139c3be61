//! Image steps: download the photo, find the people in it, cut the chosen
//! one out with the segmentation model, and compose the portrait frames.
//! The pixel work runs on the blocking pool (see `crate::vision`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{RgbImage, RgbaImage};
use shared::keys::objects;

use super::{Job, PipelineError};
use crate::vision::{self, VisionError, compose, detect, segment};

pub async fn download(j: &Job<'_>) -> Result<PathBuf, PipelineError> {
    let ext = Path::new(&j.job.image_key).extension().and_then(|e| e.to_str()).unwrap_or("img");
    let path = j.path(&format!("original.{ext}"));
    j.storage.get_to_file(&j.job.image_key, &path).await?;
    Ok(path)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VisionError> + Send + 'static,
) -> Result<T, PipelineError> {
    Ok(shared::rt::blocking(f).await??)
}

/// The photo (upright) and the chosen person's crop.
pub struct Found {
    /// Which person (left to right).
    pub n: usize,
    pub photo: Arc<RgbImage>,
    pub crop: Arc<RgbImage>,
}

/// Find every person; write and upload each one's crop and preview; pick
/// the asked-for person or the one with the largest face.
pub async fn detect_person(j: &Job<'_>, original: &Path) -> Result<Found, PipelineError> {
    let original = original.to_owned();
    let model = detect::model_path(j.catalog.data_dir());
    let dir = j.dir.clone();
    let asked = j.job.person_index;
    let (photo, crops, chosen) = blocking(move || {
        let photo = vision::load_upright(&original)?;
        let people = detect::people(&model, &photo)?;
        let chosen = detect::choose(&people, asked)?;
        let mut crops = Vec::with_capacity(people.len());
        for (n, p) in people.iter().enumerate() {
            let crop = detect::crop(&photo, p.body);
            vision::save_jpeg(&crop, &dir.join(format!("person_{n}_crop.jpg")), 92)?;
            vision::save_jpeg(&detect::preview(&crop), &dir.join(format!("person_{n}_preview.jpg")), 85)?;
            crops.push(crop);
        }
        tracing::info!(people = people.len(), chosen, ?people, "people found");
        Ok((photo, crops, chosen))
    })
    .await?;
    let uploads = (0..crops.len()).map(|n| async move {
        let crop = j.path(&format!("person_{n}_crop.jpg"));
        let preview = j.path(&format!("person_{n}_preview.jpg"));
        j.storage.put_file(&objects::person_crop(j.task_id(), n), &crop, "image/jpeg").await?;
        j.storage.put_file(&objects::person_preview(j.task_id(), n), &preview, "image/jpeg").await?;
        Ok::<_, PipelineError>(())
    });
    futures::future::try_join_all(uploads).await?;
    let crop = crops.into_iter().nth(chosen).expect("chosen is an index of people");
    Ok(Found { n: chosen, photo: Arc::new(photo), crop: Arc::new(crop) })
}

/// The person's crop with the background made transparent (soft alpha).
pub async fn remove_background(j: &Job<'_>, found: &Found) -> Result<Arc<RgbaImage>, PipelineError> {
    let data = j.catalog.data_dir().to_owned();
    let model = j.cfg.segmentation;
    let crop = found.crop.clone();
    // The largest the person is shown, over the frames `prepare` makes.
    let shown = frame_sizes(j)
        .iter()
        .map(|&(w, h)| {
            let (_, _, pw, ph) = compose::placement(crop.width(), crop.height(), w, h);
            pw.max(ph)
        })
        .max()
        .expect("at least one frame");
    let out = j.path(&format!("person_{}_bg_removed.png", found.n));
    let path = out.clone();
    let cutout = blocking(move || {
        let seg = segment::segmenter(&data, model)?;
        let t = std::time::Instant::now();
        let (w, h) = model.input_size(crop.width(), crop.height(), shown);
        let mask = seg.mask_sized(&crop, w, h)?;
        tracing::info!(?model, w, h, ms = t.elapsed().as_millis() as u64, "segmented");
        let cutout = segment::cut_out(&crop, &mask);
        vision::save_png(&cutout, &path)?;
        Ok(cutout)
    })
    .await?;
    j.storage.put_file(&objects::person_bg_removed(j.task_id(), found.n), &out, "image/png").await?;
    Ok(Arc::new(cutout))
}

/// The sizes of the portrait frames: 512x910 always, and the render size
/// when that differs (last).
fn frame_sizes(j: &Job<'_>) -> Vec<(u32, u32)> {
    let small = shared::job::Resolution::Small;
    let mut sizes = vec![(small.width(), small.height())];
    let (w, h) = (j.job.resolution.width(), j.job.resolution.height());
    if (w, h) != sizes[0] {
        sizes.push((w, h));
    }
    sizes
}

/// The portrait frames: `optimized_512x910.png` always, and one at the
/// render size when that differs. Returns the render-size frame.
pub async fn prepare(j: &Job<'_>, found: &Found, cutout: &Arc<RgbaImage>) -> Result<PathBuf, PipelineError> {
    let sizes = frame_sizes(j);
    let (photo, cutout, bg) = (found.photo.clone(), cutout.clone(), j.job.background.clone());
    let paths: Vec<(u32, u32, PathBuf)> =
        sizes.iter().map(|&(w, h)| (w, h, j.path(&format!("optimized_{w}x{h}.png")))).collect();
    let todo = paths.clone();
    blocking(move || {
        for (w, h, path) in &todo {
            vision::save_png(&compose::frame(&bg, &photo, &cutout, *w, *h), path)?;
        }
        Ok(())
    })
    .await?;
    let uploads = paths.iter().map(|(w, h, p)| async move {
        j.storage.put_file(&objects::optimized(j.task_id(), *w, *h), p, "image/png").await
    });
    futures::future::try_join_all(uploads).await?;
    Ok(paths.last().expect("at least one size").2.clone())
}
