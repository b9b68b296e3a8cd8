//! Regression test of the shipped cascade: a short evaluation on held-out prompts must produce
//! the asked-for colours, shapes and motion at 16 frames of 64x64, and image-to-video must keep
//! the given image, so a regression in any stage (or in the sampler, the conditioning, the
//! loaders) fails CI; the previous cascade (`models/shapes-v1`, a repository from before context
//! frames and SSR2) must still load and follow its prompts. The full evaluation is
//! `vidcascade-eval` (docs/eval).

use std::path::PathBuf;

use candle_core::Device;
use vidcascade_engine::EmbeddedCascade;
use vidcascade_eval::context_eval::evaluate_image_to_video;
use vidcascade_eval::story_eval::{evaluate_story, turning_story};
use vidcascade_eval::{evaluate, summarise};
use vidcascade_shapes::world::held_out_scenes;

fn shipped_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/shapes")
}

/// Every other held-out scene: seven prompts covering every shape colour and every shape.
fn every_other_held_out_scene() -> Vec<vidcascade_shapes::world::Scene> {
    held_out_scenes().into_iter().step_by(2).collect()
}

/// The prompts of `results` whose final video misses colour, background, motion or (when
/// `with_shape`) shape.
fn misses(results: &[vidcascade_eval::PromptResult], with_shape: bool) -> Vec<String> {
    results
        .iter()
        .filter(|r| !(r.colour_ok && r.background_ok && r.motion_ok && (r.shape_ok || !with_shape)))
        .map(|r| {
            let v = &r.final_video;
            format!(
                "{}: got a {:?} {:?} on {:?} moving {:?}",
                r.prompt, v.colour, v.shape, v.background, v.motion
            )
        })
        .collect()
}

#[test]
fn held_out_prompts_get_their_colours_shapes_and_motion_at_64x64() -> anyhow::Result<()> {
    let cascade = EmbeddedCascade::load(shipped_model(), &Device::Cpu)?;
    let clip = cascade.manifest().final_output().expect("a final stage");
    assert_eq!((clip.frames, clip.height, clip.width), (16, 64, 64));
    let results = evaluate(&cascade, &every_other_held_out_scene(), &[0], |_, _| {})?;
    let summary = summarise(&results);
    let failures = misses(&results, true);
    // Allow one miss in seven (the full evaluation: 100 % on all four, docs/eval).
    assert!(failures.len() <= 1, "{summary:?}\n{}", failures.join("\n"));
    assert!(summary.shape_accuracy >= 0.85, "{summary:?}");
    Ok(())
}

#[test]
fn image_to_video_keeps_the_given_image_and_follows_the_prompt() -> anyhow::Result<()> {
    let cascade = EmbeddedCascade::load(shipped_model(), &Device::Cpu)?;
    let scenes: Vec<_> = held_out_scenes().into_iter().take(3).collect();
    let results = evaluate_image_to_video(&cascade, &scenes, &[0], |_, _| {})?;
    for r in &results {
        assert!(
            r.frame0_psnr >= 30.0,
            "{}: frame 0 at {:.1} dB",
            r.prompt,
            r.frame0_psnr
        );
    }
    let followed = results
        .iter()
        .filter(|r| r.colour_ok && r.background_ok && r.motion_ok)
        .count();
    assert!(followed >= 2, "{results:?}");
    Ok(())
}

#[test]
fn the_previous_cascade_still_loads_and_follows_its_prompts() -> anyhow::Result<()> {
    let v1 = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/shapes-v1");
    let cascade = EmbeddedCascade::load(v1, &Device::Cpu)?;
    let clip = cascade.manifest().final_output().expect("a final stage");
    assert_eq!((clip.frames, clip.height, clip.width), (16, 32, 32));
    let scenes: Vec<_> = every_other_held_out_scene().into_iter().take(4).collect();
    let results = evaluate(&cascade, &scenes, &[0], |_, _| {})?;
    let failures = misses(&results, false);
    assert!(failures.len() <= 1, "{}", failures.join("\n"));
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
