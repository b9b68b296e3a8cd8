//! A short pre-training of the text encoder on the world's captions, before it is frozen.
//!
//! Imagen freezes a T5 that was pre-trained on a large text corpus, so its embeddings already say
//! which word plays which role. A seeded random T5 does not: its mean-pooled output is a hash of
//! the caption in which "red circle ... black background" and "black circle ... red background"
//! are nearly the same vector, and the U-Net must untangle that from the diffusion loss alone
//! (measured: after 2,900 base steps it had not — gray backgrounds whatever the prompt). This
//! stand-in for language pre-training teaches the encoder the roles of the closed vocabulary:
//! linear heads on the mean-pooled output classify the shape colour, shape, motion and background
//! (or "not said", for the short caption form) of training captions, with cross-entropy. Only the
//! encoder's weights are kept; the heads are thrown away. Held-out combinations are never seen
//! here either: their accuracy is reported as a check that the roles generalise.

use std::path::Path;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Linear, Module, Optimizer, ParamsAdamW, VarBuilder, VarMap, linear};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vidcascade_models::repository::files;
use vidcascade_models::text_encoder::T5Encoder;
use vidcascade_models::text_encoder::t5::EMBEDDING_NAMES;
use vidcascade_models::{ModelRepository, TextEncoder};

use crate::trainer::write_atomically;
use vidcascade_shapes::world::{
    Colour, Motion, Scene, ShapeKind, held_out_scenes, training_scenes,
};

/// Hyper-parameters of the pre-training.
#[derive(Debug, Clone, Copy)]
pub struct TextPretrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Captions per step.
    pub batch: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// Seed of the caption draws.
    pub seed: u64,
}

/// Attribute accuracy of the heads on a set of captions.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoleAccuracy {
    /// Shape colour.
    pub colour: f64,
    /// Shape.
    pub shape: f64,
    /// Motion.
    pub motion: f64,
    /// Background colour.
    pub background: f64,
}

impl std::fmt::Display for RoleAccuracy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "colour {:.1} %, shape {:.1} %, motion {:.1} %, background {:.1} %",
            100.0 * self.colour,
            100.0 * self.shape,
            100.0 * self.motion,
            100.0 * self.background
        )
    }
}

/// The classes a caption is labelled with; the background's last class is "not said".
const BACKGROUND_NOT_SAID: usize = Colour::ALL.len();

fn labels(scene: &Scene, long_form: bool) -> [u32; 4] {
    let index = |all: &[Colour], c: Colour| all.iter().position(|x| *x == c).unwrap_or(0) as u32;
    [
        index(&Colour::SHAPE, scene.colour),
        ShapeKind::ALL
            .iter()
            .position(|s| *s == scene.shape)
            .unwrap_or(0) as u32,
        Motion::ALL
            .iter()
            .position(|m| *m == scene.motion)
            .unwrap_or(0) as u32,
        if long_form {
            index(&Colour::ALL, scene.background)
        } else {
            BACKGROUND_NOT_SAID as u32
        },
    ]
}

struct RoleHeads {
    heads: [Linear; 4],
}

impl RoleHeads {
    fn new(dim: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            heads: [
                linear(dim, Colour::SHAPE.len(), vb.pp("colour"))?,
                linear(dim, ShapeKind::ALL.len(), vb.pp("shape"))?,
                linear(dim, Motion::ALL.len(), vb.pp("motion"))?,
                linear(dim, BACKGROUND_NOT_SAID + 1, vb.pp("background"))?,
            ],
        })
    }
}

struct Captions {
    ids: Tensor,
    mask: Tensor,
    labels: [Tensor; 4],
}

fn encode_captions(
    tokenizer: &TextEncoder,
    captions: &[(String, [u32; 4])],
    device: &Device,
) -> anyhow::Result<Captions> {
    let texts: Vec<&str> = captions.iter().map(|(c, _)| c.as_str()).collect();
    let tokens = tokenizer.tokenize(&texts)?;
    let longest = tokens.iter().map(Vec::len).max().unwrap_or(1);
    let mut ids = Vec::with_capacity(captions.len() * longest);
    let mut mask = Vec::with_capacity(captions.len() * longest);
    for row in &tokens {
        for i in 0..longest {
            ids.push(row.get(i).copied().unwrap_or(0));
            mask.push(if i < row.len() { 1f32 } else { 0f32 });
        }
    }
    let column = |k: usize| -> candle_core::Result<Tensor> {
        Tensor::from_vec(
            captions.iter().map(|(_, l)| l[k]).collect::<Vec<_>>(),
            captions.len(),
            device,
        )
    };
    Ok(Captions {
        ids: Tensor::from_vec(ids, (captions.len(), longest), device)?,
        mask: Tensor::from_vec(mask, (captions.len(), longest), device)?,
        labels: [column(0)?, column(1)?, column(2)?, column(3)?],
    })
}

fn role_logits(
    encoder: &T5Encoder,
    heads: &RoleHeads,
    captions: &Captions,
) -> candle_core::Result<Vec<Tensor>> {
    let hidden = encoder.forward(&captions.ids, &captions.mask)?;
    let pooled = T5Encoder::masked_mean(&hidden, &captions.mask)?;
    heads.heads.iter().map(|h| h.forward(&pooled)).collect()
}

fn accuracy(
    encoder: &T5Encoder,
    heads: &RoleHeads,
    captions: &Captions,
) -> anyhow::Result<RoleAccuracy> {
    let logits = role_logits(encoder, heads, captions)?;
    let mut rates = [0f64; 4];
    for (k, rate) in rates.iter_mut().enumerate() {
        let predicted = logits[k].argmax(1)?.to_vec1::<u32>()?;
        let wanted = captions.labels[k].to_vec1::<u32>()?;
        let right = predicted
            .iter()
            .zip(&wanted)
            .filter(|(p, w)| p == w)
            .count();
        *rate = right as f64 / wanted.len().max(1) as f64;
    }
    Ok(RoleAccuracy {
        colour: rates[0],
        shape: rates[1],
        motion: rates[2],
        background: rates[3],
    })
}

fn every_caption(scenes: &[Scene]) -> Vec<(String, [u32; 4])> {
    scenes
        .iter()
        .flat_map(|s| {
            [
                (s.caption(), labels(s, true)),
                (s.short_caption(), labels(s, false)),
            ]
        })
        .collect()
}

/// `size` captions of random training scenes, in the long form three times in four, with
/// their labels.
fn sample_captions(
    scenes: &[Scene],
    size: usize,
    rng: &mut ChaCha8Rng,
) -> anyhow::Result<Vec<(String, [u32; 4])>> {
    (0..size)
        .map(|_| {
            let scene = *scenes.choose(rng).context("no training scenes")?;
            let long_form = rng.random_bool(0.75);
            let caption = if long_form {
                scene.caption()
            } else {
                scene.short_caption()
            };
            Ok((caption, labels(&scene, long_form)))
        })
        .collect()
}

/// The sum of the heads' cross-entropies on `captions`.
fn role_loss(
    encoder: &T5Encoder,
    heads: &RoleHeads,
    captions: &Captions,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let logits = role_logits(encoder, heads, captions)?;
    let mut loss = Tensor::zeros((), DType::F32, device)?;
    for (k, l) in logits.iter().enumerate() {
        loss = (loss + candle_nn::loss::cross_entropy(l, &captions.labels[k])?)?;
    }
    Ok(loss)
}

/// Pre-trains the text encoder of the repository at `model_dir` in place; returns the role
/// accuracy on (training captions, held-out captions).
pub fn pretrain_text_encoder(
    model_dir: &Path,
    config: TextPretrainConfig,
) -> anyhow::Result<(RoleAccuracy, RoleAccuracy)> {
    if config.steps == 0 || config.batch == 0 {
        bail!("--steps and --batch must be at least 1");
    }
    let device = Device::Cpu;
    let repo = ModelRepository::open(model_dir)?;
    let tokenizer = repo.load_text_encoder(&device)?;
    let encoder_config = repo.text_encoder_config().clone();
    let weights_path = repo
        .stage_dir(&repo.manifest().stages[0])
        .join(files::WEIGHTS);

    let mut encoder_vars = VarMap::new();
    let encoder = T5Encoder::new(
        VarBuilder::from_varmap(&encoder_vars, DType::F32, &device),
        &encoder_config,
        EMBEDDING_NAMES[0],
    )?;
    encoder_vars
        .load(&weights_path)
        .with_context(|| format!("loading {}", weights_path.display()))?;
    let head_vars = VarMap::new();
    let heads = RoleHeads::new(
        encoder_config.d_model,
        VarBuilder::from_varmap(&head_vars, DType::F32, &device),
    )?;
    let mut vars = encoder_vars.all_vars();
    vars.extend(head_vars.all_vars());
    let mut optimizer = AdamW::new(
        vars,
        ParamsAdamW {
            lr: config.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;

    let scenes = training_scenes();
    let train_eval = encode_captions(&tokenizer, &every_caption(&scenes), &device)?;
    let held_out_eval = encode_captions(&tokenizer, &every_caption(&held_out_scenes()), &device)?;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    for step in 1..=config.steps {
        let batch = sample_captions(&scenes, config.batch, &mut rng)?;
        let captions = encode_captions(&tokenizer, &batch, &device)?;
        let loss = role_loss(&encoder, &heads, &captions, &device)?;
        optimizer.backward_step(&loss)?;
        if step % 50 == 0 || step == config.steps {
            println!(
                "text-encoder step {step}/{} loss {:.4} held-out roles: {}",
                config.steps,
                loss.to_scalar::<f32>()?,
                accuracy(&encoder, &heads, &held_out_eval)?
            );
        }
    }
    write_atomically(&weights_path, |tmp| {
        encoder_vars
            .save(tmp)
            .with_context(|| format!("writing {}", tmp.display()))
    })?;
    Ok((
        accuracy(&encoder, &heads, &train_eval)?,
        accuracy(&encoder, &heads, &held_out_eval)?,
    ))
}
