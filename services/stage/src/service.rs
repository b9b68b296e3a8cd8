//! `vidcascade.v1.VideoStage` over the stage engine.

use std::pin::Pin;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use vidcascade_engine::stage::{KnownFrames, StageInput};
use vidcascade_engine::video::{video_from_tensor, video_to_tensor};
use vidcascade_engine::{
    Checkpoint, Compute, DiffusionStage, EngineError, JobEvent, JobHandle, Precision, StageEngine,
    StageJob,
};
use vidcascade_proto::MAX_STAGE_REQUEST_BYTES;
use vidcascade_proto::convert::{overrides_from_wire, stage_info, video_from_wire, video_to_wire};
use vidcascade_proto::v1::video_stage_server::{VideoStage, VideoStageServer};
use vidcascade_proto::v1::{self, stage_event::Event};
use vidcascade_proto::wire::{DEFAULT_CHUNK_BYTES, chunk_video};
use vidcascade_runtime::deadline::timeout_from_metadata;
use vidcascade_runtime::info::{build_info, model_info_on};
use vidcascade_runtime::telemetry::set_parent_from;
use vidcascade_spec::error_type::COMPLETED;
use vidcascade_spec::{ErrorType, StageManifest, StageOverrides};

use crate::checkpoint::{checkpoint_from_wire, checkpoint_to_wire};
use crate::config::StageConfig;
use crate::error::{StageServiceError, tensor_from_wire};
use crate::metrics::{count_outcome, publish_gauges};

/// Events buffered per call before the stage waits for a slow client.
const EVENT_BUFFER: usize = 16;

/// A loaded stage, its engine, and the gRPC service over them.
#[derive(Clone)]
pub struct StageServer {
    /// Validation copy of the stage (cheap: tensors are shared with the worker's copy).
    stage: DiffusionStage,
    engine: StageEngine,
    info: v1::StageInfo,
}

impl std::fmt::Debug for StageServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageServer")
            .field("stage", &self.stage.name())
            .finish_non_exhaustive()
    }
}

/// The wire's name for a precision.
fn wire_dtype(precision: Precision) -> v1::DType {
    match precision {
        Precision::F32 => v1::DType::F32,
        Precision::F16 => v1::DType::F16,
        Precision::Bf16 => v1::DType::Bf16,
    }
}

impl StageServer {
    /// Loads the stage's weights and starts its worker thread.
    pub fn load(config: &StageConfig) -> Result<Self, EngineError> {
        let compute = Compute::open(config.compute.device, config.compute.dtype)?;
        let stage = DiffusionStage::load_on(&config.repository, &config.stage, &compute)?;
        let unet = config.repository.unet_config(&config.stage)?;
        let info = v1::StageInfo {
            max_batch_size: config.engine.max_batch_size as u32,
            max_queue_size: config.engine.max_queue as u32,
            text_embedding_dim: unet.context_dim as u32,
            max_text_tokens: config.repository.text_encoder_config().max_tokens as u32,
            max_context_frames: if unet.context_frames {
                stage.output_shape()?.frames as u32
            } else {
                0
            },
            model: Some(model_info_on(
                &config.repository.manifest().name,
                config.repository.unet_parameter_count(&config.stage)? as u64,
                wire_dtype(compute.precision),
                &compute.spec().to_string(),
            )),
            build: Some(build_info()),
            ..stage_info(stage.manifest())
        };
        let engine = StageEngine::start(stage.clone(), config.engine);
        tokio::spawn(publish_gauges(stage.name().to_string(), engine.stats()));
        Ok(Self {
            stage,
            engine,
            info,
        })
    }

    /// The engine (for tests and `vidcascade serve`).
    pub fn engine(&self) -> &StageEngine {
        &self.engine
    }

    fn manifest(&self) -> &StageManifest {
        self.stage.manifest()
    }

    /// Turns a request into an engine job, checking every field first.
    fn job(
        &self,
        request: &v1::StageRequest,
        deadline: Option<Instant>,
    ) -> Result<StageJob, StageServiceError> {
        let device = Device::Cpu;
        let max_tokens = self.info.max_text_tokens as u64;
        let tensor = |field: &'static str, value: &Option<v1::Tensor>| {
            let value = value.as_ref().ok_or(StageServiceError::Missing { field })?;
            // Checked before decoding: an oversized embedding allocates nothing.
            if let Some(&tokens) = value.shape.first()
                && tokens > max_tokens
            {
                return Err(StageServiceError::Unsupported {
                    field,
                    reason: format!(
                        "{tokens} tokens; this stage takes at most {max_tokens} (max_text_tokens)"
                    ),
                });
            }
            tensor_from_wire(value, &device)
                .map_err(|source| StageServiceError::Tensor { field, source })
        };
        let text = tensor("text_embedding", &request.text_embedding)?;
        let unconditional = tensor("uncond_embedding", &request.uncond_embedding)?;
        let known = match &request.context {
            None => None,
            Some(_) if !self.stage.unet().config().context_frames => {
                return Err(StageServiceError::Unsupported {
                    field: "context",
                    reason: format!(
                        "stage `{}` takes no context frames (max_context_frames is 0)",
                        self.stage.name()
                    ),
                });
            }
            Some(video) => {
                let video = video_from_wire(video.clone()).map_err(|e| e.within("context"))?;
                Some(KnownFrames::leading(
                    &video,
                    self.stage.output_shape()?,
                    &device,
                )?)
            }
        };
        let low_res = match &request.conditioning {
            None => None,
            Some(video) => {
                let video = video_from_wire(video.clone()).map_err(|e| e.within("conditioning"))?;
                Some(video_to_tensor(&video, &device).map_err(EngineError::from)?)
            }
        };
        let settings = overrides_from_wire(request.sampler.as_ref())
            .map_err(|err| err.within("sampler"))?
            .resolve(self.manifest(), "sampler")?;
        let input = StageInput {
            text: &text,
            unconditional: &unconditional,
            low_res: low_res.as_ref(),
            known: known.as_ref(),
            seed: request.seed,
            settings,
        };
        self.stage.check_input(&input)?;
        let resume = match &request.resume {
            None => None,
            Some(resume) => Some(checkpoint_from_wire(
                resume,
                settings.steps,
                self.stage.output_shape()?,
                &device,
            )?),
        };
        Ok(StageJob {
            text,
            unconditional,
            low_res,
            known,
            seed: request.seed,
            settings,
            preview_every: request.preview_every as usize,
            deadline,
            checkpoint_every: request.checkpoint_every as usize,
            resume,
        })
    }

    async fn warm_up_once(&self) -> anyhow::Result<()> {
        let device = Device::Cpu;
        let dim = self.info.text_embedding_dim as usize;
        let text = Tensor::zeros((1, dim), candle_core::DType::F32, &device)?;
        let low_res = match self.manifest().input {
            Some(shape) => Some(Tensor::zeros(
                (3, shape.frames, shape.height, shape.width),
                candle_core::DType::F32,
                &device,
            )?),
            None => None,
        };
        let mut settings = StageOverrides::default().resolve(self.manifest(), "sampler")?;
        settings.steps = 1;
        let mut handle = self.engine.submit_unmetered(StageJob {
            text: text.clone(),
            unconditional: text,
            low_res,
            known: None,
            seed: 0,
            settings,
            preview_every: 0,
            deadline: None,
            checkpoint_every: 0,
            resume: None,
        })?;
        while let Some(event) = handle.events.recv().await {
            match event {
                JobEvent::Done { .. } => return Ok(()),
                JobEvent::Failed(err) => return Err(err.into()),
                JobEvent::Queued { .. } | JobEvent::Admitted { .. } | JobEvent::Step { .. } => {}
            }
        }
        anyhow::bail!("the stage worker stopped during warm-up")
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::StageEvent, Status>> + Send>>;

fn event(event: Event) -> Result<v1::StageEvent, Status> {
    Ok(v1::StageEvent { event: Some(event) })
}

#[tonic::async_trait]
impl VideoStage for StageServer {
    type GenerateStream = EventStream;

    async fn generate(
        &self,
        request: Request<v1::StageRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let stage = self.stage.name().to_string();
        let span = tracing::info_span!("stage.generate", stage = %stage, request_id = tracing::field::Empty);
        set_parent_from(&span, request.metadata());
        let deadline = timeout_from_metadata(request.metadata())?.map(|t| Instant::now() + t);
        let request = request.into_inner();
        span.record("request_id", request.request_id.as_str());
        // Submitting inside the request's span makes it the parent of the queue entry's span.
        let submitted = span.in_scope(|| {
            self.job(&request, deadline)
                .and_then(|job| Ok(self.engine.submit(job)?))
        });
        let handle = match submitted {
            Ok(handle) => handle,
            Err(err) => {
                count_outcome(&stage, err.error_type().label());
                tracing::info!(parent: &span, error = %err, "rejected");
                return Err(err.into());
            }
        };
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let fps = self.manifest().output.map_or(8.0, |shape| shape.fps);
        tokio::spawn(forward(stage, fps, handle, tx).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn info(
        &self,
        _request: Request<v1::InfoRequest>,
    ) -> Result<Response<v1::StageInfo>, Status> {
        Ok(Response::new(self.info.clone()))
    }
}

type EventSender = mpsc::Sender<Result<v1::StageEvent, Status>>;

/// The caller went away: the handle is dropped, and the engine evicts the sample.
struct CallerGone;

async fn send(tx: &EventSender, message: Event) -> Result<(), CallerGone> {
    tx.send(event(message)).await.map_err(|_| CallerGone)
}

/// Streams one request's engine events to its caller. A failed send means the caller left:
/// dropping the handle makes the engine evict the sample at its next step.
async fn forward(stage: String, fps: f32, mut handle: JobHandle, tx: EventSender) {
    let outcome = follow(&stage, fps, &mut handle, &tx).await;
    let label = match &outcome {
        Ok(Ok(())) => COMPLETED,
        Ok(Err(CallerGone)) => ErrorType::Cancelled.label(),
        Err(err) => err.error_type().label(),
    };
    tracing::info!(outcome = label, "finished");
    count_outcome(&stage, label);
    if let Err(err) = outcome {
        tracing::info!(error = %err, "failed");
        let _ = tx.send(Err(err.into())).await;
    }
}

/// Accepted, progress and previews, then the output in chunks and `done`.
async fn follow(
    stage: &str,
    fps: f32,
    handle: &mut JobHandle,
    tx: &EventSender,
) -> Result<Result<(), CallerGone>, StageServiceError> {
    let accepted = Event::Accepted(v1::StageAccepted {
        queue_position: handle.queue_position as u32,
    });
    if send(tx, accepted).await.is_err() {
        return Ok(Err(CallerGone));
    }
    let mut queued = Duration::ZERO;
    loop {
        // A caller that leaves is noticed at once, even while the request is queued: dropping
        // the handle makes the engine drop the request before it runs another step.
        let job_event = tokio::select! {
            event = handle.events.recv() => event,
            () = tx.closed() => return Ok(Err(CallerGone)),
        };
        let Some(job_event) = job_event else { break };
        let sent = match job_event {
            JobEvent::Queued { position } => {
                let accepted = v1::StageAccepted {
                    queue_position: position as u32,
                };
                send(tx, Event::Accepted(accepted)).await
            }
            JobEvent::Admitted { queued: waited } => {
                queued = waited;
                Ok(())
            }
            JobEvent::Step {
                step,
                total_steps,
                preview,
                checkpoint,
            } => {
                let sent = send_step(tx, stage, fps, (step, total_steps), preview).await?;
                match checkpoint {
                    Some(checkpoint) if sent.is_ok() => send_checkpoint(tx, &checkpoint).await?,
                    _ => sent,
                }
            }
            JobEvent::Done { video, run, steps } => {
                let video = video_from_tensor(&video, fps).map_err(EngineError::from)?;
                let done = v1::StageDone {
                    queue_ms: queued.as_millis() as u64,
                    run_ms: run.as_millis() as u64,
                    steps_run: steps as u32,
                };
                return Ok(send_output(tx, &video_to_wire(&video), done).await);
            }
            JobEvent::Failed(err) => return Err(err.into()),
        };
        if sent.is_err() {
            return Ok(sent);
        }
    }
    Err(EngineError::WorkerGone {
        worker: format!("stage `{stage}`"),
    }
    .into())
}

/// Progress after a step, and the preview when the engine sent one.
async fn send_step(
    tx: &EventSender,
    stage: &str,
    fps: f32,
    (step, total_steps): (usize, usize),
    preview: Option<candle_core::Tensor>,
) -> Result<Result<(), CallerGone>, StageServiceError> {
    let progress = Event::Progress(v1::Progress {
        stage: stage.to_string(),
        step: step as u32,
        total_steps: total_steps as u32,
        clip: 0,
    });
    if send(tx, progress).await.is_err() {
        return Ok(Err(CallerGone));
    }
    let Some(x0) = preview else { return Ok(Ok(())) };
    let video = video_from_tensor(&x0, fps).map_err(EngineError::from)?;
    let preview = Event::Preview(v1::Preview {
        stage: stage.to_string(),
        step: step as u32,
        video: Some(video_to_wire(&video)),
        clip: 0,
        encoded: Vec::new(),
    });
    Ok(send(tx, preview).await)
}

/// A resumable checkpoint after a step.
async fn send_checkpoint(
    tx: &EventSender,
    checkpoint: &Checkpoint,
) -> Result<Result<(), CallerGone>, StageServiceError> {
    match checkpoint_to_wire(checkpoint).map_err(EngineError::from)? {
        Some(checkpoint) => Ok(send(tx, Event::Checkpoint(checkpoint)).await),
        None => Ok(Ok(())),
    }
}

/// The output video in chunks, then `done`.
async fn send_output(
    tx: &EventSender,
    video: &v1::Video,
    done: v1::StageDone,
) -> Result<(), CallerGone> {
    for chunk in chunk_video(video, DEFAULT_CHUNK_BYTES) {
        send(tx, Event::OutputChunk(chunk)).await?;
    }
    send(tx, Event::Done(done)).await
}

impl vidcascade_runtime::Service for StageServer {
    fn label(&self) -> String {
        format!("vidcascade-stage[{}]", self.stage.name())
    }

    fn health_names(&self) -> Vec<String> {
        vec![
            "vidcascade.v1.VideoStage".into(),
            format!("vidcascade.v1.VideoStage/{}", self.stage.name()),
        ]
    }

    fn public_services(&self) -> Vec<String> {
        vec!["vidcascade.v1.VideoStage".into()]
    }

    fn routes(&self) -> tonic::service::Routes {
        tonic::service::Routes::new(
            VideoStageServer::new(self.clone()).max_decoding_message_size(MAX_STAGE_REQUEST_BYTES),
        )
    }

    fn warm_up(&self) -> impl Future<Output = anyhow::Result<()>> + Send {
        self.warm_up_once()
    }

    fn drain(&self) {
        self.engine.drain();
    }
}
