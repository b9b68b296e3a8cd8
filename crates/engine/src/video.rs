//! Videos as the models see them (`[3, frames, height, width]` f32 in [-1, 1]) and back to the
//! RGB8 [`Video`] every stage hands to the next, plus the upsampling that feeds one stage's output
//! to the next super-resolution stage.

use candle_core::{DType, Device, Result, Tensor};
use vidcascade_spec::Video;

/// Quantises a `[3, F, H, W]` tensor in [-1, 1] to an RGB8 video (values outside are clamped).
pub fn video_from_tensor(x: &Tensor, fps: f32) -> Result<Video> {
    let (c, f, h, w) = x.dims4()?;
    if c != 3 {
        candle_core::bail!("a video tensor has 3 channels, got {c}");
    }
    // [3, F, H, W] -> [F, H, W, 3], then to bytes.
    let pixels = ((x.clamp(-1f32, 1f32)? + 1.0)? * 127.5)?
        .round()?
        .permute((1, 2, 3, 0))?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let frame_len = h * w * 3;
    let frames = pixels
        .chunks(frame_len)
        .map(|frame| frame.iter().map(|&v| v as u8).collect())
        .collect::<Vec<Vec<u8>>>();
    debug_assert_eq!(frames.len(), f);
    Ok(Video {
        width: w,
        height: h,
        fps,
        frames,
    })
}

/// The `[3, F, H, W]` tensor in [-1, 1] of an RGB8 video.
pub fn video_to_tensor(video: &Video, device: &Device) -> Result<Tensor> {
    if let Err(reason) = video.check_frames() {
        candle_core::bail!("{reason}");
    }
    let bytes: Vec<u8> = video.frames.concat();
    let x = Tensor::from_vec(
        bytes,
        (video.frames.len(), video.height, video.width, 3),
        device,
    )?
    .to_dtype(DType::F32)?;
    ((x / 127.5)? - 1.0)?.permute((3, 0, 1, 2))?.contiguous()
}

/// Linear interpolation in time: `[C, F, H, W]` -> `[C, frames, H, W]`.
///
/// Frame `k` of the output shows the instant `k / frames` of the clip, which is position
/// `k * F / frames` between input frames (clamped at the last one): with twice the frames, even
/// output frames are exactly the input frames and odd ones lie halfway. The mapping is local, so a
/// sub-clip upsamples the same way as the whole clip.
pub fn upsample_time(x: &Tensor, frames: usize) -> Result<Tensor> {
    let source = x.dim(1)?;
    if source == frames {
        return Ok(x.clone());
    }
    let mut out = Vec::with_capacity(frames);
    for j in 0..frames {
        let position = (j as f64 * source as f64 / frames as f64).min((source - 1) as f64);
        let lo = position.floor() as usize;
        let hi = (lo + 1).min(source - 1);
        let weight = position - lo as f64;
        let a = x.narrow(1, lo, 1)?;
        let frame = if weight == 0.0 || hi == lo {
            a
        } else {
            ((a * (1.0 - weight))? + (x.narrow(1, hi, 1)? * weight)?)?
        };
        out.push(frame);
    }
    Tensor::cat(&out, 1)
}

/// Bilinear resampling in space: `[C, F, H, W]` -> `[C, F, height, width]`.
pub fn upsample_space(x: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if (h, w) == (height, width) {
        return Ok(x.clone());
    }
    x.permute((1, 0, 2, 3))?
        .contiguous()?
        .upsample_bilinear2d(height, width, false)?
        .permute((1, 0, 2, 3))?
        .contiguous()
}

/// Resamples a `[C, F, H, W]` video to `frames x height x width` (time first, then space).
pub fn resample(x: &Tensor, frames: usize, height: usize, width: usize) -> Result<Tensor> {
    upsample_space(&upsample_time(x, frames)?, height, width)
}

/// Box-filter downsampling in space by an integer factor (for checking SR outputs against their
/// inputs): `[C, F, H, W]` -> `[C, F, H / k, W / k]`.
pub fn downsample_space(x: &Tensor, factor: usize) -> Result<Tensor> {
    let (c, f, h, w) = x.dims4()?;
    x.reshape((c * f, 1, h, w))?
        .avg_pool2d(factor)?
        .reshape((c, f, h / factor, w / factor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_through_tensors() -> anyhow::Result<()> {
        let video = Video {
            width: 3,
            height: 2,
            fps: 8.0,
            frames: vec![(0..18).map(|v| v * 14).collect(), vec![255; 18]],
        };
        let x = video_to_tensor(&video, &Device::Cpu)?;
        assert_eq!(x.dims(), &[3, 2, 2, 3]);
        assert_eq!(video_from_tensor(&x, 8.0)?, video);
        Ok(())
    }

    #[test]
    fn wrong_frame_sizes_are_rejected() {
        let video = Video {
            width: 2,
            height: 2,
            fps: 1.0,
            frames: vec![vec![0; 12], vec![0; 11]],
        };
        let err = video_to_tensor(&video, &Device::Cpu).expect_err("short frame");
        assert!(
            err.to_string()
                .contains("frame 1 has 11 bytes, expected 12")
        );
    }

    #[test]
    fn time_upsampling_interpolates_between_frames() -> anyhow::Result<()> {
        // One pixel, frames 0 and 1 hold 0 and 1: four frames show 0, 0.5, 1 and (clamped) 1.
        let x = Tensor::new(&[0f32, 1.0], &Device::Cpu)?.reshape((1, 2, 1, 1))?;
        let y = upsample_time(&x, 4)?.flatten_all()?.to_vec1::<f32>()?;
        let expected = [0.0, 0.5, 1.0, 1.0];
        for (a, b) in y.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
        Ok(())
    }

    #[test]
    fn space_upsampling_then_box_downsampling_preserves_a_flat_video() -> anyhow::Result<()> {
        let x = (Tensor::ones((3, 2, 4, 4), DType::F32, &Device::Cpu)? * 0.25)?;
        let up = resample(&x, 4, 8, 8)?;
        assert_eq!(up.dims(), &[3, 4, 8, 8]);
        let down = downsample_space(&up, 2)?;
        let err = (down.narrow(1, 0, 2)? - &x)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(err < 1e-6);
        Ok(())
    }
}
