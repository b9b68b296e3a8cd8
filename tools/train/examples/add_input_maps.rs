//! One-off migration (not part of training): adds input maps to a stage that was trained without
//! them (`position_channels`, `layout_channels`), so training can go on from its weights instead
//! of from scratch.
//!
//! The migrated network computes exactly what it computed before: the first convolution's weights
//! for new coordinate channels are zero, and a new layout projection is zero (so the map is empty)
//! while the first convolution's weights that read it are random, as at training initialisation
//! (see `LayoutMap` for why that order). Rewrites the stage's
//! `config.json` and `model.safetensors` in the repository and, when present, the run folder's
//! `raw.safetensors` and `ema.safetensors`.
//!
//! A storyboard term (`layout_storyboard_knots`) is added the same way: its projection starts at
//! zero, so the map does not change.
//!
//! `cargo run --release -p vidcascade-train --example add_input_maps <model_dir> <run_dir>
//! <stage> <position_channels: true|false> <layout_channels> [storyboard_knots]`

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use vidcascade_models::repository::ModelRepository;
use vidcascade_models::unet::VideoUNetConfig;

const FIRST_CONV: &str = "conv_in.weight";

/// New parameters: tensors added by name (a new layout projection, a new storyboard term), and
/// for a new layout map the first convolution's weights that read it (the same values go into
/// every file, so EMA and raw weights agree).
struct NewParameters {
    tensors: HashMap<String, Tensor>,
    first_conv_columns: Option<Tensor>,
}

/// Rewrites one weights file for `to`, given it was written for `from`.
fn migrate(
    path: &Path,
    from: &VideoUNetConfig,
    to: &VideoUNetConfig,
    new: &NewParameters,
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
    match &new.first_conv_columns {
        Some(columns) => parts.push(columns.clone()),
        None if from.layout_channels > 0 => {
            parts.push(weight.narrow(1, keep + old_position, from.layout_channels)?)
        }
        None => {}
    }
    let widened = Tensor::cat(&parts, 1)?;
    tensors.insert(FIRST_CONV.to_string(), widened);
    for (name, tensor) in &new.tensors {
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
    let (model_dir, run_dir, stage_name, position, layout, knots) = match args.as_slice() {
        [_, m, r, s, p, l] => (m, r, s, p, l, None),
        [_, m, r, s, p, l, k] => (m, r, s, p, l, Some(k)),
        _ => bail!(
            "usage: add_input_maps <model_dir> <run_dir> <stage> <position_channels: true|false> <layout_channels> [storyboard_knots]"
        ),
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
        layout_storyboard_knots: match knots {
            Some(k) => k.parse().context("storyboard_knots: a count")?,
            None => from.layout_storyboard_knots,
        },
        ..from.clone()
    };
    to.validate()?;
    if (from.position_channels && !to.position_channels)
        || (from.layout_channels > 0 && to.layout_channels != from.layout_channels)
        || (from.layout_storyboard_knots > 0
            && to.layout_storyboard_knots != from.layout_storyboard_knots)
    {
        bail!("this migration only adds maps; it cannot remove or resize them");
    }
    let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu);
    let outputs = to.layout_channels * to.layout_grid * to.layout_grid;
    let mut new = NewParameters {
        tensors: HashMap::new(),
        first_conv_columns: None,
    };
    if from.layout_channels == 0 && to.layout_channels > 0 {
        let fan_in = (to.input_channels() * 9) as f64;
        new.tensors.insert(
            "layout.proj.weight".to_string(),
            zeros(&[outputs, to.embedding_dim()])?,
        );
        new.tensors
            .insert("layout.proj.bias".to_string(), zeros(&[outputs])?);
        new.first_conv_columns = Some(Tensor::randn(
            0f32,
            (1.0 / fan_in.sqrt()) as f32,
            (to.model_channels, to.layout_channels, 3, 3),
            &Device::Cpu,
        )?);
    }
    if from.layout_storyboard_knots == 0 && to.layout_storyboard_knots > 0 {
        new.tensors.insert(
            "layout.storyboard.weight".to_string(),
            zeros(&[outputs, to.context_dim * to.layout_storyboard_knots])?,
        );
        new.tensors
            .insert("layout.storyboard.bias".to_string(), zeros(&[outputs])?);
    }
    let stage_dir = repo.stage_dir(&stage);
    let run = PathBuf::from(run_dir).join(stage_name);
    for path in [
        stage_dir.join("model.safetensors"),
        run.join("raw.safetensors"),
        run.join("ema.safetensors"),
    ] {
        if path.exists() {
            migrate(&path, &from, &to, &new)?;
        }
    }
    let config_path = stage_dir.join("config.json");
    std::fs::write(&config_path, serde_json::to_string_pretty(&to)? + "\n")?;
    println!("wrote {}", config_path.display());
    Ok(())
}
