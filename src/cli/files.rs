//! Where `generate` and `client` put what they write: the output video, per-stage videos and
//! the live preview image.

use std::path::{Path, PathBuf};

use vidcascade_spec::Video;

/// Where stage videos go: `<dir>/<n>-<stage>.<ext of the main output>`.
pub fn stage_path(dir: &Path, index: usize, stage: &str, output: &Path) -> PathBuf {
    match output.extension() {
        Some(ext) => dir.join(format!("{index}-{stage}.{}", ext.to_string_lossy())),
        None => dir.join(format!("{index}-{stage}")),
    }
}

/// The name a stage's video is saved under: the stage, with `-clip<n>` after clip 0.
pub fn stage_file_name(stage: &str, clip: usize) -> String {
    if clip > 0 {
        format!("{stage}-clip{clip}")
    } else {
        stage.to_string()
    }
}

/// `<output stem>.preview.png` beside the output.
pub fn preview_path(output: &Path) -> PathBuf {
    let mut name = output
        .file_stem()
        .map(|s| s.to_os_string())
        .unwrap_or_else(|| "out".into());
    name.push(".preview.png");
    output.with_file_name(name)
}

/// Frames side by side in one image (a preview of a whole clip).
pub fn filmstrip(video: &Video, scale: usize) -> (usize, usize, Vec<u8>) {
    let (w, h) = (video.width * scale, video.height * scale);
    let width = w * video.frames.len();
    let mut rgb = vec![0u8; width * h * 3];
    for (i, frame) in video.frames.iter().enumerate() {
        for y in 0..h {
            for x in 0..w {
                let src = ((y / scale) * video.width + x / scale) * 3;
                let dst = (y * width + i * w + x) * 3;
                rgb[dst..dst + 3].copy_from_slice(&frame[src..src + 3]);
            }
        }
    }
    (width, h, rgb)
}

/// The line `generate` and `client` print when the video is written.
pub fn wrote_line(output: &Path, video: &Video, scale: usize, seconds: f64) -> String {
    format!(
        "wrote {} ({} frames, {}x{} @ {} fps, shown at {}x) in {:.2} s",
        output.display(),
        video.frames.len(),
        video.width,
        video.height,
        video.fps,
        scale,
        seconds
    )
}
