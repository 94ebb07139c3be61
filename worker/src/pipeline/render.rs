//! Render the portrait MP4 (H.264 yuv420p + AAC, 30 fps, faststart) and a
//! JPEG thumbnail, then upload both.

use std::path::Path;

use shared::job::VideoResult;
use shared::keys::objects;

use super::{Job, PipelineError};
use crate::media;

pub async fn render_and_upload(j: &Job<'_>, frame: &Path, audio: &Path) -> Result<VideoResult, PipelineError> {
    let (w, h) = (j.job.resolution.width(), j.job.resolution.height());
    let video = j.path("final_video.mp4");
    media::ffmpeg(
        [
            "-loop".as_ref(),
            "1".as_ref(),
            "-framerate".as_ref(),
            "30".as_ref(),
            "-i".as_ref(),
            frame.as_os_str(),
            "-i".as_ref(),
            audio.as_os_str(),
            "-vf".as_ref(),
            format!("scale={w}:{h},format=yuv420p").as_ref(),
            "-c:v".as_ref(),
            "libx264".as_ref(),
            "-preset".as_ref(),
            "veryfast".as_ref(),
            "-tune".as_ref(),
            "stillimage".as_ref(),
            "-r".as_ref(),
            "30".as_ref(),
            "-c:a".as_ref(),
            "aac".as_ref(),
            "-b:a".as_ref(),
            "160k".as_ref(),
            "-shortest".as_ref(),
            "-movflags".as_ref(),
            "+faststart".as_ref(),
            video.as_os_str(),
        ],
        j.cfg.tool_timeout,
    )
    .await?;
    let thumb = j.path("thumbnail.jpg");
    media::ffmpeg(
        [
            "-i".as_ref(),
            frame.as_os_str(),
            "-vf".as_ref(),
            "scale=360:-2".as_ref(),
            "-q:v".as_ref(),
            "3".as_ref(),
            thumb.as_os_str(),
        ],
        j.cfg.tool_timeout,
    )
    .await?;
    let probe = media::probe(&video, j.cfg.tool_timeout).await?;
    let video_key = objects::final_video(j.task_id());
    let thumbnail_key = objects::thumbnail(j.task_id());
    // Thumbnail first: the video's presence is what marks the result complete.
    let thumbnail_bytes = j.storage.put_file(&thumbnail_key, &thumb, "image/jpeg").await?;
    let video_bytes = j.storage.put_file(&video_key, &video, "video/mp4").await?;
    Ok(VideoResult {
        video_key,
        thumbnail_key,
        duration_seconds: probe.duration,
        width: w,
        height: h,
        video_bytes,
        thumbnail_bytes,
        step_seconds: Vec::new(),
    })
}
