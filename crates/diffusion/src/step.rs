//! One update of the reverse process, written for v-prediction.
//!
//! With `z_t = alpha_t x + sigma_t eps` and `v = alpha_t eps - sigma_t x`, a v estimate gives
//! `x_hat = alpha_t z_t - sigma_t v_hat` and `eps_hat = sigma_t z_t + alpha_t v_hat`. From time `t`
//! to an earlier time `s`:
//! - DDIM (Song et al. 2021, eta = 0): `z_s = alpha_s x_hat + sigma_s eps_hat`, deterministic;
//! - ancestral: a draw from the DDPM posterior `q(z_s | z_t, x = x_hat)` (Kingma et al. 2021, eq. 27).

use candle_core::{Result, Tensor};

/// The signal and noise scales of one point of the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scales {
    /// `alpha_t`.
    pub alpha: f64,
    /// `sigma_t`.
    pub sigma: f64,
}

/// `(x_hat, eps_hat)` from a v estimate at scales `at`.
pub fn predict_x0_eps(z: &Tensor, v: &Tensor, at: Scales) -> Result<(Tensor, Tensor)> {
    let x0 = ((z * at.alpha)? - (v * at.sigma)?)?;
    let eps = ((z * at.sigma)? + (v * at.alpha)?)?;
    Ok((x0, eps))
}

/// DDIM (eta = 0) update to scales `to`.
pub fn ddim(x0: &Tensor, eps: &Tensor, to: Scales) -> Result<Tensor> {
    (x0 * to.alpha)? + (eps * to.sigma)?
}

/// Mean coefficients and standard deviation of `q(z_s | z_t, x)`:
/// `mean = c_z z_t + c_x x`, `std`.
pub fn posterior_coefficients(from: Scales, to: Scales) -> (f64, f64, f64) {
    let alpha_ts = from.alpha / to.alpha;
    let var_t = from.sigma * from.sigma;
    let var_s = to.sigma * to.sigma;
    let var_ts = (var_t - alpha_ts * alpha_ts * var_s).max(0.0);
    let c_z = alpha_ts * var_s / var_t;
    let c_x = to.alpha * var_ts / var_t;
    let std = (var_ts * var_s / var_t).sqrt();
    (c_z, c_x, std)
}

/// Ancestral update from `from` to `to`, with `noise ~ N(0, I)` shaped like `z`.
pub fn ancestral(
    z: &Tensor,
    x0: &Tensor,
    noise: &Tensor,
    from: Scales,
    to: Scales,
) -> Result<Tensor> {
    let (c_z, c_x, std) = posterior_coefficients(from, to);
    ((z * c_z)? + (x0 * c_x)?)? + (noise * std)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn scalar(t: &Tensor) -> f32 {
        t.to_vec1::<f32>().expect("1-d tensor")[0]
    }

    #[test]
    fn v_prediction_inverts_the_forward_process() -> Result<()> {
        // x = 0.3, eps = -1.2, alpha = 0.6, sigma = 0.8.
        let (alpha, sigma, x, eps) = (0.6f64, 0.8f64, 0.3f64, -1.2f64);
        let z = alpha * x + sigma * eps;
        let v = alpha * eps - sigma * x;
        let dev = Device::Cpu;
        let (x0, e) = predict_x0_eps(
            &Tensor::new(&[z as f32], &dev)?,
            &Tensor::new(&[v as f32], &dev)?,
            Scales { alpha, sigma },
        )?;
        assert!((scalar(&x0) as f64 - x).abs() < 1e-6);
        assert!((scalar(&e) as f64 - eps).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn posterior_is_a_point_mass_when_stepping_nowhere_and_ddim_when_sigma_s_is_zero() {
        let at = Scales {
            alpha: 0.6,
            sigma: 0.8,
        };
        let (c_z, c_x, std) = posterior_coefficients(at, at);
        assert!((c_z - 1.0).abs() < 1e-12 && c_x.abs() < 1e-12 && std.abs() < 1e-12);
        let clean = Scales {
            alpha: 1.0,
            sigma: 0.0,
        };
        let (c_z, c_x, std) = posterior_coefficients(at, clean);
        assert!(c_z.abs() < 1e-12 && (c_x - 1.0).abs() < 1e-12 && std.abs() < 1e-12);
    }

    #[test]
    fn ancestral_step_matches_hand_computed_posterior() -> Result<()> {
        // from alpha=0.6 sigma=0.8 to alpha=0.8 sigma=0.6:
        // alpha_ts = 0.75, var_ts = 0.64 - 0.5625 * 0.36 = 0.4375,
        // c_z = 0.75 * 0.36 / 0.64 = 0.421875, c_x = 0.8 * 0.4375 / 0.64 = 0.546875,
        // std = sqrt(0.4375 * 0.36 / 0.64) = sqrt(0.24609375) = 0.49607837...
        let dev = Device::Cpu;
        let out = ancestral(
            &Tensor::new(&[1.0f32], &dev)?,
            &Tensor::new(&[0.5f32], &dev)?,
            &Tensor::new(&[2.0f32], &dev)?,
            Scales {
                alpha: 0.6,
                sigma: 0.8,
            },
            Scales {
                alpha: 0.8,
                sigma: 0.6,
            },
        )?;
        let expected = 0.421875 + 0.546875 * 0.5 + 2.0 * 0.24609375f64.sqrt();
        assert!((scalar(&out) as f64 - expected).abs() < 1e-6);
        Ok(())
    }
}
