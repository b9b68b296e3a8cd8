//! Embedded mode: the whole cascade in one process (what `vidcascade generate` and the tools
//! run, no network). The pipeline's two traits are implemented here with in-process engines —
//! a [`TextEngine`] and one [`StageEngine`] per diffusion stage — so embedded runs go through
//! the very queue, batching, eviction and deadline code the stage services run, and hand each
//! stage the RGB8 video a stage service would receive.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use std::ops::ControlFlow;
//! use vidcascade_engine::EmbeddedCascade;
//! use vidcascade_spec::GenerateRequest;
//! let cascade = EmbeddedCascade::load("models/shapes", &candle_core::Device::Cpu)?;
//! let request = GenerateRequest::new("a red circle moving left on a black background").with_seed(7);
//! let output = cascade.generate(&request, None, |_event| ControlFlow::Continue(()))?;
//! println!("{} frames", output.final_video.frames.len());
//! # Ok(()) }
//! ```

use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use tokio::sync::mpsc;
use vidcascade_models::ModelRepository;
use vidcascade_pipeline::{
    CallError, Embeddings, Event, PipelineError, RunLimits, StageCall, StageCallRequest,
    StageOutcome, StageReport, TextEncoding, plan, run,
};
use vidcascade_spec::{ErrorType, GenerateRequest, Manifest, Video};

use crate::stage::{DiffusionStage, KnownFrames};
use crate::stage_worker::{EngineConfig, JobEvent, StageEngine, StageJob};
use crate::text_worker::{TextEngine, TextEngineConfig};
use crate::video::{video_from_tensor, video_to_tensor};
use crate::{Compute, EngineError};

/// Events buffered between the run and its observer.
const EVENT_BUFFER: usize = 64;
/// The deadline of a run that has none.
const NO_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);

impl From<EngineError> for CallError {
    fn from(err: EngineError) -> Self {
        CallError::new(err.error_type(), err.to_string())
    }
}

/// One stage's result in a [`CascadeOutput`].
#[derive(Debug, Clone, PartialEq)]
pub struct StageOutput {
    /// Stage name.
    pub stage: String,
    /// Its video, exactly as the next stage received it.
    pub video: Video,
    /// Wall time of the stage call.
    pub elapsed: Duration,
}

/// Every diffusion stage's output, in order, and the final video.
#[derive(Debug, Clone, PartialEq)]
pub struct CascadeOutput {
    /// Per-stage results (every clip's, in run order).
    pub stages: Vec<StageOutput>,
    /// The final video.
    pub final_video: Video,
    /// Time spent encoding prompts.
    pub encode_elapsed: Duration,
}

/// A loaded cascade with its engines running.
#[derive(Debug)]
pub struct EmbeddedCascade {
    repository: ModelRepository,
    text: TextEngine,
    stages: Vec<StageEngine>,
    device: Device,
}

impl EmbeddedCascade {
    /// Opens and loads every stage of the repository at `root`.
    pub fn load(root: impl AsRef<Path>, device: &Device) -> Result<Self, EngineError> {
        let repository = ModelRepository::open(root)?;
        Self::from_repository(repository, device)
    }

    /// Loads every stage of an opened repository in f32 on `device` and starts its engines.
    pub fn from_repository(
        repository: ModelRepository,
        device: &Device,
    ) -> Result<Self, EngineError> {
        Self::alone_on(repository, &Compute::f32_on(device))
    }

    /// As [`Self::from_repository`], on `compute`'s device and precision. Embedded runs are
    /// alone, so the engines do not wait for company before a batch.
    pub fn alone_on(repository: ModelRepository, compute: &Compute) -> Result<Self, EngineError> {
        let config = EngineConfig {
            batch_wait: Duration::ZERO,
            ..EngineConfig::default()
        };
        Self::on(repository, compute, config)
    }

    /// As [`Self::from_repository`], with the stage engines' limits.
    pub fn with_config(
        repository: ModelRepository,
        device: &Device,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        Self::on(repository, &Compute::f32_on(device), config)
    }

    /// Every stage on `compute`'s device, the U-Nets in its precision (the text encoder in
    /// f32), with the stage engines' limits.
    pub fn on(
        repository: ModelRepository,
        compute: &Compute,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        let device = &compute.device;
        let encoder = repository.load_text_encoder(device)?;
        let text = TextEngine::start(encoder, TextEngineConfig::default());
        let stages = repository
            .manifest()
            .diffusion_stages()
            .map(|stage| {
                let stage = DiffusionStage::load_on(&repository, &stage.name, compute)?;
                Ok(StageEngine::start(stage, config))
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        Ok(Self {
            repository,
            text,
            stages,
            device: device.clone(),
        })
    }

    /// The repository this cascade came from.
    pub fn repository(&self) -> &ModelRepository {
        &self.repository
    }

    /// The cascade's manifest.
    pub fn manifest(&self) -> &Manifest {
        self.repository.manifest()
    }

    /// The diffusion stages' engines, base first.
    pub fn engines(&self) -> &[StageEngine] {
        &self.stages
    }

    /// Plans `request` and runs it, sending every event to `events`. A request without a seed
    /// uses seed 0; `timeout` bounds the whole run (the stages get their shares of it).
    pub async fn run(
        &self,
        request: &GenerateRequest,
        timeout: Option<Duration>,
        events: mpsc::Sender<Event>,
    ) -> Result<(), PipelineError> {
        let plan = plan(request, self.manifest(), 0)?;
        let started = Instant::now();
        let limits = RunLimits {
            request_id: "embedded",
            started,
            deadline: started + timeout.unwrap_or(NO_DEADLINE),
        };
        run(&plan, limits, self, self, &events).await
    }

    /// Runs `request` to completion on this thread, showing `observer` every event; returning
    /// `Break` stops the run (the engines drop its samples at their next step). This blocks on
    /// its own small runtime: inside an async context, use [`Self::run`] instead.
    pub fn generate(
        &self,
        request: &GenerateRequest,
        timeout: Option<Duration>,
        mut observer: impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<CascadeOutput, PipelineError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|err| PipelineError::Stage {
                stage: "cascade".into(),
                source: CallError::new(ErrorType::Internal, format!("no async runtime: {err}")),
            })?;
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let mut collected = Collected::default();
        let observe = async {
            // Owning the receiver here drops it when the observer stops, which cancels the run.
            let mut rx = rx;
            while let Some(event) = rx.recv().await {
                collected.see(&event);
                if observer(&event).is_break() {
                    break;
                }
            }
        };
        let (result, ()) =
            runtime.block_on(async { tokio::join!(self.run(request, timeout, tx), observe) });
        result?;
        collected.finish()
    }
}

impl Drop for EmbeddedCascade {
    fn drop(&mut self) {
        self.text.shutdown();
        for engine in &self.stages {
            engine.shutdown();
        }
    }
}

/// What [`EmbeddedCascade::generate`] gathers from the events.
#[derive(Debug, Default)]
struct Collected {
    stages: Vec<StageOutput>,
    final_video: Option<Video>,
    encode_elapsed: Duration,
}

impl Collected {
    fn see(&mut self, event: &Event) {
        match event {
            Event::StageCompleted {
                stage,
                video: Some(video),
                elapsed,
                ..
            } => self.stages.push(StageOutput {
                stage: stage.clone(),
                video: video.clone(),
                elapsed: *elapsed,
            }),
            Event::StageCompleted {
                video: None,
                elapsed,
                ..
            } => self.encode_elapsed += *elapsed,
            Event::Completed { video, .. } => self.final_video = Some(video.clone()),
            _ => {}
        }
    }

    fn finish(self) -> Result<CascadeOutput, PipelineError> {
        let final_video = self.final_video.ok_or(PipelineError::Cancelled)?;
        Ok(CascadeOutput {
            stages: self.stages,
            final_video,
            encode_elapsed: self.encode_elapsed,
        })
    }
}

impl TextEncoding for EmbeddedCascade {
    type Embedding = Tensor;

    async fn encode(
        &self,
        prompt: &str,
        deadline: Instant,
    ) -> Result<Embeddings<Tensor>, CallError> {
        let mut embeddings = self
            .text
            .encode(vec![prompt.to_string(), String::new()], Some(deadline))
            .await?;
        match (embeddings.pop(), embeddings.pop()) {
            (Some(unconditional), Some(text)) => Ok(Embeddings {
                text,
                unconditional,
            }),
            _ => Err(CallError::new(
                ErrorType::Internal,
                "the text encoder returned fewer than 2 embeddings",
            )),
        }
    }
}

impl StageCall<Tensor> for EmbeddedCascade {
    async fn generate(
        &self,
        call: StageCallRequest<'_, Tensor>,
        report: &StageReport<'_>,
    ) -> Result<StageOutcome, CallError> {
        let engine = self.stages.get(call.index).ok_or_else(|| {
            CallError::new(
                ErrorType::Internal,
                format!("no engine for stage {}", call.index),
            )
        })?;
        let low_res = call
            .conditioning
            .map(|video| video_to_tensor(video, &self.device))
            .transpose()
            .map_err(EngineError::from)?;
        let known = match (call.context, call.stage.manifest.output) {
            (Some(context), Some(shape)) => {
                Some(KnownFrames::leading(context, shape, &self.device)?)
            }
            _ => None,
        };
        let mut handle = engine.submit(StageJob {
            text: call.text.text.clone(),
            unconditional: call.text.unconditional.clone(),
            low_res,
            known,
            seed: call.seed,
            settings: call.stage.settings,
            preview_every: call.preview_every as usize,
            deadline: Some(call.deadline),
            checkpoint_every: 0,
            resume: None,
        })?;
        let fps = call.stage.manifest.output.map_or(0.0, |shape| shape.fps);
        let mut queued = Duration::ZERO;
        while let Some(event) = handle.events.recv().await {
            match event {
                JobEvent::Queued { .. } => {}
                JobEvent::Admitted { queued: waited } => queued = waited,
                JobEvent::Step {
                    step,
                    total_steps,
                    preview,
                    ..
                } => {
                    report.progress(step, total_steps).await?;
                    if let Some(x0) = preview {
                        let video = video_from_tensor(&x0, fps).map_err(EngineError::from)?;
                        report.preview(step, video).await?;
                    }
                }
                JobEvent::Done { video, run, steps } => {
                    let video = video_from_tensor(&video, fps).map_err(EngineError::from)?;
                    return Ok(StageOutcome {
                        video,
                        queued,
                        run,
                        steps,
                    });
                }
                JobEvent::Failed(err) => return Err(err.into()),
            }
        }
        Err(EngineError::WorkerGone {
            worker: format!("stage `{}`", call.stage.manifest.name),
        }
        .into())
    }
}
