//! PNG: single RGB8 images (previews, contact sheets) and folders of numbered frames
//! (`frame_0000.png`, `frame_0001.png`, ...), lossless.

use std::path::{Path, PathBuf};

use ::png::{BitDepth, ColorType, Encoder};

use super::{OutputError, upscale};
use vidcascade_spec::Video;

/// The file name of frame `index` in a PNG frames folder.
fn frame_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("frame_{index:04}.png"))
}

/// Writes every frame of `video` (validated by `write_video`) into the existing folder `dir`,
/// upscaled by `scale`, then removes `frame_NNNN.png` files past the last frame, left by a
/// longer video written there before, so the folder reads back as this video.
pub(super) fn write_frames(video: &Video, dir: &Path, scale: usize) -> Result<(), OutputError> {
    let (width, height) = (video.width * scale, video.height * scale);
    for (index, frame) in video.frames.iter().enumerate() {
        let rgb = upscale(frame, video.width, video.height, 3, scale);
        write_png(&frame_path(dir, index), width, height, &rgb)?;
    }
    let mut stale = video.frames.len();
    while frame_path(dir, stale).is_file() {
        let path = frame_path(dir, stale);
        std::fs::remove_file(&path).map_err(OutputError::io(&path, "remove the stale frame"))?;
        stale += 1;
    }
    Ok(())
}

/// Every frame of `video` (validated by the caller), upscaled by `scale`, as the bytes of one PNG
/// file each; errors name `path`.
pub(super) fn encode_frames(
    video: &Video,
    path: &Path,
    scale: usize,
) -> Result<Vec<Vec<u8>>, OutputError> {
    let (width, height) = (video.width * scale, video.height * scale);
    video
        .frames
        .iter()
        .map(|frame| {
            let rgb = upscale(frame, video.width, video.height, 3, scale);
            encode_png(path, width, height, &rgb)
        })
        .collect()
}

/// Writes one `width x height` RGB8 image (row-major, RGB interleaved) to `path` as a PNG,
/// creating parent folders as needed.
pub fn write_png(path: &Path, width: usize, height: usize, rgb: &[u8]) -> Result<(), OutputError> {
    let bytes = encode_png(path, width, height, rgb)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(OutputError::io(path, "create its folder"))?;
    }
    super::write_file(path, &bytes)
}

/// The bytes of a PNG file holding one `width x height` RGB8 image; errors name `path` (where
/// the bytes are going).
pub fn encode_png(
    path: &Path,
    width: usize,
    height: usize,
    rgb: &[u8],
) -> Result<Vec<u8>, OutputError> {
    let expected = width.checked_mul(height).and_then(|n| n.checked_mul(3));
    if expected != Some(rgb.len()) || width == 0 || height == 0 {
        return Err(OutputError::invalid(
            path,
            format!(
                "a {width}x{height} RGB8 image needs {} bytes, got {}",
                expected.map_or_else(|| "too many".to_string(), |n| n.to_string()),
                rgb.len()
            ),
        ));
    }
    let side = |n: usize| {
        u32::try_from(n)
            .ok()
            .filter(|&n| n <= i32::MAX as u32)
            .ok_or_else(|| {
                OutputError::invalid(path, "PNG images are at most 2^31 - 1 pixels a side")
            })
    };
    let (png_width, png_height) = (side(width)?, side(height)?);
    let mut bytes = Vec::new();
    let mut encoder = Encoder::new(&mut bytes, png_width, png_height);
    encoder.set_color(ColorType::Rgb);
    encoder.set_depth(BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .map_err(OutputError::encode(path, "PNG"))?;
    writer
        .write_image_data(rgb)
        .map_err(OutputError::encode(path, "PNG"))?;
    writer.finish().map_err(OutputError::encode(path, "PNG"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OutputFormat, WriteOptions, write_video};
    use vidcascade_test_support::{moving_square, read_png, read_png_frames};

    #[test]
    fn frames_round_trip_losslessly_with_scale() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let folder = dir.path().join("out/frames");
        let video = moving_square(32, 8, 8.0);
        let format = write_video(&video, &folder, &WriteOptions { scale: 3 })?;
        assert_eq!(format, OutputFormat::PngFrames);
        assert!(folder.join("frame_0007.png").is_file());

        let back = read_png_frames(&folder)?;
        assert_eq!((back.width, back.height, back.frames.len()), (96, 96, 8));
        assert_eq!(back.fps, 0.0);
        for (original, read) in video.frames.iter().zip(&back.frames) {
            assert_eq!(upscale(original, 32, 32, 3, 3).as_ref(), read.as_slice());
        }
        Ok(())
    }

    #[test]
    fn a_shorter_video_replaces_a_longer_one() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let folder = dir.path().join("frames/");
        write_video(
            &moving_square(16, 6, 8.0),
            &folder,
            &WriteOptions::default(),
        )?;
        let short = moving_square(16, 2, 8.0);
        write_video(&short, &folder, &WriteOptions::default())?;
        let back = read_png_frames(&folder)?;
        assert_eq!(back.frames, short.frames);
        assert!(!folder.join("frame_0002.png").exists());
        Ok(())
    }

    #[test]
    fn single_images_round_trip_and_bad_sizes_are_named() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("previews/one.png");
        let rgb: Vec<u8> = (0..5 * 3 * 3).map(|v| (v * 5) as u8).collect();
        write_png(&path, 5, 3, &rgb)?;
        assert_eq!(read_png(&path)?, (5, 3, rgb.clone()));

        let err = write_png(&path, 4, 3, &rgb).expect_err("wrong length");
        let message = err.to_string();
        assert!(message.contains("one.png"), "{message}");
        assert!(message.contains("needs 36 bytes, got 45"), "{message}");
        Ok(())
    }

    #[test]
    fn unwritable_paths_and_empty_folders_are_named() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("plain"), b"x")?;
        // A file where the frames folder should be.
        let path = dir.path().join("plain");
        let err = write_video(&moving_square(8, 1, 8.0), &path, &WriteOptions::default())
            .expect_err("a file is not a folder");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("os error"), "{message}");

        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty)?;
        let err = read_png_frames(&empty).expect_err("no frames");
        assert!(err.to_string().contains("no frame_0000.png"), "{err}");
        assert!(
            err.to_string().contains(&empty.display().to_string()),
            "{err}"
        );
        Ok(())
    }
}
