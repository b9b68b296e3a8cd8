//! The fused sampler step on a GPU against its CPU reference, on random batches in which every
//! sample has its own time, guidance, threshold and update (last / DDIM / ancestral).
//!
//! Runs wherever a CUDA device opens (a `--features cuda` build on a GPU machine); elsewhere it
//! prints "skipped: no CUDA device" and returns.
//!
//! Tolerances: the kernels round every operation where the reference does (no FMA contraction)
//! and the quantile is exact, so the last and DDIM steps are expected to agree bit for bit; the
//! test allows 1e-5 relative (of max(1, |value|)) so a driver that reassociates nothing but
//! still differs in a last bit fails loudly only when it is more than rounding. Ancestral steps
//! add Philox noise through `logf` / `sinf` / `cosf`, whose CUDA versions are within 2 ulp of
//! the CPU's: with radii below 5.8 and std <= 1 that is below 1e-5 as well. Flags must be equal.

use candle_core::{DType, Device, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vidcascade_kernels::sampler::{FusedSamplerStep, NonFiniteFlag, SampleSpec, Update};

/// The GPU, or `None` after saying why the test is skipped.
fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(device) => Some(device),
        Err(err) => {
            println!("skipped: no CUDA device");
            eprintln!("({err})");
            None
        }
    }
}

/// `count` values uniform in `[-scale, scale)`.
fn uniform(rng: &mut ChaCha8Rng, count: usize, scale: f64) -> Vec<f32> {
    (0..count)
        .map(|_| rng.random_range(-scale..scale) as f32)
        .collect()
}

/// A random batch: `(z, v_all, specs)`; sample `b` uses row `b` and, when guided, row
/// `batch + (its index among the guided)`, as `step_batch` lays them out.
fn batch(rng: &mut ChaCha8Rng, batch: usize, n: usize) -> (Vec<f32>, Vec<f32>, Vec<SampleSpec>) {
    let mut specs = Vec::new();
    let mut guided = 0;
    for b in 0..batch {
        let phi_t = 0.05 + rng.random::<f64>() * 1.45;
        let phi_s = phi_t * rng.random::<f64>();
        let guidance = [1.0, 0.0, 3.0, 7.5][rng.random_range(0..4)];
        let uncond_row = (guidance != 1.0).then(|| {
            guided += 1;
            batch + guided - 1
        });
        let (var_t, var_s) = (phi_t.sin().powi(2), phi_s.sin().powi(2));
        let alpha_ts = phi_t.cos() / phi_s.cos();
        let var_ts = (var_t - alpha_ts * alpha_ts * var_s).max(0.0);
        let update = match rng.random_range(0..3) {
            0 => Update::Last,
            1 => Update::Ddim {
                alpha_s: phi_s.cos(),
                sigma_s: phi_s.sin(),
            },
            _ => Update::Ancestral {
                c_z: alpha_ts * var_s / var_t,
                c_x: phi_s.cos() * var_ts / var_t,
                std: (var_ts * var_s / var_t).sqrt(),
                seed: rng.random(),
                stream: b as u64,
            },
        };
        specs.push(SampleSpec {
            cond_row: b,
            uncond_row,
            guidance,
            alpha_t: phi_t.cos(),
            sigma_t: phi_t.sin(),
            threshold_quantile: [None, Some(0.995), Some(0.5), Some(1.0)][rng.random_range(0..4)],
            update,
            step: rng.random_range(1..=40),
        });
    }
    let z = uniform(rng, batch * n, 2.0);
    let v_all = uniform(rng, (batch + guided) * n, 3.0);
    (z, v_all, specs)
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tolerance: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let bound = tolerance * w.abs().max(1.0);
        assert!(
            (g - w).abs() <= bound || (g.is_nan() && w.is_nan()),
            "{what}[{i}]: GPU {g} vs CPU {w} (tolerance {bound})"
        );
    }
}

#[test]
fn fused_sampler_step_on_the_gpu_matches_its_cpu_reference() -> Result<()> {
    let Some(gpu) = gpu() else { return Ok(()) };
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    let shapes = [
        (1, 1),
        (3, 5),
        (4, 4096),
        (8, 3 * 16 * 24 * 40),
        (2, 3 * 8 * 64 * 64 + 3),
    ];
    for (b, n) in shapes {
        for _ in 0..4 {
            let (z, v_all, specs) = batch(&mut rng, b, n);
            let rows = v_all.len() / n;
            let op = FusedSamplerStep::new(specs);
            let cpu = Device::Cpu;
            let z_cpu = Tensor::from_vec(z, (b, n), &cpu)?;
            let v_cpu = Tensor::from_vec(v_all, (rows, n), &cpu)?;
            let flags_cpu = Tensor::zeros(b, DType::U32, &cpu)?;
            let want = op.forward(&z_cpu, &v_cpu, &flags_cpu)?;
            let got = op.forward(
                &z_cpu.to_device(&gpu)?,
                &v_cpu.to_device(&gpu)?,
                &flags_cpu.to_device(&gpu)?,
            )?;
            let values = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
            assert_close("x0", &values(&got.x0)?, &values(&want.x0)?, 1e-5);
            assert_close(
                "z_next",
                &values(&got.z_next)?,
                &values(&want.z_next)?,
                1e-5,
            );
            assert_eq!(got.flags.to_vec1::<u32>()?, want.flags.to_vec1::<u32>()?);
        }
    }
    Ok(())
}

#[test]
fn a_non_finite_sample_is_flagged_on_the_gpu_and_the_others_are_not() -> Result<()> {
    let Some(gpu) = gpu() else { return Ok(()) };
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (b, n) = (4, 10_000);
    let (z, mut v_all, specs) = batch(&mut rng, b, n);
    v_all[2 * n + 9_999] = f32::NAN; // sample 2's conditional row, last element
    let rows = v_all.len() / n;
    let op = FusedSamplerStep::new(specs.clone());
    let flags_in = Tensor::new(&[0u32, 0, 0, (3 << 2) | 2], &gpu)?;
    let out = op.forward(
        &Tensor::from_vec(z, (b, n), &gpu)?,
        &Tensor::from_vec(v_all, (rows, n), &gpu)?,
        &flags_in,
    )?;
    let flags = out.flags.to_vec1::<u32>()?;
    let decoded: Vec<Option<NonFiniteFlag>> =
        flags.iter().map(|&f| NonFiniteFlag::decode(f)).collect();
    assert_eq!(decoded[0], None);
    assert_eq!(decoded[1], None);
    assert_eq!(
        decoded[2],
        Some(NonFiniteFlag {
            step: specs[2].step,
            model_output: true
        })
    );
    assert_eq!(flags[3], (3 << 2) | 2, "an earlier flag is kept");
    Ok(())
}
