//! Embedded mode end to end: a random-weight cascade (text encoder -> base -> TSR -> SSR)
//! written to disk, loaded back and run through the pipeline on in-process engines — shapes,
//! value ranges, determinism, the event stream, cancellation and deadlines reaching the engine,
//! and request validation.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use candle_core::Device;
use vidcascade_engine::video::{resample, video_to_tensor};
use vidcascade_engine::{DiffusionStage, EmbeddedCascade, EngineConfig, StageEngine, StageJob};
use vidcascade_models::ModelRepository;
use vidcascade_models::repository::scaffold::WeightInit;
use vidcascade_pipeline::{Event, PipelineError};
use vidcascade_spec::{ErrorType, GenerateRequest, SamplerKind, StageOverrides, Video};

fn tiny_cascade() -> anyhow::Result<(tempfile::TempDir, PathBuf, EmbeddedCascade)> {
    let dir = tempfile::tempdir()?;
    let root = vidcascade_test_support::tiny_model(dir.path())?;
    let cascade = EmbeddedCascade::load(&root, &Device::Cpu)?;
    Ok((dir, root, cascade))
}

fn run(cascade: &EmbeddedCascade, request: &GenerateRequest) -> anyhow::Result<Vec<Video>> {
    let output = cascade.generate(request, None, |_| ControlFlow::Continue(()))?;
    Ok(output.stages.into_iter().map(|s| s.video).collect())
}

fn steps(n: usize) -> StageOverrides {
    StageOverrides {
        steps: Some(n),
        ..Default::default()
    }
}

/// Waits until `counter` of an engine's stats reaches 1 (the worker runs on its own thread).
fn eventually(engine: &StageEngine, counter: fn(&vidcascade_engine::EngineStats) -> u64) {
    let started = Instant::now();
    while counter(&engine.stats()) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the engine never counted it"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn every_stage_produces_its_manifest_shape_with_real_pixel_values() -> anyhow::Result<()> {
    let (_dir, _root, cascade) = tiny_cascade()?;
    let output = cascade.generate(
        &GenerateRequest::new("a red circle moving left").with_seed(5),
        None,
        |_| ControlFlow::Continue(()),
    )?;
    let shapes: Vec<(String, usize, usize, usize, f32)> = output
        .stages
        .iter()
        .map(|s| {
            let v = &s.video;
            (s.stage.clone(), v.frames.len(), v.height, v.width, v.fps)
        })
        .collect();
    assert_eq!(
        shapes,
        vec![
            ("base".to_string(), 4, 8, 8, 2.0),
            ("tsr".to_string(), 8, 8, 8, 4.0),
            ("ssr".to_string(), 8, 16, 16, 4.0),
        ]
    );
    for stage in &output.stages {
        // Values span more than a constant, and every frame has its full size.
        let tensor = video_to_tensor(&stage.video, &Device::Cpu)?;
        let min = tensor.min_all()?.to_scalar::<f32>()?;
        let max = tensor.max_all()?.to_scalar::<f32>()?;
        assert!(
            max - min > 0.05,
            "{} collapsed to a constant: [{min}, {max}]",
            stage.stage
        );
        assert_eq!(stage.video.check_frames(), Ok(()));
    }
    assert_eq!(output.final_video, output.stages[2].video);
    Ok(())
}

#[test]
fn the_same_seed_gives_the_same_video_bit_for_bit_and_another_seed_does_not() -> anyhow::Result<()>
{
    let (_dir, root, cascade) = tiny_cascade()?;
    let request =
        GenerateRequest::new("a blue square moving up on a white background").with_seed(42);
    let first = run(&cascade, &request)?;
    // A second, independently loaded cascade: determinism survives a reload.
    let reloaded = EmbeddedCascade::load(&root, &Device::Cpu)?;
    assert_eq!(first, run(&reloaded, &request)?);
    let other_seed = run(&cascade, &request.clone().with_seed(43))?;
    assert_ne!(first[0], other_seed[0]);
    let other_prompt = run(
        &cascade,
        &GenerateRequest::new("a green triangle moving down").with_seed(42),
    )?;
    assert_ne!(
        first[0], other_prompt[0],
        "the prompt must reach the base stage"
    );
    // Ancestral sampling is seeded too.
    let ancestral = request.clone().with_overrides(
        "tsr",
        StageOverrides {
            sampler: Some(SamplerKind::Ancestral),
            ..Default::default()
        },
    );
    assert_eq!(run(&cascade, &ancestral)?, run(&cascade, &ancestral)?);
    Ok(())
}

fn describe(event: &Event) -> String {
    match event {
        Event::StageStarted {
            stage, total_steps, ..
        } => format!("start {stage} {total_steps}"),
        Event::Progress {
            stage,
            step,
            total_steps,
            ..
        } => format!("{stage} {step}/{total_steps}"),
        Event::Preview {
            stage, step, video, ..
        } => format!(
            "preview {stage} {step} {}x{}x{}",
            video.frames.len(),
            video.height,
            video.width
        ),
        Event::StageCompleted { stage, video, .. } => format!(
            "done {stage} {}",
            video.as_ref().map_or(0, |v| v.frames.len())
        ),
        Event::ClipCompleted {
            clip,
            first_frame,
            video,
            ..
        } => format!("clip {clip} frames {first_frame}+{}", video.frames.len()),
        Event::Completed { video, timings } => {
            format!(
                "completed {} frames, {} timings",
                video.frames.len(),
                timings.len()
            )
        }
    }
}

#[test]
fn the_observer_sees_every_stage_and_step_in_order() -> anyhow::Result<()> {
    let (_dir, _root, cascade) = tiny_cascade()?;
    let mut request = GenerateRequest::new("a cyan circle")
        .with_seed(1)
        .with_overrides("base", steps(6));
    request.preview_every = 4;
    let mut log = Vec::new();
    cascade.generate(&request, None, |event| {
        log.push(describe(event));
        ControlFlow::Continue(())
    })?;
    let mut expected = vec![
        "start text-encoder 0".to_string(),
        "done text-encoder 0".into(),
    ];
    let stages = [
        ("base", 6, "4x8x8", 4),
        ("tsr", 3, "8x8x8", 8),
        ("ssr", 3, "8x16x16", 8),
    ];
    for (stage, total, shape, frames) in stages {
        expected.push(format!("start {stage} {total}"));
        for step in 1..=total {
            expected.push(format!("{stage} {step}/{total}"));
            if step % 4 == 0 || step == total {
                expected.push(format!("preview {stage} {step} {shape}"));
            }
        }
        expected.push(format!("done {stage} {frames}"));
    }
    expected.push("clip 0 frames 0+8".into());
    expected.push("completed 8 frames, 4 timings".into());
    assert_eq!(log, expected);
    Ok(())
}

#[test]
fn breaking_from_the_observer_cancels_the_running_stage_in_its_engine() -> anyhow::Result<()> {
    let (_dir, _root, cascade) = tiny_cascade()?;
    let mut steps_seen = 0;
    let request = GenerateRequest::new("red").with_overrides("tsr", steps(200));
    let err = cascade
        .generate(&request, None, |event| {
            if let Event::Progress { stage, step, .. } = event
                && stage == "tsr"
            {
                steps_seen += 1;
                if *step == 2 {
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        })
        .expect_err("cancelled");
    assert!(matches!(err, PipelineError::Cancelled), "{err}");
    assert_eq!(steps_seen, 2);
    let tsr = &cascade.engines()[1];
    eventually(tsr, |s| s.cancelled.load(Ordering::Relaxed));
    assert!(
        tsr.stats().batches.load(Ordering::Relaxed) < 50,
        "the engine kept computing for a caller that left"
    );
    assert_eq!(tsr.stats().completed.load(Ordering::Relaxed), 0);
    Ok(())
}

#[test]
fn a_deadline_reaches_the_engine_which_stops_the_stage() -> anyhow::Result<()> {
    let (_dir, _root, cascade) = tiny_cascade()?;
    let request = GenerateRequest::new("red").with_overrides("base", steps(1000));
    let started = Instant::now();
    let err = cascade
        .generate(&request, Some(Duration::from_secs(2)), |_| {
            ControlFlow::Continue(())
        })
        .expect_err("out of time");
    assert_eq!(err.error_type(), ErrorType::DeadlineExceeded, "{err}");
    assert!(
        err.to_string()
            .contains("deadline exceeded in stage `base`: waited "),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let base = &cascade.engines()[0];
    assert_eq!(base.stats().deadline_exceeded.load(Ordering::Relaxed), 1);
    assert_eq!(base.stats().pending_steps.load(Ordering::Relaxed), 0);
    Ok(())
}

#[test]
fn invalid_requests_name_the_field_and_run_nothing() -> anyhow::Result<()> {
    let (_dir, _root, cascade) = tiny_cascade()?;
    let with = |stage: &str, overrides: StageOverrides| {
        GenerateRequest::new("red").with_overrides(stage, overrides)
    };
    let cases = [
        (
            with("nope", StageOverrides::default()),
            "stage_overrides[nope]: no such diffusion stage; the stages are [\"base\", \"tsr\", \"ssr\"]",
        ),
        (
            with("base", steps(0)),
            "stage_overrides[base].steps: must be in 1..=1000, got 0",
        ),
        (
            with(
                "tsr",
                StageOverrides {
                    guidance: Some(f64::NAN),
                    ..Default::default()
                },
            ),
            "stage_overrides[tsr].guidance: must be in [0, 50], got NaN",
        ),
        (
            with(
                "base",
                StageOverrides {
                    noise_augmentation: Some(0.2),
                    ..Default::default()
                },
            ),
            "stage_overrides[base].noise_augmentation: only super-resolution stages",
        ),
        (
            with(
                "ssr",
                StageOverrides {
                    threshold_quantile: Some(1.5),
                    ..Default::default()
                },
            ),
            "stage_overrides[ssr].threshold_quantile: must be in (0, 1], got 1.5",
        ),
        (GenerateRequest::new("  "), "prompt: must not be empty"),
    ];
    for (request, expected) in cases {
        let mut events = 0;
        let err = cascade
            .generate(&request, None, |_| {
                events += 1;
                ControlFlow::Continue(())
            })
            .expect_err("invalid");
        assert_eq!(err.error_type(), ErrorType::InvalidArgument);
        assert!(
            err.to_string().contains(expected),
            "expected {expected:?}, got {err}"
        );
        assert_eq!(events, 0, "nothing may run for an invalid request");
    }
    // Too many tokens is found by the text encoder: nothing diffuses.
    let err = cascade
        .generate(
            &GenerateRequest::new(vec!["red"; 20].join(" ")),
            None,
            |event| {
                assert!(!matches!(event, Event::Progress { .. }), "{event:?}");
                ControlFlow::Continue(())
            },
        )
        .expect_err("too long");
    assert_eq!(err.error_type(), ErrorType::InvalidArgument);
    assert!(
        err.to_string()
            .contains("prompt 0 is 21 tokens long; the limit is 16 tokens"),
        "{err}"
    );
    Ok(())
}

#[test]
fn an_untrained_residual_super_resolution_stage_returns_its_upsampled_input() -> anyhow::Result<()>
{
    // Training initialisation: the output convolution is zero, so an `x0_residual` stage's
    // estimate is exactly the upsampled conditioning at every step, whatever the noise.
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("tiny");
    vidcascade_test_support::tiny_scaffold().write(&root, WeightInit::Training)?;
    let repository = ModelRepository::open(&root)?;
    let encoder = repository.load_text_encoder(&Device::Cpu)?;
    let mut texts = encoder.encode(&["a red circle moving left", ""])?;
    let unconditional = texts.pop().expect("two embeddings");
    let text = texts.pop().expect("two embeddings");
    for name in ["tsr", "ssr"] {
        let stage = DiffusionStage::load(&repository, name, &Device::Cpu)?;
        assert_eq!(
            stage.unet().config().prediction,
            vidcascade_models::unet::Prediction::X0Residual
        );
        let input = stage.manifest().input.expect("an SR stage has an input");
        let output = stage.output_shape()?;
        let low_res = candle_core::Tensor::rand(
            -1f32,
            1f32,
            (3, input.frames, input.height, input.width),
            &Device::Cpu,
        )?;
        let settings = StageOverrides {
            noise_augmentation: Some(0.3),
            ..Default::default()
        }
        .resolve(stage.manifest(), "sampler")?;
        let engine = StageEngine::start(stage, EngineConfig::default());
        let handle = engine.submit(StageJob {
            text: text.clone(),
            unconditional: unconditional.clone(),
            low_res: Some(low_res.clone()),
            known: None,
            seed: 3,
            settings,
            preview_every: 0,
            deadline: None,
            checkpoint_every: 0,
            resume: None,
        })?;
        let video = handle.blocking_wait(|_, _| {})?;
        engine.shutdown();
        let upsampled = resample(&low_res, output.frames, output.height, output.width)?;
        let error = (video - upsampled)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(error < 1e-3, "{name}: largest difference {error}");
    }
    Ok(())
}
