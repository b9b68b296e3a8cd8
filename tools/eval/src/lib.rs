//! Evaluation of a cascade on the shapes world, by plain image processing.
//!
//! For every prompt: run the cascade at its default settings, then read each stage's video back
//! with [`vidcascade_shapes::analysis`]: shape colour, background colour, shape class and motion
//! direction of the final video (and of the base video, to locate errors); the TSR stage's
//! consistency with its input (its even frames are the input's instants: PSNR) and the smoothness
//! of the shape's track; each SSR stage's output, box-downsampled, against its input (PSNR).

pub mod colour_check;
pub mod context_eval;
pub mod story_eval;

use std::ops::ControlFlow;

use candle_core::Device;
use serde::Serialize;
use vidcascade_engine::video::{downsample_space, video_from_tensor, video_to_tensor};
use vidcascade_engine::{CascadeOutput, EmbeddedCascade};
use vidcascade_shapes::analysis::{Analysis, analyse, psnr};
use vidcascade_shapes::world::Scene;
use vidcascade_spec::{GenerateRequest, Video};

/// One evaluated prompt.
#[derive(Debug, Clone, Serialize)]
pub struct PromptResult {
    /// The prompt.
    pub prompt: String,
    /// The seed.
    pub seed: u64,
    /// What the prompt asks for.
    pub expected: Scene,
    /// What the final video shows.
    pub final_video: Analysis,
    /// What the base stage's video shows.
    pub base_video: Analysis,
    /// Shape colour correct.
    pub colour_ok: bool,
    /// Background colour correct.
    pub background_ok: bool,
    /// Shape class correct.
    pub shape_ok: bool,
    /// Motion direction correct.
    pub motion_ok: bool,
    /// The shape's median colour named against a wider set of colours (see [`colour_check`]).
    pub colour_wide: Option<String>,
    /// The background's median colour, named the same way.
    pub background_wide: Option<String>,
    /// TSR: PSNR (dB) of its even frames against its input frames.
    pub tsr_keyframe_psnr: Option<f64>,
    /// TSR: standard deviation of the per-frame centroid step over its mean (0 = perfectly even motion).
    pub tsr_track_jitter: Option<f64>,
    /// Each SSR stage: PSNR (dB) of its output, box-downsampled, against its input.
    pub ssr_psnr: Vec<(String, f64)>,
    /// Wall time of the whole cascade, seconds.
    pub seconds: f64,
}

/// Accuracies and means over a set of prompts.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Prompts evaluated.
    pub prompts: usize,
    /// Fraction with the right shape colour.
    pub colour_accuracy: f64,
    /// Fraction with the right background colour.
    pub background_accuracy: f64,
    /// Fraction with both colours right.
    pub both_colours_accuracy: f64,
    /// Fraction whose shape colour also reads right against the wider colour set.
    pub wide_colour_accuracy: f64,
    /// Fraction whose background also reads right against the wider colour set.
    pub wide_background_accuracy: f64,
    /// Fraction with the right shape.
    pub shape_accuracy: f64,
    /// Fraction moving the right way.
    pub motion_accuracy: f64,
    /// Same, measured on the base stage's video.
    pub base_motion_accuracy: f64,
    /// Mean TSR keyframe PSNR.
    pub tsr_keyframe_psnr: Option<f64>,
    /// Mean TSR track jitter.
    pub tsr_track_jitter: Option<f64>,
    /// Mean SSR PSNR per SSR stage.
    pub ssr_psnr: Vec<(String, f64)>,
    /// Median seconds per generation.
    pub median_seconds: f64,
}

fn fraction(results: &[PromptResult], ok: impl Fn(&PromptResult) -> bool) -> f64 {
    if results.is_empty() {
        return 0.0;
    }
    results.iter().filter(|r| ok(r)).count() as f64 / results.len() as f64
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Summarises results.
pub fn summarise(results: &[PromptResult]) -> Summary {
    let mut seconds: Vec<f64> = results.iter().map(|r| r.seconds).collect();
    seconds.sort_by(f64::total_cmp);
    let ssr_names: Vec<String> = results
        .first()
        .map(|r| r.ssr_psnr.iter().map(|(n, _)| n.clone()).collect())
        .unwrap_or_default();
    Summary {
        prompts: results.len(),
        colour_accuracy: fraction(results, |r| r.colour_ok),
        background_accuracy: fraction(results, |r| r.background_ok),
        both_colours_accuracy: fraction(results, |r| r.colour_ok && r.background_ok),
        wide_colour_accuracy: fraction(results, |r| {
            r.colour_wide.as_deref() == Some(r.expected.colour.word())
        }),
        wide_background_accuracy: fraction(results, |r| {
            r.background_wide.as_deref() == Some(r.expected.background.word())
        }),
        shape_accuracy: fraction(results, |r| r.shape_ok),
        motion_accuracy: fraction(results, |r| r.motion_ok),
        base_motion_accuracy: fraction(results, |r| r.base_video.motion == Some(r.expected.motion)),
        tsr_keyframe_psnr: mean(results.iter().filter_map(|r| r.tsr_keyframe_psnr)),
        tsr_track_jitter: mean(results.iter().filter_map(|r| r.tsr_track_jitter)),
        ssr_psnr: ssr_names
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                mean(
                    results
                        .iter()
                        .filter_map(|r| r.ssr_psnr.get(i).map(|p| p.1)),
                )
                .map(|m| (name.clone(), m))
            })
            .collect(),
        median_seconds: seconds.get(seconds.len() / 2).copied().unwrap_or(0.0),
    }
}

fn analyse_video(video: &Video) -> Analysis {
    analyse(&video.frames, video.height, video.width)
}

/// Even-frame PSNR of a TSR output against its input, and the jitter of its track.
fn tsr_metrics(input: &Video, output: &Video) -> (Option<f64>, Option<f64>) {
    if input.frames.is_empty() || !output.frames.len().is_multiple_of(input.frames.len()) {
        return (None, None);
    }
    let factor = output.frames.len() / input.frames.len();
    let keyframes: Vec<Vec<u8>> = output.frames.iter().step_by(factor).cloned().collect();
    let keyframe_psnr = Some(psnr(&keyframes, &input.frames));
    let track: Vec<(f64, f64)> = analyse_video(output).track.into_iter().flatten().collect();
    let steps: Vec<f64> = track
        .windows(2)
        .map(|w| ((w[1].0 - w[0].0).powi(2) + (w[1].1 - w[0].1).powi(2)).sqrt())
        .collect();
    let jitter = mean(steps.iter().copied()).and_then(|m| {
        let var = mean(steps.iter().map(|s| (s - m).powi(2)))?;
        (m > 1e-9).then(|| var.sqrt() / m)
    });
    (keyframe_psnr, jitter)
}

fn ssr_psnr(input: &Video, output: &Video) -> anyhow::Result<f64> {
    let factor = output.height / input.height.max(1);
    let down = downsample_space(&video_to_tensor(output, &Device::Cpu)?, factor)?;
    let a = video_from_tensor(&down, 0.0)?;
    Ok(psnr(&a.frames, &input.frames))
}

/// The wide-set names of the shape's and the background's median colours in `video`.
pub fn wide_names(video: &Video, analysis: &Analysis) -> (Option<String>, Option<String>) {
    let (h, w) = (video.height, video.width);
    let name = |colour: Option<vidcascade_shapes::world::Colour>, border: bool| {
        colour
            .and_then(|c| colour_check::median_of(&video.frames, h, w, c, border))
            .map(|rgb| colour_check::wide_name(rgb).to_string())
    };
    (
        name(analysis.colour, false),
        name(analysis.background, true),
    )
}

/// Scores one finished generation against the scene it was asked for.
pub fn score(
    prompt: &str,
    seed: u64,
    expected: Scene,
    output: &CascadeOutput,
    seconds: f64,
) -> anyhow::Result<PromptResult> {
    let final_video = analyse_video(&output.final_video);
    let base_video = analyse_video(&output.stages[0].video);
    let (colour_wide, background_wide) = wide_names(&output.final_video, &final_video);
    let mut tsr = (None, None);
    let mut ssr = Vec::new();
    for pair in output.stages.windows(2) {
        let (low, high) = (&pair[0], &pair[1]);
        if high.video.frames.len() != low.video.frames.len() {
            tsr = tsr_metrics(&low.video, &high.video);
        } else {
            ssr.push((high.stage.clone(), ssr_psnr(&low.video, &high.video)?));
        }
    }
    Ok(PromptResult {
        prompt: prompt.to_string(),
        seed,
        expected,
        colour_ok: final_video.colour == Some(expected.colour),
        background_ok: final_video.background == Some(expected.background),
        shape_ok: final_video.shape == Some(expected.shape),
        motion_ok: final_video.motion == Some(expected.motion),
        colour_wide,
        background_wide,
        final_video,
        base_video,
        tsr_keyframe_psnr: tsr.0,
        tsr_track_jitter: tsr.1,
        ssr_psnr: ssr,
        seconds,
    })
}

/// Runs the cascade on `scenes` x `seeds` (long captions) and scores every video. `on_result`
/// sees each result and its output as soon as it exists (progress lines, contact sheets).
pub fn evaluate(
    cascade: &EmbeddedCascade,
    scenes: &[Scene],
    seeds: &[u64],
    mut on_result: impl FnMut(&PromptResult, &CascadeOutput),
) -> anyhow::Result<Vec<PromptResult>> {
    let mut results = Vec::new();
    for scene in scenes {
        for &seed in seeds {
            let prompt = scene.caption();
            let started = std::time::Instant::now();
            let output = cascade.generate(
                &GenerateRequest::new(prompt.clone()).with_seed(seed),
                None,
                |_| ControlFlow::Continue(()),
            )?;
            let result = score(
                &prompt,
                seed,
                *scene,
                &output,
                started.elapsed().as_secs_f64(),
            )?;
            on_result(&result, &output);
            results.push(result);
        }
    }
    Ok(results)
}

/// A markdown table: one row per prompt, then the summary.
pub fn markdown(results: &[PromptResult], summary: &Summary) -> String {
    let mark = |ok: bool| if ok { "yes" } else { "**no**" };
    let word = |w: Option<&str>| w.unwrap_or("-").to_string();
    let mut out = String::new();
    out.push_str(
        "| prompt | seed | colour | background | shape | motion | wide-set names (shape / background) | TSR keyframe PSNR | SSR PSNR |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for r in results {
        let a = &r.final_video;
        out.push_str(&format!(
            "| {} | {} | {} ({}) | {} ({}) | {} ({}) | {} ({}) | {} / {} | {} | {} |\n",
            r.prompt,
            r.seed,
            mark(r.colour_ok),
            word(a.colour.map(|c| c.word())),
            mark(r.background_ok),
            word(a.background.map(|c| c.word())),
            mark(r.shape_ok),
            word(a.shape.map(|s| s.word())),
            mark(r.motion_ok),
            word(a.motion.map(|m| m.word())),
            word(r.colour_wide.as_deref()),
            word(r.background_wide.as_deref()),
            r.tsr_keyframe_psnr
                .map_or("-".into(), |p| format!("{p:.1} dB")),
            r.ssr_psnr
                .iter()
                .map(|(n, p)| format!("{n}: {p:.1} dB"))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    let pct = |x: f64| format!("{:.1} %", 100.0 * x);
    out.push_str(&format!(
        "\n| metric | value |\n|---|---|\n| prompts | {} |\n| shape colour accuracy | {} |\n| background colour accuracy | {} |\n| both colours right | {} |\n| shape colour right against the wider colour set | {} |\n| background right against the wider colour set | {} |\n| shape accuracy | {} |\n| motion direction accuracy | {} |\n| motion direction accuracy (base stage) | {} |\n| TSR keyframe PSNR (mean) | {} |\n| TSR track jitter (mean, lower is smoother) | {} |\n",
        summary.prompts,
        pct(summary.colour_accuracy),
        pct(summary.background_accuracy),
        pct(summary.both_colours_accuracy),
        pct(summary.wide_colour_accuracy),
        pct(summary.wide_background_accuracy),
        pct(summary.shape_accuracy),
        pct(summary.motion_accuracy),
        pct(summary.base_motion_accuracy),
        summary.tsr_keyframe_psnr.map_or("-".into(), |p| format!("{p:.1} dB")),
        summary.tsr_track_jitter.map_or("-".into(), |j| format!("{j:.2}")),
    ));
    for (name, p) in &summary.ssr_psnr {
        out.push_str(&format!(
            "| {name} PSNR vs its input (mean) | {p:.1} dB |\n"
        ));
    }
    out.push_str(&format!(
        "| median seconds per video | {:.2} |\n",
        summary.median_seconds
    ));
    out
}

/// A contact sheet: one row per video, frames across, each pixel `scale` x `scale`, with a
/// `gap`-pixel gray border. Returns `(width, height, rgb)`.
pub fn contact_sheet(videos: &[&Video], scale: usize, gap: usize) -> (usize, usize, Vec<u8>) {
    let cell_w = videos.iter().map(|v| v.width).max().unwrap_or(0) * scale;
    let cell_h = videos.iter().map(|v| v.height).max().unwrap_or(0) * scale;
    let cols = videos.iter().map(|v| v.frames.len()).max().unwrap_or(0);
    let width = cols * (cell_w + gap) + gap;
    let height = videos.len() * (cell_h + gap) + gap;
    let mut rgb = vec![64u8; width * height * 3];
    for (row, video) in videos.iter().enumerate() {
        for (col, frame) in video.frames.iter().enumerate() {
            let x0 = gap + col * (cell_w + gap);
            let y0 = gap + row * (cell_h + gap);
            for y in 0..video.height * scale {
                for x in 0..video.width * scale {
                    let src = ((y / scale) * video.width + x / scale) * 3;
                    let dst = ((y0 + y) * width + x0 + x) * 3;
                    rgb[dst..dst + 3].copy_from_slice(&frame[src..src + 3]);
                }
            }
        }
    }
    (width, height, rgb)
}
