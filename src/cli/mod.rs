//! Argument parsing and dispatch of the `vidcascade` command line.

mod client;
mod files;
mod generate;
mod info;
mod plan;
mod progress;
mod serve;
mod story;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use vidcascade_spec::SamplerKind;
use vidcascade_spec::StageOverrides;

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
    /// Show the model repository's (or a running gateway's) stages, shapes, defaults and limits.
    Info(InfoArgs),
    /// Start the text encoder, every stage and the gateway in this process (development).
    Serve(ServeArgs),
    /// Generate through a running gateway, streaming progress and previews.
    Client(ClientArgs),
    /// Replicas per stage for an arrival rate and a latency target (from measured capacity).
    Plan(PlanArgs),
}

/// `vidcascade plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Per-stage capacity (`benches/stages.sh` writes docs/bench/stages.json).
    #[arg(long, default_value = "docs/bench/stages.json")]
    capacity: PathBuf,
    /// Arrival rate, requests per second.
    #[arg(long)]
    rate: f64,
    /// Target 90th-percentile end-to-end latency, seconds.
    #[arg(long)]
    p90: f64,
    /// Every stage's max batch size (`--max-batch-size` of the stages).
    #[arg(long, default_value_t = 4)]
    max_batch: usize,
    /// Most replicas per stage.
    #[arg(long, default_value_t = 32)]
    max_replicas: usize,
    /// Also write a Helm values file with the planned replicas.
    #[arg(long)]
    values_out: Option<PathBuf>,
    /// Every replica shares this one machine's cores (development, `vidcascade serve`); by
    /// default each replica has CPUs of its own, as pods with their own resources do.
    #[arg(long)]
    one_host: bool,
    #[command(flatten)]
    model: ModelArg,
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
    #[arg(required_unless_present_any = ["story", "story_file"])]
    prompt: Option<String>,
    #[command(flatten)]
    story: story::StoryArgs,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    model: ModelArg,
    /// Seed of all sampling noise; the same seed gives the same video.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Device and precision of every stage.
    #[command(flatten)]
    compute: vidcascade_stage::config::ComputeArgs,
}

/// `vidcascade client`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// What the video should show, e.g. "a red circle moving left on a black background".
    #[arg(required_unless_present_any = ["story", "story_file"])]
    prompt: Option<String>,
    #[command(flatten)]
    story: story::StoryArgs,
    /// The gateway (`vidcascade serve` prints it).
    #[arg(
        long,
        env = "VIDCASCADE_GATEWAY",
        default_value = "http://127.0.0.1:50051"
    )]
    addr: String,
    #[command(flatten)]
    output: OutputArgs,
    /// Seed of all sampling noise; the default is `generate`'s, so both commands make the same
    /// video from the same prompt and flags.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Give up after this many seconds (the deadline travels to every stage).
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    #[command(flatten)]
    access: GatewayAccess,
}

/// How to reach a gateway: its address, API key and CA (`client`, `info --addr`).
#[derive(Debug, Args)]
struct GatewayAccess {
    /// API key of a gateway that requires one (sent as `authorization: Bearer <key>`).
    #[arg(long, env = "VIDCASCADE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// PEM CA certificate to trust for an https:// gateway.
    #[arg(long, env = "VIDCASCADE_CA")]
    ca: Option<std::path::PathBuf>,
}

/// `vidcascade info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Ask the gateway at this address (e.g. http://127.0.0.1:50051) instead of reading
    /// `--model`.
    #[arg(long)]
    addr: Option<String>,
    #[command(flatten)]
    access: GatewayAccess,
}

/// `vidcascade serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Address of the gateway (the text encoder and stages get free ports on 127.0.0.1).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: std::net::SocketAddr,
    /// Address of the shared Prometheus `/metrics` endpoint, or `off`.
    #[arg(long, default_value = "127.0.0.1:50052")]
    metrics_listen: String,
    /// Address of the gateway's HTTP API and browser playground, or `off`.
    #[arg(long, default_value = "127.0.0.1:50053")]
    http_listen: String,
    /// Every stage's queue and batching, with the flags of `vidcascade-stage`.
    #[command(flatten)]
    engine: vidcascade_stage::config::EngineArgs,
    /// The device of every stage and the encoder, and the stages' precision.
    #[command(flatten)]
    compute: vidcascade_stage::config::ComputeArgs,
    /// Log filter (`tracing` syntax).
    #[arg(long, env = "VIDCASCADE_LOG", default_value = "info")]
    log: String,
}

/// What gets written, shared by `generate` and `client`.
#[derive(Debug, Args)]
struct OutputArgs {
    /// Output: `.gif`, `.mp4` (H.264), or a folder (PNG frames), chosen by the extension.
    #[arg(short, long, default_value = "out.gif")]
    output: PathBuf,
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

impl OutputArgs {
    /// Checks the cheap things before any work starts.
    fn check(&self) -> anyhow::Result<()> {
        // Before any work: a path that cannot be written fails now, not after the generation.
        vidcascade_media::check_writable(&self.output)?;
        if self.scale == 0 || self.scale > 64 {
            bail!("--scale must be in 1..=64, got {}", self.scale);
        }
        if self.preview_every == Some(0) {
            bail!("--preview-every must be at least 1");
        }
        Ok(())
    }
}

/// A validation message in the words the user typed: `stage_overrides[base].steps: ...` (the
/// API's field) becomes `--steps base=...: ...` (the flag that set it).
fn in_flag_terms(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("init_image_png:") {
        return format!("--init-image:{rest}");
    }
    let Some(rest) = message.strip_prefix("stage_overrides[") else {
        return message.to_string();
    };
    let Some((stage, rest)) = rest.split_once("].") else {
        return message.to_string();
    };
    let (setting, reason) = rest.split_once(':').unwrap_or((rest, ""));
    match setting {
        "steps" | "guidance" | "sampler" => format!("--{setting} {stage}=...:{reason}"),
        _ => message.to_string(),
    }
}

/// Sampler settings, shared by `generate` and `client`.
#[derive(Debug, Args)]
struct SamplingArgs {
    /// Denoising steps: `N` for every stage, or `STAGE=N` for one (repeatable).
    #[arg(long, value_name = "[STAGE=]N")]
    steps: Vec<String>,
    /// Classifier-free guidance weight: `W` for every stage, or `STAGE=W` for one (repeatable).
    #[arg(long, value_name = "[STAGE=]W")]
    guidance: Vec<String>,
    /// Sampler for every stage.
    #[arg(long, value_enum)]
    sampler: Option<SamplerArg>,
}

impl SamplingArgs {
    /// Per-stage overrides for the diffusion `stages`.
    fn overrides(
        &self,
        stages: &[String],
    ) -> anyhow::Result<std::collections::BTreeMap<String, StageOverrides>> {
        let mut overrides = std::collections::BTreeMap::new();
        per_stage::<usize>("steps", &self.steps, stages, &mut overrides, |o, v| {
            o.steps = Some(v)
        })?;
        per_stage::<f64>(
            "guidance",
            &self.guidance,
            stages,
            &mut overrides,
            |o, v| o.guidance = Some(v),
        )?;
        if let Some(sampler) = self.sampler {
            for stage in stages {
                overrides.entry(stage.clone()).or_default().sampler = Some(sampler.into());
            }
        }
        Ok(overrides)
    }
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
        Command::Info(args) => info::run(&args),
        Command::Serve(args) => serve::run(args),
        Command::Client(args) => client::run(args),
        Command::Plan(args) => plan::run(&args),
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

#[cfg(test)]
mod tests {
    use super::in_flag_terms;

    #[test]
    fn messages_name_the_flag_the_user_typed() {
        assert_eq!(
            in_flag_terms("stage_overrides[base].steps: must be in 1..=1000, got 0"),
            "--steps base=...: must be in 1..=1000, got 0"
        );
        assert_eq!(in_flag_terms("prompt: required"), "prompt: required");
        assert_eq!(
            in_flag_terms("init_image_png: is not a readable PNG"),
            "--init-image: is not a readable PNG"
        );
        assert_eq!(
            in_flag_terms("stage_overrides[tsr].noise_augmentation: in [0, 1]"),
            "stage_overrides[tsr].noise_augmentation: in [0, 1]"
        );
    }
}
