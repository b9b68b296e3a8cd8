#![allow(missing_docs)] // criterion_group! generates undocumented items.
//! One denoising step (one batched U-Net call plus the sampler update) per diffusion stage.
//!
//! Benchmarks every stage of the tiny random-weight cascade, and of the shipped `models/shapes`
//! cascade when it is present (or of the repository named by `VIDCASCADE_BENCH_MODEL`), at each
//! stage's default guidance (guided stages batch a conditional and an unconditional row).
//!
//! ```text
//! cargo bench --bench denoise_step
//! ```

use std::hint::black_box;
use std::path::PathBuf;

use candle_core::Device;
use criterion::{Criterion, criterion_group, criterion_main};
use vidcascade_diffusion::step_batch;
use vidcascade_engine::DiffusionStage;
use vidcascade_engine::stage::{StageInput, UNetVelocity};
use vidcascade_models::ModelRepository;
use vidcascade_models::repository::scaffold::WeightInit;
use vidcascade_spec::StageOverrides;

fn repositories() -> Vec<(String, PathBuf, Option<tempfile::TempDir>)> {
    let mut repos = Vec::new();
    if let Ok(dir) = tempfile::tempdir() {
        let root = dir.path().join("tiny");
        if vidcascade_test_support::tiny_scaffold()
            .write(&root, WeightInit::Random { seed: 1 })
            .is_ok()
        {
            repos.push(("tiny".to_string(), root, Some(dir)));
        }
    }
    let shipped = std::env::var_os("VIDCASCADE_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shapes"));
    if shipped.join("manifest.json").exists() {
        let name = shipped
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        repos.push((name, shipped, None));
    }
    repos
}

/// The repository at `root` and its diffusion stages.
fn load(
    root: &std::path::Path,
    device: &Device,
) -> Result<(ModelRepository, Vec<DiffusionStage>), vidcascade_engine::EngineError> {
    let repository = ModelRepository::open(root)?;
    let stages = repository
        .manifest()
        .diffusion_stages()
        .map(|stage| DiffusionStage::load(&repository, &stage.name, device))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((repository, stages))
}

fn denoise_step(c: &mut Criterion) {
    let device = Device::Cpu;
    for (repo_name, root, _keep) in repositories() {
        let (repository, stages) = match load(&root, &device) {
            Ok(loaded) => loaded,
            Err(err) => panic!("cannot load {}: {err}", root.display()),
        };
        let texts = match repository
            .load_text_encoder(&device)
            .and_then(|e| e.encode(&["a red circle moving left on a black background", ""]))
        {
            Ok(texts) => texts,
            Err(err) => panic!("cannot encode: {err}"),
        };
        let mut previous = None;
        for stage in &stages {
            let settings = match StageOverrides::default().resolve(stage.manifest(), "sampler") {
                Ok(settings) => settings,
                Err(err) => panic!("{err}"),
            };
            let input = StageInput {
                text: &texts[0],
                unconditional: &texts[1],
                low_res: previous.as_ref(),
                seed: 0,
                settings,
            };
            let (state, conditioning) = match stage.prepare(&input) {
                Ok(prepared) => prepared,
                Err(err) => panic!("{err}"),
            };
            let model = UNetVelocity {
                unet: stage.unet(),
                samples: vec![&conditioning],
            };
            let shape = stage
                .manifest()
                .output
                .map(|o| o.to_string())
                .unwrap_or_default();
            let label = format!(
                "{repo_name}/{} ({shape}, guidance {})",
                stage.name(),
                settings.guidance
            );
            c.bench_function(&label, |b| {
                b.iter(|| {
                    // A fresh copy of the first step's state each time: the step being measured
                    // is always the same one.
                    let mut s = state.clone();
                    black_box(step_batch(&model, &mut [&mut s]).map(|_| ()))
                })
            });
            // The next stage is conditioned on this stage's output shape (content is irrelevant
            // to timing): use the initial latent clamped into range.
            previous = state.latent().clamp(-1f32, 1f32).ok();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_secs(1));
    targets = denoise_step
}
criterion_main!(benches);
