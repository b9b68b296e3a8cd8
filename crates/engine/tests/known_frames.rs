//! Known frames (context) through a stage: a stage trained with them reads them, one without
//! them (an older repository's config, which has no `context_frames`) loads and refuses them
//! with an error naming the field, and a wrong shape is refused before anything runs.

use candle_core::{Device, Tensor};
use vidcascade_engine::stage::StageInput;
use vidcascade_engine::{
    DiffusionStage, EngineConfig, EngineError, KnownFrames, StageEngine, StageJob,
};
use vidcascade_models::ModelRepository;
use vidcascade_spec::StageOverrides;

fn embeddings(repository: &ModelRepository) -> anyhow::Result<(Tensor, Tensor)> {
    let mut texts = repository
        .load_text_encoder(&Device::Cpu)?
        .encode(&["a red circle moving left", ""])?;
    let unconditional = texts.pop().expect("two embeddings");
    Ok((texts.pop().expect("two embeddings"), unconditional))
}

/// The base stage's output for `known`, run through an engine.
fn generate(
    stage: &DiffusionStage,
    (text, unconditional): &(Tensor, Tensor),
    known: Option<KnownFrames>,
) -> anyhow::Result<Tensor> {
    let engine = StageEngine::start(stage.clone(), EngineConfig::default());
    let settings = StageOverrides::default().resolve(stage.manifest(), "sampler")?;
    let job = StageJob {
        text: text.clone(),
        unconditional: unconditional.clone(),
        low_res: None,
        known,
        seed: 4,
        settings,
        preview_every: 0,
        deadline: None,
        checkpoint_every: 0,
        resume: None,
    };
    let video = engine.submit(job)?.blocking_wait(|_, _| {})?;
    engine.shutdown();
    Ok(video)
}

fn first_frame_given(frames: usize, side: usize) -> anyhow::Result<KnownFrames> {
    let mut given = vec![false; frames];
    given[0] = true;
    Ok(KnownFrames {
        video: Tensor::ones(
            (3, frames, side, side),
            candle_core::DType::F32,
            &Device::Cpu,
        )?,
        given,
    })
}

#[test]
fn a_stage_with_context_frames_reads_them_and_nothing_given_is_plain_text_to_video()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let repository = ModelRepository::open(vidcascade_test_support::tiny_model(dir.path())?)?;
    let base = DiffusionStage::load(&repository, "base", &Device::Cpu)?;
    assert!(base.unet().config().context_frames);
    let texts = embeddings(&repository)?;
    let out = base.output_shape()?;
    let plain = generate(&base, &texts, None)?;
    let none_given = KnownFrames {
        given: vec![false; out.frames],
        ..first_frame_given(out.frames, out.height)?
    };
    let gap = |a: &Tensor, b: &Tensor| -> anyhow::Result<f32> {
        Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
    };
    assert_eq!(
        gap(&plain, &generate(&base, &texts, Some(none_given))?)?,
        0.0
    );
    let with_image = generate(
        &base,
        &texts,
        Some(first_frame_given(out.frames, out.height)?),
    )?;
    assert!(
        gap(&plain, &with_image)? > 1e-3,
        "the known frame changed nothing"
    );
    Ok(())
}

#[test]
fn a_stage_from_an_older_repository_loads_and_refuses_known_frames_by_name() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = vidcascade_test_support::tiny_model(dir.path())?;
    // An older stage: config.json has no `context_frames` key at all, no weights for it, and
    // the manifest no `max_context_frames`.
    let config_path = root.join("base").join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path)?)?;
    config
        .as_object_mut()
        .expect("object")
        .remove("context_frames");
    std::fs::write(&config_path, config.to_string())?;
    let manifest_path = root.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path)?)?;
    for stage in manifest["stages"].as_array_mut().into_iter().flatten() {
        stage
            .as_object_mut()
            .expect("object")
            .remove("max_context_frames");
    }
    std::fs::write(&manifest_path, manifest.to_string())?;
    let weights_path = root.join("base").join("model.safetensors");
    let mut weights = candle_core::safetensors::load(&weights_path, &Device::Cpu)?;
    weights.retain(|name, _| !name.starts_with("context_in."));
    candle_core::safetensors::save(&weights, &weights_path)?;
    let repository = ModelRepository::open(&root)?;
    let base = DiffusionStage::load(&repository, "base", &Device::Cpu)?;
    assert!(!base.unet().config().context_frames);
    let (text, unconditional) = embeddings(&repository)?;
    let out = base.output_shape()?;
    let known = first_frame_given(out.frames, out.height)?;
    let settings = StageOverrides::default().resolve(base.manifest(), "sampler")?;
    let input = |known| StageInput {
        text: &text,
        unconditional: &unconditional,
        low_res: None,
        known,
        seed: 1,
        settings,
    };
    base.check_input(&input(None))?;
    match base.check_input(&input(Some(&known))) {
        Err(EngineError::InvalidRequest { field, reason }) => {
            assert_eq!(field, "context_frames");
            assert!(
                reason.contains("not trained with context frames"),
                "{reason}"
            );
        }
        other => anyhow::bail!("known frames on a stage without them: {other:?}"),
    }
    Ok(())
}

#[test]
fn known_frames_of_the_wrong_shape_are_refused_naming_the_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let repository = ModelRepository::open(vidcascade_test_support::tiny_model(dir.path())?)?;
    let base = DiffusionStage::load(&repository, "base", &Device::Cpu)?;
    let (text, unconditional) = embeddings(&repository)?;
    let out = base.output_shape()?;
    let settings = StageOverrides::default().resolve(base.manifest(), "sampler")?;
    let wrong_side = first_frame_given(out.frames, out.height * 2)?;
    let wrong_flags = KnownFrames {
        given: vec![true; out.frames + 1],
        ..first_frame_given(out.frames, out.height)?
    };
    for known in [&wrong_side, &wrong_flags] {
        let input = StageInput {
            text: &text,
            unconditional: &unconditional,
            low_res: None,
            known: Some(known),
            seed: 1,
            settings,
        };
        match base.check_input(&input) {
            Err(EngineError::InvalidRequest { field, .. }) => assert_eq!(field, "context_frames"),
            other => anyhow::bail!("a wrong-shaped context: {other:?}"),
        }
    }
    Ok(())
}
