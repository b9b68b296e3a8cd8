//! One diffusion stage of the cascade: a U-Net, its manifest entry, and everything between a
//! request and the sampler.
//!
//! - [`DiffusionStage::prepare`] turns a request into a [`SampleState`] plus its [`Conditioning`]:
//!   the text embedding, and for SR stages the lower-resolution video resampled to this stage's
//!   shape and noised to the augmentation level (Imagen Video's noise conditioning augmentation);
//! - [`UNetVelocity`] serves the sampler's batched `predict_v` calls, assembling each row's text
//!   (or the empty prompt for unconditional rows), conditioning video and times into one U-Net
//!   batch — any mix of requests at any steps, which is what step-level batching needs.

use candle_core::{DType, Device, Tensor};
use vidcascade_diffusion::noise::GaussianNoise;
use vidcascade_diffusion::{
    CosineSchedule, DiffusionError, ModelRow, SampleState, SamplerSettings, VelocityModel,
};
use vidcascade_models::unet::{Prediction, known_frames};
use vidcascade_models::{ModelError, ModelRepository, UNetInputs, VideoUNet};
use vidcascade_spec::{ResolvedSettings, StageManifest, StageOverrides, Video, VideoShape};

use crate::video::{resample, video_to_tensor};
use crate::{Compute, EngineError};

/// The sampler's settings for a resolved stage run (on the schedule every stage uses).
pub fn sampler_settings(settings: &ResolvedSettings) -> SamplerSettings {
    SamplerSettings {
        kind: settings.sampler,
        steps: settings.steps,
        guidance: settings.guidance,
        threshold_quantile: settings.threshold_quantile,
        schedule: CosineSchedule::default(),
    }
}

/// What a sample is conditioned on, prepared once per request.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// The prompt's embedding `[tokens, dim]`.
    pub text: Tensor,
    /// The empty prompt's embedding `[tokens, dim]` (classifier-free guidance).
    pub unconditional: Tensor,
    /// SR stages: the resampled, noise-augmented lower-resolution video `[3, F, H, W]`.
    pub video: Option<Tensor>,
    /// SR stages: the same resampled video before augmentation, the base of an `x0_residual`
    /// stage's estimate.
    pub upsampled: Option<Tensor>,
    /// SR stages: its augmentation time.
    pub aug_level: f64,
    /// Stages with context frames, when some are given: `[CONTEXT_CHANNELS, F, H, W]`.
    pub known: Option<Tensor>,
}

/// Frames a stage's output must continue from: image-to-video gives the first, a story's next
/// segment the previous segment's last frames.
#[derive(Debug, Clone)]
pub struct KnownFrames {
    /// `[3, F, H, W]` at the stage's output shape, in [-1, 1]; frames not given are ignored.
    pub video: Tensor,
    /// Which of the `F` frames are given.
    pub given: Vec<bool>,
}

impl KnownFrames {
    /// The leading frames `context` (RGB8, the output's size, 1..=`shape.frames` of them) of an
    /// output of `shape`, on `device`; a mismatch is an invalid request naming `context`.
    pub fn leading(
        context: &Video,
        shape: VideoShape,
        device: &Device,
    ) -> Result<Self, EngineError> {
        let given = context.frames.len();
        if context.width != shape.width
            || context.height != shape.height
            || given == 0
            || given > shape.frames
        {
            return Err(EngineError::InvalidRequest {
                field: "context".into(),
                reason: format!(
                    "must be 1..={} frames of {}x{}, got {given} of {}x{}",
                    shape.frames, shape.width, shape.height, context.width, context.height
                ),
            });
        }
        let known = video_to_tensor(context, device)?;
        let rest = Tensor::zeros(
            (3, shape.frames - given, shape.height, shape.width),
            known.dtype(),
            device,
        )?;
        Ok(Self {
            video: Tensor::cat(&[known, rest], 1)?,
            given: (0..shape.frames).map(|f| f < given).collect(),
        })
    }
}

/// One stage's input: what the caller asks for.
#[derive(Debug, Clone)]
pub struct StageInput<'a> {
    /// The prompt's embedding `[tokens, dim]`.
    pub text: &'a Tensor,
    /// The empty prompt's embedding `[tokens, dim]`.
    pub unconditional: &'a Tensor,
    /// SR stages: the previous stage's output `[3, F_in, H_in, W_in]` in [-1, 1].
    pub low_res: Option<&'a Tensor>,
    /// Frames the output must continue from, if any.
    pub known: Option<&'a KnownFrames>,
    /// Seed of the initial noise, ancestral noise and augmentation noise.
    pub seed: u64,
    /// Resolved settings.
    pub settings: ResolvedSettings,
}

/// A loaded diffusion stage.
#[derive(Debug, Clone)]
pub struct DiffusionStage {
    manifest: StageManifest,
    unet: VideoUNet,
    device: Device,
}

/// The noise stream used for the augmentation noise (sample noise uses stream 0).
const AUGMENTATION_STREAM: u64 = 1 << 32;

impl DiffusionStage {
    /// Wraps a loaded U-Net with its manifest entry.
    pub fn new(manifest: StageManifest, unet: VideoUNet, device: Device) -> Self {
        Self {
            manifest,
            unet,
            device,
        }
    }

    /// Loads diffusion stage `name` of an opened repository, in f32 on `device`.
    pub fn load(
        repository: &ModelRepository,
        name: &str,
        device: &Device,
    ) -> Result<Self, EngineError> {
        Self::load_on(repository, name, &Compute::f32_on(device))
    }

    /// Loads diffusion stage `name` on `compute`'s device, its weights in `compute`'s dtype.
    pub fn load_on(
        repository: &ModelRepository,
        name: &str,
        compute: &Compute,
    ) -> Result<Self, EngineError> {
        let device = &compute.device;
        let manifest = repository
            .manifest()
            .diffusion_stages()
            .find(|stage| stage.name == name)
            .cloned()
            .ok_or_else(|| EngineError::InvalidRequest {
                field: "stage".into(),
                reason: format!(
                    "`{name}` is not a diffusion stage of {}; it has {:?}",
                    repository.root().display(),
                    repository
                        .manifest()
                        .diffusion_stages()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                ),
            })?;
        let unet = repository.load_unet_as(name, device, compute.dtype())?;
        Ok(Self::new(manifest, unet, device.clone()))
    }

    /// The stage's manifest entry.
    pub fn manifest(&self) -> &StageManifest {
        &self.manifest
    }

    /// The stage's name.
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// The network.
    pub fn unet(&self) -> &VideoUNet {
        &self.unet
    }

    /// The shape this stage produces.
    pub fn output_shape(&self) -> Result<VideoShape, EngineError> {
        self.manifest
            .output
            .ok_or_else(|| EngineError::InvalidRequest {
                field: format!("stages.{}", self.manifest.name),
                reason: "stage has no output shape".into(),
            })
    }

    /// Checks `input`'s shapes against this stage without running anything.
    pub fn check_input(&self, input: &StageInput<'_>) -> Result<(), EngineError> {
        let context_dim = self.unet.config().context_dim;
        for (field, tensor) in [
            ("text_embedding", input.text),
            ("uncond_embedding", input.unconditional),
        ] {
            let dims = tensor.dims();
            if dims.len() != 2 || dims[0] == 0 || dims[1] != context_dim {
                return Err(EngineError::InvalidRequest {
                    field: field.into(),
                    reason: format!("must be [tokens >= 1, {context_dim}], got {dims:?}"),
                });
            }
        }
        if let Some(known) = input.known {
            self.check_known(known)?;
        }
        match (self.manifest.input, input.low_res) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(EngineError::InvalidRequest {
                field: "conditioning".into(),
                reason: format!(
                    "stage `{}` is a base stage and takes no conditioning video",
                    self.name()
                ),
            }),
            (Some(expected), None) => Err(EngineError::InvalidRequest {
                field: "conditioning".into(),
                reason: format!(
                    "stage `{}` needs a {expected} conditioning video",
                    self.name()
                ),
            }),
            (Some(expected), Some(low_res)) => {
                let want = [3, expected.frames, expected.height, expected.width];
                if low_res.dims() != want {
                    return Err(EngineError::InvalidRequest {
                        field: "conditioning".into(),
                        reason: format!(
                            "stage `{}` takes [3, {}, {}, {}] (frames, height, width), got {:?}",
                            self.name(),
                            expected.frames,
                            expected.height,
                            expected.width,
                            low_res.dims()
                        ),
                    });
                }
                Ok(())
            }
        }
    }

    /// Checks known frames against this stage: it must take them, at its output shape.
    fn check_known(&self, known: &KnownFrames) -> Result<(), EngineError> {
        let invalid = |reason: String| EngineError::InvalidRequest {
            field: "context_frames".into(),
            reason,
        };
        if !self.unet.config().context_frames {
            return Err(invalid(format!(
                "stage `{}` was not trained with context frames; use a cascade that has them",
                self.name()
            )));
        }
        let out = self.output_shape()?;
        let want = [3, out.frames, out.height, out.width];
        if known.video.dims() != want || known.given.len() != out.frames {
            return Err(invalid(format!(
                "stage `{}` takes known frames [3, {}, {}, {}] with {} flags, got {:?} with {}",
                self.name(),
                out.frames,
                out.height,
                out.width,
                out.frames,
                known.video.dims(),
                known.given.len()
            )));
        }
        Ok(())
    }

    /// The known-frames input `[CONTEXT_CHANNELS, F, H, W]` on the stage's device, or `None`
    /// when no frame is given.
    fn known_input(&self, known: Option<&KnownFrames>) -> Result<Option<Tensor>, EngineError> {
        let Some(known) = known.filter(|k| k.given.iter().any(|&g| g)) else {
            return Ok(None);
        };
        let given: Vec<f32> = known
            .given
            .iter()
            .map(|&g| f32::from(u8::from(g)))
            .collect();
        let given = Tensor::from_vec(given, (1, known.given.len()), &self.device)?;
        let video = known.video.to_device(&self.device)?.unsqueeze(0)?;
        Ok(Some(known_frames(&video, &given)?.squeeze(0)?))
    }

    /// Validates `input` and builds the initial sample and its conditioning.
    pub fn prepare(
        &self,
        input: &StageInput<'_>,
    ) -> Result<(SampleState, Conditioning), EngineError> {
        self.check_input(input)?;
        let out = self.output_shape()?;
        // Requests arrive as host tensors (decoded from the wire); the stage's device may be a GPU.
        let on_device = |t: &Tensor| t.to_device(&self.device);
        let (video, upsampled) = match input.low_res {
            None => (None, None),
            Some(low_res) => {
                let up = resample(&on_device(low_res)?, out.frames, out.height, out.width)?;
                let augmented = augment(&up, input.settings.noise_augmentation, input.seed)?;
                (Some(augmented), Some(up))
            }
        };
        let state = SampleState::new(
            &[3, out.frames, out.height, out.width],
            sampler_settings(&input.settings),
            input.seed,
            0,
            &self.device,
        )
        .map_err(|source| self.diffusion_error(source))?;
        let conditioning = Conditioning {
            text: on_device(input.text)?,
            unconditional: on_device(input.unconditional)?,
            video,
            upsampled,
            aug_level: input.settings.noise_augmentation,
            known: self.known_input(input.known)?,
        };
        Ok((state, conditioning))
    }

    /// [`Self::prepare`] at the stage's default settings for `text` (and the empty prompt's
    /// `unconditional`): what benchmarks and device comparisons start a step from.
    pub fn prepare_defaults(
        &self,
        (text, unconditional): (&Tensor, &Tensor),
        low_res: Option<&Tensor>,
        seed: u64,
    ) -> Result<(SampleState, Conditioning), EngineError> {
        let settings = StageOverrides::default()
            .resolve(&self.manifest, "sampler")
            .map_err(|e| EngineError::InvalidRequest {
                field: e.field,
                reason: e.reason,
            })?;
        self.prepare(&StageInput {
            text,
            unconditional,
            low_res,
            known: None,
            seed,
            settings,
        })
    }

    pub(crate) fn diffusion_error(&self, source: DiffusionError) -> EngineError {
        EngineError::Diffusion {
            stage: self.name().to_string(),
            source,
        }
    }
}

/// Noise conditioning augmentation: `alpha_a x + sigma_a eps` at augmentation time `level`.
pub fn augment(video: &Tensor, level: f64, seed: u64) -> Result<Tensor, candle_core::Error> {
    let (alpha, sigma) = CosineSchedule::default().alpha_sigma(level);
    let eps = GaussianNoise::new(seed, AUGMENTATION_STREAM).tensor(video.dims(), video.device())?;
    (video * alpha)? + (eps * sigma)?
}

/// Pads `[tokens_i, dim]` embeddings into `[B, max_tokens, dim]` plus a `[B, max_tokens]` mask.
pub fn pad_embeddings(embeddings: &[&Tensor]) -> Result<(Tensor, Tensor), candle_core::Error> {
    let longest = embeddings
        .iter()
        .map(|e| e.dim(0))
        .collect::<Result<Vec<_>, _>>()?;
    let longest = longest.into_iter().max().unwrap_or(1);
    let mut padded = Vec::with_capacity(embeddings.len());
    let mut masks = Vec::with_capacity(embeddings.len() * longest);
    for e in embeddings {
        let (len, _) = e.dims2()?;
        padded.push(e.pad_with_zeros(0, 0, longest - len)?);
        masks.extend((0..longest).map(|i| if i < len { 1f32 } else { 0f32 }));
    }
    let device = embeddings
        .first()
        .map(|e| e.device().clone())
        .unwrap_or(Device::Cpu);
    Ok((
        Tensor::stack(&padded, 0)?,
        Tensor::from_vec(masks, (embeddings.len(), longest), &device)?,
    ))
}

/// The sampler's view of a U-Net serving a batch of samples.
#[derive(Debug)]
pub struct UNetVelocity<'a> {
    /// The network.
    pub unet: &'a VideoUNet,
    /// Conditioning of each sample, indexed by `ModelRow::sample`.
    pub samples: Vec<&'a Conditioning>,
}

impl VelocityModel for UNetVelocity<'_> {
    fn predict_v(
        &self,
        z: &Tensor,
        t: &[f64],
        rows: &[ModelRow],
    ) -> Result<Tensor, DiffusionError> {
        let lookup = |row: &ModelRow| -> Result<&Conditioning, DiffusionError> {
            self.samples
                .get(row.sample)
                .copied()
                .ok_or(DiffusionError::InvalidSetting {
                    field: "rows",
                    reason: format!(
                        "row refers to sample {} of {}",
                        row.sample,
                        self.samples.len()
                    ),
                })
        };
        let conditionings = rows.iter().map(lookup).collect::<Result<Vec<_>, _>>()?;
        let texts: Vec<&Tensor> = rows
            .iter()
            .zip(&conditionings)
            .map(|(row, c)| {
                if row.unconditional {
                    &c.unconditional
                } else {
                    &c.text
                }
            })
            .collect();
        let (context, mask) = pad_embeddings(&texts)?;
        let times: Vec<f32> = t.iter().map(|&v| v as f32).collect();
        let times = Tensor::from_vec(times, rows.len(), z.device())?;
        let (cond, aug) = if self.unet.config().is_super_resolution() {
            let videos = stack_videos(&conditionings, |c| c.video.as_ref(), "conditioning video")?;
            let levels: Vec<f32> = conditionings.iter().map(|c| c.aug_level as f32).collect();
            (
                Some(videos),
                Some(Tensor::from_vec(levels, rows.len(), z.device())?),
            )
        } else {
            (None, None)
        };
        let known = stack_known(&conditionings, z)?;
        let inputs = UNetInputs {
            z,
            t: &times,
            context: &context.to_dtype(DType::F32)?,
            context_mask: &mask,
            cond: cond.as_ref(),
            aug_level: aug.as_ref(),
            known_frames: known.as_ref(),
        };
        let output = self.unet.forward(&inputs).map_err(|e| match e {
            ModelError::Tensor(t) => DiffusionError::Tensor(t),
            other => DiffusionError::Model(Box::new(other)),
        })?;
        self.velocity(z, output, t, &conditionings, known)
    }
}

impl UNetVelocity<'_> {
    /// The sampler's `v` from the network's `output` for the rows' `conditionings`, with the
    /// rows' `known` frames pinned.
    fn velocity(
        &self,
        z: &Tensor,
        output: Tensor,
        t: &[f64],
        conditionings: &[&Conditioning],
        known: Option<Tensor>,
    ) -> Result<Tensor, DiffusionError> {
        let prediction = self.unet.config().prediction;
        let residual_base =
            || stack_videos(conditionings, |c| c.upsampled.as_ref(), "upsampled video");
        match (prediction, known) {
            (Prediction::V, None) => Ok(output),
            (Prediction::X0Residual, None) => {
                Ok(velocity_from_x0(z, &(residual_base()? + output)?, t)?)
            }
            // Known frames are pinned: their x0 estimate is the given frame at every step, so
            // the sampler lands on it exactly and the other frames are denoised around it.
            (prediction, Some(known)) => {
                let x0 = match prediction {
                    Prediction::V => x0_from_velocity(z, &output, t)?,
                    Prediction::X0Residual => (residual_base()? + output)?,
                };
                Ok(velocity_from_x0(z, &pin_known(&x0, &known)?, t)?)
            }
        }
    }
}

impl Conditioning {
    /// A finished sample's video with the known frames put back exactly: the sampler's dynamic
    /// thresholding scales a whole sample, pinned frames included, when other frames overshoot.
    pub fn final_video(&self, latent: &Tensor) -> Result<Tensor, candle_core::Error> {
        match &self.known {
            None => Ok(latent.clone()),
            Some(known) => pin_known(&latent.unsqueeze(0)?, &known.unsqueeze(0)?)?.squeeze(0),
        }
    }
}

/// `x0` with the known frames of `known` (`[B, CONTEXT_CHANNELS, F, H, W]`) put in.
fn pin_known(x0: &Tensor, known: &Tensor) -> Result<Tensor, candle_core::Error> {
    let rgb = known.narrow(1, 0, 3)?;
    let mask = known.narrow(1, 3, 1)?.broadcast_as(x0.shape())?;
    (x0 - x0.mul(&mask)?)? + rgb
}

/// Stacks one video per row, `[B, ...]`; a super-resolution row without it is an error naming
/// `what`.
fn stack_videos(
    conditionings: &[&Conditioning],
    pick: impl Fn(&Conditioning) -> Option<&Tensor>,
    what: &str,
) -> Result<Tensor, DiffusionError> {
    let videos = conditionings
        .iter()
        .map(|c| {
            pick(c).ok_or_else(|| DiffusionError::InvalidSetting {
                field: "conditioning",
                reason: format!("a super-resolution sample has no {what}"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Tensor::stack(&videos, 0)?)
}

/// The rows' known frames `[B, CONTEXT_CHANNELS, F, H, W]`, zeros (nothing given) for rows
/// without; `None` when no row has any.
fn stack_known(
    conditionings: &[&Conditioning],
    z: &Tensor,
) -> Result<Option<Tensor>, DiffusionError> {
    let Some(shape) = conditionings
        .iter()
        .find_map(|c| c.known.as_ref())
        .map(Tensor::shape)
    else {
        return Ok(None);
    };
    let zeros = Tensor::zeros(shape, DType::F32, z.device())?;
    let rows: Vec<&Tensor> = conditionings
        .iter()
        .map(|c| c.known.as_ref().unwrap_or(&zeros))
        .collect();
    Ok(Some(Tensor::stack(&rows, 0)?))
}

/// `scales(alpha, sigma)` of each row's time `t[i]` (computed in f64), shaped to broadcast
/// over `z` `[rows, ...]`.
fn row_scales(
    z: &Tensor,
    t: &[f64],
    scales: impl Fn(f64, f64) -> (f64, f64),
) -> Result<(Tensor, Tensor), candle_core::Error> {
    let schedule = CosineSchedule::default();
    let (alphas, sigmas): (Vec<f32>, Vec<f32>) = t
        .iter()
        .map(|&ti| {
            let (alpha, sigma) = schedule.alpha_sigma(ti);
            let (a, b) = scales(alpha, sigma);
            (a as f32, b as f32)
        })
        .unzip();
    let mut per_row = vec![1usize; z.rank()];
    per_row[0] = t.len();
    Ok((
        Tensor::from_vec(alphas, per_row.as_slice(), z.device())?,
        Tensor::from_vec(sigmas, per_row.as_slice(), z.device())?,
    ))
}

/// `x0 = alpha z - sigma v` per row (the inverse of [`velocity_from_x0`]).
pub fn x0_from_velocity(z: &Tensor, v: &Tensor, t: &[f64]) -> Result<Tensor, candle_core::Error> {
    let (alpha, sigma) = row_scales(z, t, |alpha, sigma| (alpha, sigma))?;
    z.broadcast_mul(&alpha)? - v.broadcast_mul(&sigma)?
}

/// `v = (alpha z - x0) / sigma` per row (`z = alpha x0 + sigma eps` and `v = alpha eps - sigma x0`),
/// on the schedule every sampler uses; `sigma` never reaches 0 on its clipped log-SNR range.
pub fn velocity_from_x0(z: &Tensor, x0: &Tensor, t: &[f64]) -> Result<Tensor, candle_core::Error> {
    let (alpha, inverse_sigma) = row_scales(z, t, |alpha, sigma| (alpha, 1.0 / sigma))?;
    (z.broadcast_mul(&alpha)? - x0)?.broadcast_mul(&inverse_sigma)
}
