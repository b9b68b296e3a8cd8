//! Gaussian blur of a low-resolution conditioning video, the "blurring augmentation" of
//! cascaded diffusion models (Ho et al. 2021, §4.2) for SR stages.
//!
//! Why: at inference an SR stage is conditioned on what the stage below it *sampled*, and in the
//! shapes world that is a soft blob whatever the caption's shape (a 16x16 base draws 5-px shapes
//! with rounded corners). Trained only on exact downsamples, the SR stage learns to copy the
//! blob's outline; trained on blurred ones as well, it has to take the outline from the caption.
//! The blur is spatial only (each frame on its own), separable, and clamps at the border so a
//! uniform background stays exactly uniform.

use candle_core::{Result, Tensor};

/// The normalised 1-D Gaussian kernel of standard deviation `sigma` pixels, radius `ceil(3 sigma)`.
fn kernel(sigma: f64) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil().max(1.0) as i64;
    let weights: Vec<f64> = (-radius..=radius)
        .map(|d| (-((d * d) as f64) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    weights.iter().map(|w| (w / total) as f32).collect()
}

/// Convolves every row (`along_rows`) or every column of the `height x width` planes in `data`
/// with `kernel`, clamping indices at the border.
fn convolve_planes(
    data: &[f32],
    height: usize,
    width: usize,
    kernel: &[f32],
    along_rows: bool,
) -> Vec<f32> {
    let radius = (kernel.len() / 2) as i64;
    let plane = height * width;
    let mut out = vec![0f32; data.len()];
    for (src, dst) in data.chunks(plane).zip(out.chunks_mut(plane)) {
        for i in 0..height {
            for j in 0..width {
                let mut acc = 0f32;
                for (k, w) in kernel.iter().enumerate() {
                    let d = k as i64 - radius;
                    let (si, sj) = if along_rows {
                        (i as i64, (j as i64 + d).clamp(0, width as i64 - 1))
                    } else {
                        ((i as i64 + d).clamp(0, height as i64 - 1), j as i64)
                    };
                    acc += w * src[si as usize * width + sj as usize];
                }
                dst[i * width + j] = acc;
            }
        }
    }
    out
}

/// Blurs each `[.., H, W]` plane of `video` (any leading dimensions, e.g. `[C, F, H, W]`) with a
/// Gaussian of `sigma` pixels; `sigma <= 0` returns the video unchanged.
pub fn gaussian_blur(video: &Tensor, sigma: f64) -> Result<Tensor> {
    if sigma <= 0.0 {
        return Ok(video.clone());
    }
    let dims = video.dims().to_vec();
    let (height, width) = match dims.as_slice() {
        [.., h, w] => (*h, *w),
        _ => candle_core::bail!("gaussian_blur needs at least 2 dimensions, got {dims:?}"),
    };
    let data: Vec<f32> = video.flatten_all()?.to_vec1()?;
    let kernel = kernel(sigma);
    let rows = convolve_planes(&data, height, width, &kernel, true);
    let both = convolve_planes(&rows, height, width, &kernel, false);
    Tensor::from_vec(both, dims, video.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(t: &Tensor) -> Result<Vec<f32>> {
        t.flatten_all()?.to_vec1()
    }

    #[test]
    fn a_uniform_video_stays_uniform_and_mass_is_kept_away_from_the_border() -> Result<()> {
        let flat = Tensor::full(0.3f32, (3, 2, 6, 6), &Device::Cpu)?;
        let blurred: Vec<f32> = values(&gaussian_blur(&flat, 1.0)?)?;
        assert!(blurred.iter().all(|v| (v - 0.3).abs() < 1e-6));

        let mut spike = vec![0f32; 11 * 11];
        spike[5 * 11 + 5] = 1.0;
        let spike = Tensor::from_vec(spike, (1, 11, 11), &Device::Cpu)?;
        let out: Vec<f32> = values(&gaussian_blur(&spike, 1.0)?)?;
        let total: f32 = out.iter().sum();
        assert!((total - 1.0).abs() < 1e-5, "mass {total}");
        assert!(out[5 * 11 + 5] < 0.2 && out[5 * 11 + 5] > out[5 * 11 + 6]);
        assert!(
            (out[5 * 11 + 4] - out[5 * 11 + 6]).abs() < 1e-7,
            "symmetric"
        );
        assert!(
            (out[4 * 11 + 5] - out[5 * 11 + 4]).abs() < 1e-7,
            "isotropic"
        );
        Ok(())
    }

    #[test]
    fn a_square_loses_its_corners() -> Result<()> {
        // An 8-px square on a 16x16 plane: after the blur the corner pixel is lighter than the
        // middle of an edge, which is lighter than the centre.
        let mut plane = vec![-1f32; 16 * 16];
        for i in 4..12 {
            for j in 4..12 {
                plane[i * 16 + j] = 1.0;
            }
        }
        let video = Tensor::from_vec(plane, (1, 1, 16, 16), &Device::Cpu)?;
        let out: Vec<f32> = values(&gaussian_blur(&video, 1.2)?)?;
        let (corner, edge, centre) = (out[4 * 16 + 4], out[4 * 16 + 8], out[8 * 16 + 8]);
        assert!(corner < edge && edge < centre, "{corner} {edge} {centre}");
        assert_eq!(values(&gaussian_blur(&video, 0.0)?)?, values(&video)?);
        Ok(())
    }
}
