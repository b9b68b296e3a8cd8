//! The fused sampler step (`vidcascade_kernels::sampler`, the GPU path of `step_batch`) held to
//! the sampler's own tensor functions, on the CPU where its reference runs.
//!
//! - the reference equals guidance + `predict_x0_eps` + `dynamic_threshold` + `ddim` /
//!   `ancestral` (with the same Philox noise given explicitly) / the last-step clamp, exactly
//!   (f32 `==`, so up to the sign of zero), on random batches where every sample has its own
//!   time, update, guidance and threshold;
//! - its radix-select threshold equals `threshold_scale`'s sorted one, exactly;
//! - a non-finite model output flags exactly its own sample;
//! - `step_batch_fused` (what `step_batch` runs on CUDA) equals `step_batch` bit for bit on DDIM
//!   runs, draws its ancestral noise from Philox, and reports a NaN sample at its last step.

use candle_core::{DType, Device, Tensor};
use proptest::prelude::*;
use vidcascade_diffusion::guidance::classifier_free_guidance;
use vidcascade_diffusion::sampler::{ModelRow, step_batch_fused};
use vidcascade_diffusion::step::{Scales, ancestral, ddim, posterior_coefficients, predict_x0_eps};
use vidcascade_diffusion::threshold::{dynamic_threshold, threshold_scale};
use vidcascade_diffusion::{
    CosineSchedule, DiffusionError, SampleState, SamplerKind, SamplerSettings, VelocityModel,
    step_batch,
};
use vidcascade_kernels::sampler::radix::radix_threshold_scale;
use vidcascade_kernels::sampler::{
    FLAG_MODEL_OUTPUT, FLAG_X0_ESTIMATE, FusedSamplerStep, NoiseKey, SampleSpec, Update,
};

/// One sample of a random batch: its spec's ingredients.
#[derive(Debug, Clone)]
struct Case {
    t: f64,
    s: f64,
    /// 0 last step, 1 DDIM, 2 ancestral.
    kind: u8,
    guidance: f64,
    threshold: Option<f64>,
    seed: u64,
    step: u32,
}

fn case() -> impl Strategy<Value = Case> {
    (
        0.02f64..1.0,
        0.0f64..1.0,
        0u8..3,
        prop::sample::select(vec![1.0, 0.0, 2.5, 7.0]),
        prop_oneof![
            Just(None),
            Just(Some(1.0)),
            Just(Some(0.995)),
            (0.01f64..1.0).prop_map(Some)
        ],
        any::<u64>(),
        1u32..200,
    )
        .prop_map(|(t, frac, kind, guidance, threshold, seed, step)| Case {
            t,
            s: t * frac,
            kind,
            guidance,
            threshold,
            seed,
            step,
        })
}

/// The batch: cases, elements per sample, and the values of `z` and of the model rows, scaled
/// so some samples stay inside [-1, 1] and others need thresholding.
fn batch() -> impl Strategy<Value = (Vec<Case>, usize, Vec<f32>, Vec<f32>)> {
    (
        prop::collection::vec(case(), 1..5),
        1usize..300,
        0.1f32..6.0,
    )
        .prop_flat_map(|(cases, n, scale)| {
            let guided = cases.iter().filter(|c| c.guidance != 1.0).count();
            let values = move |count| prop::collection::vec(-scale..scale, count);
            (
                Just(cases.clone()),
                Just(n),
                values(cases.len() * n),
                values((cases.len() + guided) * n),
            )
        })
}

fn scales(t: f64) -> Scales {
    let (alpha, sigma) = CosineSchedule::default().alpha_sigma(t);
    Scales { alpha, sigma }
}

/// The fused op's spec of case `b` (cond row `b`, uncond row `uncond`).
fn spec(c: &Case, b: usize, uncond: Option<usize>) -> SampleSpec {
    let (from, to) = (scales(c.t), scales(c.s));
    let update = match c.kind {
        0 => Update::Last,
        1 => Update::Ddim {
            alpha_s: to.alpha,
            sigma_s: to.sigma,
        },
        _ => {
            let (c_z, c_x, std) = posterior_coefficients(from, to);
            Update::Ancestral {
                c_z,
                c_x,
                std,
                seed: c.seed,
                stream: b as u64,
            }
        }
    };
    SampleSpec {
        cond_row: b,
        uncond_row: uncond,
        guidance: c.guidance,
        alpha_t: from.alpha,
        sigma_t: from.sigma,
        threshold_quantile: c.threshold,
        update,
        step: c.step,
    }
}

/// What `advance` computes for case `b`, with the sampler's tensor functions: `(z_next, x0)`.
fn expected(
    c: &Case,
    b: usize,
    z: &Tensor,
    v_cond: &Tensor,
    v_uncond: Option<&Tensor>,
) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
    let v = match v_uncond {
        Some(u) => classifier_free_guidance(v_cond, u, c.guidance)?,
        None => v_cond.clone(),
    };
    let (from, to) = (scales(c.t), scales(c.s));
    let (x0, eps) = predict_x0_eps(z, &v, from)?;
    let x0 = match c.threshold {
        Some(p) => dynamic_threshold(&x0.unsqueeze(0)?, p, 1)?.squeeze(0)?,
        None => x0,
    };
    let z_next = match c.kind {
        0 => x0.clamp(-1f32, 1f32)?,
        1 => ddim(&x0, &eps, to)?,
        _ => {
            let key = NoiseKey {
                seed: c.seed,
                stream: b as u64,
                step: c.step,
            };
            let n = z.elem_count();
            let noise = Tensor::from_vec(key.normals(n), n, z.device())?;
            ancestral(z, &x0, &noise, from, to)?
        }
    };
    Ok((z_next.to_vec1()?, x0.to_vec1()?))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn fused_reference_equals_the_sampler_functions((cases, n, z, v) in batch()) {
        let dev = Device::Cpu;
        let batch = cases.len();
        let rows = v.len() / n;
        let z = Tensor::from_vec(z, (batch, n), &dev).expect("z");
        let v_all = Tensor::from_vec(v, (rows, n), &dev).expect("v");
        let mut next_uncond = batch;
        let mut specs = Vec::new();
        let mut uncond_rows = Vec::new();
        for (b, c) in cases.iter().enumerate() {
            let uncond = (c.guidance != 1.0).then(|| {
                next_uncond += 1;
                next_uncond - 1
            });
            specs.push(spec(c, b, uncond));
            uncond_rows.push(uncond);
        }
        let flags = Tensor::zeros(batch, DType::U32, &dev).expect("flags");
        let out = FusedSamplerStep::new(specs).forward(&z, &v_all, &flags).expect("fused step");
        let got_z = out.z_next.to_vec2::<f32>().expect("z_next");
        let got_x0 = out.x0.to_vec2::<f32>().expect("x0");
        prop_assert_eq!(out.flags.to_vec1::<u32>().expect("flags"), vec![0; batch]);
        for (b, c) in cases.iter().enumerate() {
            let v_uncond = uncond_rows[b].map(|r| v_all.get(r).expect("row"));
            let (want_z, want_x0) = expected(
                c,
                b,
                &z.get(b).expect("z row"),
                &v_all.get(b).expect("cond row"),
                v_uncond.as_ref(),
            )
            .expect("tensor path");
            prop_assert!(got_x0[b] == want_x0, "x0 of sample {b} ({c:?})");
            prop_assert!(got_z[b] == want_z, "z_next of sample {b} ({c:?})");
        }
    }

    #[test]
    fn radix_threshold_equals_the_sorted_threshold(
        values in prop_oneof![
            prop::collection::vec(-3.0f32..3.0, 1..2000),
            prop::collection::vec(-0.9f32..0.9, 1..50),
            prop::collection::vec(prop::sample::select(vec![-2.0f32, -1.0, 0.0, 0.5, 1.5, 4.0]), 1..300),
            (prop::num::f32::NORMAL | prop::num::f32::SUBNORMAL | prop::num::f32::ZERO, 1usize..40)
                .prop_map(|(x, n)| vec![x; n]),
            prop::collection::vec(prop::num::f32::NORMAL, 1..8),
        ],
        p in prop_oneof![Just(1.0), Just(0.995), 1e-6f64..1.0],
    ) {
        prop_assert_eq!(radix_threshold_scale(&values, p), threshold_scale(&values, p));
    }
}

#[test]
fn a_non_finite_model_output_flags_exactly_its_own_sample() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let c = Case {
        t: 0.6,
        s: 0.5,
        kind: 1,
        guidance: 1.0,
        threshold: Some(0.995),
        seed: 1,
        step: 5,
    };
    let n = 64;
    let mut v = vec![0.25f32; 3 * n];
    v[n + 17] = f32::INFINITY;
    let specs = (0..3).map(|b| spec(&c, b, None)).collect();
    let out = FusedSamplerStep::new(specs).forward(
        &Tensor::full(0.5f32, (3, n), &dev)?,
        &Tensor::from_vec(v, (3, n), &dev)?,
        &Tensor::zeros(3, DType::U32, &dev)?,
    )?;
    let flagged = (5 << 2) | FLAG_MODEL_OUTPUT | FLAG_X0_ESTIMATE;
    assert_eq!(out.flags.to_vec1::<u32>()?, vec![0, flagged, 0]);
    Ok(())
}

/// `v = scale * z` for conditional rows, `uncond_scale * z` for unconditional ones; NaN for every
/// row of `nan_sample`.
struct LinearModel {
    scale: f64,
    uncond_scale: f64,
    nan_sample: Option<usize>,
}

impl VelocityModel for LinearModel {
    fn predict_v(
        &self,
        z: &Tensor,
        _t: &[f64],
        rows: &[ModelRow],
    ) -> Result<Tensor, DiffusionError> {
        let mut out = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let k = match (row.unconditional, Some(row.sample) == self.nan_sample) {
                (_, true) => f64::NAN,
                (true, false) => self.uncond_scale,
                (false, false) => self.scale,
            };
            out.push((z.get(i)? * k)?);
        }
        Ok(Tensor::stack(&out, 0)?)
    }
}

fn settings(
    kind: SamplerKind,
    steps: usize,
    guidance: f64,
    threshold: Option<f64>,
) -> SamplerSettings {
    SamplerSettings {
        kind,
        steps,
        guidance,
        threshold_quantile: threshold,
        schedule: CosineSchedule::default(),
    }
}

fn values(t: &Tensor) -> anyhow::Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Runs both paths side by side until every state is done, comparing each step's outcome.
fn assert_paths_agree(mut cpu: Vec<SampleState>, model: &LinearModel) -> anyhow::Result<()> {
    let mut fused = cpu.clone();
    while cpu.iter().any(|s| !s.is_done()) {
        let a = step_batch(model, &mut cpu.iter_mut().collect::<Vec<_>>())?;
        let b = step_batch_fused(model, &mut fused.iter_mut().collect::<Vec<_>>())?;
        for (i, (a, b)) in a.into_iter().zip(b).enumerate() {
            match (a?, b?) {
                (Some(a), Some(b)) => assert_eq!(values(&a)?, values(&b)?, "x0 of state {i}"),
                (None, None) => {}
                other => anyhow::bail!("state {i}: outcomes differ: {other:?}"),
            }
            assert_eq!(
                values(cpu[i].latent())?,
                values(fused[i].latent())?,
                "state {i}"
            );
            assert_eq!(cpu[i].completed_steps(), fused[i].completed_steps());
        }
    }
    Ok(())
}

#[test]
fn step_batch_fused_equals_step_batch_on_ddim_runs() -> anyhow::Result<()> {
    let model = LinearModel {
        scale: -2.0,
        uncond_scale: 1.5,
        nan_sample: None,
    };
    let shape = [3, 2, 5, 7];
    let dev = Device::Cpu;
    let mut states = vec![
        SampleState::new(
            &shape,
            settings(SamplerKind::Ddim, 5, 4.0, Some(0.995)),
            1,
            0,
            &dev,
        )?,
        SampleState::new(
            &shape,
            settings(SamplerKind::Ddim, 3, 1.0, None),
            2,
            1,
            &dev,
        )?,
        SampleState::new(
            &shape,
            settings(SamplerKind::Ddim, 7, 0.0, Some(0.6)),
            3,
            2,
            &dev,
        )?,
        SampleState::new(
            &shape,
            settings(SamplerKind::Ddim, 4, 7.5, Some(1.0)),
            4,
            3,
            &dev,
        )?,
    ];
    // A state that is two steps ahead of the others: each sample keeps its own time.
    let ahead = &mut states[2];
    for _ in 0..2 {
        step_batch(&model, &mut [&mut *ahead])?.remove(0)?;
    }
    assert_paths_agree(states, &model)
}

#[test]
fn step_batch_fused_draws_ancestral_noise_from_philox() -> anyhow::Result<()> {
    let model = LinearModel {
        scale: 0.3,
        uncond_scale: -0.2,
        nan_sample: None,
    };
    let shape = [3, 2, 4, 4];
    let dev = Device::Cpu;
    let config = settings(SamplerKind::Ancestral, 4, 2.0, Some(0.995));
    let start = SampleState::new(&shape, config, 11, 5, &dev)?;
    let mut state = start.clone();
    let x0 = step_batch_fused(&model, &mut [&mut state])?
        .remove(0)?
        .expect("active");

    // The same step with the tensor functions and the Philox noise of seed 11, stream 5, step 1.
    let z = start.latent();
    let v_cond = (z * 0.3)?;
    let v = classifier_free_guidance(&v_cond, &(z * -0.2)?, 2.0)?;
    let (from, to) = (scales(1.0), scales(0.75));
    let (x0_want, _) = predict_x0_eps(z, &v, from)?;
    let x0_want = dynamic_threshold(&x0_want.unsqueeze(0)?, 0.995, 1)?.squeeze(0)?;
    let key = NoiseKey {
        seed: 11,
        stream: 5,
        step: 1,
    };
    let noise = Tensor::from_vec(key.normals(z.elem_count()), z.dims(), &dev)?;
    let z_want = ancestral(z, &x0_want, &noise, from, to)?;
    assert_eq!(values(&x0)?, values(&x0_want)?);
    assert_eq!(values(state.latent())?, values(&z_want)?);

    // Whole runs: repeatable for a seed, different for another, in range at the end.
    let run = |seed: u64| -> anyhow::Result<Vec<f32>> {
        let mut s = SampleState::new(&shape, config, seed, 0, &dev)?;
        while !s.is_done() {
            step_batch_fused(&model, &mut [&mut s])?.remove(0)?;
        }
        values(s.latent())
    };
    let a = run(3)?;
    assert_eq!(a, run(3)?);
    assert_ne!(a, run(4)?);
    assert!(a.iter().all(|v| (-1.0..=1.0).contains(v)));
    Ok(())
}

#[test]
fn step_batch_fused_reports_a_nan_sample_at_its_last_step() -> anyhow::Result<()> {
    let model = LinearModel {
        scale: 0.1,
        uncond_scale: 0.0,
        nan_sample: Some(1),
    };
    let shape = [3, 1, 2, 2];
    let dev = Device::Cpu;
    let config = settings(SamplerKind::Ddim, 3, 2.0, None);
    let mut states: Vec<SampleState> = (0..3)
        .map(|i| SampleState::new(&shape, config, 9, i, &dev))
        .collect::<Result<_, _>>()?;
    for step in 1..=3 {
        let outcomes = step_batch_fused(&model, &mut states.iter_mut().collect::<Vec<_>>())?;
        for (i, outcome) in outcomes.into_iter().enumerate() {
            match (i, step, outcome) {
                (1, 3, Err(DiffusionError::NonFinite { what, sample, step })) => {
                    assert_eq!((what, sample, step), ("model output", 1, 1));
                }
                (1, 3, other) => anyhow::bail!("sample 1 must fail at the last step: {other:?}"),
                // No sync before the last step: the bad sample runs on, flagged on the device.
                (_, _, outcome) => assert!(outcome?.is_some(), "state {i} step {step}"),
            }
        }
    }
    assert_eq!(
        states[1].completed_steps(),
        2,
        "a failed sample is left as it was"
    );
    for i in [0, 2] {
        assert!(states[i].is_done());
        assert!(values(states[i].latent())?.iter().all(|v| v.is_finite()));
    }
    Ok(())
}
