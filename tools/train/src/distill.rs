//! Progressive distillation (Salimans & Ho 2022): a student, initialised from its teacher,
//! learns to take in one DDIM step what the teacher takes in two, so each round halves the
//! sampling steps (24 -> 12 -> 6).
//!
//! For a clean video `x`, the student's grid time `t = i / N_s` (`N_s` = half the teacher's
//! steps) and `z_t = alpha_t x + sigma_t eps`, the teacher runs two steps of the *serving
//! sampler* (`vidcascade_diffusion::step_batch`: guidance, thresholding, DDIM, the last step's
//! clamp) from `z_t` to `z_t''` at `t'' = t - 1 / N_s`. The student's target is the `x` whose
//! single DDIM step from `z_t` lands on `z_t''`:
//! `x~ = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)`
//! (Algorithm 2), or `z_t''` itself when `t''` is 0 (the last step's answer is its x0). The loss is
//! the x-space MSE of the student's estimate weighted by `max(min(SNR, gamma), 1)`, the
//! training objective's weight.
//!
//! The teacher samples with its classifier-free guidance; the student learns the *guided*
//! result from the conditional branch alone (guidance distillation, Meng et al. 2023, with the
//! guidance weight fixed to the teacher's), so it samples with guidance 1: one network pass per
//! step instead of two.

use std::path::Path;

use anyhow::Context;
use candle_core::Tensor;
use vidcascade_diffusion::noise::GaussianNoise;
use vidcascade_diffusion::{
    Checkpoint, CosineSchedule, ModelRow, SampleState, SamplerKind, SamplerSettings, VelocityModel,
    step_batch,
};
use vidcascade_engine::stage::{Conditioning, UNetVelocity};
use vidcascade_models::{ModelRepository, VideoUNet};

/// The teacher of a distillation round: a stage and the sampler settings it runs at.
#[derive(Debug)]
pub struct Teacher {
    unet: VideoUNet,
    settings: SamplerSettings,
}

impl Teacher {
    /// Stage `stage` of the repository at `dir`, sampling DDIM at its manifest's steps, guidance
    /// and thresholding.
    pub fn load(dir: &Path, stage: &str) -> anyhow::Result<Self> {
        let repo = ModelRepository::open(dir)?;
        let manifest = repo
            .manifest()
            .stage(stage)
            .with_context(|| format!("the teacher {} has no stage `{stage}`", dir.display()))?;
        let defaults = manifest.defaults;
        if defaults.steps < 2 || !defaults.steps.is_multiple_of(2) {
            anyhow::bail!(
                "the teacher's `{stage}` samples {} steps; distillation halves an even count",
                defaults.steps
            );
        }
        let unet = repo.load_unet(stage, &candle_core::Device::Cpu)?;
        Ok(Self {
            unet,
            settings: SamplerSettings {
                kind: SamplerKind::Ddim,
                steps: defaults.steps,
                guidance: defaults.guidance,
                threshold_quantile: defaults.threshold_quantile,
                schedule: CosineSchedule::default(),
            },
        })
    }

    /// The student's steps: half the teacher's.
    pub fn student_steps(&self) -> usize {
        self.settings.steps / 2
    }

    /// Two teacher steps from `z` `[B, ...]`, sample `b` at the student's grid index
    /// `indices[b]` (time `indices[b] / student_steps`), conditioned on `conditionings[b]`:
    /// the latents after them (the x0 estimates where they reach t = 0).
    fn two_steps(
        &self,
        z: &Tensor,
        indices: &[usize],
        conditionings: &[Conditioning],
    ) -> anyhow::Result<Tensor> {
        let steps = self.settings.steps;
        let mut states = indices
            .iter()
            .enumerate()
            .map(|(b, &i)| {
                let latent = z.get(b)?;
                let mut state = SampleState::from_latent(
                    latent.clone(),
                    self.settings,
                    GaussianNoise::new(0, 0),
                )?;
                let completed = steps - 2 * i;
                if completed > 0 {
                    state.resume(Checkpoint {
                        latent,
                        completed_steps: completed,
                        noise_position: 0,
                    })?;
                }
                Ok(state)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let model = UNetVelocity {
            unet: &self.unet,
            samples: conditionings.iter().collect(),
        };
        for _ in 0..2 {
            let mut refs: Vec<&mut SampleState> = states.iter_mut().collect();
            for outcome in step_batch(&model, &mut refs)? {
                outcome?;
            }
        }
        let latents: Vec<Tensor> = states.iter().map(|s| s.latent().clone()).collect();
        Ok(Tensor::stack(&latents, 0)?)
    }

    /// The student's targets `x~` `[B, ...]` for `z` at the student's grid indices `indices`.
    pub fn targets(
        &self,
        z: &Tensor,
        indices: &[usize],
        conditionings: &[Conditioning],
    ) -> anyhow::Result<Tensor> {
        let after = self.two_steps(z, indices, conditionings)?;
        let schedule = CosineSchedule::default();
        let n = self.student_steps() as f64;
        let rows = indices
            .iter()
            .enumerate()
            .map(|(b, &i)| {
                let z_end = after.get(b)?;
                if i == 1 {
                    return Ok(z_end);
                }
                let (alpha, sigma) = schedule.alpha_sigma(i as f64 / n);
                let (alpha_end, sigma_end) = schedule.alpha_sigma((i - 1) as f64 / n);
                let ratio = sigma_end / sigma;
                Ok(((z_end - (z.get(b)? * ratio)?)? / (alpha_end - ratio * alpha))?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&rows, 0)?)
    }
}

/// The student's x0 estimate for `z` at times `t` from the conditional branch only.
pub fn student_x0(
    student: &VideoUNet,
    z: &Tensor,
    t: &[f64],
    conditionings: &[Conditioning],
) -> anyhow::Result<Tensor> {
    let rows: Vec<ModelRow> = (0..t.len())
        .map(|sample| ModelRow {
            sample,
            unconditional: false,
        })
        .collect();
    let v = UNetVelocity {
        unet: student,
        samples: conditionings.iter().collect(),
    }
    .predict_v(z, t, &rows)?;
    let schedule = CosineSchedule::default();
    let x0 = t
        .iter()
        .enumerate()
        .map(|(b, &ti)| {
            let (alpha, sigma) = schedule.alpha_sigma(ti);
            Ok(((z.get(b)? * alpha)? - (v.get(b)? * sigma)?)?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Tensor::stack(&x0, 0)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use vidcascade_models::repository::scaffold::WeightInit;

    use super::*;

    fn conditionings(n: usize, dim: usize) -> anyhow::Result<Vec<Conditioning>> {
        let empty = Tensor::randn(0f32, 1.0, (2, dim), &Device::Cpu)?;
        (0..n)
            .map(|_| {
                Ok(Conditioning {
                    text: Tensor::randn(0f32, 1.0, (5, dim), &Device::Cpu)?,
                    unconditional: empty.clone(),
                    video: None,
                    upsampled: None,
                    aug_level: 0.0,
                    known: None,
                })
            })
            .collect()
    }

    #[test]
    fn one_ddim_step_to_the_target_lands_where_two_teacher_steps_do() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        vidcascade_test_support::tiny_scaffold()
            .write(dir.path(), WeightInit::Random { seed: 5 })?;
        let teacher = Teacher::load(dir.path(), "base")?;
        let n = teacher.student_steps();
        assert!(
            n >= 2,
            "the tiny base samples {} steps",
            teacher.settings.steps
        );
        let dim = teacher.unet.config().context_dim;
        let indices = [n, 2, 1];
        let z = Tensor::randn(0f32, 1.0, (3, 3, 4, 8, 8), &Device::Cpu)?;
        let conds = conditionings(3, dim)?;
        let target = teacher.targets(&z, &indices, &conds)?;
        let after = teacher.two_steps(&z, &indices, &conds)?;
        let schedule = CosineSchedule::default();
        for (b, &i) in indices.iter().enumerate() {
            let landed = if i == 1 {
                // The last student step answers with its x0 estimate, as the sampler does.
                target.get(b)?
            } else {
                let (alpha, sigma) = schedule.alpha_sigma(i as f64 / n as f64);
                let (alpha_end, sigma_end) = schedule.alpha_sigma((i - 1) as f64 / n as f64);
                let eps = ((z.get(b)? - (target.get(b)? * alpha)?)? / sigma)?;
                ((target.get(b)? * alpha_end)? + (eps * sigma_end)?)?
            };
            let gap = (landed - after.get(b)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(gap < 1e-4, "sample {b} (index {i}): {gap}");
        }
        // Two teacher steps are not one: the target is not the teacher's one-step estimate.
        let one = student_x0(
            &teacher.unet,
            &z,
            &[1.0, 2.0 / n as f64, 1.0 / n as f64],
            &conds,
        )?;
        assert!((one - &target)?.abs()?.max_all()?.to_scalar::<f32>()? > 1e-3);
        assert_eq!(target.dtype(), DType::F32);
        Ok(())
    }

    #[test]
    fn a_teacher_with_an_odd_step_count_is_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        vidcascade_test_support::tiny_scaffold()
            .write(dir.path(), WeightInit::Random { seed: 5 })?;
        let path = dir.path().join("manifest.json");
        let text = std::fs::read_to_string(&path)?;
        let mut manifest: serde_json::Value = serde_json::from_str(&text)?;
        for stage in manifest["stages"].as_array_mut().into_iter().flatten() {
            if stage["name"] == "base" {
                stage["defaults"]["steps"] = 5.into();
            }
        }
        std::fs::write(&path, manifest.to_string())?;
        let err = Teacher::load(dir.path(), "base").expect_err("odd steps");
        assert!(err.to_string().contains("halves an even count"), "{err}");
        Ok(())
    }
}
