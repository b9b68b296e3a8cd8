//! The training objective: v-prediction MSE with min-SNR-gamma weighting (Hang et al. 2023) and
//! the truncated-SNR floor of progressive distillation (Salimans & Ho 2022).
//!
//! For a clean video `x`, noise `eps` and time `t`: `z_t = alpha x + sigma eps`, target
//! `v = alpha eps - sigma x`, and `|x_hat - x|^2 = |v_hat - v|^2 / (SNR + 1)`. The x-space weight is
//! `max(min(SNR, gamma), 1)`: min-SNR caps the many nearly-clean timesteps so they do not dominate,
//! and the floor of 1 keeps the noisy timesteps — where a video's layout, colours and motion are
//! decided — from being weighted by SNR -> 0 (plain min-SNR does that, and on our [-20, 20] log-SNR
//! range it left ~40 % of training steps with almost no weight: samples had details but no global
//! coherence). In v-space that is `max(min(SNR, gamma), 1) / (SNR + 1)`.

use candle_core::{Result, Tensor};
use vidcascade_diffusion::CosineSchedule;

/// Noisy inputs and targets of one batch.
#[derive(Debug)]
pub struct NoisedBatch {
    /// `z_t`, shaped like the videos.
    pub z: Tensor,
    /// The target `v`.
    pub v: Tensor,
    /// Per-sample loss weights of a `v` prediction `[B]`.
    pub weights: Tensor,
    /// Per-sample loss weights of an `x0` prediction `[B]`: `max(min(SNR, gamma), 1)`, the same
    /// objective expressed in x-space.
    pub x0_weights: Tensor,
}

/// Noises `x` `[B, ...]` at times `t` with noise `eps`, returning inputs, targets and weights.
pub fn noise_batch(x: &Tensor, eps: &Tensor, t: &[f64], gamma: f64) -> Result<NoisedBatch> {
    let schedule = CosineSchedule::default();
    let device = x.device();
    let b = t.len();
    let mut broadcast = vec![1usize; x.rank()];
    broadcast[0] = b;
    let (mut alphas, mut sigmas, mut weights, mut x0_weights) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &ti in t {
        let (a, s) = schedule.alpha_sigma(ti);
        let snr = (a * a) / (s * s).max(1e-12);
        alphas.push(a as f32);
        sigmas.push(s as f32);
        let x0_weight = snr.min(gamma).max(1.0);
        weights.push((x0_weight / (snr + 1.0)) as f32);
        x0_weights.push(x0_weight as f32);
    }
    let alpha = Tensor::from_vec(alphas, broadcast.as_slice(), device)?;
    let sigma = Tensor::from_vec(sigmas, broadcast.as_slice(), device)?;
    let z = (x.broadcast_mul(&alpha)? + eps.broadcast_mul(&sigma)?)?;
    let v = (eps.broadcast_mul(&alpha)? - x.broadcast_mul(&sigma)?)?;
    Ok(NoisedBatch {
        z,
        v,
        weights: Tensor::from_vec(weights, b, device)?,
        x0_weights: Tensor::from_vec(x0_weights, b, device)?,
    })
}

/// Maps a uniform draw `u` in [0, 1) to a training time, shifted towards high noise by `shift`:
/// `shift u / (1 + (shift - 1) u)` (the timestep shift of Esser et al. 2024, "Scaling rectified
/// flow transformers"). `shift = 1` is the identity; larger values spend more steps where the
/// noisy input says little and the model must draw layout and motion from the text alone.
pub fn shift_time(u: f64, shift: f64) -> f64 {
    shift * u / (1.0 + (shift - 1.0) * u)
}

/// Weighted MSE: each squared error times its pixel weight (`pixels`, broadcast against the
/// prediction, e.g. [`crate::outline::outline_weights`]; `None`: 1), mean over each sample's
/// elements, times the sample's weight, mean over the batch.
pub fn weighted_mse(
    prediction: &Tensor,
    target: &Tensor,
    pixels: Option<&Tensor>,
    weights: &Tensor,
) -> Result<Tensor> {
    let mut squared = (prediction - target)?.sqr()?;
    if let Some(pixels) = pixels {
        squared = squared.broadcast_mul(pixels)?;
    }
    let per_sample = squared.flatten_from(1)?.mean(1)?;
    (per_sample * weights)?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_target_recovers_the_clean_video() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[0.5f32, -0.25], [1.0, 0.0]], &dev)?;
        let eps = Tensor::new(&[[0.1f32, 0.2], [-0.3, 0.4]], &dev)?;
        let batch = noise_batch(&x, &eps, &[0.1, 0.8], 5.0)?;
        // x = alpha z - sigma v for each sample.
        for (i, t) in [0.1, 0.8].into_iter().enumerate() {
            let (a, s) = CosineSchedule::default().alpha_sigma(t);
            let x_hat = ((batch.z.get(i)? * a)? - (batch.v.get(i)? * s)?)?;
            let err = (x_hat - x.get(i)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-6);
        }
        // t = 0.1: SNR ~ 40, above gamma = 5: weight 5 / (SNR + 1) < 1.
        // t = 0.8: SNR below 1, weight 1 / (SNR + 1) (the floor), close to 1.
        let w = batch.weights.to_vec1::<f32>()?;
        let snr = |t: f64| {
            let (a, s) = CosineSchedule::default().alpha_sigma(t);
            a * a / (s * s)
        };
        assert!(snr(0.1) > 5.0 && (w[0] as f64 - 5.0 / (snr(0.1) + 1.0)).abs() < 1e-6);
        assert!(
            snr(0.8) < 1.0 && (w[1] as f64 - 1.0 / (snr(0.8) + 1.0)).abs() < 1e-6 && w[1] > 0.5
        );
        Ok(())
    }

    #[test]
    fn the_time_shift_keeps_the_ends_and_moves_mass_to_high_noise() {
        for shift in [1.0, 3.0] {
            assert_eq!(shift_time(0.0, shift), 0.0);
            assert!((shift_time(1.0, shift) - 1.0).abs() < 1e-12);
        }
        assert!((shift_time(0.37, 1.0) - 0.37).abs() < 1e-12);
        // With shift 3, P(t > 0.8) = P(u > 0.8 / (3 - 2 * 0.8)) = 1 - 4 / 7.
        let draws = 10_000;
        let high = (0..draws)
            .map(|i| shift_time((i as f64 + 0.5) / draws as f64, 3.0))
            .filter(|&t| t > 0.8)
            .count() as f64
            / draws as f64;
        assert!((high - 3.0 / 7.0).abs() < 1e-3, "{high}");
    }

    #[test]
    fn a_perfect_prediction_has_zero_loss() -> Result<()> {
        let dev = Device::Cpu;
        let v = Tensor::new(&[[1.0f32, 2.0], [3.0, 4.0]], &dev)?;
        let w = Tensor::new(&[1.0f32, 0.5], &dev)?;
        assert_eq!(weighted_mse(&v, &v, None, &w)?.to_scalar::<f32>()?, 0.0);
        let off = (v.clone() + 1.0)?;
        // Each sample's MSE is 1: loss = (1 * 1 + 1 * 0.5) / 2.
        assert!((weighted_mse(&off, &v, None, &w)?.to_scalar::<f32>()? - 0.75).abs() < 1e-6);
        // Pixel weights [3, 1] on both samples: each sample's MSE is (3 + 1) / 2 = 2.
        let pixels = Tensor::new(&[[3.0f32, 1.0]], &dev)?;
        let loss = weighted_mse(&off, &v, Some(&pixels), &w)?.to_scalar::<f32>()?;
        assert!((loss - 1.5).abs() < 1e-6, "{loss}");
        Ok(())
    }
}
