//! Sampler settings as requests and manifests state them, and the range of each — one rule per
//! setting, used by manifest validation, the pipeline's plan and the stage service alike.

use serde::{Deserialize, Serialize};

use crate::manifest::{StageKind, StageManifest};

/// The reverse-process update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// Deterministic DDIM (eta = 0): the same noise gives the same video.
    #[default]
    Ddim,
    /// Ancestral sampling from the DDPM posterior; fresh (seeded) noise at every step.
    Ancestral,
}

/// Largest step count accepted; beyond it a request is a mistake, not a quality setting.
pub const MAX_STEPS: usize = 1000;
/// Largest guidance weight accepted.
pub const MAX_GUIDANCE: f64 = 50.0;

/// Denoising steps: 1..=[`MAX_STEPS`].
pub fn check_steps(steps: usize) -> Result<(), String> {
    if steps == 0 || steps > MAX_STEPS {
        return Err(format!("must be in 1..={MAX_STEPS}, got {steps}"));
    }
    Ok(())
}

/// Classifier-free guidance weight: finite, in [0, [`MAX_GUIDANCE`]].
pub fn check_guidance(guidance: f64) -> Result<(), String> {
    if !guidance.is_finite() || !(0.0..=MAX_GUIDANCE).contains(&guidance) {
        return Err(format!("must be in [0, {MAX_GUIDANCE}], got {guidance}"));
    }
    Ok(())
}

/// Dynamic thresholding quantile: in (0, 1].
pub fn check_threshold_quantile(p: f64) -> Result<(), String> {
    if !(p > 0.0 && p <= 1.0) {
        return Err(format!("must be in (0, 1], got {p}"));
    }
    Ok(())
}

/// Noise augmentation time of a conditioning video: in [0, 1].
pub fn check_noise_augmentation(level: f64) -> Result<(), String> {
    if !(0.0..=1.0).contains(&level) {
        return Err(format!("must be in [0, 1], got {level}"));
    }
    Ok(())
}

/// A request's optional per-stage settings; `None` means the manifest's default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageOverrides {
    /// Denoising steps, 1..=1000.
    pub steps: Option<usize>,
    /// Classifier-free guidance weight, 0..=50.
    pub guidance: Option<f64>,
    /// Update rule.
    pub sampler: Option<SamplerKind>,
    /// SR stages: augmentation time of the conditioning video, 0..=1.
    pub noise_augmentation: Option<f64>,
    /// Dynamic thresholding quantile in (0, 1].
    pub threshold_quantile: Option<f64>,
}

/// Fully resolved settings of one stage run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResolvedSettings {
    /// Update rule.
    pub sampler: SamplerKind,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance weight (1 disables guidance, 0 ignores the text).
    pub guidance: f64,
    /// Dynamic thresholding quantile; `None` disables it.
    pub threshold_quantile: Option<f64>,
    /// Augmentation time of the conditioning video (0 for the base stage).
    pub noise_augmentation: f64,
}

/// A setting outside its range: `field` is `<prefix>.<setting>` as the caller's API spells it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SettingError {
    /// The field, e.g. `stage_overrides[base].steps` or `sampler.steps`.
    pub field: String,
    /// What was wrong and what is accepted.
    pub reason: String,
}

impl StageOverrides {
    /// Applies the overrides to `stage`'s defaults. Errors name `<prefix>.<setting>`, so each
    /// API reports the field as its callers spell it.
    pub fn resolve(
        &self,
        stage: &StageManifest,
        prefix: &str,
    ) -> Result<ResolvedSettings, SettingError> {
        let error = |name: &str, reason: String| SettingError {
            field: format!("{prefix}.{name}"),
            reason,
        };
        let defaults = stage.defaults;
        let steps = self.steps.unwrap_or(defaults.steps);
        check_steps(steps).map_err(|r| error("steps", r))?;
        let guidance = self.guidance.unwrap_or(defaults.guidance);
        check_guidance(guidance).map_err(|r| error("guidance", r))?;
        let threshold_quantile = match self.threshold_quantile {
            Some(p) => {
                check_threshold_quantile(p).map_err(|r| error("threshold_quantile", r))?;
                Some(p)
            }
            None => defaults.threshold_quantile,
        };
        let is_sr = matches!(stage.kind, StageKind::Tsr | StageKind::Ssr);
        let noise_augmentation = match self.noise_augmentation {
            Some(_) if !is_sr => {
                return Err(error(
                    "noise_augmentation",
                    "only super-resolution stages take a conditioning video to augment".into(),
                ));
            }
            Some(a) => {
                check_noise_augmentation(a).map_err(|r| error("noise_augmentation", r))?;
                a
            }
            None => defaults.noise_augmentation,
        };
        Ok(ResolvedSettings {
            sampler: self.sampler.unwrap_or(defaults.sampler),
            steps,
            guidance,
            threshold_quantile,
            noise_augmentation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{StageDefaults, VideoShape};

    fn stage(kind: StageKind) -> StageManifest {
        StageManifest {
            name: "base".into(),
            kind,
            path: "base".into(),
            input: None,
            output: Some(VideoShape {
                frames: 2,
                height: 4,
                width: 4,
                fps: 2.0,
            }),
            defaults: StageDefaults::default(),
            max_context_frames: 0,
        }
    }

    #[test]
    fn overrides_resolve_against_defaults_and_errors_use_the_callers_prefix() {
        let base = stage(StageKind::Base);
        let resolved = StageOverrides {
            steps: Some(7),
            ..Default::default()
        }
        .resolve(&base, "sampler");
        assert_eq!(resolved.map(|r| r.steps), Ok(7));
        let cases = [
            (
                StageOverrides {
                    steps: Some(0),
                    ..Default::default()
                },
                "sampler.steps",
            ),
            (
                StageOverrides {
                    guidance: Some(f64::NAN),
                    ..Default::default()
                },
                "sampler.guidance",
            ),
            (
                StageOverrides {
                    threshold_quantile: Some(0.0),
                    ..Default::default()
                },
                "sampler.threshold_quantile",
            ),
            (
                StageOverrides {
                    noise_augmentation: Some(0.5),
                    ..Default::default()
                },
                "sampler.noise_augmentation",
            ),
        ];
        for (overrides, field) in cases {
            let err = overrides.resolve(&base, "sampler").expect_err(field);
            assert_eq!(err.field, field);
        }
        let sr = stage(StageKind::Ssr);
        let err = StageOverrides {
            noise_augmentation: Some(1.5),
            ..Default::default()
        }
        .resolve(&sr, "stage_overrides[ssr]")
        .expect_err("out of range");
        assert_eq!(err.field, "stage_overrides[ssr].noise_augmentation");
        assert!(err.reason.contains("[0, 1]"), "{}", err.reason);
    }
}
