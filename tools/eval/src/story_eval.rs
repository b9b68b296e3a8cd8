//! Stories through the cascade's own request path: a prompt sequence whose segments keep the
//! subject and turn it (left, up, right, down, ...), so the shape traces a loop and stays in the
//! frame. Measures whether each segment follows its own prompt (colour, background, direction),
//! how far the shape jumps at each seam against its steps inside segments, the total length,
//! and how early the first segment is ready (the `ClipCompleted` events stream each clip's new
//! frames as soon as it is done).

use std::ops::ControlFlow;
use std::time::Instant;

use serde::Serialize;
use vidcascade_engine::EmbeddedCascade;
use vidcascade_pipeline::Event;
use vidcascade_shapes::analysis::analyse;
use vidcascade_shapes::world::{Motion, Scene};
use vidcascade_spec::{GenerateRequest, Segment, Video};

use crate::context_eval::{distance, median};

/// The turn after `motion` in the loop left -> up -> right -> down.
fn turn(motion: Motion) -> Motion {
    match motion {
        Motion::Left => Motion::Up,
        Motion::Up => Motion::Right,
        Motion::Right => Motion::Down,
        Motion::Down => Motion::Left,
    }
}

/// `segments` scenes of `subject`'s colour, shape and background, turning every segment.
pub fn turning_story(subject: &Scene, segments: usize) -> Vec<Scene> {
    std::iter::successors(Some(*subject), |s| {
        Some(Scene {
            motion: turn(s.motion),
            ..*s
        })
    })
    .take(segments)
    .collect()
}

/// How one segment of a story came out.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentResult {
    /// Its prompt.
    pub prompt: String,
    /// Its frames in the final video: `[first, end)`.
    pub frames: (usize, usize),
    /// Shape colour, background and direction are the prompt's.
    pub colour_ok: bool,
    /// Background right.
    pub background_ok: bool,
    /// Moves the prompt's way.
    pub motion_ok: bool,
}

/// One story.
#[derive(Debug, Clone, Serialize)]
pub struct StoryResult {
    /// The seed.
    pub seed: u64,
    /// Every segment, in order.
    pub segments: Vec<SegmentResult>,
    /// Per seam: the shape's centroid step (px) from a segment's last frame to the next one's
    /// first, over the median step inside segments (`None` where the shape is not seen).
    pub seam_ratios: Vec<Option<f64>>,
    /// The median centroid step inside segments (px per frame).
    pub in_segment_step: Option<f64>,
    /// Frames of the final video.
    pub frames: usize,
    /// Its length in seconds.
    pub seconds: f64,
    /// Seconds until the first segment's frames were ready.
    pub first_segment_ready_s: f64,
    /// Seconds until the whole story was.
    pub total_s: f64,
}

/// Where each segment's frames lie in the final video, from the run's `ClipCompleted` events.
#[derive(Default)]
struct SegmentFrames {
    /// Per segment `[first, end)`.
    ranges: Vec<(usize, usize)>,
    first_ready: Option<f64>,
}

impl SegmentFrames {
    fn see(&mut self, event: &Event, started: Instant) {
        let Event::ClipCompleted {
            segment,
            first_frame,
            video,
            ..
        } = event
        else {
            return;
        };
        let end = first_frame + video.frames.len();
        match self.ranges.get_mut(*segment) {
            Some(range) => range.1 = end,
            None => self.ranges.push((*first_frame, end)),
        }
        if self.first_ready.is_none() {
            self.first_ready = Some(started.elapsed().as_secs_f64());
        }
    }
}

/// Tells the story of `scenes` (one clip per segment) with `seed`.
pub fn evaluate_story(
    cascade: &EmbeddedCascade,
    scenes: &[Scene],
    seed: u64,
) -> anyhow::Result<(StoryResult, Video)> {
    let request = GenerateRequest {
        segments: scenes
            .iter()
            .map(|s| Segment {
                prompt: s.caption(),
                // The shortest length: one clip per segment.
                seconds: f32::MIN_POSITIVE,
            })
            .collect(),
        seed: Some(seed),
        ..GenerateRequest::default()
    };
    let started = Instant::now();
    let mut seen = SegmentFrames::default();
    let video = cascade
        .generate(&request, None, |event| {
            seen.see(event, started);
            ControlFlow::Continue(())
        })?
        .final_video;
    let total_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        seen.ranges.len() == scenes.len(),
        "{} segments asked for, {} completed",
        scenes.len(),
        seen.ranges.len()
    );
    let track = analyse(&video.frames, video.height, video.width).track;
    let segments = scenes
        .iter()
        .zip(&seen.ranges)
        .map(|(scene, &(first, end))| segment_result(scene, &video, first, end))
        .collect();
    let in_segment: Vec<f64> = seen
        .ranges
        .iter()
        .flat_map(|&(first, end)| track[first..end].windows(2))
        .filter_map(|w| Some(distance(w[0]?, w[1]?)))
        .collect();
    let in_segment_step = median(in_segment);
    let seam_ratios = seen.ranges[1..]
        .iter()
        .map(|&(first, _)| {
            let step = distance(track[first - 1]?, track[first]?);
            Some(step / in_segment_step?.max(0.5))
        })
        .collect();
    let result = StoryResult {
        seed,
        segments,
        seam_ratios,
        in_segment_step,
        frames: video.frames.len(),
        seconds: video.frames.len() as f64 / f64::from(video.fps),
        first_segment_ready_s: seen.first_ready.unwrap_or(total_s),
        total_s,
    };
    Ok((result, video))
}

/// Whether the frames `[first, end)` of `video` follow `scene`.
fn segment_result(scene: &Scene, video: &Video, first: usize, end: usize) -> SegmentResult {
    let a = analyse(&video.frames[first..end], video.height, video.width);
    SegmentResult {
        prompt: scene.caption(),
        frames: (first, end),
        colour_ok: a.colour == Some(scene.colour),
        background_ok: a.background == Some(scene.background),
        motion_ok: a.motion == Some(scene.motion),
    }
}

/// The story evaluation's summary.
#[derive(Debug, Clone, Serialize)]
pub struct StorySummary {
    /// Stories told.
    pub stories: usize,
    /// Segments in all.
    pub segments: usize,
    /// Fractions of segments with the right colour, background and direction.
    pub segment_adherence: [f64; 3],
    /// Median seam ratio over every seam.
    pub seam_ratio_median: Option<f64>,
    /// Fraction of seams within 2x the in-segment step.
    pub seams_within_2x: f64,
    /// Median story length (seconds of video).
    pub seconds_median: Option<f64>,
    /// Median seconds until the first segment was ready, and until the story was.
    pub first_segment_ready_s_median: Option<f64>,
    /// Median seconds for the whole story.
    pub total_s_median: Option<f64>,
}

/// Summarises stories.
pub fn summarise_stories(stories: &[StoryResult]) -> StorySummary {
    let segments: Vec<&SegmentResult> = stories.iter().flat_map(|s| &s.segments).collect();
    let share = |f: &dyn Fn(&SegmentResult) -> bool| {
        segments.iter().filter(|s| f(s)).count() as f64 / segments.len().max(1) as f64
    };
    let seams: Vec<f64> = stories
        .iter()
        .flat_map(|s| s.seam_ratios.iter().flatten().copied())
        .collect();
    let all_seams: usize = stories.iter().map(|s| s.seam_ratios.len()).sum();
    let per_story = |f: &dyn Fn(&StoryResult) -> f64| median(stories.iter().map(f).collect());
    StorySummary {
        stories: stories.len(),
        segments: segments.len(),
        segment_adherence: [
            share(&|s| s.colour_ok),
            share(&|s| s.background_ok),
            share(&|s| s.motion_ok),
        ],
        seams_within_2x: seams.iter().filter(|&&r| r <= 2.0).count() as f64
            / all_seams.max(1) as f64,
        seam_ratio_median: median(seams),
        seconds_median: per_story(&|s| s.seconds),
        first_segment_ready_s_median: per_story(&|s| s.first_segment_ready_s),
        total_s_median: per_story(&|s| s.total_s),
    }
}

/// The story evaluation as markdown.
pub fn story_markdown(summary: &StorySummary) -> String {
    let pct = |x: f64| format!("{:.1} %", 100.0 * x);
    let num = |x: Option<f64>, unit: &str| x.map_or("-".into(), |v| format!("{v:.2}{unit}"));
    let [colour, background, motion] = summary.segment_adherence;
    format!(
        "| story metric | value |\n|---|---|\n| stories / segments | {} / {} |\n| segments with the prompt's shape colour / background / direction | {} / {} / {} |\n| seam step / in-segment step (median) | {} |\n| seams within 2x the in-segment step | {} |\n| story length (median) | {} |\n| first segment ready / whole story (median) | {} / {} |\n",
        summary.stories,
        summary.segments,
        pct(colour),
        pct(background),
        pct(motion),
        num(summary.seam_ratio_median, ""),
        pct(summary.seams_within_2x),
        num(summary.seconds_median, " s"),
        num(summary.first_segment_ready_s_median, " s"),
        num(summary.total_s_median, " s"),
    )
}
