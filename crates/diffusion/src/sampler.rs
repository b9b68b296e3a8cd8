//! Sampling loops with per-sample state, so a batch can mix requests at different steps.
//!
//! A [`SampleState`] is one video being denoised: its current latent `z`, its own time grid,
//! settings and noise stream. [`step_batch`] advances any set of states by one step with a single
//! network call: every state contributes a conditional row, and those with guidance `!= 1` also an
//! unconditional row (classifier-free guidance with cond and uncond batched together). Each row
//! carries its own time, so states need not be in lock-step: a server can admit a new request
//! into a running batch at any step boundary, and drop a cancelled one, the way TGI batches
//! tokens. [`sample`] is the simple loop for one request, with a per-step callback that sees the
//! current x0 estimate (previews) and can stop the loop (cancellation).
//!
//! On a CUDA device [`step_batch`] advances all states with one fused op
//! ([`vidcascade_kernels::sampler`]: guidance, x0, exact on-device quantile, update, all on the
//! GPU with no host round trip) instead of per-sample tensor code. Two things differ there, by
//! design: ancestral noise is counter-based Philox keyed by the sample's seed, stream and step
//! (deterministic for a given seed and GPU, but not the CPU's ChaCha stream, so a GPU video is
//! not the CPU video of the same seed), and a non-finite value is flagged on the device and
//! reported only at the sample's last step, where the host reads the sample anyway (no
//! per-step sync); the error names the step that first met it. The CPU path is unchanged.
//! [`step_batch_fused`] runs the fused path on any device, so it is tested here on the CPU.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use vidcascade_kernels::sampler as fused_op;

use crate::DiffusionError;
use crate::guidance::{classifier_free_guidance, needs_unconditional};
use crate::noise::GaussianNoise;
use crate::schedule::CosineSchedule;
use crate::step::{Scales, ancestral, ddim, predict_x0_eps};
use crate::threshold::dynamic_threshold;

mod fused;

pub use vidcascade_spec::sampling::{MAX_GUIDANCE, MAX_STEPS, SamplerKind};
use vidcascade_spec::sampling::{check_guidance, check_steps, check_threshold_quantile};

/// How one sample is denoised.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplerSettings {
    /// Update rule.
    pub kind: SamplerKind,
    /// Number of denoising steps (network evaluations per row).
    pub steps: usize,
    /// Classifier-free guidance weight `w`; 1 disables guidance, 0 ignores the text.
    pub guidance: f64,
    /// Dynamic thresholding quantile `p`; `None` disables thresholding (x0 is then only clamped
    /// to [-1, 1] at the very end).
    pub threshold_quantile: Option<f64>,
    /// The noise schedule.
    pub schedule: CosineSchedule,
}

impl Default for SamplerSettings {
    fn default() -> Self {
        Self {
            kind: SamplerKind::Ddim,
            steps: 32,
            guidance: 1.0,
            threshold_quantile: Some(0.995),
            schedule: CosineSchedule::default(),
        }
    }
}

impl SamplerSettings {
    /// Checks every field against its documented range.
    pub fn validate(&self) -> Result<(), DiffusionError> {
        let setting = |field: &'static str, rule: Result<(), String>| {
            rule.map_err(|reason| DiffusionError::InvalidSetting { field, reason })
        };
        setting("steps", check_steps(self.steps))?;
        setting("guidance", check_guidance(self.guidance))?;
        if let Some(p) = self.threshold_quantile {
            setting("threshold_quantile", check_threshold_quantile(p))?;
        }
        let s = self.schedule;
        if !(s.logsnr_min.is_finite() && s.logsnr_max.is_finite() && s.logsnr_min < s.logsnr_max) {
            return Err(DiffusionError::InvalidSetting {
                field: "schedule",
                reason: format!(
                    "logsnr_min must be finite and below logsnr_max, got [{}, {}]",
                    s.logsnr_min, s.logsnr_max
                ),
            });
        }
        Ok(())
    }
}

/// One row of a batched network call: which state it belongs to, and whether it is the
/// unconditional (empty-prompt) branch of classifier-free guidance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelRow {
    /// Index into the states passed to [`step_batch`].
    pub sample: usize,
    /// `true` for the unconditional branch.
    pub unconditional: bool,
}

/// The network, seen from the sampler: predicts `v` for a batch of rows.
pub trait VelocityModel {
    /// `z` is `[rows, C, F, H, W]`, `t[i]` the time of row `i`, `rows[i]` whom row `i` serves.
    /// Returns `v_hat` shaped like `z`.
    fn predict_v(&self, z: &Tensor, t: &[f64], rows: &[ModelRow])
    -> Result<Tensor, DiffusionError>;
}

impl<M: VelocityModel + ?Sized> VelocityModel for &M {
    fn predict_v(
        &self,
        z: &Tensor,
        t: &[f64],
        rows: &[ModelRow],
    ) -> Result<Tensor, DiffusionError> {
        (**self).predict_v(z, t, rows)
    }
}

/// One video being denoised.
#[derive(Debug, Clone)]
pub struct SampleState {
    z: Tensor,
    settings: SamplerSettings,
    grid: Vec<f64>,
    completed: usize,
    noise: GaussianNoise,
    /// Seed and stream of the fused path's Philox noise (the ChaCha `noise` serves the CPU).
    seed: u64,
    stream: u64,
    /// The fused path's sticky non-finite flag, `[1]` u32 on the latent's device; `None` until
    /// the first fused step (and on the CPU path). Read only at the last step.
    device_flag: Option<Tensor>,
}

impl SampleState {
    /// A fresh sample of `shape` (`[C, F, H, W]`): `z_1 ~ N(0, I)` from `seed`, stream `stream`.
    /// The same seed and stream key the fused (GPU) path's Philox noise.
    pub fn new(
        shape: &[usize],
        settings: SamplerSettings,
        seed: u64,
        stream: u64,
        device: &Device,
    ) -> Result<Self, DiffusionError> {
        let mut noise = GaussianNoise::new(seed, stream);
        let z = noise.tensor(shape, device)?;
        let mut state = Self::from_latent(z, settings, noise)?;
        (state.seed, state.stream) = (seed, stream);
        Ok(state)
    }

    /// A sample starting from a given latent at t = 1 (for tests and image-to-video seeding).
    /// `noise` serves the CPU path; the fused (GPU) path's Philox noise uses seed 0, stream 0
    /// (a `GaussianNoise` does not reveal its seed): use [`Self::new`] for seeded GPU runs.
    pub fn from_latent(
        z: Tensor,
        settings: SamplerSettings,
        noise: GaussianNoise,
    ) -> Result<Self, DiffusionError> {
        settings.validate()?;
        ensure_finite(&z.unsqueeze(0)?, "initial latent", 0)?;
        Ok(Self {
            grid: CosineSchedule::time_grid(settings.steps),
            z,
            settings,
            completed: 0,
            noise,
            seed: 0,
            stream: 0,
            device_flag: None,
        })
    }

    /// A resumable snapshot of this sample between steps: its latent, steps completed and
    /// noise position. [`Self::resume`] on a fresh state of the same request (same seed,
    /// settings and shape) continues the run exactly, on this process or another.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            latent: self.z.clone(),
            completed_steps: self.completed,
            noise_position: self.noise.position(),
        }
    }

    /// Continues from `checkpoint` instead of step 0. This state must be a fresh one of the
    /// same request: the checkpoint's latent must have this state's shape and be finite, and it
    /// must leave at least one step to run.
    pub fn resume(&mut self, checkpoint: Checkpoint) -> Result<(), DiffusionError> {
        let steps = self.settings.steps;
        if checkpoint.completed_steps == 0 || checkpoint.completed_steps >= steps {
            return Err(DiffusionError::InvalidSetting {
                field: "resume.step",
                reason: format!(
                    "must be between 1 and {} (the run has {steps} steps), got {}",
                    steps.saturating_sub(1),
                    checkpoint.completed_steps
                ),
            });
        }
        if checkpoint.latent.dims() != self.z.dims() {
            return Err(DiffusionError::Shape {
                what: "resumed latent",
                expected: self.z.dims().to_vec(),
                found: checkpoint.latent.dims().to_vec(),
            });
        }
        // Checkpoints arrive as host tensors; the state may live on a GPU.
        let latent = checkpoint
            .latent
            .to_dtype(self.z.dtype())?
            .to_device(self.z.device())?;
        ensure_finite(
            &latent.unsqueeze(0)?,
            "resumed latent",
            checkpoint.completed_steps,
        )?;
        self.z = latent;
        self.completed = checkpoint.completed_steps;
        self.noise.seek(checkpoint.noise_position);
        // The fused path's noise follows from the step; its flag restarts with the (checked)
        // latent.
        self.device_flag = None;
        Ok(())
    }

    /// The current latent `[C, F, H, W]`; the final video in [-1, 1] once [`Self::is_done`].
    pub fn latent(&self) -> &Tensor {
        &self.z
    }

    /// The settings this sample runs with.
    pub fn settings(&self) -> &SamplerSettings {
        &self.settings
    }

    /// Steps completed so far.
    pub fn completed_steps(&self) -> usize {
        self.completed
    }

    /// Steps this sample runs in total.
    pub fn total_steps(&self) -> usize {
        self.settings.steps
    }

    /// Whether every step has run.
    pub fn is_done(&self) -> bool {
        self.completed >= self.settings.steps
    }

    /// The time the next network call evaluates this sample at.
    pub fn current_time(&self) -> f64 {
        self.grid[self.completed.min(self.settings.steps)]
    }
}

/// A sample between two steps, as [`SampleState::checkpoint`] records it.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The latent `z` after `completed_steps` steps, `[C, F, H, W]`.
    pub latent: Tensor,
    /// Steps completed.
    pub completed_steps: usize,
    /// The sample's noise stream position (see [`GaussianNoise::position`]).
    pub noise_position: u128,
}

/// Rejects NaN or infinity in a `[B, ...]` tensor, naming the first bad sample.
pub fn ensure_finite(x: &Tensor, what: &'static str, step: usize) -> Result<(), DiffusionError> {
    let batch = x.dim(0)?;
    for sample in 0..batch {
        let bad = x.get(sample)?.flatten_all()?.to_vec1::<f32>()?;
        if bad.iter().any(|v| !v.is_finite()) {
            return Err(DiffusionError::NonFinite { what, sample, step });
        }
    }
    Ok(())
}

/// One sample's outcome of a batched step.
pub type SampleStep = Result<Option<Tensor>, DiffusionError>;

/// Advances every state that is not done by one step with a single network call.
///
/// Returns, for each state in order, its own outcome: the x0 estimate of this step
/// (`[C, F, H, W]`; `None` for states that were already done), or that sample's error (a
/// non-finite estimate, say) — one sample's failure leaves the others' steps intact and its own
/// state unchanged. The outer error is a failure of the whole call (shapes, the network).
/// After a state's last step its latent *is* the (thresholded) x0 estimate, clamped to [-1, 1].
///
/// CUDA latents take the fused path (see the module docs and [`step_batch_fused`]) when
/// `vidcascade-kernels` is built with its `cuda` feature; everything else this per-sample path.
pub fn step_batch<M: VelocityModel>(
    model: &M,
    states: &mut [&mut SampleState],
) -> Result<Vec<SampleStep>, DiffusionError> {
    let on_cuda = states
        .iter()
        .find(|s| !s.is_done())
        .is_some_and(|s| s.z.device().is_cuda());
    step_batch_with(model, states, on_cuda && fused_op::CUDA_ENABLED)
}

/// [`step_batch`] through the fused sampler step, on any device: what `step_batch` runs for
/// CUDA latents. On the CPU it runs the op's reference, which is how that path is tested where
/// there is no GPU. Differences from the per-sample path: Philox ancestral noise, and
/// non-finite values reported at the sample's last step (see the module docs).
pub fn step_batch_fused<M: VelocityModel>(
    model: &M,
    states: &mut [&mut SampleState],
) -> Result<Vec<SampleStep>, DiffusionError> {
    step_batch_with(model, states, true)
}

fn step_batch_with<M: VelocityModel>(
    model: &M,
    states: &mut [&mut SampleState],
    fused: bool,
) -> Result<Vec<SampleStep>, DiffusionError> {
    let active: Vec<usize> = (0..states.len())
        .filter(|&i| !states[i].is_done())
        .collect();
    let mut outputs: Vec<SampleStep> = (0..states.len()).map(|_| Ok(None)).collect();
    if active.is_empty() {
        return Ok(outputs);
    }
    let shape = states[active[0]].z.dims().to_vec();
    for &i in &active {
        if states[i].z.dims() != shape.as_slice() {
            return Err(DiffusionError::Shape {
                what: "latents batched together",
                expected: shape,
                found: states[i].z.dims().to_vec(),
            });
        }
    }

    // Conditional rows first, then unconditional rows for the guided states.
    let mut rows = Vec::new();
    let mut latents = Vec::new();
    let mut times = Vec::new();
    for unconditional in [false, true] {
        for &i in &active {
            if unconditional && !needs_unconditional(states[i].settings.guidance) {
                continue;
            }
            rows.push(ModelRow {
                sample: i,
                unconditional,
            });
            latents.push(states[i].z.clone());
            times.push(states[i].current_time());
        }
    }
    let z_in = Tensor::stack(&latents, 0)?;
    let v_all = model.predict_v(&z_in, &times, &rows)?;
    if v_all.dims() != z_in.dims() {
        return Err(DiffusionError::Shape {
            what: "model output",
            expected: z_in.dims().to_vec(),
            found: v_all.dims().to_vec(),
        });
    }

    if fused {
        fused::advance_fused(states, &active, &rows, &z_in, &v_all, &mut outputs)?;
        return Ok(outputs);
    }
    for (position, &i) in active.iter().enumerate() {
        let uncond = rows.iter().position(|r| r.sample == i && r.unconditional);
        outputs[i] = advance(&mut *states[i], &v_all, position, uncond).map(Some);
    }
    Ok(outputs)
}

/// One sample's update from its rows of the batched model output: guidance, x0/eps, dynamic
/// thresholding, then DDIM or the ancestral step. On error the state is left as it was.
fn advance(
    state: &mut SampleState,
    v_all: &Tensor,
    position: usize,
    uncond: Option<usize>,
) -> Result<Tensor, DiffusionError> {
    let step = state.completed + 1;
    let v_cond = v_all.get(position)?;
    let v = match uncond {
        Some(u) => classifier_free_guidance(&v_cond, &v_all.get(u)?, state.settings.guidance)?,
        None => v_cond,
    };
    ensure_finite(&v.unsqueeze(0)?, "model output", step)?;

    let schedule = state.settings.schedule;
    let t = state.grid[state.completed];
    let s = state.grid[state.completed + 1];
    let (alpha_t, sigma_t) = schedule.alpha_sigma(t);
    let from = Scales {
        alpha: alpha_t,
        sigma: sigma_t,
    };
    let (x0, eps) = predict_x0_eps(&state.z, &v, from)?;
    let x0 = match state.settings.threshold_quantile {
        Some(p) => dynamic_threshold(&x0.unsqueeze(0)?, p, step)?.squeeze(0)?,
        None => x0,
    };

    state.z = if step == state.settings.steps {
        // The last step lands on t = 0: the answer is the x0 estimate itself.
        x0.clamp(-1f32, 1f32)?
    } else {
        let (alpha_s, sigma_s) = schedule.alpha_sigma(s);
        let to = Scales {
            alpha: alpha_s,
            sigma: sigma_s,
        };
        match state.settings.kind {
            SamplerKind::Ddim => ddim(&x0, &eps, to)?,
            SamplerKind::Ancestral => {
                let noise = state.noise.tensor(state.z.dims(), state.z.device())?;
                ancestral(&state.z, &x0, &noise, from, to)?
            }
        }
    };
    state.completed = step;
    Ok(x0)
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;

    /// What the per-step callback of [`sample`] sees.
    #[derive(Debug)]
    struct StepEvent<'a> {
        /// Steps completed, 1-based.
        step: usize,
        /// Steps in the run.
        total_steps: usize,
        /// The current x0 estimate of every sample, `[B, C, F, H, W]` in about [-1, 1].
        x0: &'a Tensor,
    }

    /// A whole-run loop over [`step_batch`] for these tests (serving runs the engine's loop):
    /// runs `states` (all with the same step count) to completion and returns the videos
    /// `[B, C, F, H, W]` in [-1, 1].
    ///
    /// `on_step` runs after every step; returning `ControlFlow::Break(())` stops the loop at once
    /// with [`DiffusionError::Cancelled`] (the caller left, or its deadline passed).
    fn sample<M: VelocityModel>(
        model: &M,
        mut states: Vec<SampleState>,
        mut on_step: impl FnMut(&StepEvent<'_>) -> ControlFlow<()>,
    ) -> Result<Tensor, DiffusionError> {
        let Some(first) = states.first() else {
            return Err(DiffusionError::InvalidSetting {
                field: "samples",
                reason: "at least one sample is required".into(),
            });
        };
        let total_steps = first.total_steps();
        if let Some(other) = states.iter().find(|s| s.total_steps() != total_steps) {
            return Err(DiffusionError::InvalidSetting {
                field: "steps",
                reason: format!(
                    "samples of one run must share a step count, got {total_steps} and {}",
                    other.total_steps()
                ),
            });
        }
        while !states[0].is_done() {
            let mut refs: Vec<&mut SampleState> = states.iter_mut().collect();
            let x0s = step_batch(model, &mut refs)?;
            let x0s: Vec<Tensor> = x0s
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect();
            let x0 = Tensor::stack(&x0s, 0)?;
            let step = states[0].completed_steps();
            let event = StepEvent {
                step,
                total_steps,
                x0: &x0,
            };
            if on_step(&event).is_break() {
                return Err(DiffusionError::Cancelled {
                    completed_steps: step,
                    total_steps,
                });
            }
        }
        let finals: Vec<Tensor> = states.iter().map(|s| s.latent().clone()).collect();
        Ok(Tensor::stack(&finals, 0)?)
    }

    use std::cell::RefCell;

    use super::*;
    use candle_core::DType;

    /// `v = scale * z` for conditional rows and `uncond_scale * z` for unconditional ones;
    /// records every call's rows and times.
    struct LinearModel {
        scale: f64,
        uncond_scale: f64,
        calls: RefCell<Vec<(Vec<ModelRow>, Vec<f64>)>>,
    }

    impl LinearModel {
        fn new(scale: f64, uncond_scale: f64) -> Self {
            Self {
                scale,
                uncond_scale,
                calls: RefCell::new(Vec::new()),
            }
        }
    }

    impl VelocityModel for LinearModel {
        fn predict_v(
            &self,
            z: &Tensor,
            t: &[f64],
            rows: &[ModelRow],
        ) -> Result<Tensor, DiffusionError> {
            self.calls.borrow_mut().push((rows.to_vec(), t.to_vec()));
            let mut out = Vec::new();
            for (i, row) in rows.iter().enumerate() {
                let k = if row.unconditional {
                    self.uncond_scale
                } else {
                    self.scale
                };
                out.push((z.get(i)? * k)?);
            }
            Ok(Tensor::stack(&out, 0)?)
        }
    }

    struct NanModel;
    impl VelocityModel for NanModel {
        fn predict_v(
            &self,
            z: &Tensor,
            _t: &[f64],
            _rows: &[ModelRow],
        ) -> Result<Tensor, DiffusionError> {
            Ok((z * f64::NAN)?)
        }
    }

    fn no_threshold(kind: SamplerKind, steps: usize, guidance: f64) -> SamplerSettings {
        SamplerSettings {
            kind,
            steps,
            guidance,
            threshold_quantile: None,
            schedule: CosineSchedule::default(),
        }
    }

    fn one_value_state(z: f32, settings: SamplerSettings) -> anyhow::Result<SampleState> {
        let z = Tensor::new(&[z], &Device::Cpu)?.reshape((1, 1, 1, 1))?;
        Ok(SampleState::from_latent(
            z,
            settings,
            GaussianNoise::new(0, 0),
        )?)
    }

    fn value(t: &Tensor) -> anyhow::Result<f32> {
        Ok(t.flatten_all()?.to_vec1::<f32>()?[0])
    }

    /// Hand-derived angles of the default schedule: phi(t) = a t + b with
    /// b = atan(exp(-10)) and a = atan(exp(10)) - b, alpha = cos(phi), sigma = sin(phi).
    fn phi(t: f64) -> f64 {
        let b = (-10.0f64).exp().atan();
        let a = 10.0f64.exp().atan() - b;
        a * t + b
    }

    #[test]
    fn ddim_with_zero_velocity_rotates_by_the_angle_difference() -> anyhow::Result<()> {
        // v = 0 means x_hat = alpha_t z, eps_hat = sigma_t z, so one DDIM step multiplies z by
        // alpha_s alpha_t + sigma_s sigma_t = cos(phi_t - phi_s). Three steps: 1 -> 2/3 -> 1/3,
        // then the last step returns x_hat = alpha_{1/3} z.
        let model = LinearModel::new(0.0, 0.0);
        let mut state = one_value_state(0.8, no_threshold(SamplerKind::Ddim, 3, 1.0))?;
        let mut seen = Vec::new();
        while !state.is_done() {
            let x0 = step_batch(&model, &mut [&mut state])?.remove(0)?;
            seen.push((value(state.latent())?, value(x0.as_ref().expect("active"))?));
        }
        let z1 = 0.8 * (phi(1.0) - phi(2.0 / 3.0)).cos();
        let z2 = z1 * (phi(2.0 / 3.0) - phi(1.0 / 3.0)).cos();
        let out = z2 * phi(1.0 / 3.0).cos();
        assert!((seen[0].0 as f64 - z1).abs() < 1e-6, "{seen:?}");
        assert!((seen[0].1 as f64 - 0.8 * phi(1.0).cos()).abs() < 1e-6);
        assert!((seen[1].0 as f64 - z2).abs() < 1e-6, "{seen:?}");
        assert!((seen[2].0 as f64 - out).abs() < 1e-6, "{seen:?}");
        Ok(())
    }

    #[test]
    fn ddim_with_v_proportional_to_z_matches_hand_computation() -> anyhow::Result<()> {
        // v = k z: x_hat = (alpha - k sigma) z, eps_hat = (sigma + k alpha) z,
        // z_s = [alpha_s (alpha_t - k sigma_t) + sigma_s (sigma_t + k alpha_t)] z.
        let k = 0.5;
        let model = LinearModel::new(k, 0.0);
        let mut state = one_value_state(1.0, no_threshold(SamplerKind::Ddim, 2, 1.0))?;
        step_batch(&model, &mut [&mut state])?;
        let (at, st) = (phi(1.0).cos(), phi(1.0).sin());
        let (as_, ss) = (phi(0.5).cos(), phi(0.5).sin());
        let z_half = as_ * (at - k * st) + ss * (st + k * at);
        assert!((value(state.latent())? as f64 - z_half).abs() < 1e-6);
        step_batch(&model, &mut [&mut state])?;
        let out = (as_ - k * ss) * z_half;
        assert!((value(state.latent())? as f64 - out).abs() < 1e-6);
        assert!(state.is_done());
        Ok(())
    }

    #[test]
    fn guidance_batches_cond_and_uncond_rows_in_one_call() -> anyhow::Result<()> {
        // cond v = 1.0 z, uncond v = 0.5 z, w = 3: v = 0.5 z + 3 * 0.5 z = 2 z.
        let guided = LinearModel::new(1.0, 0.5);
        let equivalent = LinearModel::new(2.0, 0.0);
        let mut a = one_value_state(0.7, no_threshold(SamplerKind::Ddim, 4, 3.0))?;
        let mut b = one_value_state(0.7, no_threshold(SamplerKind::Ddim, 4, 1.0))?;
        while !a.is_done() {
            step_batch(&guided, &mut [&mut a])?;
            step_batch(&equivalent, &mut [&mut b])?;
        }
        assert!((value(a.latent())? - value(b.latent())?).abs() < 1e-6);
        let calls = guided.calls.borrow();
        assert_eq!(calls.len(), 4, "one network call per step");
        assert_eq!(
            calls[0].0,
            vec![
                ModelRow {
                    sample: 0,
                    unconditional: false
                },
                ModelRow {
                    sample: 0,
                    unconditional: true
                }
            ]
        );
        Ok(())
    }

    #[test]
    fn guidance_one_never_evaluates_the_unconditional_branch() -> anyhow::Result<()> {
        let model = LinearModel::new(0.3, f64::NAN);
        let mut s = one_value_state(0.1, no_threshold(SamplerKind::Ddim, 3, 1.0))?;
        while !s.is_done() {
            step_batch(&model, &mut [&mut s])?;
        }
        assert!(value(s.latent())?.is_finite());
        assert!(
            model
                .calls
                .borrow()
                .iter()
                .all(|(rows, _)| rows.iter().all(|r| !r.unconditional))
        );
        Ok(())
    }

    #[test]
    fn states_at_different_steps_share_one_call_with_their_own_times() -> anyhow::Result<()> {
        let model = LinearModel::new(0.0, 0.0);
        let mut early = one_value_state(1.0, no_threshold(SamplerKind::Ddim, 4, 1.0))?;
        step_batch(&model, &mut [&mut early])?;
        let mut late_joiner = one_value_state(1.0, no_threshold(SamplerKind::Ddim, 4, 1.0))?;
        let mut alone = early.clone();
        step_batch(&model, &mut [&mut early, &mut late_joiner])?;
        step_batch(&model, &mut [&mut alone])?;
        let calls = model.calls.borrow();
        assert_eq!(calls[1].1, vec![0.75, 1.0]);
        // Batching never changes a sample's result.
        assert_eq!(value(early.latent())?, value(alone.latent())?);
        Ok(())
    }

    #[test]
    fn seeded_ancestral_runs_are_bit_for_bit_repeatable() -> anyhow::Result<()> {
        let model = LinearModel::new(0.2, -0.1);
        let run = |seed: u64| -> anyhow::Result<Vec<f32>> {
            let settings = SamplerSettings {
                kind: SamplerKind::Ancestral,
                steps: 5,
                guidance: 2.0,
                ..SamplerSettings::default()
            };
            let states = (0..2)
                .map(|i| SampleState::new(&[3, 2, 4, 4], settings, seed, i, &Device::Cpu))
                .collect::<Result<Vec<_>, _>>()?;
            let out = sample(&model, states, |_| ControlFlow::Continue(()))?;
            Ok(out.flatten_all()?.to_vec1::<f32>()?)
        };
        let a = run(11)?;
        assert_eq!(a, run(11)?);
        assert_ne!(a, run(12)?);
        assert!(a.iter().all(|v| (-1.0..=1.0).contains(v)));
        Ok(())
    }

    #[test]
    fn a_resumed_sample_ends_bit_for_bit_where_the_undisturbed_one_does() -> anyhow::Result<()> {
        let model = LinearModel::new(0.2, -0.1);
        let settings = SamplerSettings {
            kind: SamplerKind::Ancestral,
            steps: 6,
            guidance: 2.0,
            ..SamplerSettings::default()
        };
        let fresh = || SampleState::new(&[3, 2, 4, 4], settings, 5, 0, &Device::Cpu);
        let run = |state: &mut SampleState| -> anyhow::Result<Vec<f32>> {
            while !state.is_done() {
                step_batch(&model, &mut [&mut *state])?.remove(0)?;
            }
            Ok(state.latent().flatten_all()?.to_vec1::<f32>()?)
        };
        let undisturbed = run(&mut fresh()?)?;

        let mut interrupted = fresh()?;
        for _ in 0..3 {
            step_batch(&model, &mut [&mut interrupted])?.remove(0)?;
        }
        let checkpoint = interrupted.checkpoint();
        let mut resumed = fresh()?;
        resumed.resume(checkpoint.clone())?;
        assert_eq!(resumed.completed_steps(), 3);
        assert_eq!(run(&mut resumed)?, undisturbed);

        let mut bad = checkpoint.clone();
        bad.completed_steps = 6;
        assert!(matches!(
            fresh()?.resume(bad),
            Err(DiffusionError::InvalidSetting {
                field: "resume.step",
                ..
            })
        ));
        let mut bad = checkpoint.clone();
        bad.latent = Tensor::zeros((3, 2, 4, 5), candle_core::DType::F32, &Device::Cpu)?;
        assert!(matches!(
            fresh()?.resume(bad),
            Err(DiffusionError::Shape { .. })
        ));
        let mut bad = checkpoint;
        bad.latent = (bad.latent * f64::NAN)?;
        assert!(matches!(
            fresh()?.resume(bad),
            Err(DiffusionError::NonFinite { .. })
        ));
        Ok(())
    }

    #[test]
    fn callback_sees_every_step_and_can_stop_the_loop() -> anyhow::Result<()> {
        let model = LinearModel::new(0.0, 0.0);
        let settings = no_threshold(SamplerKind::Ddim, 6, 1.0);
        let states = vec![SampleState::new(
            &[3, 1, 2, 2],
            settings,
            1,
            0,
            &Device::Cpu,
        )?];
        let mut steps = Vec::new();
        let err = sample(&model, states, |e| {
            steps.push((e.step, e.total_steps, e.x0.dims().to_vec()));
            if e.step == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .expect_err("stopped");
        assert!(matches!(
            err,
            DiffusionError::Cancelled {
                completed_steps: 2,
                total_steps: 6
            }
        ));
        assert_eq!(
            steps,
            vec![(1, 6, vec![1, 3, 1, 2, 2]), (2, 6, vec![1, 3, 1, 2, 2])]
        );
        assert_eq!(model.calls.borrow().len(), 2, "no work after the stop");
        Ok(())
    }

    #[test]
    fn nan_latents_and_nan_model_outputs_are_rejected() -> anyhow::Result<()> {
        let z = Tensor::new(&[f32::NAN, 0.0], &Device::Cpu)?.reshape((1, 1, 1, 2))?;
        let err = SampleState::from_latent(z, SamplerSettings::default(), GaussianNoise::new(0, 0))
            .expect_err("NaN latent");
        assert!(err.to_string().contains("initial latent"), "{err}");
        let mut s = one_value_state(0.5, SamplerSettings::default())?;
        let err = step_batch(&NanModel, &mut [&mut s])?
            .remove(0)
            .expect_err("NaN output");
        assert!(matches!(
            err,
            DiffusionError::NonFinite {
                what: "model output",
                step: 1,
                ..
            }
        ));
        Ok(())
    }

    #[test]
    fn out_of_range_settings_name_the_field() {
        let cases = [
            (
                SamplerSettings {
                    steps: 0,
                    ..Default::default()
                },
                "steps",
            ),
            (
                SamplerSettings {
                    steps: MAX_STEPS + 1,
                    ..Default::default()
                },
                "steps",
            ),
            (
                SamplerSettings {
                    guidance: -1.0,
                    ..Default::default()
                },
                "guidance",
            ),
            (
                SamplerSettings {
                    guidance: f64::NAN,
                    ..Default::default()
                },
                "guidance",
            ),
            (
                SamplerSettings {
                    threshold_quantile: Some(0.0),
                    ..Default::default()
                },
                "threshold_quantile",
            ),
        ];
        for (settings, field) in cases {
            let err = settings.validate().expect_err("invalid");
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn thresholding_keeps_every_step_estimate_in_range() -> anyhow::Result<()> {
        // A strongly guided model overshoots; thresholded x0 estimates stay in [-1, 1].
        let model = LinearModel::new(-3.0, 3.0);
        let settings = SamplerSettings {
            guidance: 8.0,
            steps: 4,
            threshold_quantile: Some(0.995),
            ..SamplerSettings::default()
        };
        let states = vec![SampleState::new(
            &[3, 2, 3, 3],
            settings,
            5,
            0,
            &Device::Cpu,
        )?];
        let mut max_abs = 0f32;
        let out = sample(&model, states, |e| {
            let m =
                e.x0.abs()
                    .and_then(|a| a.max_all())
                    .and_then(|m| m.to_scalar::<f32>());
            max_abs = max_abs.max(m.unwrap_or(f32::INFINITY));
            ControlFlow::Continue(())
        })?;
        assert!(max_abs <= 1.0 + 1e-6, "{max_abs}");
        assert_eq!(out.dtype(), DType::F32);
        Ok(())
    }

    /// NaN for every row of sample 1, zero velocity for the others.
    struct NanForSampleOne;

    impl VelocityModel for NanForSampleOne {
        fn predict_v(
            &self,
            z: &Tensor,
            _t: &[f64],
            rows: &[ModelRow],
        ) -> Result<Tensor, DiffusionError> {
            let per_row: Vec<Tensor> = rows
                .iter()
                .map(|row| {
                    let one = z.get(0)?.zeros_like()?;
                    if row.sample == 1 {
                        one + f64::NAN
                    } else {
                        Ok(one)
                    }
                })
                .collect::<Result<_, _>>()?;
            Ok(Tensor::stack(&per_row, 0)?)
        }
    }

    #[test]
    fn one_samples_nan_fails_that_sample_and_the_batch_goes_on() -> anyhow::Result<()> {
        let settings = no_threshold(SamplerKind::Ddim, 3, 2.0);
        let mut good = one_value_state(0.5, settings)?;
        let mut bad = one_value_state(0.5, settings)?;
        let mut alone = good.clone();
        let outcomes = step_batch(&NanForSampleOne, &mut [&mut good, &mut bad])?;
        assert!(matches!(outcomes[0], Ok(Some(_))));
        assert!(matches!(
            outcomes[1],
            Err(DiffusionError::NonFinite {
                what: "model output",
                step: 1,
                ..
            })
        ));
        assert_eq!(
            bad.completed_steps(),
            0,
            "a failed sample is left as it was"
        );
        step_batch(&NanForSampleOne, &mut [&mut alone])?;
        assert_eq!(value(good.latent())?, value(alone.latent())?);
        Ok(())
    }
}
