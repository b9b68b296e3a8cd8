//! The training loop of one diffusion stage.
//!
//! The text encoder is frozen (as in Imagen): prompts are encoded once and cached. Each step draws
//! a batch from the shapes world, noises it at uniform random times, conditions SR stages on the
//! low-resolution rendering resampled exactly as at inference and noised to a random augmentation
//! level, and takes an AdamW step on the min-SNR-weighted loss (v-prediction, or the same
//! objective in x-space for SR stages that predict a residual over their upsampled input) with
//! global-norm gradient clipping. The EMA of the weights is what ships: it is written into the model repository
//! at every checkpoint, with the raw weights and the step count kept in the run folder to resume.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use vidcascade_diffusion::noise::GaussianNoise;
use vidcascade_engine::stage::{Conditioning, augment, pad_embeddings};
use vidcascade_engine::video::resample;
use vidcascade_models::repository::{ModelRepository, StageManifest, VideoShape, files};
use vidcascade_models::unet::{Prediction, VideoUNetConfig, known_frames};
use vidcascade_models::{TextEncoder, UNetInputs, VideoUNet};

use crate::blur::gaussian_blur;
use crate::data::{Batch, BatchSampler, Crop};
use crate::distill::{Teacher, student_x0};
use crate::ema::Ema;
use crate::objective::{noise_batch, shift_time, weighted_mse};
use crate::optim::Optimizers;
use crate::outline::outline_weights;

/// Hyper-parameters of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Stage to train.
    pub stage: String,
    /// Train until this many optimizer steps in total (resuming counts earlier steps).
    pub steps: usize,
    /// Examples per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup: usize,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// EMA decay.
    pub ema_decay: f64,
    /// Probability of replacing a caption with the empty prompt.
    pub text_dropout: f64,
    /// Min-SNR gamma.
    pub min_snr_gamma: f64,
    /// SR stages: augmentation times are drawn from U(0, max_augmentation).
    pub max_augmentation: f64,
    /// Training times are `shift_time(u, time_shift)` for `u ~ U(0, 1)` (1: uniform). Absent in
    /// the state of older runs.
    #[serde(default = "unscaled")]
    pub time_shift: f64,
    /// Learning-rate multiplier of the layout map's parameters (`layout.*`). They are a direct,
    /// nearly linear path whose useful gradient (where a caption puts the shape) is a small,
    /// consistent part of a noisy per-step gradient, so Adam at the network's rate moves them
    /// too slowly; the EMA smooths the extra step noise. Absent in older run states (1).
    #[serde(default = "unscaled")]
    pub layout_lr_scale: f64,
    /// Global gradient-norm clip.
    pub grad_clip: f64,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// Steps between progress lines.
    pub log_every: usize,
    /// Seed of data, times and noise.
    pub seed: u64,
    /// SR stages: train on windows of this many output frames and this side.
    pub crop: Option<Crop>,
    /// Stages with context frames: the share of examples given known frames (absent in older
    /// run states: 0).
    #[serde(default)]
    pub context_rate: f64,
    /// Learning-rate multiplier of the known-frames input (`context_in.*`): it starts at zero
    /// behind a trained network, a direct path like the layout map (absent in older run
    /// states: 1).
    #[serde(default = "unscaled")]
    pub context_lr_scale: f64,
    /// Stages with context frames: the share of continuations that are a story's next clip
    /// ([`BatchSampler::with_story_continuations`]; absent in older run states: 0).
    #[serde(default)]
    pub story_rate: f64,
    /// Progressive distillation: the teacher's model repository (absent: ordinary training).
    #[serde(default)]
    pub teacher: Option<PathBuf>,
    /// SR stages: the share of examples whose low-resolution input is blurred before it is
    /// resampled ([`crate::blur`]; absent in older run states: 0).
    #[serde(default)]
    pub blur_rate: f64,
    /// SR stages: blurred examples draw the blur's sigma from U(0.3, max_blur) low-resolution
    /// pixels (absent in older run states: 1.5).
    #[serde(default = "default_max_blur")]
    pub max_blur: f64,
    /// Strength of the outline-weighted loss ([`crate::outline`]): 0 weighs every pixel alike
    /// (absent in older run states: 0).
    #[serde(default)]
    pub outline_weight: f64,
}

/// The serde default of `max_blur`.
fn default_max_blur() -> f64 {
    1.5
}

/// The serde default of the settings older run states lack: 1, which leaves training as it was.
fn unscaled() -> f64 {
    1.0
}

/// Rejects a setting that must be a positive finite number, naming its flag.
fn require_positive(flag: &str, value: f64, hint: &str) -> anyhow::Result<()> {
    if !(value.is_finite() && value > 0.0) {
        bail!("{flag} must be a positive number ({hint}), got {value}");
    }
    Ok(())
}

/// What is kept between runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    /// Mean loss over the last logging window.
    pub recent_loss: f64,
    /// Seconds spent training, all runs together.
    pub seconds: f64,
    /// The configuration of the latest run.
    pub config: Option<TrainConfig>,
}

fn read_state(path: &Path) -> anyhow::Result<Option<TrainState>> {
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?,
    ))
}

/// Writes through a temporary file and renames it over `path`, so a stopped run never leaves a
/// half-written file.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    write(&tmp)?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> anyhow::Result<()> {
    write_atomically(path, |tmp| {
        candle_core::safetensors::save(tensors, tmp)
            .with_context(|| format!("writing {}", tmp.display()))
    })
}

fn var_tensors(varmap: &VarMap) -> anyhow::Result<HashMap<String, Var>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("variable map lock poisoned"))?;
    Ok(data.clone())
}

fn clip_gradients(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> anyhow::Result<f64> {
    let mut total = 0f64;
    for var in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = total.sqrt();
    if norm.is_finite() && norm > max_norm {
        let scale = max_norm / norm;
        for var in vars {
            if let Some(g) = grads.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

/// Trains `config.stage` of the repository at `model_dir`, keeping resume state in `run_dir`.
pub fn train(model_dir: &Path, run_dir: &Path, config: TrainConfig) -> anyhow::Result<TrainState> {
    check_settings(&config)?;
    let device = Device::Cpu;
    let repo = ModelRepository::open(model_dir)?;
    let stage = diffusion_stage(&repo, &config.stage, model_dir)?;
    let output = stage.output.context("stage has no output shape")?;
    let unet_config = repo.unet_config(&stage.name)?.clone();
    let encoder = repo.load_text_encoder(&device)?;
    let paths = RunPaths::create(&repo, &stage, run_dir)?;

    let mut varmap = VarMap::new();
    let unet = VideoUNet::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
        &unet_config,
    )?;
    let state = read_state(&paths.state)?.unwrap_or_default();
    let resume_from = paths.resume_from();
    varmap
        .load(resume_from)
        .with_context(|| format!("loading weights from {}", resume_from.display()))?;
    let vars_by_name = var_tensors(&varmap)?;
    let mut ema = Ema::new(&vars_by_name, config.ema_decay)?;
    ema.load(&candle_core::safetensors::load(paths.ema_from(), &device)?)?;
    if state.step >= config.steps {
        println!(
            "{}: already at step {} >= {}; nothing to do",
            stage.name, state.step, config.steps
        );
        return Ok(state);
    }
    println!(
        "{}: training from step {} to {} (batch {}, lr {}, {} parameters), resuming from {}",
        stage.name,
        state.step,
        config.steps,
        config.batch,
        config.lr,
        varmap
            .all_vars()
            .iter()
            .map(|v| v.elem_count())
            .sum::<usize>(),
        resume_from.display()
    );

    let vars = varmap.all_vars();
    let optimizers = Optimizers::new(&vars_by_name, &config)?;
    let teacher = config
        .teacher
        .as_deref()
        .map(|dir| Teacher::load(dir, &stage.name))
        .transpose()?;
    if let Some(teacher) = &teacher {
        write_student_defaults(&repo, &stage.name, teacher.student_steps())?;
    }
    let sampler = batch_sampler(&config, &stage, output, &unet_config, teacher.is_some());
    let trainer = Trainer {
        example: sampler.example_shape(),
        sampler,
        stage: stage.name.clone(),
        prediction: unet_config.prediction,
        context_frames: unet_config.context_frames,
        teacher,
        device,
        unet,
        encoder,
        cache: HashMap::new(),
        varmap,
        vars,
        optimizers,
        ema,
        config,
    };
    trainer.run(state, &paths)
}

/// Rejects settings out of range, naming their flags, before anything loads.
fn check_settings(config: &TrainConfig) -> anyhow::Result<()> {
    require_positive("--time-shift", config.time_shift, "1 = uniform times")?;
    for (flag, value) in [
        ("--layout-lr-scale", config.layout_lr_scale),
        ("--context-lr-scale", config.context_lr_scale),
    ] {
        require_positive(flag, value, "1 = the network's rate")?;
    }
    for (flag, value) in [
        ("--context-rate", config.context_rate),
        ("--story-rate", config.story_rate),
        ("--blur-rate", config.blur_rate),
    ] {
        if !(0.0..=1.0).contains(&value) {
            bail!("{flag} must be in [0, 1], got {value}");
        }
    }
    if !(config.outline_weight.is_finite() && config.outline_weight >= 0.0) {
        bail!(
            "--outline-weight must be a number >= 0 (0 = every pixel alike), got {}",
            config.outline_weight
        );
    }
    if !(config.max_blur.is_finite() && config.max_blur > 0.3) {
        bail!(
            "--max-blur must be above 0.3 (sigmas are drawn from U(0.3, max)), got {}",
            config.max_blur
        );
    }
    Ok(())
}

/// The batches of `stage`: context frames only for a network that takes them, and no empty
/// captions for a student (it learns the guided teacher from the conditional branch).
fn batch_sampler(
    config: &TrainConfig,
    stage: &StageManifest,
    output: VideoShape,
    unet_config: &VideoUNetConfig,
    distilling: bool,
) -> BatchSampler {
    let context_rate = if unet_config.context_frames {
        config.context_rate
    } else {
        0.0
    };
    let text_dropout = if distilling { 0.0 } else { config.text_dropout };
    let sampler = BatchSampler::new(output, stage.input, text_dropout)
        .with_context(context_rate)
        .with_story_continuations(config.story_rate);
    match config.crop {
        Some(crop) => sampler.with_crop(crop),
        None => sampler,
    }
}

/// One batch with everything both objectives condition on.
struct Prepared {
    batch: Batch,
    /// Each example's caption embedding `[tokens, dim]`.
    texts: Vec<Tensor>,
    /// SR stages: augmented conditioning videos, the resampled ones, the levels `[B]`.
    sr: Option<(Tensor, Tensor, Tensor)>,
    /// Stages with context frames: `[B, CONTEXT_CHANNELS, F, H, W]`.
    known: Option<Tensor>,
}

impl Prepared {
    /// Each example as the serving stage conditions a sample (`empty`: the empty prompt's
    /// embedding).
    fn conditionings(&self, empty: &Tensor) -> anyhow::Result<Vec<Conditioning>> {
        let levels = match &self.sr {
            Some((_, _, aug)) => aug.to_vec1::<f32>()?,
            None => vec![0.0; self.texts.len()],
        };
        let pick = |t: Option<&Tensor>, b: usize| t.map(|t| t.get(b)).transpose();
        self.texts
            .iter()
            .enumerate()
            .map(|(b, text)| {
                Ok(Conditioning {
                    text: text.clone(),
                    unconditional: empty.clone(),
                    video: pick(self.sr.as_ref().map(|s| &s.0), b)?,
                    upsampled: pick(self.sr.as_ref().map(|s| &s.1), b)?,
                    aug_level: f64::from(levels[b]),
                    known: pick(self.known.as_ref(), b)?,
                })
            })
            .collect()
    }
}

/// Sets the student repository's defaults for `stage`: the student's steps, guidance 1 (it has
/// learnt the guided teacher).
fn write_student_defaults(repo: &ModelRepository, stage: &str, steps: usize) -> anyhow::Result<()> {
    let mut manifest = repo.manifest().clone();
    for entry in manifest.stages.iter_mut().filter(|s| s.name == stage) {
        entry.defaults.steps = steps;
        entry.defaults.guidance = 1.0;
    }
    let path = repo.root().join(files::MANIFEST);
    write_atomically(&path, |tmp| {
        Ok(std::fs::write(
            tmp,
            serde_json::to_string_pretty(&manifest)? + "\n",
        )?)
    })?;
    println!(
        "{}: {stage} now samples {steps} steps at guidance 1 (the student's)",
        path.display()
    );
    Ok(())
}

/// The diffusion stage `name` of `repo` (one with an output shape).
fn diffusion_stage(
    repo: &ModelRepository,
    name: &str,
    model_dir: &Path,
) -> anyhow::Result<StageManifest> {
    Ok(repo
        .manifest()
        .stage(name)
        .filter(|s| s.output.is_some())
        .with_context(|| format!("no diffusion stage `{}` in {}", name, model_dir.display()))?
        .clone())
}

/// The files of one stage's run: its folder in the run folder keeps the raw weights, their EMA
/// and the state to resume from; the EMA also ships in the model repository.
struct RunPaths {
    raw: PathBuf,
    ema: PathBuf,
    state: PathBuf,
    shipped: PathBuf,
    /// The training record next to the shipped weights.
    record: PathBuf,
}

impl RunPaths {
    /// The paths of `stage`'s run under `run_dir`, creating its folder.
    fn create(
        repo: &ModelRepository,
        stage: &StageManifest,
        run_dir: &Path,
    ) -> anyhow::Result<Self> {
        let stage_run = run_dir.join(&stage.name);
        std::fs::create_dir_all(&stage_run)
            .with_context(|| format!("creating {}", stage_run.display()))?;
        Ok(Self {
            raw: stage_run.join("raw.safetensors"),
            ema: stage_run.join("ema.safetensors"),
            state: stage_run.join("state.json"),
            shipped: repo.stage_dir(stage).join(files::WEIGHTS),
            record: repo.stage_dir(stage).join("training.json"),
        })
    }

    /// The raw weights of an earlier run, else the shipped ones.
    fn resume_from(&self) -> &Path {
        if self.raw.exists() {
            &self.raw
        } else {
            &self.shipped
        }
    }

    /// The EMA of an earlier run, else the shipped weights.
    fn ema_from(&self) -> &Path {
        if self.ema.exists() {
            &self.ema
        } else {
            &self.shipped
        }
    }
}

/// What one optimizer step reports.
struct StepReport {
    loss: f64,
    grad_norm: f64,
    lr: f64,
}

/// A stage's network with everything a training step needs.
struct Trainer {
    config: TrainConfig,
    /// The stage's name, for messages.
    stage: String,
    prediction: Prediction,
    /// Whether the U-Net takes known frames.
    context_frames: bool,
    /// Distillation: the teacher the student learns from.
    teacher: Option<Teacher>,
    device: Device,
    unet: VideoUNet,
    encoder: TextEncoder,
    /// Embeddings of the captions seen so far.
    cache: HashMap<String, Tensor>,
    sampler: BatchSampler,
    example: VideoShape,
    varmap: VarMap,
    vars: Vec<Var>,
    optimizers: Optimizers,
    ema: Ema,
}

impl Trainer {
    /// Trains from `state` until `config.steps`, logging and checkpointing on the way.
    fn run(mut self, mut state: TrainState, paths: &RunPaths) -> anyhow::Result<TrainState> {
        let mut window = (0f64, 0usize);
        let mut window_started = Instant::now();
        let run_started = Instant::now();
        let seconds_before = state.seconds;
        let steps = self.config.steps;
        while state.step < steps {
            let step = state.step + 1;
            let report = self.step(step)?;
            state.step = step;
            window.0 += report.loss;
            window.1 += 1;

            if step.is_multiple_of(self.config.log_every) || step == steps {
                let per_step = window_started.elapsed().as_secs_f64() / window.1 as f64;
                state.recent_loss = window.0 / window.1 as f64;
                println!(
                    "{} step {step}/{} loss {:.4} grad-norm {:.2} lr {:.2e} {per_step:.2} s/step eta {:.0} min",
                    self.stage,
                    steps,
                    state.recent_loss,
                    report.grad_norm,
                    report.lr,
                    per_step * (steps - step) as f64 / 60.0
                );
                window = (0.0, 0);
                window_started = Instant::now();
            }
            if step.is_multiple_of(self.config.checkpoint_every) || step == steps {
                state.seconds = seconds_before + run_started.elapsed().as_secs_f64();
                state.config = Some(self.config.clone());
                self.checkpoint(&state, paths, step)?;
            }
        }
        Ok(state)
    }

    /// Optimizer step `step` (counting from 1): warm-up learning rate, loss, clipped gradients,
    /// AdamW, EMA.
    fn step(&mut self, step: usize) -> anyhow::Result<StepReport> {
        let lr = self.config.lr * (step as f64 / self.config.warmup.max(1) as f64).min(1.0);
        self.optimizers.set_learning_rate(lr, &self.config);
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.config.seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let loss = self.loss(step, &mut rng)?;
        let loss_value = loss.to_scalar::<f32>()? as f64;
        if !loss_value.is_finite() {
            bail!(
                "loss became {loss_value} at step {step}; lower --lr and resume from the last checkpoint"
            );
        }
        let mut grads = loss.backward()?;
        let grad_norm = clip_gradients(&mut grads, &self.vars, self.config.grad_clip)?;
        self.optimizers.step(&grads)?;
        self.ema.update(step)?;
        Ok(StepReport {
            loss: loss_value,
            grad_norm,
            lr,
        })
    }

    /// The loss of step `step` on a fresh batch: the denoising objective, or the distillation
    /// one when there is a teacher.
    fn loss(&mut self, step: usize, rng: &mut ChaCha8Rng) -> anyhow::Result<Tensor> {
        let batch = self.sampler.sample(rng, self.config.batch, &self.device)?;
        let texts = embed_cached(&self.encoder, &mut self.cache, &batch.captions)?;
        let sr = match &batch.low_res {
            Some(low) => Some(self.sr_conditioning(low, step, rng)?),
            None => None,
        };
        let known = if self.context_frames {
            Some(known_frames(&batch.videos, &batch.given)?)
        } else {
            None
        };
        let prepared = Prepared {
            batch,
            texts,
            sr,
            known,
        };
        if self.teacher.is_some() {
            self.distillation_loss(&prepared, step, rng)
        } else {
            self.denoising_loss(&prepared, step, rng)
        }
    }

    /// The training objective: v (or x0 residual) MSE at random times.
    fn denoising_loss(
        &self,
        prepared: &Prepared,
        step: usize,
        rng: &mut ChaCha8Rng,
    ) -> anyhow::Result<Tensor> {
        let (config, device, batch) = (&self.config, &self.device, &prepared.batch);
        let refs: Vec<&Tensor> = prepared.texts.iter().collect();
        let (context, mask) = pad_embeddings(&refs)?;
        let times: Vec<f64> = (0..config.batch)
            .map(|_| shift_time(rng.random_range(0.0..1.0), config.time_shift))
            .collect();
        let eps =
            GaussianNoise::new(config.seed, step as u64).tensor(batch.videos.dims(), device)?;
        let noised = noise_batch(&batch.videos, &eps, &times, config.min_snr_gamma)?;
        let t = Tensor::from_vec(
            times.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            config.batch,
            device,
        )?;
        let sr = prepared.sr.as_ref();
        let inputs = UNetInputs {
            z: &noised.z,
            t: &t,
            context: &context,
            context_mask: &mask,
            cond: sr.map(|s| &s.0),
            aug_level: sr.map(|s| &s.2),
            known_frames: prepared.known.as_ref(),
        };
        let prediction = self.unet.forward(&inputs)?;
        let pixels = (config.outline_weight > 0.0)
            .then(|| outline_weights(&batch.videos, config.outline_weight))
            .transpose()?;
        let pixels = pixels.as_ref();
        Ok(match (self.prediction, sr) {
            (Prediction::V, _) => weighted_mse(&prediction, &noised.v, pixels, &noised.weights)?,
            (Prediction::X0Residual, Some((_, up, _))) => weighted_mse(
                &(up + prediction)?,
                &batch.videos,
                pixels,
                &noised.x0_weights,
            )?,
            (Prediction::X0Residual, None) => {
                bail!(
                    "stage {} predicts an x0 residual but has no conditioning video",
                    self.stage
                )
            }
        })
    }

    /// Progressive distillation (see [`crate::distill`]): the student's x0 at a time of its grid
    /// against the teacher's two-step target.
    fn distillation_loss(
        &mut self,
        prepared: &Prepared,
        step: usize,
        rng: &mut ChaCha8Rng,
    ) -> anyhow::Result<Tensor> {
        let teacher = self.teacher.as_ref().context("no teacher")?;
        let (config, batch) = (&self.config, &prepared.batch);
        let n = teacher.student_steps();
        let indices: Vec<usize> = (0..config.batch).map(|_| rng.random_range(1..=n)).collect();
        let times: Vec<f64> = indices.iter().map(|&i| i as f64 / n as f64).collect();
        let eps = GaussianNoise::new(config.seed, step as u64)
            .tensor(batch.videos.dims(), &self.device)?;
        let noised = noise_batch(&batch.videos, &eps, &times, config.min_snr_gamma)?;
        let empty = embed_cached(&self.encoder, &mut self.cache, &[String::new()])?.remove(0);
        let conditionings = prepared.conditionings(&empty)?;
        let target = teacher
            .targets(&noised.z, &indices, &conditionings)?
            .detach();
        let x0 = student_x0(&self.unet, &noised.z, &times, &conditionings)?;
        Ok(weighted_mse(&x0, &target, None, &noised.x0_weights)?)
    }

    /// SR stages: each example's low-resolution video (blurred for `blur_rate` of them)
    /// resampled to the output as at inference, then that noised to a random augmentation
    /// level; returns the conditioning videos, the resampled ones and the levels.
    fn sr_conditioning(
        &self,
        low: &Tensor,
        step: usize,
        rng: &mut ChaCha8Rng,
    ) -> anyhow::Result<(Tensor, Tensor, Tensor)> {
        let (config, example) = (&self.config, &self.example);
        let mut conds = Vec::with_capacity(config.batch);
        let mut ups = Vec::with_capacity(config.batch);
        let mut levels = Vec::with_capacity(config.batch);
        for i in 0..config.batch {
            let level = rng.random_range(0.0..config.max_augmentation);
            let mut source = low.get(i)?;
            // check_settings keeps blur_rate in [0, 1] and max_blur above 0.3; a zero rate
            // draws nothing, so runs without blur keep their random stream.
            if config.blur_rate > 0.0 && rng.random_bool(config.blur_rate) {
                let sigma = rng.random_range(0.3..config.max_blur);
                source = gaussian_blur(&source, sigma)?;
            }
            let up = resample(&source, example.frames, example.height, example.width)?;
            conds.push(augment(
                &up,
                level,
                config.seed ^ ((step * 131 + i) as u64),
            )?);
            ups.push(up);
            levels.push(level as f32);
        }
        Ok((
            Tensor::stack(&conds, 0)?,
            Tensor::stack(&ups, 0)?,
            Tensor::from_vec(levels, config.batch, &self.device)?,
        ))
    }

    /// Writes the run's files and the shipped weights at step `step`, and the training record.
    fn checkpoint(&self, state: &TrainState, paths: &RunPaths, step: usize) -> anyhow::Result<()> {
        checkpoint(
            &self.varmap,
            &self.ema,
            state,
            &paths.raw,
            &paths.ema,
            &paths.state,
            &paths.shipped,
        )?;
        write_atomically(&paths.record, |tmp| {
            Ok(std::fs::write(tmp, serde_json::to_string_pretty(state)?)?)
        })?;
        println!(
            "{} checkpoint at step {step} -> {}",
            self.stage,
            paths.shipped.display()
        );
        Ok(())
    }
}

fn checkpoint(
    varmap: &VarMap,
    ema: &Ema,
    state: &TrainState,
    raw_path: &Path,
    ema_run_path: &Path,
    state_path: &Path,
    shipped_path: &Path,
) -> anyhow::Result<()> {
    write_atomically(raw_path, |tmp| {
        varmap
            .save(tmp)
            .with_context(|| format!("writing {}", tmp.display()))
    })?;
    let averaged = ema.tensors();
    save_tensors(&averaged, ema_run_path)?;
    save_tensors(&averaged, shipped_path)?;
    write_atomically(state_path, |tmp| {
        Ok(std::fs::write(tmp, serde_json::to_string_pretty(state)?)?)
    })
}

fn embed_cached(
    encoder: &TextEncoder,
    cache: &mut HashMap<String, Tensor>,
    captions: &[String],
) -> anyhow::Result<Vec<Tensor>> {
    let missing: Vec<&str> = captions
        .iter()
        .filter(|c| !cache.contains_key(*c))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        let encoded = encoder.encode(&missing)?;
        for (caption, embedding) in missing.iter().zip(encoded) {
            cache.insert(caption.to_string(), embedding.detach());
        }
    }
    captions
        .iter()
        .map(|c| {
            cache
                .get(c)
                .cloned()
                .context("caption missing from the cache")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::LAYOUT_PREFIX;

    fn config(time_shift: f64) -> TrainConfig {
        TrainConfig {
            stage: "base".into(),
            steps: 1,
            batch: 1,
            lr: 1e-3,
            warmup: 1,
            weight_decay: 0.0,
            ema_decay: 0.9,
            text_dropout: 0.1,
            min_snr_gamma: 5.0,
            max_augmentation: 0.5,
            time_shift,
            layout_lr_scale: 1.0,
            grad_clip: 1.0,
            checkpoint_every: 1,
            log_every: 1,
            seed: 1,
            crop: None,
            context_rate: 0.0,
            context_lr_scale: 1.0,
            story_rate: 0.0,
            teacher: None,
            blur_rate: 0.0,
            max_blur: 1.5,
            outline_weight: 0.0,
        }
    }

    /// Whether any tensor of the weights file at `path` differs from `before`.
    fn weights_moved(before: &HashMap<String, Tensor>, path: &Path) -> anyhow::Result<bool> {
        let after = candle_core::safetensors::load(path, &Device::Cpu)?;
        Ok(before.iter().any(|(name, old)| {
            (&after[name] - old)
                .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
                .is_ok_and(|m| m > 0.0)
        }))
    }

    #[test]
    fn a_time_shift_that_is_not_positive_is_rejected_before_anything_loads() {
        let missing = Path::new("/nonexistent/vidcascade-model");
        for bad in [0.0, -2.0, f64::NAN, f64::INFINITY] {
            let err = train(missing, missing, config(bad)).expect_err("bad time shift");
            assert!(err.to_string().contains("--time-shift"), "{err}");
        }
        // A valid shift gets as far as the (missing) model repository.
        let err = train(missing, missing, config(3.0)).expect_err("missing model");
        assert!(!err.to_string().contains("--time-shift"), "{err}");
    }

    #[test]
    fn augmentation_and_loss_settings_out_of_range_are_rejected_naming_their_flag() {
        let missing = Path::new("/nonexistent/vidcascade-model");
        let bad = [
            (
                "--blur-rate",
                TrainConfig {
                    blur_rate: 1.5,
                    ..config(1.0)
                },
            ),
            (
                "--max-blur",
                TrainConfig {
                    max_blur: 0.2,
                    ..config(1.0)
                },
            ),
            (
                "--outline-weight",
                TrainConfig {
                    outline_weight: -1.0,
                    ..config(1.0)
                },
            ),
            (
                "--outline-weight",
                TrainConfig {
                    outline_weight: f64::NAN,
                    ..config(1.0)
                },
            ),
        ];
        for (flag, cfg) in bad {
            let err = train(missing, missing, cfg).expect_err(flag);
            assert!(err.to_string().contains(flag), "{flag}: {err}");
        }
    }

    #[test]
    fn an_sr_stage_trains_with_blurred_inputs_and_the_outline_weighted_loss() -> anyhow::Result<()>
    {
        use vidcascade_models::repository::scaffold::WeightInit;
        let dir = tempfile::tempdir()?;
        let model = dir.path().join("model");
        vidcascade_test_support::tiny_scaffold().write(&model, WeightInit::Random { seed: 5 })?;
        let weights = model.join("ssr").join(files::WEIGHTS);
        let before = candle_core::safetensors::load(&weights, &Device::Cpu)?;
        let cfg = TrainConfig {
            stage: "ssr".into(),
            steps: 2,
            batch: 2,
            blur_rate: 1.0,
            outline_weight: 8.0,
            ..config(1.0)
        };
        let state = train(&model, &dir.path().join("runs"), cfg)?;
        assert!(state.recent_loss.is_finite() && state.recent_loss > 0.0);
        assert!(
            weights_moved(&before, &weights)?,
            "the SR stage's weights did not move"
        );
        let saved = state.config.context("the run's settings")?;
        assert_eq!((saved.blur_rate, saved.outline_weight), (1.0, 8.0));
        Ok(())
    }

    #[test]
    fn the_layout_map_trains_at_its_scaled_learning_rate() -> anyhow::Result<()> {
        use vidcascade_models::repository::scaffold::WeightInit;
        let dir = tempfile::tempdir()?;
        let model = dir.path().join("model");
        vidcascade_test_support::tiny_scaffold().write(&model, WeightInit::Random { seed: 3 })?;
        let weights = model.join("base").join(files::WEIGHTS);
        let before = candle_core::safetensors::load(&weights, &Device::Cpu)?;
        let cfg = TrainConfig {
            layout_lr_scale: 10.0,
            ..config(1.0)
        };
        train(&model, &dir.path().join("runs"), cfg)?;
        let after = candle_core::safetensors::load(
            dir.path().join("runs/base/raw.safetensors"),
            &Device::Cpu,
        )?;
        // Adam's first step moves every parameter with a gradient by at most the learning rate
        // (exactly, up to epsilon, where the gradient is not tiny).
        let (mut layout, mut network) = (0f32, 0f32);
        for (name, old) in &before {
            let moved = (&after[name] - old)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let largest = if name.starts_with(LAYOUT_PREFIX) {
                &mut layout
            } else {
                &mut network
            };
            *largest = largest.max(moved);
        }
        assert!(layout > 5e-3 && layout <= 1.01e-2, "layout moved {layout}");
        assert!(
            network > 5e-4 && network <= 1.01e-3,
            "network moved {network}"
        );
        Ok(())
    }

    #[test]
    fn distillation_trains_every_stage_of_a_student_and_sets_its_defaults() -> anyhow::Result<()> {
        use vidcascade_models::repository::scaffold::WeightInit;
        let dir = tempfile::tempdir()?;
        let (teacher, student) = (dir.path().join("teacher"), dir.path().join("student"));
        for root in [&teacher, &student] {
            vidcascade_test_support::tiny_scaffold().write(root, WeightInit::Random { seed: 3 })?;
        }
        // The tiny SR stages sample 3 steps; a teacher needs an even count.
        let path = teacher.join(files::MANIFEST);
        let mut manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        for entry in manifest["stages"].as_array_mut().into_iter().flatten() {
            if entry["name"] != "base" && entry["name"] != "text-encoder" {
                entry["defaults"]["steps"] = 4.into();
            }
        }
        std::fs::write(&path, manifest.to_string())?;
        for stage in ["base", "tsr", "ssr"] {
            let weights = student.join(stage).join(files::WEIGHTS);
            let before = candle_core::safetensors::load(&weights, &Device::Cpu)?;
            let cfg = TrainConfig {
                stage: stage.into(),
                steps: 2,
                batch: 2,
                context_rate: 0.5,
                teacher: Some(teacher.clone()),
                ..config(1.0)
            };
            let state = train(&student, &dir.path().join("runs"), cfg)?;
            assert!(
                state.recent_loss.is_finite() && state.recent_loss > 0.0,
                "{stage}"
            );
            assert!(
                weights_moved(&before, &weights)?,
                "{stage}: the student's weights did not move"
            );
        }
        let repo = ModelRepository::open(&student)?;
        let teacher_repo = ModelRepository::open(&teacher)?;
        for stage in ["base", "tsr", "ssr"] {
            let (s, t) = (
                repo.manifest().stage(stage).context("stage")?.defaults,
                teacher_repo
                    .manifest()
                    .stage(stage)
                    .context("stage")?
                    .defaults,
            );
            assert_eq!(s.steps * 2, t.steps, "{stage}");
            assert_eq!(s.guidance, 1.0, "{stage}");
        }
        Ok(())
    }

    #[test]
    fn a_layout_learning_rate_scale_that_is_not_positive_is_rejected() {
        let missing = Path::new("/nonexistent/vidcascade-model");
        for bad in [0.0, -1.0, f64::NAN] {
            let cfg = TrainConfig {
                layout_lr_scale: bad,
                ..config(1.0)
            };
            let err = train(missing, missing, cfg).expect_err("bad scale");
            assert!(err.to_string().contains("--layout-lr-scale"), "{err}");
        }
    }
}
