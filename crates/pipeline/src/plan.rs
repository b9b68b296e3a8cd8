//! Request validation and planning: which clips, which stages with which settings and seeds,
//! and how the caller's deadline is shared among them.
//!
//! Limits (the gateway reports them in `Gateway.Info`): a prompt is 1..=2048
//! bytes; at most [`MAX_SEGMENTS`] segments and [`MAX_CLIPS`] clips (so the longest video is
//! `MAX_CLIPS` clip lengths); per-stage steps 1..=1000 and guidance 0..=50 (the sampler's
//! limits); `preview_every` at most [`MAX_PREVIEW_EVERY`]. Field names in errors are the
//! gateway's (`stage_overrides[base].steps`), the public API's spelling.

use vidcascade_spec::manifest::{Manifest, StageKind, StageManifest, VideoShape};
use vidcascade_spec::request::{check_prompt, clip_seed, echo, stage_seed};
use vidcascade_spec::{GenerateRequest, ResolvedSettings, StageOverrides};

use vidcascade_spec::Video;

use crate::PipelineError;
use crate::context::{decode_init_image, new_frames_from, overlap_frames};

/// Most segments in a prompt sequence.
pub const MAX_SEGMENTS: usize = 64;
/// Most clips one request may generate: with the shipped cascade's continuing clips (2 s, then
/// 1.5 s more per clip) 144.5 s of video, over two minutes.
pub const MAX_CLIPS: usize = 96;
/// Base frames of overlap between consecutive clips when every stage takes context frames.
pub const STORY_OVERLAP: usize = 2;
/// Largest preview cadence.
pub const MAX_PREVIEW_EVERY: u32 = 1000;

/// One diffusion stage's part of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct StagePlan {
    /// The stage.
    pub manifest: StageManifest,
    /// The caller's overrides (a stage service gets them as they are and resolves them itself).
    pub overrides: StageOverrides,
    /// The settings they resolve to.
    pub settings: ResolvedSettings,
}

/// One clip of a plan: the prompt it follows and the segment it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipPlan {
    /// The prompt (the request's, or its segment's).
    pub prompt: String,
    /// The segment (0-based; 0 for a single prompt).
    pub segment: usize,
}

/// What a run will do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The text encoder's stage name.
    pub encoder: String,
    /// The clips, in the order they run.
    pub clips: Vec<ClipPlan>,
    /// Diffusion stages in order.
    pub stages: Vec<StagePlan>,
    /// Seed in use.
    pub seed: u64,
    /// Preview cadence for every stage.
    pub preview_every: u32,
    /// Shape of one clip's final video.
    pub clip_shape: VideoShape,
    /// Base frames each clip after the first continues from (0: clips are independent).
    pub overlap: usize,
    /// Frames per clip of the base stage.
    pub base_frames: usize,
    /// The decoded init image, pinned as the first clip's frame 0.
    pub init_image: Option<Video>,
}

impl Plan {
    /// The seed of diffusion stage `index` for clip `clip`.
    pub fn stage_seed(&self, clip: usize, index: usize) -> u64 {
        stage_seed(clip_seed(self.seed, clip), index)
    }

    /// The first final frame of clip `clip` that earlier clips do not cover.
    pub fn new_frames_from(&self, clip: usize) -> usize {
        if clip == 0 {
            0
        } else {
            new_frames_from(self.clip_shape.frames, self.base_frames, self.overlap)
        }
    }

    /// Whether clip `clip` is the last of its segment.
    pub fn ends_segment(&self, clip: usize) -> bool {
        let segment = |c: usize| self.clips.get(c).map(|c| c.segment);
        segment(clip + 1) != segment(clip)
    }

    /// The shape of the whole final video (every clip's new frames, one after another).
    pub fn final_shape(&self) -> VideoShape {
        let later = self.clip_shape.frames - self.new_frames_from(1);
        VideoShape {
            frames: self.clip_shape.frames + later * self.clips.len().saturating_sub(1),
            ..self.clip_shape
        }
    }
}

/// Seconds of video one clip lasts.
pub fn clip_seconds(shape: &VideoShape) -> f64 {
    shape.frames as f64 / f64::from(shape.fps)
}

/// Seconds each clip after the first adds: a whole clip, less what continuing clips overlap.
fn later_clip_seconds(clip_shape: &VideoShape, base_frames: usize, overlap: usize) -> f64 {
    let overlapped = new_frames_from(clip_shape.frames, base_frames, overlap);
    (clip_shape.frames - overlapped) as f64 / f64::from(clip_shape.fps)
}

/// The longest video a request may ask for, in seconds, when clips continue each other with
/// `overlap` base frames of `base_frames` (0: independent clips).
pub fn max_seconds(clip_shape: &VideoShape, base_frames: usize, overlap: usize) -> f64 {
    clip_seconds(clip_shape)
        + later_clip_seconds(clip_shape, base_frames, overlap) * (MAX_CLIPS - 1) as f64
}

/// The longest video a request may ask for from `manifest`'s cascade, in seconds (`None`
/// without diffusion stages).
pub fn manifest_max_seconds(manifest: &Manifest) -> Option<f64> {
    let clip_shape = manifest.final_output()?;
    let context: Vec<usize> = manifest
        .diffusion_stages()
        .map(|s| s.max_context_frames)
        .collect();
    let overlap = story_overlap(manifest, &context);
    Some(max_seconds(&clip_shape, base_frames(manifest), overlap))
}

/// Base frames consecutive clips overlap by: [`STORY_OVERLAP`] when every diffusion stage takes
/// enough known leading frames (`max_context_frames`, in cascade order), else 0 (independent
/// clips).
pub fn story_overlap(manifest: &Manifest, max_context_frames: &[usize]) -> usize {
    let base_frames = base_frames(manifest);
    let stages: Vec<&StageManifest> = manifest.diffusion_stages().collect();
    let supported = !stages.is_empty()
        && stages.len() == max_context_frames.len()
        && stages.iter().zip(max_context_frames).all(|(stage, &most)| {
            let frames = stage.output.map_or(0, |o| o.frames);
            let needed = overlap_frames(STORY_OVERLAP, frames / base_frames.max(1));
            base_frames > STORY_OVERLAP && most >= needed
        });
    if supported { STORY_OVERLAP } else { 0 }
}

/// Frames per clip of the first diffusion stage.
fn base_frames(manifest: &Manifest) -> usize {
    manifest
        .diffusion_stages()
        .next()
        .and_then(|s| s.output)
        .map_or(1, |o| o.frames)
}

fn checked_prompt(field: &str, prompt: &str) -> Result<String, PipelineError> {
    check_prompt(prompt).map_err(|reason| PipelineError::invalid(field, reason))?;
    Ok(prompt.to_string())
}

/// Validates `request` against the manifest and plans it. `random_seed` is used when the
/// request has none. When every diffusion stage takes context frames (`max_context_frames` in
/// the manifest), clips continue each other and an init image is allowed.
pub fn plan(
    request: &GenerateRequest,
    manifest: &Manifest,
    random_seed: u64,
) -> Result<Plan, PipelineError> {
    let max_context_frames: Vec<usize> = manifest
        .diffusion_stages()
        .map(|s| s.max_context_frames)
        .collect();
    let clip_shape = manifest
        .final_output()
        .ok_or_else(|| PipelineError::invalid("model", "the manifest has no diffusion stage"))?;
    let overlap = story_overlap(manifest, &max_context_frames);
    let base_frames = base_frames(manifest);
    let clips = plan_clips(request, &clip_shape, base_frames, overlap)?;
    let init_image = match &request.init_image_png {
        None => None,
        Some(_) if max_context_frames.is_empty() || max_context_frames.contains(&0) => {
            return Err(PipelineError::invalid(
                "init_image_png",
                format!(
                    "model `{}` has no image conditioning (its stages take no context frames); leave it unset",
                    manifest.name
                ),
            ));
        }
        Some(png) => Some(decode_init_image(png)?),
    };
    if request.preview_every > MAX_PREVIEW_EVERY {
        return Err(PipelineError::invalid(
            "preview_every",
            format!("{} is above {MAX_PREVIEW_EVERY}", request.preview_every),
        ));
    }
    let encoder = manifest
        .stages
        .iter()
        .find(|s| s.kind == StageKind::TextEncoder)
        .map_or_else(|| "text-encoder".to_string(), |s| s.name.clone());
    Ok(Plan {
        encoder,
        clips,
        stages: plan_stages(request, manifest)?,
        seed: request.seed.unwrap_or(random_seed),
        preview_every: request.preview_every,
        clip_shape,
        overlap,
        base_frames,
        init_image,
    })
}

/// The clips: one for the prompt, or each segment repeated for its length in clips.
fn plan_clips(
    request: &GenerateRequest,
    clip_shape: &VideoShape,
    base_frames: usize,
    overlap: usize,
) -> Result<Vec<ClipPlan>, PipelineError> {
    match (request.prompt.is_empty(), request.segments.is_empty()) {
        (false, false) => Err(PipelineError::invalid(
            "segments",
            "set either prompt or segments, not both",
        )),
        (true, true) => Err(PipelineError::invalid(
            "prompt",
            "required (or give segments for a prompt sequence)",
        )),
        (false, true) => Ok(vec![ClipPlan {
            prompt: checked_prompt("prompt", &request.prompt)?,
            segment: 0,
        }]),
        (true, false) => plan_segments(request, clip_shape, base_frames, overlap),
    }
}

fn plan_segments(
    request: &GenerateRequest,
    clip_shape: &VideoShape,
    base_frames: usize,
    overlap: usize,
) -> Result<Vec<ClipPlan>, PipelineError> {
    if request.segments.len() > MAX_SEGMENTS {
        return Err(PipelineError::invalid(
            "segments",
            format!(
                "{} segments; the limit is {MAX_SEGMENTS}",
                request.segments.len()
            ),
        ));
    }
    let first_len = clip_seconds(clip_shape);
    let later_len = later_clip_seconds(clip_shape, base_frames, overlap);
    let max_seconds = max_seconds(clip_shape, base_frames, overlap);
    let mut clips = Vec::new();
    let mut total = 0.0;
    for (i, segment) in request.segments.iter().enumerate() {
        let prompt = checked_prompt(&format!("segments[{i}].prompt"), &segment.prompt)?;
        let seconds = f64::from(segment.seconds);
        if !(seconds.is_finite() && seconds > 0.0 && seconds <= max_seconds) {
            return Err(PipelineError::invalid(
                format!("segments[{i}].seconds"),
                format!("must be in (0, {max_seconds:.1}], got {}", segment.seconds),
            ));
        }
        // Clips until this segment's seconds are covered, at least one.
        let mut covered = 0.0;
        loop {
            let len = if clips.is_empty() {
                first_len
            } else {
                later_len
            };
            clips.push(ClipPlan {
                prompt: prompt.clone(),
                segment: i,
            });
            covered += len;
            total += len;
            if covered >= seconds - 1e-6 || clips.len() > MAX_CLIPS {
                break;
            }
        }
    }
    if clips.len() > MAX_CLIPS {
        return Err(PipelineError::invalid(
            "segments",
            format!(
                "ask for more than {MAX_CLIPS} clips (over {total:.1} s); the limit is {max_seconds:.1} s"
            ),
        ));
    }
    Ok(clips)
}

/// Every diffusion stage with the request's overrides resolved against its defaults.
fn plan_stages(
    request: &GenerateRequest,
    manifest: &Manifest,
) -> Result<Vec<StagePlan>, PipelineError> {
    let names: Vec<&str> = manifest
        .diffusion_stages()
        .map(|s| s.name.as_str())
        .collect();
    if let Some(unknown) = request
        .overrides
        .keys()
        .find(|name| !names.contains(&name.as_str()))
    {
        return Err(PipelineError::invalid(
            format!("stage_overrides[{}]", echo(unknown)),
            format!("no such diffusion stage; the stages are {names:?}"),
        ));
    }
    manifest
        .diffusion_stages()
        .map(|stage| {
            let overrides = request
                .overrides
                .get(&stage.name)
                .copied()
                .unwrap_or_default();
            let settings = overrides
                .resolve(stage, &format!("stage_overrides[{}]", stage.name))
                .map_err(|err| PipelineError::invalid(err.field, err.reason))?;
            Ok(StagePlan {
                manifest: stage.clone(),
                overrides,
                settings,
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vidcascade_spec::Segment;
    use vidcascade_spec::request::MAX_PROMPT_BYTES;

    /// Text encoder, base 2x4x4 @ 2 fps, TSR to 4 frames, SSR to 8x8.
    pub(crate) fn manifest() -> Manifest {
        let json = r#"{"name": "tiny", "stages": [
            {"name": "text-encoder", "kind": "text-encoder", "path": "text-encoder"},
            {"name": "base", "kind": "base", "path": "base",
             "output": {"frames": 2, "height": 4, "width": 4, "fps": 2},
             "defaults": {"steps": 3, "guidance": 2.0}},
            {"name": "tsr", "kind": "tsr", "path": "tsr",
             "input": {"frames": 2, "height": 4, "width": 4, "fps": 2},
             "output": {"frames": 4, "height": 4, "width": 4, "fps": 4},
             "defaults": {"steps": 2, "noise_augmentation": 0.1}},
            {"name": "ssr", "kind": "ssr", "path": "ssr",
             "input": {"frames": 4, "height": 4, "width": 4, "fps": 4},
             "output": {"frames": 4, "height": 8, "width": 8, "fps": 4},
             "defaults": {"steps": 2}}]}"#;
        let manifest: Manifest = serde_json::from_str(json).expect("valid test manifest");
        manifest
            .validate(std::path::Path::new("manifest.json"))
            .expect("valid test manifest");
        manifest
    }

    fn field_of(result: Result<Plan, PipelineError>) -> String {
        match result {
            Err(PipelineError::InvalidArgument { field, .. }) => field,
            other => format!("not invalid: {other:?}"),
        }
    }

    #[test]
    fn a_plain_prompt_plans_every_stage_with_defaults() -> Result<(), PipelineError> {
        let manifest = manifest();
        let plan = plan(&GenerateRequest::new("a red circle"), &manifest, 42)?;
        assert_eq!(
            plan.clips,
            vec![ClipPlan {
                prompt: "a red circle".into(),
                segment: 0
            }]
        );
        assert_eq!(plan.seed, 42);
        assert_eq!(plan.encoder, "text-encoder");
        assert_eq!(plan.stages.len(), 3);
        for (stage, planned) in manifest.diffusion_stages().zip(&plan.stages) {
            assert_eq!(planned.settings.steps, stage.defaults.steps);
        }
        assert_eq!(plan.stage_seed(0, 1), stage_seed(42, 1));
        Ok(())
    }

    #[test]
    fn every_violation_names_its_field() {
        let manifest = manifest();
        let steps = |n| StageOverrides {
            steps: Some(n),
            ..Default::default()
        };
        let with = |f: &dyn Fn(&mut GenerateRequest)| {
            let mut request = GenerateRequest::new("x");
            f(&mut request);
            request
        };
        let segment = |prompt: &str, seconds| Segment {
            prompt: prompt.into(),
            seconds,
        };
        let cases = [
            (GenerateRequest::new(""), "prompt"),
            (GenerateRequest::new("   "), "prompt"),
            (
                GenerateRequest::new("a".repeat(MAX_PROMPT_BYTES + 1)),
                "prompt",
            ),
            (
                GenerateRequest::new("x").with_overrides("base", steps(5000)),
                "stage_overrides[base].steps",
            ),
            (
                GenerateRequest::new("x").with_overrides(
                    "base",
                    StageOverrides {
                        guidance: Some(f64::NAN),
                        ..Default::default()
                    },
                ),
                "stage_overrides[base].guidance",
            ),
            (
                GenerateRequest::new("x").with_overrides("text-encoder", steps(1)),
                "stage_overrides[text-encoder]",
            ),
            (with(&|r| r.segments.push(segment("y", 1.0))), "segments"),
            (
                with(&|r| {
                    r.prompt.clear();
                    r.segments.push(segment("y", -1.0));
                }),
                "segments[0].seconds",
            ),
            (
                with(&|r| r.init_image_png = Some(vec![1, 2, 3])),
                "init_image_png",
            ),
            (with(&|r| r.preview_every = 5000), "preview_every"),
        ];
        for (request, field) in cases {
            assert_eq!(field_of(plan(&request, &manifest, 0)), field);
        }
    }

    #[test]
    fn segments_become_clips_up_to_the_limit() -> Result<(), PipelineError> {
        let manifest = manifest();
        let clip = clip_seconds(&manifest.final_output().expect("has stages")) as f32;
        let mut request = GenerateRequest {
            segments: vec![
                Segment {
                    prompt: "red".into(),
                    seconds: clip,
                },
                Segment {
                    prompt: "blue".into(),
                    seconds: clip * 1.5,
                },
            ],
            ..GenerateRequest::default()
        };
        let planned = plan(&request, &manifest, 0)?;
        let clips: Vec<(&str, usize)> = planned
            .clips
            .iter()
            .map(|c| (c.prompt.as_str(), c.segment))
            .collect();
        assert_eq!(clips, vec![("red", 0), ("blue", 1), ("blue", 1)]);
        assert_eq!(
            (0..3).map(|c| planned.ends_segment(c)).collect::<Vec<_>>(),
            vec![true, false, true]
        );
        assert_eq!(planned.final_shape().frames, 12);
        assert_ne!(planned.stage_seed(1, 0), planned.stage_seed(0, 0));
        request.segments = vec![Segment {
            prompt: "red".into(),
            seconds: clip * (MAX_CLIPS as f32 + 1.0),
        }];
        assert_eq!(
            field_of(plan(&request, &manifest, 0)),
            "segments[0].seconds"
        );
        Ok(())
    }
}
