//! One-off migration (not part of training): gives a trained stage the known-frames input
//! (`context_frames`), so it can learn image-to-video and continuation from its weights instead
//! of from scratch.
//!
//! The new `context_in` convolution is zero (weight and bias), so the migrated stage computes
//! exactly what it computed before. Rewrites the stage's `config.json` and `model.safetensors`
//! in the repository and, when present, the run folder's `raw.safetensors` and
//! `ema.safetensors`.
//!
//! `cargo run --release -p vidcascade-train --example add_context_frames <model_dir> <run_dir>
//! <stage>...`

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use vidcascade_models::repository::ModelRepository;
use vidcascade_models::unet::{CONTEXT_CHANNELS, VideoUNetConfig};

/// Adds the zero `context_in` tensors to one weights file.
fn migrate(path: &Path, channels: usize) -> anyhow::Result<()> {
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("reading {}", path.display()))?;
    tensors.insert(
        "context_in.weight".into(),
        Tensor::zeros((channels, CONTEXT_CHANNELS, 3, 3), DType::F32, &Device::Cpu)?,
    );
    tensors.insert(
        "context_in.bias".into(),
        Tensor::zeros(channels, DType::F32, &Device::Cpu)?,
    );
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, path)?;
    println!("migrated {}", path.display());
    Ok(())
}

/// Migrates stage `name` of the repository at `model_dir` (and its run under `run_dir`).
fn migrate_stage(model_dir: &Path, run_dir: &Path, name: &str) -> anyhow::Result<()> {
    let repo = ModelRepository::open(model_dir)?;
    let stage = repo
        .manifest()
        .stage(name)
        .cloned()
        .with_context(|| format!("no stage `{name}` in {}", model_dir.display()))?;
    let from = repo.unet_config(name)?.clone();
    if from.context_frames {
        bail!("stage `{name}` already takes context frames");
    }
    let to = VideoUNetConfig {
        context_frames: true,
        ..from
    };
    to.validate()?;
    let stage_dir = repo.stage_dir(&stage);
    let run = run_dir.join(name);
    for path in [
        stage_dir.join("model.safetensors"),
        run.join("raw.safetensors"),
        run.join("ema.safetensors"),
    ] {
        if path.exists() {
            migrate(&path, to.model_channels)?;
        }
    }
    let config_path = stage_dir.join("config.json");
    std::fs::write(&config_path, serde_json::to_string_pretty(&to)? + "\n")?;
    println!("wrote {}", config_path.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model_dir, run_dir, stages @ ..] = args.as_slice() else {
        bail!("usage: add_context_frames <model_dir> <run_dir> <stage>...");
    };
    if stages.is_empty() {
        bail!("usage: add_context_frames <model_dir> <run_dir> <stage>...");
    }
    for name in stages {
        migrate_stage(Path::new(model_dir), &PathBuf::from(run_dir), name)?;
    }
    Ok(())
}
