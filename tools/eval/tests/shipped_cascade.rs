//! Regression test of the shipped cascade: a short evaluation on held-out prompts must produce
//! the asked-for colours and direction of motion, so a regression in any stage (or in the
//! sampler, the conditioning, the loaders) fails CI. The
//! full evaluation is `vidcascade-eval` (docs/eval).

use std::path::PathBuf;

use candle_core::Device;
use vidcascade_core::cascade::Cascade;
use vidcascade_eval::{PromptResult, Summary, evaluate, summarise};
use vidcascade_shapes::world::held_out_scenes;

fn shipped_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/shapes")
}

/// Every other held-out scene (seven prompts covering every shape colour), seed 0.
fn short_evaluation() -> anyhow::Result<(Vec<PromptResult>, Summary)> {
    let cascade = Cascade::load(shipped_model(), &Device::Cpu)?;
    let scenes: Vec<_> = held_out_scenes().into_iter().step_by(2).collect();
    let results = evaluate(&cascade, &scenes, &[0], |_, _| {})?;
    let summary = summarise(&results);
    Ok((results, summary))
}

/// The prompts that fail `ok`, each with what the video showed.
fn failures(results: &[PromptResult], ok: impl Fn(&PromptResult) -> bool) -> Vec<String> {
    results
        .iter()
        .filter(|r| !ok(r))
        .map(|r| {
            format!(
                "{}: got colour {:?} on {:?} moving {:?}",
                r.prompt, r.final_video.colour, r.final_video.background, r.final_video.motion
            )
        })
        .collect()
}

/// One short evaluation checks both (a second would double the test's ~1 minute).
#[test]
fn held_out_prompts_get_their_colours_and_motion() -> anyhow::Result<()> {
    let (results, summary) = short_evaluation()?;
    let failures = failures(&results, |r| r.colour_ok && r.background_ok && r.motion_ok);
    // Allow one miss in seven (the full evaluation's bars are 90 % colour and 80 % motion).
    assert!(failures.len() <= 1, "{summary:?}\n{}", failures.join("\n"));
    Ok(())
}
