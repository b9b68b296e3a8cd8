//! Regression test of the shipped cascade: a short evaluation on held-out prompts must produce
//! the asked-for colours and motion, so a regression in any stage (or in the sampler, the
//! conditioning, the loaders) fails CI. The full evaluation is `vidcascade-eval` (docs/eval).

use std::path::PathBuf;

use candle_core::Device;
use vidcascade_engine::EmbeddedCascade;
use vidcascade_eval::story_eval::{evaluate_story, turning_story};
use vidcascade_eval::{evaluate, summarise};
use vidcascade_shapes::world::held_out_scenes;

fn shipped_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/shapes")
}

#[test]
fn held_out_prompts_get_their_colours_and_motion() -> anyhow::Result<()> {
    let cascade = EmbeddedCascade::load(shipped_model(), &Device::Cpu)?;
    // Every other held-out scene: seven prompts covering every shape colour.
    let scenes: Vec<_> = held_out_scenes().into_iter().step_by(2).collect();
    let results = evaluate(&cascade, &scenes, &[0], |_, _| {})?;
    let summary = summarise(&results);
    let failures: Vec<String> = results
        .iter()
        .filter(|r| !(r.colour_ok && r.background_ok && r.motion_ok))
        .map(|r| {
            format!(
                "{}: got colour {:?} on {:?} moving {:?}",
                r.prompt, r.final_video.colour, r.final_video.background, r.final_video.motion
            )
        })
        .collect();
    // Allow one miss in seven (the full evaluation's bar is 90 % colour and 80 % motion).
    assert!(failures.len() <= 1, "{summary:?}\n{}", failures.join("\n"));
    assert!(summary.motion_accuracy >= 0.8, "{summary:?}");
    Ok(())
}

#[test]
fn a_story_whose_segments_turn_follows_each_of_them() -> anyhow::Result<()> {
    let cascade = EmbeddedCascade::load(shipped_model(), &Device::Cpu)?;
    let subject = held_out_scenes()[0];
    let story = turning_story(&subject, 4);
    let (result, video) = evaluate_story(&cascade, &story, 3)?;
    let clip = cascade.manifest().final_output().expect("a final stage");
    // One clip per segment, the later ones without the frames they continue from.
    let overlap = clip.frames - (result.segments[1].frames.1 - result.segments[1].frames.0);
    assert_eq!(
        video.frames.len(),
        clip.frames + 3 * (clip.frames - overlap)
    );
    let wrong: Vec<String> = result
        .segments
        .iter()
        .filter(|s| !(s.colour_ok && s.background_ok && s.motion_ok))
        .map(|s| format!("{} (frames {:?})", s.prompt, s.frames))
        .collect();
    // At most one of the four turns missed (the shipped model follows motion on ~95 % of
    // held-out prompts).
    assert!(wrong.len() <= 1, "segments off their prompt: {wrong:?}");
    Ok(())
}

#[test]
fn the_shipped_encoder_takes_prompts_of_64_tokens_and_rejects_longer() -> anyhow::Result<()> {
    let repository = vidcascade_models::ModelRepository::open(shipped_model())?;
    let encoder = repository.load_text_encoder(&Device::Cpu)?;
    assert_eq!(encoder.max_tokens(), 64);
    let words = "a red circle moving left on a black background";
    let prompt = |tokens: usize| {
        let prompt: Vec<&str> = words.split(' ').cycle().take(tokens - 1).collect();
        prompt.join(" ")
    };
    let embedding = encoder.encode(&[&prompt(64)])?.remove(0);
    assert_eq!(embedding.dims(), &[64, encoder.embedding_dim()]);
    match encoder.encode(&[&prompt(65)]) {
        Err(vidcascade_models::ModelError::PromptTooLong {
            tokens: 65,
            limit: 64,
            ..
        }) => Ok(()),
        other => anyhow::bail!("a 65-token prompt: {other:?}"),
    }
}
