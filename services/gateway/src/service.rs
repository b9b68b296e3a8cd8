//! `vidcascade.v1.Gateway`: one request through the text encoder and every stage, as one
//! ordered event stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use vidcascade_core::cascade::stage_seed;
use vidcascade_core::video::Video;
use vidcascade_core::wire::{
    defaults_to_wire, kind_to_wire, overrides_to_wire, shape_to_wire, video_from_wire,
    video_to_wire,
};
use vidcascade_models::repository::{Manifest, StageKind};
use vidcascade_proto::MAX_STAGE_REQUEST_BYTES;
use vidcascade_proto::v1::gateway_server::{Gateway, GatewayServer as GatewayRpcServer};
use vidcascade_proto::v1::text_encoder_client::TextEncoderClient;
use vidcascade_proto::v1::video_stage_client::VideoStageClient;
use vidcascade_proto::v1::{self, generate_event::Event, stage_event};
use vidcascade_proto::wire::{VideoAssembler, chunk_video};
use vidcascade_runtime::deadline::timeout_from_metadata;
use vidcascade_runtime::info::{build_info, model_info};
use vidcascade_runtime::telemetry::{inject_context, set_parent_from};

use crate::config::GatewayConfig;
use crate::discovery::discover;
use crate::error::GatewayError;
use crate::plan::{
    MAX_CLIPS, MAX_SEGMENTS, Plan, StagePlan, clip_seconds, clip_seed, deadline_share, plan,
};
use crate::replicas::ReplicaSet;

/// Events buffered per client before the gateway waits for it.
const EVENT_BUFFER: usize = 32;
/// Share of the remaining deadline the text encoder may use.
const ENCODER_SHARE: f64 = 0.05;
/// Time kept back from each stage's deadline share for the gateway itself.
const STAGE_DEADLINE_MARGIN: Duration = Duration::from_millis(100);

struct Inner {
    manifest: Manifest,
    encoder_name: String,
    encoder: ReplicaSet,
    stages: Vec<ReplicaSet>,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    draining: AtomicBool,
    max_waiting: usize,
    stage_attempts: usize,
    default_timeout: Duration,
    info: v1::GatewayInfo,
}

/// The gateway: cheap to clone, one per process.
#[derive(Clone)]
pub struct GatewayServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GatewayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayServer")
            .field("model", &self.inner.manifest.name)
            .finish_non_exhaustive()
    }
}

impl GatewayServer {
    /// Builds the gateway and starts discovery. Call inside a tokio runtime.
    pub fn new(config: &GatewayConfig) -> Self {
        let manifest = config.repository.manifest().clone();
        let encoder_name = manifest
            .stages
            .iter()
            .find(|s| s.kind == StageKind::TextEncoder)
            .map_or_else(|| "text-encoder".to_string(), |s| s.name.clone());
        let encoder = ReplicaSet::new(
            encoder_name.clone(),
            discover(&config.encoder, config.dns_refresh),
        );
        let stages = manifest
            .diffusion_stages()
            .filter_map(|stage| {
                config.stages.get(&stage.name).map(|target| {
                    ReplicaSet::new(stage.name.clone(), discover(target, config.dns_refresh))
                })
            })
            .collect();
        let clip_shape = manifest.final_output();
        let info = v1::GatewayInfo {
            model: Some(model_info(&manifest.name, 0)),
            build: Some(build_info()),
            stages: manifest
                .stages
                .iter()
                .map(|stage| v1::StageInfo {
                    name: stage.name.clone(),
                    kind: kind_to_wire(stage.kind) as i32,
                    input: stage.input.as_ref().map(shape_to_wire),
                    output: stage.output.as_ref().map(shape_to_wire),
                    defaults: (stage.kind != StageKind::TextEncoder)
                        .then(|| defaults_to_wire(stage)),
                    max_request_bytes: MAX_STAGE_REQUEST_BYTES as u64,
                    ..Default::default()
                })
                .collect(),
            clip_shape: clip_shape.as_ref().map(shape_to_wire),
            max_seconds: clip_shape.map_or(0.0, |s| (clip_seconds(&s) * MAX_CLIPS as f64) as f32),
            max_segments: MAX_SEGMENTS as u32,
            max_concurrent_requests: config.max_concurrent as u32,
            max_request_bytes: 4 << 20,
        };
        Self {
            inner: Arc::new(Inner {
                manifest,
                encoder_name,
                encoder,
                stages,
                permits: Arc::new(Semaphore::new(config.max_concurrent)),
                waiting: AtomicUsize::new(0),
                draining: AtomicBool::new(false),
                max_waiting: config.max_waiting,
                stage_attempts: config.stage_attempts,
                default_timeout: config.default_timeout,
                info,
            }),
        }
    }

    /// Waits until the encoder and every stage answer `Info` on some replica, checking that
    /// each stage serves the shapes the manifest promises.
    async fn wait_for_stages(&self) -> anyhow::Result<()> {
        let inner = &self.inner;
        loop {
            let encoder = inner
                .encoder
                .call(1, |replica| async move {
                    TextEncoderClient::new(replica.channel)
                        .info(v1::InfoRequest {})
                        .await
                })
                .await;
            let mut missing = Vec::new();
            if let Err(err) = encoder {
                missing.push(err.to_string());
            }
            for (set, stage) in inner.stages.iter().zip(inner.manifest.diffusion_stages()) {
                match set
                    .call(1, |replica| async move {
                        VideoStageClient::new(replica.channel)
                            .info(v1::InfoRequest {})
                            .await
                    })
                    .await
                {
                    Ok((info, _)) => {
                        let info = info.into_inner();
                        let expected = stage.output.as_ref().map(shape_to_wire);
                        if info.name != stage.name || info.output != expected {
                            anyhow::bail!(
                                "the replicas of `{}` serve stage `{}` with output {:?}; the manifest expects {:?}",
                                stage.name,
                                info.name,
                                info.output,
                                expected
                            );
                        }
                    }
                    Err(err) => missing.push(err.to_string()),
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            tracing::info!(waiting_for = ?missing, "stages not reachable yet");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

type EventSender = mpsc::Sender<Result<v1::GenerateEvent, Status>>;

/// The client went away: stop everything.
#[derive(Debug)]
struct ClientGone;

/// Why a run stopped early.
#[derive(Debug)]
enum Stop {
    Client(ClientGone),
    Failed(GatewayError),
}

impl From<GatewayError> for Stop {
    fn from(err: GatewayError) -> Self {
        Self::Failed(err)
    }
}

impl From<ClientGone> for Stop {
    fn from(gone: ClientGone) -> Self {
        Self::Client(gone)
    }
}

async fn send(tx: &EventSender, event: Event) -> Result<(), ClientGone> {
    tx.send(Ok(v1::GenerateEvent { event: Some(event) }))
        .await
        .map_err(|_| ClientGone)
}

/// One request's run.
struct Run {
    inner: Arc<Inner>,
    request_id: String,
    plan: Plan,
    started: Instant,
    deadline: Instant,
    tx: EventSender,
    timings: Vec<v1::StageTiming>,
}

impl Run {
    fn remaining(&self, during: &str) -> Result<Duration, GatewayError> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(GatewayError::DeadlineExceeded {
                during: during.to_string(),
                elapsed: self.started.elapsed(),
            });
        }
        Ok(remaining)
    }

    /// Costs of the stages still to run, from `clip`/`stage` on (the encoder costs nothing).
    fn remaining_costs(&self, clip: usize, stage: usize) -> Vec<f64> {
        let per_clip: Vec<f64> = self.plan.stages.iter().map(StagePlan::cost).collect();
        let mut costs: Vec<f64> = per_clip[stage..].to_vec();
        for _ in clip + 1..self.plan.clips.len() {
            costs.extend_from_slice(&per_clip);
        }
        costs
    }

    async fn execute(&mut self) -> Result<(), Stop> {
        let mut finals: Vec<Video> = Vec::with_capacity(self.plan.clips.len());
        for clip in 0..self.plan.clips.len() {
            let (text, uncond) = self.encode(clip).await?;
            let mut previous: Option<Video> = None;
            for index in 0..self.plan.stages.len() {
                let video = self
                    .run_stage(clip, index, &text, &uncond, previous.as_ref())
                    .await?;
                previous = Some(video);
            }
            if let Some(video) = previous {
                finals.push(video);
            }
        }
        let Some(first) = finals.first() else {
            return Err(GatewayError::BadResponse {
                stage: "cascade".into(),
                reason: "no clip produced a video".into(),
            }
            .into());
        };
        let video = Video {
            width: first.width,
            height: first.height,
            fps: first.fps,
            frames: finals
                .iter()
                .flat_map(|v| v.frames.iter().cloned())
                .collect(),
        };
        let chunks = chunk_video(&video_to_wire(&video), self.plan.chunk_bytes);
        let last = chunks.len().saturating_sub(1);
        for (i, chunk) in chunks.into_iter().enumerate() {
            let timings = if i == last {
                std::mem::take(&mut self.timings)
            } else {
                Vec::new()
            };
            send(
                &self.tx,
                Event::Completed(v1::Completed {
                    video: Some(chunk),
                    timings,
                }),
            )
            .await?;
        }
        Ok(())
    }

    async fn encode(&mut self, clip: usize) -> Result<(v1::Tensor, v1::Tensor), Stop> {
        let name = self.inner.encoder_name.clone();
        send(
            &self.tx,
            Event::StageStarted(v1::StageStarted {
                stage: name.clone(),
                kind: v1::StageKind::TextEncoder as i32,
                output_shape: None,
                total_steps: 0,
                clip: clip as u32,
            }),
        )
        .await?;
        let timeout = self
            .remaining(&format!("waiting for `{name}`"))?
            .mul_f64(ENCODER_SHARE)
            .max(Duration::from_millis(500));
        let prompt = self.plan.clips[clip].clone();
        let started = Instant::now();
        let call = self
            .inner
            .encoder
            .call(self.inner.stage_attempts, |replica| {
                let mut request = Request::new(v1::EncodeRequest {
                    prompts: vec![prompt.clone(), String::new()],
                });
                request.set_timeout(timeout);
                inject_context(request.metadata_mut());
                async move {
                    TextEncoderClient::new(replica.channel)
                        .encode(request)
                        .await
                }
            });
        let (response, _in_flight) = tokio::select! {
            result = call => result?,
            () = self.tx.closed() => return Err(ClientGone.into()),
        };
        let mut embeddings = response.into_inner().embeddings;
        if embeddings.len() != 2 {
            return Err(GatewayError::BadResponse {
                stage: name,
                reason: format!("asked for 2 embeddings, got {}", embeddings.len()),
            }
            .into());
        }
        let uncond = embeddings.pop().unwrap_or_default();
        let text = embeddings.pop().unwrap_or_default();
        let elapsed = started.elapsed();
        self.timings.push(v1::StageTiming {
            stage: name.clone(),
            clip: clip as u32,
            queue_ms: 0,
            run_ms: elapsed.as_millis() as u64,
            steps_run: 0,
        });
        metrics::histogram!("vidcascade_gateway_stage_seconds", "stage" => name.clone())
            .record(elapsed.as_secs_f64());
        self.stage_completed(&name, clip, None).await?;
        Ok((text, uncond))
    }

    async fn run_stage(
        &mut self,
        clip: usize,
        index: usize,
        text: &v1::Tensor,
        uncond: &v1::Tensor,
        previous: Option<&Video>,
    ) -> Result<Video, Stop> {
        let stage = self.plan.stages[index].clone();
        let name = stage.manifest.name.clone();
        send(
            &self.tx,
            Event::StageStarted(v1::StageStarted {
                stage: name.clone(),
                kind: kind_to_wire(stage.manifest.kind) as i32,
                output_shape: stage.manifest.output.as_ref().map(shape_to_wire),
                total_steps: stage.settings.sampler.steps as u32,
                clip: clip as u32,
            }),
        )
        .await?;
        let remaining = self.remaining(&format!("waiting for stage `{name}`"))?;
        // Leave the gateway a moment after the stage's own deadline, so a stage that runs out
        // of time reports where it stopped before the gateway's overall timer fires.
        let remaining = remaining.saturating_sub(STAGE_DEADLINE_MARGIN.min(remaining / 20));
        let timeout = deadline_share(remaining, &self.remaining_costs(clip, index));
        let request = v1::StageRequest {
            request_id: self.request_id.clone(),
            text_embedding: Some(text.clone()),
            uncond_embedding: Some(uncond.clone()),
            conditioning: previous.map(video_to_wire),
            context: None,
            seed: stage_seed(clip_seed(self.plan.seed, clip), index),
            sampler: Some(overrides_to_wire(&stage.overrides)),
            preview_every: self.plan.preview_every,
        };
        let started = Instant::now();
        let set = &self.inner.stages[index];
        let call = set.call(self.inner.stage_attempts, |replica| {
            let mut call_request = Request::new(request.clone());
            call_request.set_timeout(timeout);
            inject_context(call_request.metadata_mut());
            async move {
                let mut stream = VideoStageClient::new(replica.channel)
                    .max_decoding_message_size(MAX_STAGE_REQUEST_BYTES)
                    .max_encoding_message_size(MAX_STAGE_REQUEST_BYTES)
                    .generate(call_request)
                    .await?
                    .into_inner();
                // The first event proves the stage took the call; until then it may be retried.
                let first = stream.message().await?;
                Ok((stream, first, replica.address))
            }
        });
        let ((stream, first, address), _in_flight) = tokio::select! {
            result = call => result?,
            () = self.tx.closed() => return Err(ClientGone.into()),
        };
        let (video, done) = self
            .follow_stage(&name, clip, &address, stream, first)
            .await?;
        let elapsed = started.elapsed();
        metrics::histogram!("vidcascade_gateway_stage_seconds", "stage" => name.clone())
            .record(elapsed.as_secs_f64());
        self.timings.push(v1::StageTiming {
            stage: name.clone(),
            clip: clip as u32,
            queue_ms: done.queue_ms,
            run_ms: done.run_ms,
            steps_run: done.steps_run,
        });
        let video_to_send = self.plan.include_stage_videos.then_some(&video);
        self.stage_completed(&name, clip, video_to_send).await?;
        Ok(video)
    }

    /// `StageCompleted` for `stage` and `clip`: one event per chunk of `video`, or one event
    /// without a video.
    async fn stage_completed(
        &self,
        stage: &str,
        clip: usize,
        video: Option<&Video>,
    ) -> Result<(), ClientGone> {
        let chunks: Vec<Option<v1::Video>> = match video {
            Some(video) => chunk_video(&video_to_wire(video), self.plan.chunk_bytes)
                .into_iter()
                .map(Some)
                .collect(),
            None => vec![None],
        };
        for chunk in chunks {
            let event = Event::StageCompleted(v1::StageCompleted {
                stage: stage.to_string(),
                video: chunk,
                clip: clip as u32,
            });
            send(&self.tx, event).await?;
        }
        Ok(())
    }

    /// Forwards a stage's progress and previews and assembles its output.
    async fn follow_stage(
        &mut self,
        name: &str,
        clip: usize,
        address: &str,
        mut stream: Streaming<v1::StageEvent>,
        first: Option<v1::StageEvent>,
    ) -> Result<(Video, v1::StageDone), Stop> {
        let bad = |reason: String| GatewayError::BadResponse {
            stage: name.to_string(),
            reason,
        };
        let mut assembler = VideoAssembler::new();
        let mut video: Option<v1::Video> = None;
        let mut next = first;
        loop {
            let Some(message) = next.take() else {
                return Err(bad("the stream ended before `done`".into()).into());
            };
            match message.event {
                Some(stage_event::Event::Accepted(_)) | None => {}
                Some(stage_event::Event::Progress(mut progress)) => {
                    progress.stage = name.to_string();
                    progress.clip = clip as u32;
                    send(&self.tx, Event::Progress(progress)).await?;
                }
                Some(stage_event::Event::Preview(mut preview)) => {
                    preview.stage = name.to_string();
                    preview.clip = clip as u32;
                    send(&self.tx, Event::Preview(preview)).await?;
                }
                Some(stage_event::Event::OutputChunk(chunk)) => {
                    if let Some(whole) = assembler
                        .push(chunk)
                        .map_err(|err| bad(format!("output video: {err}")))?
                    {
                        video = Some(whole);
                    }
                }
                Some(stage_event::Event::Done(done)) => {
                    let whole = video
                        .take()
                        .ok_or_else(|| bad("`done` before the whole output video".into()))?;
                    let whole = video_from_wire(whole)
                        .map_err(|err| bad(format!("output video: {err}")))?;
                    return Ok((whole, done));
                }
            }
            next = tokio::select! {
                message = stream.message() => message.map_err(|status| GatewayError::Stage {
                    stage: name.to_string(),
                    address: address.to_string(),
                    status,
                })?,
                () = self.tx.closed() => return Err(ClientGone.into()),
            };
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::GenerateEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Gateway for GatewayServer {
    type GenerateStream = EventStream;

    async fn generate(
        &self,
        request: Request<v1::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let inner = self.inner.clone();
        let request_id = uuid::Uuid::new_v4().to_string();
        let span = tracing::info_span!("gateway.generate", request_id = %request_id);
        set_parent_from(&span, request.metadata());
        let timeout = timeout_from_metadata(request.metadata())?.unwrap_or(inner.default_timeout);
        let started = Instant::now();
        let deadline = started + timeout;
        let admitted = (|| {
            if inner.draining.load(Ordering::Relaxed) {
                return Err(GatewayError::Draining);
            }
            let plan = plan(request.get_ref(), &inner.manifest, rand::random())?;
            let ahead = inner.waiting.load(Ordering::Relaxed);
            if inner.permits.available_permits() == 0 && ahead >= inner.max_waiting {
                return Err(GatewayError::Overloaded {
                    limit: inner.max_waiting,
                });
            }
            Ok(plan)
        })();
        let plan = match admitted {
            Ok(plan) => plan,
            Err(err) => {
                metrics::counter!("vidcascade_gateway_requests_total", "outcome" => err.outcome())
                    .increment(1);
                span.in_scope(|| tracing::info!(error = %err, "rejected"));
                return Err(err.into());
            }
        };
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let task = async move {
            let outcome = run(inner, request_id, plan, started, deadline, tx.clone()).await;
            let label = match &outcome {
                Ok(()) => "completed",
                Err(Stop::Client(_)) => "cancelled",
                Err(Stop::Failed(err)) => err.outcome(),
            };
            metrics::counter!("vidcascade_gateway_requests_total", "outcome" => label).increment(1);
            metrics::histogram!("vidcascade_gateway_request_seconds")
                .record(started.elapsed().as_secs_f64());
            match outcome {
                Ok(()) => tracing::info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "completed"
                ),
                Err(Stop::Client(_)) => tracing::info!("client went away; stage calls cancelled"),
                Err(Stop::Failed(err)) => {
                    tracing::info!(error = %err, "failed");
                    let _ = tx.send(Err(err.into())).await;
                }
            }
        };
        tokio::spawn(task.instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn info(
        &self,
        _request: Request<v1::InfoRequest>,
    ) -> Result<Response<v1::GatewayInfo>, Status> {
        Ok(Response::new(self.inner.info.clone()))
    }
}

/// Admission (waiting for a slot under the deadline), then the run.
async fn run(
    inner: Arc<Inner>,
    request_id: String,
    plan: Plan,
    started: Instant,
    deadline: Instant,
    tx: EventSender,
) -> Result<(), Stop> {
    let clips = plan.clips.len();
    let final_shape = v1::VideoShape {
        frames: (plan.clip_shape.frames * clips) as u32,
        ..shape_to_wire(&plan.clip_shape)
    };
    let accepted = |queue_position: usize| {
        Event::Accepted(v1::Accepted {
            request_id: request_id.clone(),
            queue_position: queue_position as u32,
            seed: plan.seed,
            clips: clips as u32,
            output_shape: Some(final_shape),
        })
    };
    let ahead = if inner.permits.available_permits() > 0 {
        0
    } else {
        inner.waiting.load(Ordering::Relaxed) + 1
    };
    send(&tx, accepted(ahead)).await?;
    inner.waiting.fetch_add(1, Ordering::Relaxed);
    metrics::gauge!("vidcascade_gateway_waiting").increment(1.0);
    let permit = tokio::select! {
        permit = inner.permits.clone().acquire_owned() => permit.ok(),
        () = tokio::time::sleep_until(deadline.into()) => None,
        () = tx.closed() => None,
    };
    inner.waiting.fetch_sub(1, Ordering::Relaxed);
    metrics::gauge!("vidcascade_gateway_waiting").decrement(1.0);
    let Some(_permit) = permit else {
        if tx.is_closed() {
            return Err(ClientGone.into());
        }
        return Err(GatewayError::DeadlineExceeded {
            during: "waiting in the gateway's queue".into(),
            elapsed: started.elapsed(),
        }
        .into());
    };
    if ahead > 0 {
        send(&tx, accepted(0)).await?;
    }
    metrics::gauge!("vidcascade_gateway_in_flight").increment(1.0);
    let mut run = Run {
        inner: inner.clone(),
        request_id: request_id.clone(),
        plan,
        started,
        deadline,
        tx,
        timings: Vec::new(),
    };
    let result = tokio::select! {
        result = run.execute() => result,
        () = tokio::time::sleep_until(deadline.into()) => Err(GatewayError::DeadlineExceeded {
            during: "running the cascade".into(),
            elapsed: started.elapsed(),
        }.into()),
    };
    metrics::gauge!("vidcascade_gateway_in_flight").decrement(1.0);
    result
}

impl vidcascade_runtime::Service for GatewayServer {
    fn label(&self) -> String {
        "vidcascade-gateway".into()
    }

    fn health_names(&self) -> Vec<String> {
        vec!["vidcascade.v1.Gateway".into()]
    }

    fn routes(&self) -> tonic::service::Routes {
        tonic::service::Routes::new(GatewayRpcServer::new(self.clone()))
    }

    fn warm_up(&self) -> impl Future<Output = anyhow::Result<()>> + Send {
        self.wait_for_stages()
    }

    fn drain(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }
}
