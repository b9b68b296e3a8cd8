//! The GPU side of [`step_batch`](super::step_batch): every active state advanced by one
//! [`FusedSamplerStep`] (guidance, x0 / eps, the on-device quantile, the update), with the
//! per-sample non-finite flags kept on the device and read only when a state finishes.

use candle_core::{DType, Device, Tensor};
use vidcascade_kernels::sampler::{
    FusedSamplerStep, FusedStepOutput, NonFiniteFlag, SampleSpec, Update,
};

use super::{ModelRow, SampleState, SampleStep, SamplerKind};
use crate::DiffusionError;
use crate::step::{Scales, posterior_coefficients};

/// All active states' updates in one [`FusedSamplerStep`]. Nothing is read back except, when
/// some state finishes, the flags (one small copy): a flagged state fails with
/// [`DiffusionError::NonFinite`] (naming its index in `states`) and is left as it was; the
/// others move on. Flags of unfinished states stay on the device, in their states.
pub(super) fn advance_fused(
    states: &mut [&mut SampleState],
    active: &[usize],
    rows: &[ModelRow],
    z_in: &Tensor,
    v_all: &Tensor,
    outputs: &mut [SampleStep],
) -> Result<(), DiffusionError> {
    let shape = z_in.dims()[1..].to_vec();
    let mut specs = Vec::with_capacity(active.len());
    let mut flags = Vec::with_capacity(active.len());
    for (position, &i) in active.iter().enumerate() {
        let uncond = rows.iter().position(|r| r.sample == i && r.unconditional);
        specs.push(states[i].fused_spec(position, uncond)?);
        flags.push(states[i].device_flag(z_in.device())?);
    }
    // `z_in` holds a latent per model row; the conditional rows come first, one per state.
    let out = FusedSamplerStep::new(specs).forward(
        &z_in.narrow(0, 0, active.len())?.flatten_from(1)?,
        &v_all.flatten_from(1)?.to_dtype(DType::F32)?,
        &Tensor::cat(&flags, 0)?,
    )?;
    let finishing = active
        .iter()
        .any(|&i| states[i].completed + 1 == states[i].total_steps());
    let host_flags = if finishing {
        Some(out.flags.to_vec1::<u32>()?)
    } else {
        None
    };
    for (position, &i) in active.iter().enumerate() {
        let state = &mut *states[i];
        let last = state.completed + 1 == state.total_steps();
        let flag = match &host_flags {
            Some(flags) if last => NonFiniteFlag::decode(flags[position]),
            _ => None,
        };
        outputs[i] = match flag {
            Some(flag) => Err(DiffusionError::NonFinite {
                what: flag.what(),
                sample: i,
                step: flag.step as usize,
            }),
            None => state.take_fused(&out, position, &shape).map(Some),
        };
    }
    Ok(())
}

impl SampleState {
    /// Moves this state one step on to row `position` of a fused step's outputs; returns its
    /// x0 estimate, shaped `shape` like the latent.
    fn take_fused(
        &mut self,
        out: &FusedStepOutput,
        position: usize,
        shape: &[usize],
    ) -> Result<Tensor, DiffusionError> {
        let x0 = out.x0.get(position)?.reshape(shape)?;
        self.z = out.z_next.get(position)?.reshape(shape)?;
        self.device_flag = Some(out.flags.narrow(0, position, 1)?);
        self.completed += 1;
        Ok(x0)
    }

    /// This state's next step for the fused op: row `cond_row` of the model output (and
    /// `uncond_row`), scales from the schedule in f64, as [`advance`] computes them.
    fn fused_spec(
        &self,
        cond_row: usize,
        uncond_row: Option<usize>,
    ) -> Result<SampleSpec, DiffusionError> {
        let step = self.completed + 1;
        let schedule = self.settings.schedule;
        let (alpha_t, sigma_t) = schedule.alpha_sigma(self.grid[self.completed]);
        let (alpha_s, sigma_s) = schedule.alpha_sigma(self.grid[step]);
        let update = match self.settings.kind {
            _ if step == self.settings.steps => Update::Last,
            SamplerKind::Ddim => Update::Ddim { alpha_s, sigma_s },
            SamplerKind::Ancestral => {
                let from = Scales {
                    alpha: alpha_t,
                    sigma: sigma_t,
                };
                let to = Scales {
                    alpha: alpha_s,
                    sigma: sigma_s,
                };
                let (c_z, c_x, std) = posterior_coefficients(from, to);
                Update::Ancestral {
                    c_z,
                    c_x,
                    std,
                    seed: self.seed,
                    stream: self.stream,
                }
            }
        };
        Ok(SampleSpec {
            cond_row,
            uncond_row,
            guidance: self.settings.guidance,
            alpha_t,
            sigma_t,
            threshold_quantile: self.settings.threshold_quantile,
            update,
            step: u32::try_from(step).map_err(|_| DiffusionError::InvalidSetting {
                field: "steps",
                reason: format!("step {step} does not fit the fused step's counter"),
            })?,
        })
    }

    /// The fused path's flag of this state, `[1]` u32 on `device` (zero before its first step).
    fn device_flag(&self, device: &Device) -> Result<Tensor, DiffusionError> {
        match &self.device_flag {
            Some(flag) => Ok(flag.clone()),
            None => Ok(Tensor::zeros(1, DType::U32, device)?),
        }
    }
}
