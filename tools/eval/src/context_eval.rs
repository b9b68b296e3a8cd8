//! Image-to-video and continuation on held-out prompts, through the cascade's own request path
//! (`init_image_png`, and a two-segment prompt sequence whose second clip continues the first,
//! see `vidcascade_pipeline::context`): how closely the video starts from the given image,
//! whether it still follows the prompt after it, and whether the second clip moves on from the
//! first without a jump.

use std::ops::ControlFlow;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use vidcascade_engine::EmbeddedCascade;
use vidcascade_shapes::analysis::{analyse, psnr};
use vidcascade_shapes::render::{Continuation, Trajectory, render_trajectory_rgb8};
use vidcascade_shapes::world::{Motion, Scene};
use vidcascade_spec::{GenerateRequest, Segment, Video};

/// One image-to-video run.
#[derive(Debug, Clone, Serialize)]
pub struct ImageResult {
    /// The prompt.
    pub prompt: String,
    /// The seed (also of the image's placement).
    pub seed: u64,
    /// PSNR (dB) of the final video's frame 0 against the given image (100 when identical).
    pub frame0_psnr: f64,
    /// The final video's colours, shape and motion match the prompt.
    pub colour_ok: bool,
    /// Background right.
    pub background_ok: bool,
    /// Shape right.
    pub shape_ok: bool,
    /// Moves the prompt's way.
    pub motion_ok: bool,
}

/// One continuation: a clip, then a second clip of the same prompt from its last frames.
#[derive(Debug, Clone, Serialize)]
pub struct ContinuationResult {
    /// The prompt.
    pub prompt: String,
    /// The seed of the first clip (the second uses the next one).
    pub seed: u64,
    /// The shape's centroid step (px, final video) from the first clip's last frame to the
    /// second clip's first new one.
    pub seam_step: Option<f64>,
    /// The median centroid step inside the first clip.
    pub in_clip_step: Option<f64>,
    /// `seam_step / max(in_clip_step, 0.5 px)`.
    pub seam_ratio: Option<f64>,
    /// The second clip keeps the prompt's colours.
    pub colours_ok: bool,
}

/// The image an image-to-video run starts from: frame 0 of `scene` with its shape somewhere on
/// the side its motion starts from (so there is room to move), at `side` x `side`.
pub fn start_image(scene: &Scene, seed: u64, side: usize, fps: f32) -> Video {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x1A2B_3C4D);
    let along = rng.random_range(0.25..0.40);
    let cross = rng.random_range(0.30..0.70);
    let anchor = match scene.motion {
        Motion::Left => (1.0 - along, cross),
        Motion::Right => (along, cross),
        Motion::Up => (cross, 1.0 - along),
        Motion::Down => (cross, along),
    };
    let trajectory = Trajectory::Continued(Continuation {
        size: rng.random_range(0.14..0.20),
        anchor,
        anchor_progress: 0.0,
        previous: scene.motion,
        travel: 0.5,
    });
    Video {
        width: side,
        height: side,
        fps,
        frames: render_trajectory_rgb8(scene, &trajectory, 1, side, side),
    }
}

/// The shape of one clip's final video.
fn clip_shape(cascade: &EmbeddedCascade) -> anyhow::Result<vidcascade_spec::VideoShape> {
    cascade
        .manifest()
        .final_output()
        .ok_or_else(|| anyhow::anyhow!("the cascade has no diffusion stage"))
}

/// Generates `request` to its final video.
fn final_video(cascade: &EmbeddedCascade, request: &GenerateRequest) -> anyhow::Result<Video> {
    Ok(cascade
        .generate(request, None, |_| ControlFlow::Continue(()))?
        .final_video)
}

/// Runs image-to-video for `scenes` x `seeds`.
pub fn evaluate_image_to_video(
    cascade: &EmbeddedCascade,
    scenes: &[Scene],
    seeds: &[u64],
    mut on_result: impl FnMut(&ImageResult, &Video),
) -> anyhow::Result<Vec<ImageResult>> {
    let last = clip_shape(cascade)?;
    let mut results = Vec::new();
    for scene in scenes {
        for &seed in seeds {
            let image = start_image(scene, seed, last.width, last.fps);
            let prompt = scene.caption();
            let mut request = GenerateRequest::new(prompt.clone()).with_seed(seed);
            request.init_image_png = Some(vidcascade_media::encode_png(
                std::path::Path::new("init_image_png"),
                image.width,
                image.height,
                &image.frames[0],
            )?);
            let video = final_video(cascade, &request)?;
            let a = analyse(&video.frames, video.height, video.width);
            let result = ImageResult {
                prompt,
                seed,
                // Identical frames have infinite PSNR; report them as 100 dB.
                frame0_psnr: psnr(&video.frames[..1], &image.frames).min(100.0),
                colour_ok: a.colour == Some(scene.colour),
                background_ok: a.background == Some(scene.background),
                shape_ok: a.shape == Some(scene.shape),
                motion_ok: a.motion == Some(scene.motion),
            };
            on_result(&result, &video);
            results.push(result);
        }
    }
    Ok(results)
}

/// The distance between two points.
pub(crate) fn distance(a: (f64, f64), b: (f64, f64)) -> f64 {
    ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
}

/// The median (the upper one of an even count), `None` when there are no values.
pub(crate) fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

/// Runs a clip and its continuation (a two-segment story of the same prompt: the second clip
/// continues from the first one's last frames) for `scenes` x `seeds`; `on_result` sees the
/// story's final video.
pub fn evaluate_continuation(
    cascade: &EmbeddedCascade,
    scenes: &[Scene],
    seeds: &[u64],
    mut on_result: impl FnMut(&ContinuationResult, &Video),
) -> anyhow::Result<Vec<ContinuationResult>> {
    let clip = clip_shape(cascade)?;
    let clip_seconds = clip.frames as f32 / clip.fps;
    let mut results = Vec::new();
    for scene in scenes {
        for &seed in seeds {
            let prompt = scene.caption();
            let segment = |seconds| Segment {
                prompt: prompt.clone(),
                seconds,
            };
            let request = GenerateRequest {
                segments: vec![segment(clip_seconds), segment(0.5)],
                seed: Some(seed),
                ..GenerateRequest::default()
            };
            let story = final_video(cascade, &request)?;
            let track = analyse(&story.frames, story.height, story.width).track;
            let seam_at = clip.frames;
            let seam_step = match (track.get(seam_at - 1), track.get(seam_at)) {
                (Some(Some(p)), Some(Some(q))) => Some(distance(*p, *q)),
                _ => None,
            };
            let steps: Vec<f64> = track[..seam_at]
                .windows(2)
                .filter_map(|w| Some(distance(w[0]?, w[1]?)))
                .collect();
            let in_clip_step = median(steps);
            let second = &story.frames[seam_at.min(story.frames.len())..];
            let second_analysis = analyse(second, story.height, story.width);
            let result = ContinuationResult {
                prompt: prompt.clone(),
                seed,
                seam_ratio: seam_step.zip(in_clip_step).map(|(s, m)| s / m.max(0.5)),
                seam_step,
                in_clip_step,
                colours_ok: second_analysis.colour == Some(scene.colour)
                    && second_analysis.background == Some(scene.background),
            };
            on_result(&result, &story);
            results.push(result);
        }
    }
    Ok(results)
}

/// The context evaluation's summary.
#[derive(Debug, Clone, Serialize)]
pub struct ContextSummary {
    /// Image-to-video runs.
    pub image_runs: usize,
    /// Mean and lowest frame-0 PSNR (dB).
    pub frame0_psnr_mean: f64,
    /// Lowest frame-0 PSNR (dB).
    pub frame0_psnr_min: f64,
    /// Fractions of image-to-video runs with the right shape colour, background, shape, motion.
    pub image_adherence: [f64; 4],
    /// Continuation runs.
    pub continuation_runs: usize,
    /// Median seam ratio.
    pub seam_ratio_median: Option<f64>,
    /// Fraction of continuations with a seam ratio of at most 2.
    pub seam_within_2x: f64,
    /// Fraction of second clips with the prompt's colours.
    pub continuation_colours: f64,
}

/// Summarises the context evaluation.
pub fn summarise_context(
    images: &[ImageResult],
    continuations: &[ContinuationResult],
) -> ContextSummary {
    let share = |n: usize, of: usize| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    let count = |f: &dyn Fn(&ImageResult) -> bool| {
        share(images.iter().filter(|r| f(r)).count(), images.len())
    };
    let psnrs: Vec<f64> = images.iter().map(|r| r.frame0_psnr).collect();
    let ratios: Vec<f64> = continuations.iter().filter_map(|r| r.seam_ratio).collect();
    ContextSummary {
        image_runs: images.len(),
        frame0_psnr_mean: psnrs.iter().sum::<f64>() / psnrs.len().max(1) as f64,
        frame0_psnr_min: psnrs.iter().copied().fold(f64::INFINITY, f64::min),
        image_adherence: [
            count(&|r| r.colour_ok),
            count(&|r| r.background_ok),
            count(&|r| r.shape_ok),
            count(&|r| r.motion_ok),
        ],
        continuation_runs: continuations.len(),
        seam_within_2x: share(
            continuations
                .iter()
                .filter(|r| r.seam_ratio.is_some_and(|x| x <= 2.0))
                .count(),
            continuations.len(),
        ),
        seam_ratio_median: median(ratios),
        continuation_colours: share(
            continuations.iter().filter(|r| r.colours_ok).count(),
            continuations.len(),
        ),
    }
}

/// The context evaluation as markdown.
pub fn context_markdown(summary: &ContextSummary) -> String {
    let pct = |x: f64| format!("{:.1} %", 100.0 * x);
    let [colour, background, shape, motion] = summary.image_adherence;
    format!(
        "| context metric | value |\n|---|---|\n| image-to-video runs | {} |\n| frame 0 PSNR vs the given image (mean / lowest) | {:.1} dB / {:.1} dB |\n| image-to-video: shape colour / background / shape / motion | {} / {} / {} / {} |\n| continuation runs | {} |\n| seam step / in-clip step (median) | {} |\n| continuations with the seam within 2x the in-clip step | {} |\n| continuations keeping the prompt's colours | {} |\n",
        summary.image_runs,
        summary.frame0_psnr_mean,
        summary.frame0_psnr_min,
        pct(colour),
        pct(background),
        pct(shape),
        pct(motion),
        summary.continuation_runs,
        summary
            .seam_ratio_median
            .map_or("-".into(), |r| format!("{r:.2}")),
        pct(summary.seam_within_2x),
        pct(summary.continuation_colours),
    )
}
