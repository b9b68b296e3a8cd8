//! `vidcascade-train`: creates and trains the shipped "shapes" cascade with the serving code.
//!
//! ```text
//! vidcascade-train init --out models/shapes
//! vidcascade-train pretrain-text --model models/shapes
//! vidcascade-train train --model models/shapes --stage base --steps 4000
//! ```
//! Training resumes from `--run-dir` (raw weights, EMA, step count) when it holds a checkpoint of
//! the stage, and otherwise from the weights in the model repository.

mod blur;
mod data;
mod distill;
mod ema;
mod objective;
mod optim;
mod outline;
mod recipe;
mod text_pretrain;
mod trainer;

use std::path::{Path, PathBuf};

// candle allocates a fresh buffer per tensor op; the system allocator hands large ones back to the
// OS and page-faults them in again every step (measured: ~2x slower training on 2 cores).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use vidcascade_models::repository::scaffold::WeightInit;

#[derive(Parser)]
#[command(version, about = "Train the vidcascade 'shapes' cascade")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the untrained cascade: architecture, tokenizer, frozen seeded text encoder.
    Init {
        /// Repository folder to create.
        #[arg(long, default_value = "models/shapes")]
        out: PathBuf,
        /// Seed of the frozen text encoder's weights.
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        /// Replace an existing repository.
        #[arg(long)]
        force: bool,
    },
    /// Teach the text encoder the roles of the caption words (before it is frozen and the
    /// diffusion stages train on it): heads on its pooled output classify shape colour, shape,
    /// motion and background. Rewrites the encoder's weights in place.
    PretrainText {
        /// Model repository.
        #[arg(long, default_value = "models/shapes")]
        model: PathBuf,
        /// Optimizer steps.
        #[arg(long, default_value_t = 400)]
        steps: usize,
        /// Captions per step.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// AdamW learning rate.
        #[arg(long, default_value_t = 3e-3)]
        lr: f64,
        /// Seed of the caption draws.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Train one diffusion stage (resumable).
    Train(Box<TrainArgs>),
}

// The options of `train`. No doc comment: the `Train` variant's is the subcommand's help.
#[derive(Args)]
struct TrainArgs {
    /// Model repository.
    #[arg(long, default_value = "models/shapes")]
    model: PathBuf,
    /// Stage to train.
    #[arg(long)]
    stage: String,
    /// Total optimizer steps to reach.
    #[arg(long, default_value_t = 3000)]
    steps: usize,
    /// Examples per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-4)]
    lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// EMA decay.
    #[arg(long, default_value_t = 0.998)]
    ema_decay: f64,
    /// Caption dropout for classifier-free guidance.
    #[arg(long, default_value_t = 0.1)]
    text_dropout: f64,
    /// Upper bound of SR noise augmentation times.
    #[arg(long, default_value_t = 0.5)]
    max_augmentation: f64,
    /// SR stages: share of examples whose low-resolution input is Gaussian-blurred first, so
    /// the stage learns to take shape detail from the caption (blurring augmentation).
    #[arg(long, default_value_t = 0.0)]
    blur_rate: f64,
    /// SR stages: largest blur sigma, in low-resolution pixels.
    #[arg(long, default_value_t = 1.5)]
    max_blur: f64,
    /// Outline-weighted loss: pixels on a shape's outline weigh up to 1 + this much more than
    /// flat areas, corners most (0 = every pixel alike).
    #[arg(long, default_value_t = 0.0)]
    outline_weight: f64,
    /// Shift of the training times towards high noise (1 = uniform; 3 puts 43 % of steps at
    /// t > 0.8 instead of 20 %), where a base stage learns layout and motion.
    #[arg(long, default_value_t = 1.0)]
    time_shift: f64,
    /// Learning-rate multiplier of the layout map (`layout.*` parameters): at 1 the base
    /// stage's layout did not follow motion words in 500 steps, at 30 it did in ~100
    /// (docs/training.md). SR stages have no layout map.
    #[arg(long, default_value_t = 30.0)]
    layout_lr_scale: f64,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 100)]
    checkpoint_every: usize,
    /// Steps between progress lines.
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Folder for resume state.
    #[arg(long, default_value = "train-runs")]
    run_dir: PathBuf,
    /// Seed of data and noise.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Train on windows of this many output frames (SR stages).
    #[arg(long)]
    crop_frames: Option<usize>,
    /// Train on square crops of this side (SR stages).
    #[arg(long)]
    crop_side: Option<usize>,
    /// Share of examples given known frames (stages with context frames; ignored otherwise):
    /// half of them the first frame, half the first k frames (docs/training.md).
    #[arg(long, default_value_t = 0.5)]
    context_rate: f64,
    /// Learning-rate multiplier of the known-frames input (`context_in.*`): at 1 it grew to a
    /// fifth of the first convolution's size in 800 base steps and the base still ignored the
    /// given frames (docs/training.md).
    #[arg(long, default_value_t = 10.0)]
    context_lr_scale: f64,
    /// Share of the continuation examples that are a story's next clip: the given frames end a
    /// world clip and the shape goes on the same way (docs/training.md).
    #[arg(long, default_value_t = 0.0)]
    story_rate: f64,
    /// Progressive distillation: the teacher's model repository. The stage of `--model` (a copy
    /// of the teacher to start with) becomes a student sampling half the teacher's steps at
    /// guidance 1, and `--model`'s manifest says so (docs/training.md).
    #[arg(long)]
    teacher: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    // Before any thread starts (see vidcascade_kernels::cpu::configure_threads).
    vidcascade_kernels::cpu::configure_threads(vidcascade_kernels::cpu::Workload::Training);
    match Cli::parse().command {
        Command::Init { out, seed, force } => init(&out, seed, force),
        Command::PretrainText {
            model,
            steps,
            batch,
            lr,
            seed,
        } => pretrain_text(
            &model,
            text_pretrain::TextPretrainConfig {
                steps,
                batch,
                lr,
                seed,
            },
        ),
        Command::Train(args) => train(*args),
    }
}

/// `init`: writes the untrained cascade to `out`.
fn init(out: &Path, seed: u64, force: bool) -> anyhow::Result<()> {
    if out.join("manifest.json").exists() && !force {
        bail!(
            "{} already holds a model repository; pass --force to replace it",
            out.display()
        );
    }
    // The U-Nets start at their training initialisation; the frozen text encoder gets
    // seeded random features (see docs/training.md for why that suffices here).
    recipe::shapes_scaffold().write_with(out, WeightInit::Random { seed }, WeightInit::Training)?;
    println!("wrote untrained cascade to {}", out.display());
    Ok(())
}

/// `pretrain-text`: pretrains the text encoder of `model` and prints how well the caption roles
/// are read back.
fn pretrain_text(model: &Path, config: text_pretrain::TextPretrainConfig) -> anyhow::Result<()> {
    let (train, held_out) = text_pretrain::pretrain_text_encoder(model, config)?;
    println!("caption roles read from the pooled embedding, training captions: {train}");
    println!("caption roles read from the pooled embedding, held-out captions: {held_out}");
    Ok(())
}

/// `train`: trains one diffusion stage.
fn train(args: TrainArgs) -> anyhow::Result<()> {
    let crop = match (args.crop_frames, args.crop_side) {
        (None, None) => None,
        (frames, side) => Some(data::Crop {
            frames: frames.unwrap_or(usize::MAX),
            side: side.unwrap_or(usize::MAX),
        }),
    };
    let config = trainer::TrainConfig {
        stage: args.stage,
        steps: args.steps,
        batch: args.batch,
        lr: args.lr,
        warmup: args.warmup,
        weight_decay: 0.01,
        ema_decay: args.ema_decay,
        text_dropout: args.text_dropout,
        min_snr_gamma: 5.0,
        max_augmentation: args.max_augmentation,
        time_shift: args.time_shift,
        layout_lr_scale: args.layout_lr_scale,
        grad_clip: 1.0,
        checkpoint_every: args.checkpoint_every,
        log_every: args.log_every,
        seed: args.seed,
        crop,
        context_rate: args.context_rate,
        context_lr_scale: args.context_lr_scale,
        story_rate: args.story_rate,
        teacher: args.teacher,
        blur_rate: args.blur_rate,
        max_blur: args.max_blur,
        outline_weight: args.outline_weight,
    };
    let state = trainer::train(&args.model, &args.run_dir, config)?;
    println!(
        "done at step {} (recent loss {:.4})",
        state.step, state.recent_loss
    );
    Ok(())
}
