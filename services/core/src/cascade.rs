//! The whole cascade in one process: text encoder -> base -> every SR stage of a model
//! repository, in manifest order (embedded mode: what `vidcascade generate` runs, no network).
//!
//! The observer passed to [`Cascade::generate`] sees every event a client of the services would
//! see — stage started, every step with its x0 estimate (for progress bars and previews), each
//! stage's finished video — and can stop the run at any step by returning `Break`.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use vidcascade_models::repository::StageManifest;
use vidcascade_models::{ModelRepository, TextEncoder};

use crate::CascadeError;
use crate::stage::{DiffusionStage, StageInput, StageOverrides};
use crate::video::Video;

/// The longest prompt accepted, in bytes (the tokenizer's own limit applies as well).
pub const MAX_PROMPT_BYTES: usize = 2048;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct CascadeRequest {
    /// The prompt.
    pub prompt: String,
    /// Seed of every stage's noise (stage `i` uses a seed derived from it).
    pub seed: u64,
    /// Per-stage overrides, keyed by stage name.
    pub overrides: BTreeMap<String, StageOverrides>,
}

impl CascadeRequest {
    /// A request with seed 0 and the manifest's defaults.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            seed: 0,
            overrides: BTreeMap::new(),
        }
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Overrides settings of stage `stage`.
    pub fn with_overrides(mut self, stage: impl Into<String>, overrides: StageOverrides) -> Self {
        self.overrides.insert(stage.into(), overrides);
        self
    }
}

/// What the observer sees, in order.
#[derive(Debug)]
pub enum CascadeEvent<'a> {
    /// A diffusion stage begins.
    StageStarted {
        /// Its manifest entry.
        stage: &'a StageManifest,
        /// Steps it will run.
        total_steps: usize,
    },
    /// A denoising step finished.
    Step {
        /// The stage.
        stage: &'a str,
        /// Steps completed, 1-based.
        step: usize,
        /// Steps in the stage.
        total_steps: usize,
        /// The current x0 estimate `[3, F, H, W]` in about [-1, 1] (a preview).
        x0: &'a Tensor,
    },
    /// A stage's video is ready.
    StageCompleted {
        /// The stage.
        stage: &'a str,
        /// Its output.
        video: &'a Video,
        /// Wall time the stage took.
        elapsed: Duration,
    },
}

/// One stage's result.
#[derive(Debug, Clone)]
pub struct StageOutput {
    /// Stage name.
    pub stage: String,
    /// Its video.
    pub video: Video,
    /// Its video as `[3, F, H, W]` in [-1, 1] (quantised to RGB8 levels, as the next stage sees it).
    pub tensor: Tensor,
    /// Wall time.
    pub elapsed: Duration,
    /// Steps run.
    pub steps: usize,
}

/// Every stage's output, in order; the last is the final video.
#[derive(Debug, Clone)]
pub struct CascadeOutput {
    /// Per-stage results.
    pub stages: Vec<StageOutput>,
    /// Time spent encoding the prompt.
    pub encode_elapsed: Duration,
}

impl CascadeOutput {
    /// The final (highest-resolution) video.
    pub fn final_video(&self) -> &Video {
        // A cascade always has a base stage, so `stages` is never empty after a successful run.
        &self.stages[self.stages.len() - 1].video
    }
}

/// A loaded cascade.
#[derive(Debug)]
pub struct Cascade {
    repository: ModelRepository,
    encoder: TextEncoder,
    stages: Vec<DiffusionStage>,
    device: Device,
}

/// The seed of stage `index`, decorrelated from the others (SplitMix64 finaliser).
pub fn stage_seed(seed: u64, index: usize) -> u64 {
    let mut z = seed.wrapping_add((index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Cascade {
    /// Opens and loads every stage of the repository at `root`.
    pub fn load(root: impl AsRef<Path>, device: &Device) -> Result<Self, CascadeError> {
        let repository = ModelRepository::open(root)?;
        Self::from_repository(repository, device)
    }

    /// Loads every stage of an opened repository.
    pub fn from_repository(
        repository: ModelRepository,
        device: &Device,
    ) -> Result<Self, CascadeError> {
        let encoder = repository.load_text_encoder(device)?;
        let stages = repository
            .manifest()
            .diffusion_stages()
            .map(|stage| DiffusionStage::load(&repository, &stage.name, device))
            .collect::<Result<Vec<_>, CascadeError>>()?;
        Ok(Self {
            repository,
            encoder,
            stages,
            device: device.clone(),
        })
    }

    /// The repository this cascade came from.
    pub fn repository(&self) -> &ModelRepository {
        &self.repository
    }

    /// The text encoder.
    pub fn encoder(&self) -> &TextEncoder {
        &self.encoder
    }

    /// The diffusion stages, base first.
    pub fn stages(&self) -> &[DiffusionStage] {
        &self.stages
    }

    /// The device everything runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Checks the request without running anything.
    pub fn validate(&self, request: &CascadeRequest) -> Result<(), CascadeError> {
        if request.prompt.len() > MAX_PROMPT_BYTES {
            return Err(CascadeError::InvalidRequest {
                field: "prompt".into(),
                reason: format!(
                    "is {} bytes; the limit is {MAX_PROMPT_BYTES}",
                    request.prompt.len()
                ),
            });
        }
        for (name, overrides) in &request.overrides {
            let Some(stage) = self.stages.iter().find(|s| s.name() == name) else {
                let known: Vec<&str> = self.stages.iter().map(DiffusionStage::name).collect();
                return Err(CascadeError::InvalidRequest {
                    field: format!("stages.{name}"),
                    reason: format!("no such diffusion stage; the stages are {known:?}"),
                });
            };
            overrides.resolve(stage.manifest())?;
        }
        Ok(())
    }

    /// Runs the whole cascade, reporting to `observer`.
    pub fn generate(
        &self,
        request: &CascadeRequest,
        mut observer: impl FnMut(CascadeEvent<'_>) -> ControlFlow<()>,
    ) -> Result<CascadeOutput, CascadeError> {
        self.validate(request)?;
        let started = Instant::now();
        let mut texts = self.encoder.encode(&[request.prompt.as_str(), ""])?;
        let unconditional = texts.pop().ok_or_else(|| CascadeError::InvalidRequest {
            field: "prompt".into(),
            reason: "the text encoder returned no embedding".into(),
        })?;
        let text = texts.pop().ok_or_else(|| CascadeError::InvalidRequest {
            field: "prompt".into(),
            reason: "the text encoder returned no embedding".into(),
        })?;
        let encode_elapsed = started.elapsed();

        let mut outputs: Vec<StageOutput> = Vec::with_capacity(self.stages.len());
        for (index, stage) in self.stages.iter().enumerate() {
            let settings = request
                .overrides
                .get(stage.name())
                .copied()
                .unwrap_or_default()
                .resolve(stage.manifest())?;
            let total_steps = settings.sampler.steps;
            if observer(CascadeEvent::StageStarted {
                stage: stage.manifest(),
                total_steps,
            })
            .is_break()
            {
                return Err(CascadeError::Cancelled {
                    stage: stage.name().to_string(),
                    completed_steps: 0,
                    total_steps,
                });
            }
            let stage_started = Instant::now();
            let input = StageInput {
                text: &text,
                unconditional: &unconditional,
                low_res: outputs.last().map(|o| &o.tensor),
                seed: stage_seed(request.seed, index),
                settings,
            };
            let tensor = stage.run(&input, |event| {
                let x0 = match event.x0.get(0) {
                    Ok(x0) => x0,
                    Err(_) => return ControlFlow::Break(()),
                };
                observer(CascadeEvent::Step {
                    stage: stage.name(),
                    step: event.step,
                    total_steps: event.total_steps,
                    x0: &x0,
                })
            })?;
            // The next stage is conditioned on the RGB8 video, exactly what a stage service
            // receives over the wire, so in-process and service runs agree bit for bit.
            let video = Video::from_tensor(&tensor, stage.output_shape()?.fps)?;
            let tensor = video.to_tensor(&self.device)?;
            let elapsed = stage_started.elapsed();
            let flow = observer(CascadeEvent::StageCompleted {
                stage: stage.name(),
                video: &video,
                elapsed,
            });
            outputs.push(StageOutput {
                stage: stage.name().to_string(),
                video,
                tensor,
                elapsed,
                steps: total_steps,
            });
            if flow.is_break() && index + 1 < self.stages.len() {
                let next = &self.stages[index + 1];
                let next_settings = request
                    .overrides
                    .get(next.name())
                    .copied()
                    .unwrap_or_default()
                    .resolve(next.manifest())?;
                return Err(CascadeError::Cancelled {
                    stage: next.name().to_string(),
                    completed_steps: 0,
                    total_steps: next_settings.sampler.steps,
                });
            }
        }
        Ok(CascadeOutput {
            stages: outputs,
            encode_elapsed,
        })
    }
}
