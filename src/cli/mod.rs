//! Argument parsing and dispatch of the `vidcascade` command line.

mod generate;
mod info;
mod progress;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use vidcascade_core::stage::StageOverrides;
use vidcascade_diffusion::SamplerKind;

/// Default model repository, relative to the working directory.
pub const DEFAULT_MODEL: &str = "models/shapes";

/// vidcascade: cascaded text-to-video diffusion (Imagen Video style), in-process or as services.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a video from a prompt, running every stage in this process.
    Generate(GenerateArgs),
    /// Show the model repository's stages, shapes and defaults.
    Info(ModelArg),
}

#[derive(Debug, Args)]
struct ModelArg {
    /// Model repository (a folder with manifest.json).
    #[arg(long, env = "VIDCASCADE_MODEL", default_value = DEFAULT_MODEL)]
    model: PathBuf,
}

/// `vidcascade generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// What the video should show, e.g. "a red circle moving left on a black background".
    prompt: String,
    /// Output: `.gif`, `.mp4` (H.264), or a folder (PNG frames), chosen by the extension.
    #[arg(short, long, default_value = "out.gif")]
    output: PathBuf,
    #[command(flatten)]
    model: ModelArg,
    /// Seed of all sampling noise; the same seed gives the same video.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Denoising steps: `N` for every stage, or `STAGE=N` for one (repeatable).
    #[arg(long, value_name = "[STAGE=]N")]
    steps: Vec<String>,
    /// Classifier-free guidance weight: `W` for every stage, or `STAGE=W` for one (repeatable).
    #[arg(long, value_name = "[STAGE=]W")]
    guidance: Vec<String>,
    /// Sampler for every stage.
    #[arg(long, value_enum)]
    sampler: Option<SamplerArg>,
    /// Also write every stage's video into this folder (`<n>-<stage>.<ext>`).
    #[arg(long, value_name = "DIR")]
    save_stages: Option<PathBuf>,
    /// Write the current estimate to `<output>.preview.png` every N denoising steps.
    #[arg(long, value_name = "N")]
    preview_every: Option<usize>,
    /// Enlarge the written video by this integer factor (nearest neighbour).
    #[arg(long, default_value_t = 4)]
    scale: usize,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SamplerArg {
    Ddim,
    Ancestral,
}

impl From<SamplerArg> for SamplerKind {
    fn from(s: SamplerArg) -> Self {
        match s {
            SamplerArg::Ddim => SamplerKind::Ddim,
            SamplerArg::Ancestral => SamplerKind::Ancestral,
        }
    }
}

/// Parses `N` or `STAGE=N` values into per-stage settings; `apply` sets one field.
fn per_stage<T: std::str::FromStr + Clone>(
    flag: &str,
    values: &[String],
    stages: &[String],
    overrides: &mut std::collections::BTreeMap<String, StageOverrides>,
    apply: impl Fn(&mut StageOverrides, T),
) -> anyhow::Result<()>
where
    T::Err: std::fmt::Display,
{
    for value in values {
        let (targets, raw): (Vec<String>, &str) = match value.split_once('=') {
            Some((stage, raw)) => {
                if !stages.iter().any(|s| s == stage) {
                    bail!(
                        "--{flag} {value}: no stage `{stage}`; the stages are {}",
                        stages.join(", ")
                    );
                }
                (vec![stage.to_string()], raw)
            }
            None => (stages.to_vec(), value.as_str()),
        };
        let parsed: T = raw
            .parse()
            .map_err(|e| anyhow::anyhow!("--{flag} {value}: `{raw}` is not a valid value: {e}"))?;
        for stage in targets {
            apply(overrides.entry(stage).or_default(), parsed.clone());
        }
    }
    Ok(())
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Info(model) => info::run(&model.model),
    }
}

/// Opens the model repository with a helpful message when it is missing.
fn open_repository(path: &std::path::Path) -> anyhow::Result<vidcascade_models::ModelRepository> {
    if !path.join("manifest.json").exists() {
        bail!(
            "no model repository at {} (expected {}/manifest.json); run from the vidcascade checkout, pass --model <dir>, or set VIDCASCADE_MODEL",
            path.display(),
            path.display()
        );
    }
    vidcascade_models::ModelRepository::open(path)
        .with_context(|| format!("opening model repository {}", path.display()))
}
