//! One-off migration (not part of training): adds input maps to a stage that was trained without
//! them (`position_channels`, `layout_channels`), so training can go on from its weights instead
//! of from scratch.
//!
//! The first convolution gains input channels whose weights are zero, so the migrated network
//! computes exactly what it computed before and training learns how much to use the new maps. A
//! new layout projection gets a random initialisation (its input weights in the first
//! convolution are zero, so it changes nothing until they grow). Rewrites the stage's
//! `config.json` and `model.safetensors` in the repository and, when present, the run folder's
//! `raw.safetensors` and `ema.safetensors`.
//!
//! `cargo run --release -p vidcascade-train --example add_position_channels <model_dir> <run_dir>
//! <stage> <position_channels: true|false> <layout_channels>`

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use vidcascade_models::repository::ModelRepository;
use vidcascade_models::unet::VideoUNetConfig;

const FIRST_CONV: &str = "conv_in.weight";

/// Rewrites one weights file for `to`, given it was written for `from`; `layout_init` holds the
/// new layout projection (the same values in every file, so EMA and raw weights agree).
fn migrate(
    path: &Path,
    from: &VideoUNetConfig,
    to: &VideoUNetConfig,
    layout_init: &HashMap<String, Tensor>,
) -> anyhow::Result<()> {
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("reading {}", path.display()))?;
    let weight = tensors
        .get(FIRST_CONV)
        .with_context(|| format!("{} has no {FIRST_CONV}", path.display()))?;
    let (out_c, in_c, kh, kw) = weight.dims4()?;
    if in_c != from.input_channels() {
        bail!(
            "{}: {FIRST_CONV} takes {in_c} channels, the config says {}",
            path.display(),
            from.input_channels()
        );
    }
    // Input channel order: video, conditioning, coordinates, layout.
    let keep = from.in_channels + from.cond_channels;
    let mut parts = vec![weight.narrow(1, 0, keep)?];
    let zeros = |c: usize| Tensor::zeros((out_c, c, kh, kw), weight.dtype(), weight.device());
    let old_position = from.position_channel_count();
    parts.push(if old_position > 0 {
        weight.narrow(1, keep, old_position)?
    } else {
        zeros(to.position_channel_count())?
    });
    let old_layout = from.layout_channels;
    parts.push(if old_layout > 0 {
        weight.narrow(1, keep + old_position, old_layout)?
    } else {
        zeros(to.layout_channels)?
    });
    let widened = Tensor::cat(&parts, 1)?;
    tensors.insert(FIRST_CONV.to_string(), widened);
    for (name, tensor) in layout_init {
        tensors.insert(name.clone(), tensor.clone());
    }
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, path)?;
    println!("migrated {}", path.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model_dir, run_dir, stage_name, position, layout] = args.as_slice() else {
        bail!(
            "usage: add_position_channels <model_dir> <run_dir> <stage> <position_channels: true|false> <layout_channels>"
        );
    };
    let repo = ModelRepository::open(Path::new(model_dir))?;
    let stage = repo
        .manifest()
        .stage(stage_name)
        .cloned()
        .with_context(|| format!("no stage `{stage_name}` in {model_dir}"))?;
    let from = repo.unet_config(stage_name)?.clone();
    let to = VideoUNetConfig {
        position_channels: position
            .parse()
            .context("position_channels: true or false")?,
        layout_channels: layout.parse().context("layout_channels: a count")?,
        ..from.clone()
    };
    to.validate()?;
    if (from.position_channels && !to.position_channels)
        || (from.layout_channels > 0 && to.layout_channels != from.layout_channels)
    {
        bail!("this migration only adds maps; it cannot remove or resize them");
    }
    let mut layout_init = HashMap::new();
    if from.layout_channels == 0 && to.layout_channels > 0 {
        let emb_dim = to.embedding_dim();
        let outputs = to.layout_channels * to.layout_grid * to.layout_grid;
        let scale = 1.0 / (emb_dim as f64).sqrt();
        layout_init.insert(
            "layout.proj.weight".to_string(),
            Tensor::randn(0f32, scale as f32, (outputs, emb_dim), &Device::Cpu)?,
        );
        layout_init.insert(
            "layout.proj.bias".to_string(),
            Tensor::zeros(outputs, candle_core::DType::F32, &Device::Cpu)?,
        );
    }
    let stage_dir = repo.stage_dir(&stage);
    let run = PathBuf::from(run_dir).join(stage_name);
    for path in [
        stage_dir.join("model.safetensors"),
        run.join("raw.safetensors"),
        run.join("ema.safetensors"),
    ] {
        if path.exists() {
            migrate(&path, &from, &to, &layout_init)?;
        }
    }
    let config_path = stage_dir.join("config.json");
    std::fs::write(&config_path, serde_json::to_string_pretty(&to)? + "\n")?;
    println!("wrote {}", config_path.display());
    Ok(())
}
