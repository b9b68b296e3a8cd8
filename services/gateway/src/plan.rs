//! Request validation and planning: which clips, which stages with which settings, and how the
//! caller's deadline is shared among them.
//!
//! Limits (also reported by `Gateway.Info`): a prompt is 1..=[`MAX_PROMPT_BYTES`] bytes; at most
//! [`MAX_SEGMENTS`] segments and [`MAX_CLIPS`] clips (so `max_seconds` is `MAX_CLIPS` clip
//! lengths); per-stage steps 1..=1000 and guidance 0..=50 (the sampler's limits);
//! `preview_every` at most [`MAX_PREVIEW_EVERY`].

use std::collections::BTreeMap;
use std::time::Duration;

use vidcascade_core::CascadeError;
use vidcascade_core::cascade::{MAX_PROMPT_BYTES, stage_seed};
use vidcascade_core::stage::{ResolvedSettings, StageOverrides};
use vidcascade_core::wire::overrides_from_wire;
use vidcascade_models::repository::{Manifest, StageManifest, VideoShape};
use vidcascade_proto::v1;
use vidcascade_proto::wire::DEFAULT_CHUNK_BYTES;

use crate::error::GatewayError;

/// Most segments in a prompt sequence.
pub const MAX_SEGMENTS: usize = 8;
/// Most clips one request may generate.
pub const MAX_CLIPS: usize = 8;
/// Largest preview cadence.
pub const MAX_PREVIEW_EVERY: u32 = 1000;
/// Largest video chunk the gateway sends (well below gRPC's 4 MiB default).
pub const MAX_CHUNK_BYTES: usize = 2 << 20;

/// One diffusion stage's part of a plan.
#[derive(Debug, Clone)]
pub struct StagePlan {
    /// The stage.
    pub manifest: StageManifest,
    /// The client's overrides (sent to the stage as they are).
    pub overrides: StageOverrides,
    /// The settings they resolve to.
    pub settings: ResolvedSettings,
}

impl StagePlan {
    /// Relative cost: steps x output voxels x network rows (2 with guidance).
    pub fn cost(&self) -> f64 {
        let voxels = self
            .manifest
            .output
            .map_or(1.0, |s| (s.frames * s.height * s.width) as f64);
        let rows = if self.settings.sampler.guidance == 1.0 {
            1.0
        } else {
            2.0
        };
        self.settings.sampler.steps as f64 * voxels * rows
    }
}

/// What the gateway will run for a request.
#[derive(Debug, Clone)]
pub struct Plan {
    /// One prompt per clip.
    pub clips: Vec<String>,
    /// Diffusion stages in order.
    pub stages: Vec<StagePlan>,
    /// Seed in use.
    pub seed: u64,
    /// Preview cadence for every stage.
    pub preview_every: u32,
    /// Whether stage videos go into `StageCompleted`.
    pub include_stage_videos: bool,
    /// Largest chunk sent.
    pub chunk_bytes: usize,
    /// Shape of one clip.
    pub clip_shape: VideoShape,
}

/// Seconds of video one clip lasts.
pub fn clip_seconds(shape: &VideoShape) -> f64 {
    shape.frames as f64 / f64::from(shape.fps)
}

/// The seed of clip `clip` (clip 0 uses the request's seed, like the in-process cascade).
pub fn clip_seed(seed: u64, clip: usize) -> u64 {
    if clip == 0 {
        seed
    } else {
        stage_seed(seed, 1_000_000 + clip)
    }
}

fn check_prompt(field: &str, prompt: &str) -> Result<(), GatewayError> {
    if prompt.trim().is_empty() {
        return Err(GatewayError::invalid(field, "must not be empty"));
    }
    if prompt.len() > MAX_PROMPT_BYTES {
        return Err(GatewayError::invalid(
            field,
            format!("is {} bytes; the limit is {MAX_PROMPT_BYTES}", prompt.len()),
        ));
    }
    Ok(())
}

/// Validates `request` against the manifest and plans it. `random_seed` is used when the
/// request has none.
pub fn plan(
    request: &v1::GenerateRequest,
    manifest: &Manifest,
    random_seed: u64,
) -> Result<Plan, GatewayError> {
    let clip_shape = manifest
        .final_output()
        .ok_or_else(|| GatewayError::invalid("model", "the manifest has no diffusion stage"))?;
    let clip_len = clip_seconds(&clip_shape);
    let clips = match (request.prompt.is_empty(), request.segments.is_empty()) {
        (false, false) => {
            return Err(GatewayError::invalid(
                "segments",
                "set either prompt or segments, not both",
            ));
        }
        (true, true) => {
            return Err(GatewayError::invalid(
                "prompt",
                "required (or give segments for a prompt sequence)",
            ));
        }
        (false, true) => {
            check_prompt("prompt", &request.prompt)?;
            vec![request.prompt.clone()]
        }
        (true, false) => {
            if request.segments.len() > MAX_SEGMENTS {
                return Err(GatewayError::invalid(
                    "segments",
                    format!(
                        "{} segments; the limit is {MAX_SEGMENTS}",
                        request.segments.len()
                    ),
                ));
            }
            let mut clips = Vec::new();
            for (i, segment) in request.segments.iter().enumerate() {
                check_prompt(&format!("segments[{i}].prompt"), &segment.prompt)?;
                let seconds = f64::from(segment.seconds);
                let max_seconds = MAX_CLIPS as f64 * clip_len;
                if !(seconds.is_finite() && seconds > 0.0 && seconds <= max_seconds) {
                    return Err(GatewayError::invalid(
                        format!("segments[{i}].seconds"),
                        format!("must be in (0, {max_seconds}], got {}", segment.seconds),
                    ));
                }
                let count = (seconds / clip_len - 1e-6).ceil().max(1.0) as usize;
                clips.extend(std::iter::repeat_n(segment.prompt.clone(), count));
            }
            if clips.len() > MAX_CLIPS {
                return Err(GatewayError::invalid(
                    "segments",
                    format!(
                        "ask for {} clips ({:.1} s); the limit is {MAX_CLIPS} clips ({:.1} s)",
                        clips.len(),
                        clips.len() as f64 * clip_len,
                        MAX_CLIPS as f64 * clip_len
                    ),
                ));
            }
            clips
        }
    };
    if request.init_image_png.is_some() {
        return Err(GatewayError::invalid(
            "init_image_png",
            format!(
                "model `{}` has no image conditioning; leave it unset",
                manifest.name
            ),
        ));
    }
    if request.preview_every > MAX_PREVIEW_EVERY {
        return Err(GatewayError::invalid(
            "preview_every",
            format!("{} is above {MAX_PREVIEW_EVERY}", request.preview_every),
        ));
    }
    let names: Vec<&str> = manifest
        .diffusion_stages()
        .map(|s| s.name.as_str())
        .collect();
    let overrides: BTreeMap<&str, &v1::SamplerSettings> = request
        .stage_overrides
        .iter()
        .map(|(name, settings)| {
            if names.contains(&name.as_str()) {
                Ok((name.as_str(), settings))
            } else {
                Err(GatewayError::invalid(
                    format!("stage_overrides[{name}]"),
                    format!("no such diffusion stage; the stages are {names:?}"),
                ))
            }
        })
        .collect::<Result<_, _>>()?;
    let stages = manifest
        .diffusion_stages()
        .map(|stage| {
            let stage_overrides = overrides_from_wire(overrides.get(stage.name.as_str()).copied());
            let settings = stage_overrides.resolve(stage).map_err(|err| match err {
                CascadeError::InvalidRequest { field, reason } => GatewayError::invalid(
                    field.replacen(
                        &format!("stages.{}.", stage.name),
                        &format!("stage_overrides[{}].", stage.name),
                        1,
                    ),
                    reason,
                ),
                other => GatewayError::invalid(
                    format!("stage_overrides[{}]", stage.name),
                    other.to_string(),
                ),
            })?;
            Ok(StagePlan {
                manifest: stage.clone(),
                overrides: stage_overrides,
                settings,
            })
        })
        .collect::<Result<Vec<_>, GatewayError>>()?;
    let output = request.output.unwrap_or_default();
    let chunk_bytes = match output.max_chunk_bytes as usize {
        0 => DEFAULT_CHUNK_BYTES,
        n => n.min(MAX_CHUNK_BYTES),
    };
    Ok(Plan {
        clips,
        stages,
        seed: request.seed.unwrap_or(random_seed),
        preview_every: request.preview_every,
        include_stage_videos: output.include_stage_videos,
        chunk_bytes,
        clip_shape,
    })
}

/// The share of `remaining` for the first of `costs` (the stages still to run), in proportion
/// to its cost; what a stage does not use rolls over to the next.
pub fn deadline_share(remaining: Duration, costs: &[f64]) -> Duration {
    let total: f64 = costs.iter().sum();
    match costs.first() {
        Some(&first) if total > 0.0 => remaining.mul_f64((first / total).clamp(0.0, 1.0)),
        _ => remaining,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        vidcascade_models::repository::scaffold::Scaffold::tiny().manifest()
    }

    fn request(prompt: &str) -> v1::GenerateRequest {
        v1::GenerateRequest {
            prompt: prompt.into(),
            ..Default::default()
        }
    }

    fn field_of(result: Result<Plan, GatewayError>) -> String {
        match result {
            Err(GatewayError::InvalidArgument { field, .. }) => field,
            other => format!("not invalid: {other:?}"),
        }
    }

    #[test]
    fn a_plain_prompt_plans_every_stage_with_defaults() -> Result<(), GatewayError> {
        let manifest = manifest();
        let plan = plan(&request("a red circle"), &manifest, 42)?;
        assert_eq!(plan.clips, vec!["a red circle".to_string()]);
        assert_eq!(plan.seed, 42);
        assert_eq!(plan.stages.len(), manifest.diffusion_stages().count());
        for (stage, planned) in manifest.diffusion_stages().zip(&plan.stages) {
            assert_eq!(planned.settings.sampler.steps, stage.defaults.steps);
        }
        Ok(())
    }

    #[test]
    fn every_violation_names_its_field() {
        let manifest = manifest();
        let base = manifest
            .diffusion_stages()
            .next()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let mut too_many_steps = request("x");
        too_many_steps.stage_overrides.insert(
            base.clone(),
            v1::SamplerSettings {
                steps: Some(5000),
                ..Default::default()
            },
        );
        let mut bad_guidance = request("x");
        bad_guidance.stage_overrides.insert(
            base.clone(),
            v1::SamplerSettings {
                guidance: Some(f32::NAN),
                ..Default::default()
            },
        );
        let mut unknown_stage = request("x");
        unknown_stage
            .stage_overrides
            .insert("text-encoder".into(), v1::SamplerSettings::default());
        let mut both = request("x");
        both.segments.push(v1::Segment {
            prompt: "y".into(),
            seconds: 1.0,
        });
        let mut bad_seconds = request("");
        bad_seconds.segments.push(v1::Segment {
            prompt: "y".into(),
            seconds: -1.0,
        });
        let mut image = request("x");
        image.init_image_png = Some(vec![1, 2, 3]);
        let mut previews = request("x");
        previews.preview_every = 5000;
        let cases = [
            (request(""), "prompt".to_string()),
            (request("   "), "prompt".to_string()),
            (
                request(&"a".repeat(MAX_PROMPT_BYTES + 1)),
                "prompt".to_string(),
            ),
            (too_many_steps, format!("stage_overrides[{base}].steps")),
            (bad_guidance, format!("stage_overrides[{base}].guidance")),
            (unknown_stage, "stage_overrides[text-encoder]".to_string()),
            (both, "segments".to_string()),
            (bad_seconds, "segments[0].seconds".to_string()),
            (image, "init_image_png".to_string()),
            (previews, "preview_every".to_string()),
        ];
        for (request, field) in cases {
            assert_eq!(field_of(plan(&request, &manifest, 0)), field);
        }
    }

    #[test]
    fn segments_become_clips_up_to_the_limit() -> Result<(), GatewayError> {
        let manifest = manifest();
        let clip = clip_seconds(&manifest.final_output().unwrap_or(VideoShape {
            frames: 1,
            height: 1,
            width: 1,
            fps: 1.0,
        })) as f32;
        let mut request = request("");
        request.segments = vec![
            v1::Segment {
                prompt: "red".into(),
                seconds: clip,
            },
            v1::Segment {
                prompt: "blue".into(),
                seconds: clip * 1.5,
            },
        ];
        let planned = plan(&request, &manifest, 0)?;
        assert_eq!(planned.clips, vec!["red", "blue", "blue"]);
        request.segments = vec![v1::Segment {
            prompt: "red".into(),
            seconds: clip * (MAX_CLIPS as f32 + 1.0),
        }];
        assert_eq!(
            field_of(plan(&request, &manifest, 0)),
            "segments[0].seconds"
        );
        Ok(())
    }

    #[test]
    fn deadlines_are_shared_by_cost() {
        let share = deadline_share(Duration::from_secs(10), &[1.0, 3.0]);
        assert_eq!(share, Duration::from_millis(2500));
        assert_eq!(
            deadline_share(Duration::from_secs(4), &[2.0]),
            Duration::from_secs(4)
        );
        assert_eq!(
            deadline_share(Duration::from_secs(4), &[]),
            Duration::from_secs(4)
        );
    }
}
