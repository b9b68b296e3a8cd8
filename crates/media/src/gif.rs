//! Animated GIF: one frame per video frame, delays from the frame rate, looping forever.
//!
//! Each frame gets its own palette: a frame with at most 256 colours (the usual case for the
//! shapes world) keeps them exactly, a richer one is reduced with NeuQuant. Quantisation runs at
//! the video's own size and the palette indices are upscaled afterwards, so `scale` costs only
//! the bigger LZW stream.

use std::borrow::Cow;
use std::path::Path;

use ::gif::{Encoder, Frame, Repeat};

use super::{OutputError, upscale};
use vidcascade_spec::Video;

/// NeuQuant speed in [1, 30]. 1 learns from every pixel: on a 32x32 frame of 1024 colours it
/// halves the error of the crate's suggested 10 (mean 5.4 vs 9.3 per channel) for about 1 ms, and
/// a 256x256 frame still takes under 0.1 s.
const NEUQUANT_SPEED: i32 = 1;

/// Browsers show delays under 2 centiseconds as 10, so no frame is shorter than this.
const MIN_DELAY_CS: u16 = 2;

/// Encodes `video` (validated by the caller), upscaled by `scale`, as the bytes of a GIF file;
/// errors name `path`.
pub(super) fn encode(video: &Video, path: &Path, scale: usize) -> Result<Vec<u8>, OutputError> {
    let too_big = || OutputError::invalid(path, "GIF frames are at most 65535 pixels a side");
    let side = |n: usize| u16::try_from(n).map_err(|_| too_big());
    let (width, height) = (side(video.width)?, side(video.height)?);
    let (scaled_width, scaled_height) = (side(video.width * scale)?, side(video.height * scale)?);

    let mut encoder = Encoder::new(Vec::new(), scaled_width, scaled_height, &[])
        .map_err(OutputError::encode(path, "GIF"))?;
    encoder
        .set_repeat(Repeat::Infinite)
        .map_err(OutputError::encode(path, "GIF"))?;
    for (k, rgb) in video.frames.iter().enumerate() {
        let mut frame = Frame::from_rgb_speed(width, height, rgb, NEUQUANT_SPEED);
        if scale > 1 {
            let indices = upscale(&frame.buffer, video.width, video.height, 1, scale);
            frame.buffer = Cow::Owned(indices.into_owned());
            frame.width = scaled_width;
            frame.height = scaled_height;
        }
        frame.delay = delay_cs(k, video.fps);
        encoder
            .write_frame(&frame)
            .map_err(OutputError::encode(path, "GIF"))?;
    }
    encoder
        .into_inner()
        .map_err(OutputError::encode(path, "GIF"))
}

/// The delay of frame `k` in centiseconds. GIF delays are whole centiseconds, so each is the
/// difference of rounded frame start times: 8 fps alternates 13 and 12 and loops in exactly 1 s
/// per 8 frames, where a fixed 12 or 13 would drift.
fn delay_cs(k: usize, fps: f32) -> u16 {
    let start = |k: usize| (k as f64 * 100.0 / f64::from(fps)).round();
    let delay = (start(k + 1) - start(k)).clamp(0.0, f64::from(u16::MAX));
    (delay as u16).max(MIN_DELAY_CS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OutputFormat, WriteOptions, write_video};
    use vidcascade_test_support::{mean_abs_error, moving_square, read_gif, red_centre_x};

    #[test]
    fn moving_square_round_trips_exactly_with_scale() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("nested/clip.gif");
        let video = moving_square(32, 8, 8.0);
        let format = write_video(&video, &path, &WriteOptions { scale: 2 })?;
        assert_eq!(format, OutputFormat::Gif);

        let back = read_gif(&path)?;
        assert_eq!((back.width, back.height, back.frames.len()), (64, 64, 8));
        assert!((back.fps - 8.0).abs() < 1e-4, "fps {}", back.fps);
        for (original, read) in video.frames.iter().zip(&back.frames) {
            // Two colours fit any palette: the upscaled frame comes back byte for byte.
            assert_eq!(upscale(original, 32, 32, 3, 2).as_ref(), read.as_slice());
        }
        let first = red_centre_x(&back.frames[0], 64);
        let last = red_centre_x(&back.frames[7], 64);
        assert!((last - first - 2.0 * 2.0 * 7.0).abs() < 1e-9);
        Ok(())
    }

    #[test]
    fn rich_frames_are_quantised_closely() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("gradient.gif");
        // 32x32 with 1024 distinct colours: more than a palette holds, so NeuQuant runs.
        let frame: Vec<u8> = (0..32 * 32)
            .flat_map(|i| [(i % 32 * 8) as u8, (i / 32 * 8) as u8, 128])
            .collect();
        let video = Video {
            width: 32,
            height: 32,
            fps: 24.0,
            frames: vec![frame.clone(); 2],
        };
        write_video(&video, &path, &WriteOptions::default())?;
        let back = read_gif(&path)?;
        assert_eq!(back.frames.len(), 2);
        // A smooth 2-D gradient is NeuQuant's worst case (about 5.4 measured); flat shapes with
        // noise come back within 2.
        let error = mean_abs_error(&frame, &back.frames[0]);
        assert!(error < 7.0, "mean absolute error {error}");
        Ok(())
    }

    #[test]
    fn delays_keep_the_frame_rate_on_average() {
        let delays: Vec<u16> = (0..8).map(|k| delay_cs(k, 8.0)).collect();
        assert_eq!(delays.iter().map(|&d| u32::from(d)).sum::<u32>(), 100);
        assert!(delays.iter().all(|&d| d == 12 || d == 13), "{delays:?}");
        assert_eq!(delay_cs(0, 25.0), 4);
        assert_eq!(delay_cs(3, 1000.0), MIN_DELAY_CS);
    }

    #[test]
    fn unwritable_paths_are_named_with_the_os_error() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        // A folder where the file should go: File::create fails even for root.
        let path = dir.path().join("taken.gif");
        std::fs::create_dir(&path)?;
        let err = write_video(&moving_square(8, 2, 8.0), &path, &WriteOptions::default())
            .expect_err("a folder is not writable as a file");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("cannot create the file"), "{message}");
        assert!(message.contains("os error"), "{message}");

        // A regular file where a parent folder should go.
        std::fs::write(dir.path().join("plain"), b"x")?;
        let path = dir.path().join("plain/sub/clip.gif");
        let err = write_video(&moving_square(8, 2, 8.0), &path, &WriteOptions::default())
            .expect_err("a file is not a folder");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("os error"), "{message}");
        Ok(())
    }
}
