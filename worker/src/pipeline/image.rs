//! Image steps. In this first slice person detection is a centre crop to
//! the portrait aspect and background removal converts the crop to an RGBA
//! PNG unchanged; both are replaced by real models in the media-quality
//! issue. Every operation is done by ffmpeg on the real photo.

use std::path::{Path, PathBuf};

use shared::keys::objects;

use super::{Job, PipelineError};
use crate::media;
use crate::process::ProcessError;

pub async fn download(j: &Job<'_>) -> Result<PathBuf, PipelineError> {
    let ext = Path::new(&j.job.image_key).extension().and_then(|e| e.to_str()).unwrap_or("img");
    let path = j.path(&format!("original.{ext}"));
    j.storage.get_to_file(&j.job.image_key, &path).await?;
    Ok(path)
}

async fn ffmpeg(j: &Job<'_>, args: &[&std::ffi::OsStr]) -> Result<(), ProcessError> {
    media::ffmpeg(args, j.cfg.tool_timeout).await.map(|_| ())
}

/// Portrait (9:16) centre crop, plus a small preview.
pub async fn detect_person(j: &Job<'_>, original: &Path) -> Result<PathBuf, PipelineError> {
    let crop = j.path("person_0_crop.jpg");
    ffmpeg(
        j,
        &[
            "-i".as_ref(),
            original.as_os_str(),
            "-vf".as_ref(),
            "crop='min(iw,ih*9/16)':'min(ih,iw*16/9)',scale='min(1080,iw)':-2".as_ref(),
            "-frames:v".as_ref(),
            "1".as_ref(),
            "-q:v".as_ref(),
            "2".as_ref(),
            crop.as_os_str(),
        ],
    )
    .await
    .map_err(|e| match e {
        ProcessError::Failed { stderr_tail, .. } => PipelineError::BadImage(stderr_tail),
        other => other.into(),
    })?;
    let preview = j.path("person_0_preview.jpg");
    ffmpeg(j, &["-i".as_ref(), crop.as_os_str(), "-vf".as_ref(), "scale=256:-2".as_ref(), preview.as_os_str()]).await?;
    j.storage.put_file(&objects::person_crop(j.task_id(), 0), &crop, "image/jpeg").await?;
    j.storage.put_file(&objects::person_preview(j.task_id(), 0), &preview, "image/jpeg").await?;
    Ok(crop)
}

/// RGBA PNG of the person (here: the whole crop, fully opaque).
pub async fn remove_background(j: &Job<'_>, crop: &Path) -> Result<PathBuf, PipelineError> {
    let out = j.path("person_0_bg_removed.png");
    ffmpeg(j, &["-i".as_ref(), crop.as_os_str(), "-pix_fmt".as_ref(), "rgba".as_ref(), out.as_os_str()]).await?;
    j.storage.put_file(&objects::person_bg_removed(j.task_id(), 0), &out, "image/png").await?;
    Ok(out)
}

/// Fit the cut-out into the portrait frame of the requested size, centred
/// over a soft background colour.
pub async fn prepare(j: &Job<'_>, cutout: &Path) -> Result<PathBuf, PipelineError> {
    let (w, h) = (j.job.resolution.width(), j.job.resolution.height());
    let out = j.path(&format!("optimized_{w}x{h}.png"));
    let filter = format!(
        "color=c=0xF3EDE4:s={w}x{h}[bg];[0:v]scale={w}:{h}:force_original_aspect_ratio=decrease[fg];[bg][fg]overlay=(W-w)/2:(H-h)/2:format=auto,format=rgb24"
    );
    ffmpeg(
        j,
        &[
            "-i".as_ref(),
            cutout.as_os_str(),
            "-filter_complex".as_ref(),
            filter.as_ref(),
            "-frames:v".as_ref(),
            "1".as_ref(),
            out.as_os_str(),
        ],
    )
    .await?;
    j.storage.put_file(&objects::optimized(j.task_id(), w, h), &out, "image/png").await?;
    Ok(out)
}
