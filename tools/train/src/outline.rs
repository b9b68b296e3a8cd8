//! Outline-weighted loss: per-pixel weights that make a stage's errors on a shape's outline,
//! and most of all on its corners, cost more than errors on flat areas.
//!
//! Why: in the shapes world a square and the circle inside it differ in four corners, about a
//! fifth of the shape's area and a few percent of a crop's pixels, so a plain MSE barely tells
//! them apart and SR stages learned to draw every shape round (docs/training.md, "Cascade v2").
//! The weight of a pixel grows with how much a light blur changes the clean target there,
//! `|x - blur(x)|` summed over channels: zero on flat areas, large along edges, largest at
//! corners (a corner pixel is surrounded by more background than an edge pixel). Each sample's
//! weights are `1 + strength * e / max(e)`, rescaled to mean 1 so the loss keeps its scale.

use candle_core::{D, Result, Tensor};

use crate::blur::gaussian_blur;

/// Sigma, in pixels of the target, of the blur that finds outlines.
const OUTLINE_SIGMA: f64 = 1.0;

/// Per-pixel loss weights `[B, 1, F, H, W]` of clean videos `[B, C, F, H, W]`, broadcastable
/// against them; `strength` 0 gives weights of 1 everywhere.
pub fn outline_weights(videos: &Tensor, strength: f64) -> Result<Tensor> {
    let edges = (videos - gaussian_blur(videos, OUTLINE_SIGMA)?)?
        .abs()?
        .sum_keepdim(1)?;
    let peak = edges
        .flatten_from(1)?
        .max_keepdim(D::Minus1)?
        .clamp(1e-6, f32::MAX)?;
    let mut shape = vec![1usize; edges.rank()];
    shape[0] = edges.dim(0)?;
    let relative = edges.broadcast_div(&peak.reshape(shape.as_slice())?)?;
    let weights = ((relative * strength)? + 1.0)?;
    let mean = weights.flatten_from(1)?.mean_keepdim(D::Minus1)?;
    weights.broadcast_div(&mean.reshape(shape.as_slice())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// One sample, one channel, one frame: an 8-px square on a 16x16 background.
    fn square() -> Result<Tensor> {
        let mut plane = vec![-1f32; 16 * 16];
        for i in 4..12 {
            for j in 4..12 {
                plane[i * 16 + j] = 1.0;
            }
        }
        Tensor::from_vec(plane, (1, 1, 1, 16, 16), &Device::Cpu)
    }

    #[test]
    fn corners_weigh_most_then_edges_then_flat_areas_and_the_mean_is_one() -> Result<()> {
        let w: Vec<f32> = outline_weights(&square()?, 10.0)?
            .flatten_all()?
            .to_vec1()?;
        let (corner, edge, centre, background) =
            (w[4 * 16 + 4], w[4 * 16 + 8], w[8 * 16 + 8], w[0]);
        assert!(
            corner > edge && edge > centre && centre > 0.0,
            "{corner} {edge} {centre}"
        );
        assert!((centre - background).abs() < 1e-6, "flat areas weigh alike");
        assert!(
            corner / centre > 5.0,
            "strength 10 at the peak: {corner} {centre}"
        );
        let mean = w.iter().sum::<f32>() / w.len() as f32;
        assert!((mean - 1.0).abs() < 1e-5, "{mean}");
        Ok(())
    }

    #[test]
    fn strength_zero_and_uniform_videos_weigh_every_pixel_alike() -> Result<()> {
        let flat = Tensor::full(0.4f32, (2, 3, 2, 8, 8), &Device::Cpu)?;
        for (video, strength) in [(square()?, 0.0), (flat, 10.0)] {
            let w: Vec<f32> = outline_weights(&video, strength)?
                .flatten_all()?
                .to_vec1()?;
            assert!(w.iter().all(|v| (v - 1.0).abs() < 1e-6));
        }
        Ok(())
    }

    #[test]
    fn weights_broadcast_over_channels_per_sample() -> Result<()> {
        let rgb = square()?.repeat((2, 3, 1, 1, 1))?;
        let w = outline_weights(&rgb, 4.0)?;
        assert_eq!(w.dims(), &[2, 1, 1, 16, 16]);
        assert_eq!(w.broadcast_mul(&rgb)?.dims(), rgb.dims());
        Ok(())
    }
}
