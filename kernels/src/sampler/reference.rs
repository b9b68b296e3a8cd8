//! The fused sampler step over plain slices: the CPU reference of `kernels/cuda/sampler_step.cu`.
//!
//! It is written phase by phase like the kernels (predict, then the radix select of each
//! thresholded sample, then the update), with the same buffers (the predict phase parks `eps`
//! in the `z_next` buffer, the update overwrites it), the same operation order and the same
//! flag rules, so that the tests of this file test the algorithm the GPU runs, and the CUDA
//! test can compare the two output for output. It is a reference, not the CPU serving path:
//! that stays `vidcascade_diffusion`'s tensor code, which it matches bit for bit.

use super::radix::{self, magnitude_key};
use super::{
    DeviceParams, FLAG_MODEL_OUTPUT, FLAG_X0_ESTIMATE, UPDATE_ANCESTRAL, UPDATE_DDIM, UPDATE_LAST,
};

/// The three outputs of a step, row-major `[B, N]`, `[B, N]`, `[B]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StepValues {
    pub(crate) z_next: Vec<f32>,
    pub(crate) x0: Vec<f32>,
    pub(crate) flags: Vec<u32>,
}

/// Runs the step for `params.len()` samples of `n` elements: `z` is `[B, n]`, `v_all` `[R, n]`,
/// `flags_in` `[B]`. Shapes and rows are checked by the caller (`FusedSamplerStep::forward`).
pub(crate) fn fused_step(
    z: &[f32],
    v_all: &[f32],
    n: usize,
    params: &[DeviceParams],
    flags_in: &[u32],
) -> StepValues {
    let batch = params.len();
    let mut out = StepValues {
        z_next: vec![0.0; batch * n],
        x0: vec![0.0; batch * n],
        flags: vec![0; batch],
    };
    for (b, p) in params.iter().enumerate() {
        let rows = b * n..(b + 1) * n;
        let z_b = &z[rows.clone()];
        let x0 = &mut out.x0[rows.clone()];
        let z_next = &mut out.z_next[rows];
        let kinds = predict(z_b, v_all, n, p, x0, z_next);
        out.flags[b] = sticky_flag(flags_in[b], p.step, kinds);
        let limits = (p.threshold != 0).then(|| select_limits(x0, p));
        update(z_b, p, limits, x0, z_next);
    }
    out
}

/// Phase 1 (`vc_sampler_predict`): guidance, x0 into `x0`, eps into `eps`; returns the flag
/// kinds found (x0 only checked when thresholding, like `dynamic_threshold`).
fn predict(
    z: &[f32],
    v_all: &[f32],
    n: usize,
    p: &DeviceParams,
    x0: &mut [f32],
    eps: &mut [f32],
) -> u32 {
    let row = |r: i32| &v_all[r as usize * n..(r as usize + 1) * n];
    let cond = row(p.cond_row);
    let uncond = (p.uncond_row >= 0).then(|| row(p.uncond_row));
    let (mut bad_v, mut bad_x) = (false, false);
    for i in 0..n {
        let v = match uncond {
            Some(u) => u[i] + (cond[i] - u[i]) * p.guidance,
            None => cond[i],
        };
        x0[i] = z[i] * p.alpha_t - v * p.sigma_t;
        eps[i] = z[i] * p.sigma_t + v * p.alpha_t;
        bad_v |= !v.is_finite();
        bad_x |= p.threshold != 0 && !x0[i].is_finite();
    }
    (if bad_v { FLAG_MODEL_OUTPUT } else { 0 }) | (if bad_x { FLAG_X0_ESTIMATE } else { 0 })
}

/// A flag, once set, is kept; else this step's kinds are recorded with the step.
fn sticky_flag(previous: u32, step: u32, kinds: u32) -> u32 {
    match (previous, kinds) {
        (0, 0) => 0,
        (0, k) => (step << 2) | k,
        (set, _) => set,
    }
}

/// Phase 2 (the radix passes and `vc_sampler_select`): the clamp limit and factor of this
/// sample's dynamic thresholding.
fn select_limits(x0: &[f32], p: &DeviceParams) -> (f32, f32) {
    let keys: Vec<u32> = x0.iter().map(|&x| magnitude_key(x)).collect();
    let (lo, hi) = radix::order_statistics(&keys, p.rank_lo, p.rank_hi);
    radix::threshold_limits(lo, hi, p.frac)
}

/// Phase 3 (`vc_sampler_update`): threshold x0 in place, then overwrite `z_next` (holding eps)
/// with the update, four elements (one Philox draw) at a time.
fn update(
    z: &[f32],
    p: &DeviceParams,
    limits: Option<(f32, f32)>,
    x0: &mut [f32],
    z_next: &mut [f32],
) {
    let key = p.noise_key();
    for (group, start) in (0..x0.len()).step_by(4).enumerate() {
        let noise = if p.update == UPDATE_ANCESTRAL {
            key.normals4(group as u32)
        } else {
            [0.0; 4]
        };
        for (k, i) in (start..(start + 4).min(x0.len())).enumerate() {
            let x = match limits {
                Some((limit, factor)) => clamp_to(x0[i], limit) * factor,
                None => x0[i],
            };
            z_next[i] = match p.update {
                UPDATE_LAST => clamp_to(x, 1.0),
                UPDATE_DDIM => x * p.alpha_s + z_next[i] * p.sigma_s,
                _ => z[i] * p.c_z + x * p.c_x + noise[k] * p.noise_std,
            };
            x0[i] = x;
        }
    }
}

/// `min(max(x, -limit), limit)`: candle's `clamp` (maximum, then minimum) and the kernel's
/// `fminf(fmaxf(..))`. Not `f32::clamp`, which keeps a NaN where these return `-limit`: only a
/// flagged sample can hold one, but the reference should still fall out as the kernel does.
#[allow(clippy::manual_clamp)]
fn clamp_to(x: f32, limit: f32) -> f32 {
    x.max(-limit).min(limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::{Dims, SampleSpec, Update};

    fn params(spec: SampleSpec, rows: usize, n: usize) -> DeviceParams {
        DeviceParams::new(&spec, Dims { batch: 1, rows, n }).expect("valid spec")
    }

    fn spec(update: Update, threshold: Option<f64>) -> SampleSpec {
        SampleSpec {
            cond_row: 0,
            uncond_row: Some(1),
            guidance: 3.0,
            alpha_t: 0.6,
            sigma_t: 0.8,
            threshold_quantile: threshold,
            update,
            step: 2,
        }
    }

    #[test]
    fn ddim_step_matches_hand_computation() {
        // v = 0.5 + 3 (1 - 0.5) = 2; x0 = 0.6 - 1.6 = -1; eps = 0.8 + 1.2 = 2.
        let p = params(
            spec(
                Update::Ddim {
                    alpha_s: 0.8,
                    sigma_s: 0.6,
                },
                None,
            ),
            2,
            1,
        );
        let out = fused_step(&[1.0], &[1.0, 0.5], 1, &[p], &[0]);
        assert!((out.x0[0] + 1.0).abs() < 1e-6, "{out:?}");
        assert!((out.z_next[0] - (-0.8 + 1.2)).abs() < 1e-6, "{out:?}");
        assert_eq!(out.flags, vec![0]);
    }

    #[test]
    fn thresholding_scales_by_the_quantile_and_the_last_step_clamps() {
        // guidance 1 (no uncond), alpha 1 sigma 0 -> x0 = z. |x0| = [0, 1, 2, 3, 100], p = 0.75
        // -> s = 3 (the case of threshold.rs's tests).
        let s = SampleSpec {
            guidance: 1.0,
            alpha_t: 1.0,
            sigma_t: 0.0,
            ..spec(Update::Last, Some(0.75))
        };
        let p = params(s, 1, 5);
        let z = [100.0, -3.0, 2.0, 1.0, 0.0];
        let out = fused_step(&z, &[0.0; 5], 5, &[p], &[0]);
        assert_eq!(out.x0, vec![1.0, -1.0, 2.0 / 3.0, 1.0 / 3.0, 0.0]);
        assert_eq!(out.z_next, out.x0);
    }

    #[test]
    fn non_finite_flags_are_per_sample_sticky_and_record_the_first_step() {
        let p = params(spec(Update::Last, Some(0.9)), 4, 3);
        let good = DeviceParams {
            cond_row: 2,
            uncond_row: 3,
            ..p
        };
        let v = [
            0.0,
            f32::NAN,
            0.0,
            0.0,
            0.0,
            0.0,
            0.1,
            0.2,
            0.3,
            0.1,
            0.2,
            0.3,
        ];
        let out = fused_step(&[0.5; 6], &v, 3, &[p, good], &[0, 0]);
        assert_eq!(
            out.flags,
            vec![(2 << 2) | FLAG_MODEL_OUTPUT | FLAG_X0_ESTIMATE, 0]
        );
        // An earlier step's flag stays, whatever this step finds.
        let out = fused_step(&[0.5; 6], &v, 3, &[p, good], &[1 << 2 | 2, 9 << 2 | 1]);
        assert_eq!(out.flags, vec![1 << 2 | 2, 9 << 2 | 1]);
    }

    #[test]
    fn an_overflowing_x0_is_flagged_only_when_thresholding() {
        // Finite v, but alpha z - sigma v overflows to -inf.
        let big = spec(Update::Last, Some(0.9));
        let s = SampleSpec {
            guidance: 1.0,
            alpha_t: 1.0,
            sigma_t: 1.0,
            ..big
        };
        let z = [-f32::MAX];
        let v = [f32::MAX];
        let flagged = fused_step(&z, &v, 1, &[params(s, 1, 1)], &[0]);
        assert_eq!(flagged.flags, vec![(2 << 2) | FLAG_X0_ESTIMATE]);
        let unthresholded = SampleSpec {
            threshold_quantile: None,
            ..s
        };
        let quiet = fused_step(&z, &v, 1, &[params(unthresholded, 1, 1)], &[0]);
        assert_eq!(quiet.flags, vec![0]);
    }

    #[test]
    fn ancestral_noise_is_the_philox_stream_of_the_sample() {
        // c_z = c_x = 0, std = 1: z_next is the noise itself, element i from group i / 4.
        let s = SampleSpec {
            guidance: 1.0,
            ..spec(
                Update::Ancestral {
                    c_z: 0.0,
                    c_x: 0.0,
                    std: 1.0,
                    seed: 9,
                    stream: 2,
                },
                None,
            )
        };
        let out = fused_step(&[0.3; 7], &[0.1; 7], 7, &[params(s, 1, 7)], &[0]);
        let key = crate::sampler::NoiseKey {
            seed: 9,
            stream: 2,
            step: 2,
        };
        assert_eq!(out.z_next, key.normals(7));
    }
}
