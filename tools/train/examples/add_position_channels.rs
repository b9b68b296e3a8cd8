//! One-off migration (not part of training): turns on `position_channels` for a stage that was
//! trained without them, so training can go on from its weights instead of from scratch.
//!
//! The first convolution gains two input channels whose weights are zero, so the migrated network
//! computes exactly what it computed before and training learns how much to use the coordinates.
//! Rewrites the stage's `config.json` and `model.safetensors` in the repository and, when present,
//! the run folder's `raw.safetensors` and `ema.safetensors`.
//!
//! `cargo run --release -p vidcascade-train --example add_position_channels <model_dir> <run_dir> <stage>`

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use vidcascade_models::repository::ModelRepository;

const FIRST_CONV: &str = "conv_in.weight";

/// Appends two zero input channels to the first convolution's `[out, in, k, k]` weight.
fn widen(path: &Path, expected_in: usize) -> anyhow::Result<()> {
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("reading {}", path.display()))?;
    let weight = tensors
        .get(FIRST_CONV)
        .with_context(|| format!("{} has no {FIRST_CONV}", path.display()))?;
    let (out_c, in_c, kh, kw) = weight.dims4()?;
    if in_c != expected_in {
        bail!(
            "{}: {FIRST_CONV} takes {in_c} channels, expected {expected_in}",
            path.display()
        );
    }
    let zeros = Tensor::zeros((out_c, 2, kh, kw), weight.dtype(), weight.device())?;
    let widened = Tensor::cat(&[weight, &zeros], 1)?;
    tensors.insert(FIRST_CONV.to_string(), widened);
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, path)?;
    println!("widened {}", path.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model_dir, run_dir, stage_name] = args.as_slice() else {
        bail!("usage: add_position_channels <model_dir> <run_dir> <stage>");
    };
    let repo = ModelRepository::open(Path::new(model_dir))?;
    let stage = repo
        .manifest()
        .stage(stage_name)
        .cloned()
        .with_context(|| format!("no stage `{stage_name}` in {model_dir}"))?;
    let mut config = repo.unet_config(stage_name)?.clone();
    if config.position_channels {
        bail!("stage `{stage_name}` already has position channels");
    }
    let expected_in = config.in_channels + config.cond_channels;
    let stage_dir = repo.stage_dir(&stage);
    let run = PathBuf::from(run_dir).join(stage_name);
    for path in [
        stage_dir.join("model.safetensors"),
        run.join("raw.safetensors"),
        run.join("ema.safetensors"),
    ] {
        if path.exists() {
            widen(&path, expected_in)?;
        }
    }
    config.position_channels = true;
    let config_path = stage_dir.join("config.json");
    std::fs::write(&config_path, serde_json::to_string_pretty(&config)? + "\n")?;
    println!("wrote {}", config_path.display());
    Ok(())
}
