//! The cosine noise schedule in log-SNR form, and the time grid of a sampling run.
//!
//! Time `t` runs from 1 (pure noise) to 0 (data). Following "simple diffusion" (Hoogeboom et al.
//! 2023) and Imagen, the cosine schedule is written through its log signal-to-noise ratio
//! `lambda(t) = -2 ln tan(a t + b)`, with `a` and `b` chosen so lambda is clipped to
//! `[logsnr_min, logsnr_max]` instead of reaching +-infinity at the ends. Then
//! `alpha_t = cos(a t + b)` and `sigma_t = sin(a t + b)`, so `alpha^2 + sigma^2 = 1` exactly.

use serde::{Deserialize, Serialize};

/// A cosine schedule clipped to a log-SNR range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CosineSchedule {
    /// log-SNR at t = 1 (the noisiest point).
    pub logsnr_min: f64,
    /// log-SNR at t = 0 (the cleanest point).
    pub logsnr_max: f64,
}

impl Default for CosineSchedule {
    fn default() -> Self {
        Self {
            logsnr_min: -20.0,
            logsnr_max: 20.0,
        }
    }
}

impl CosineSchedule {
    /// The angle offset `b`: phi(0) = atan(exp(-logsnr_max / 2)).
    fn b(&self) -> f64 {
        (-0.5 * self.logsnr_max).exp().atan()
    }

    /// The angle slope `a`: phi(1) - phi(0).
    fn a(&self) -> f64 {
        (-0.5 * self.logsnr_min).exp().atan() - self.b()
    }

    /// The angle `phi(t) = a t + b`; `alpha = cos(phi)`, `sigma = sin(phi)`.
    pub fn angle(&self, t: f64) -> f64 {
        self.a() * t.clamp(0.0, 1.0) + self.b()
    }

    /// `(alpha_t, sigma_t)`.
    pub fn alpha_sigma(&self, t: f64) -> (f64, f64) {
        let phi = self.angle(t);
        (phi.cos(), phi.sin())
    }

    /// log signal-to-noise ratio `lambda(t) = ln(alpha^2 / sigma^2)`.
    pub fn logsnr(&self, t: f64) -> f64 {
        -2.0 * self.angle(t).tan().ln()
    }

    /// The inverse of [`Self::logsnr`]: the time at which the schedule reaches `logsnr`.
    pub fn time_of_logsnr(&self, logsnr: f64) -> f64 {
        let phi = (-0.5 * logsnr).exp().atan();
        ((phi - self.b()) / self.a()).clamp(0.0, 1.0)
    }

    /// The `steps + 1` times of a run with `steps` uniform steps: 1, 1 - 1/steps, ..., 0.
    pub fn time_grid(steps: usize) -> Vec<f64> {
        (0..=steps).map(|i| 1.0 - i as f64 / steps as f64).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_hit_the_clipped_logsnr_range() {
        let s = CosineSchedule::default();
        assert!((s.logsnr(0.0) - 20.0).abs() < 1e-9);
        assert!((s.logsnr(1.0) + 20.0).abs() < 1e-9);
        // Symmetric range: the midpoint is logsnr 0, i.e. alpha = sigma.
        let (a, sg) = s.alpha_sigma(0.5);
        assert!((a - sg).abs() < 1e-12);
    }

    #[test]
    fn alpha_sigma_lie_on_the_unit_circle_and_logsnr_inverts() {
        let s = CosineSchedule {
            logsnr_min: -15.0,
            logsnr_max: 12.0,
        };
        for i in 0..=20 {
            let t = i as f64 / 20.0;
            let (a, sg) = s.alpha_sigma(t);
            assert!((a * a + sg * sg - 1.0).abs() < 1e-12);
            assert!((s.logsnr(t) - (a * a / (sg * sg)).ln()).abs() < 1e-6);
            assert!((s.time_of_logsnr(s.logsnr(t)) - t).abs() < 1e-9);
        }
    }

    #[test]
    fn time_grid_runs_from_one_to_zero() {
        assert_eq!(
            CosineSchedule::time_grid(4),
            vec![1.0, 0.75, 0.5, 0.25, 0.0]
        );
    }
}
