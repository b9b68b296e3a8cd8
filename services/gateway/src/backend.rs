//! The pipeline's two traits over the gateway's replica sets: text encoding is an `Encode` call
//! and a stage call is a `VideoStage.Generate` stream, each balanced over that service's
//! replicas with retry before the first event. Embeddings stay wire tensors: the gateway never
//! decodes them.
//!
//! Failover: a stage call asks for a resumable checkpoint every `checkpoint_every` steps and
//! keeps the latest. When its replica dies mid-stream (the connection breaks, or the stream
//! ends without `done`), the call reruns on another replica with `resume` set to that
//! checkpoint, so the run continues from the step it reached and ends with the video the
//! undisturbed run would have made; progress already reported is not repeated.

use std::time::{Duration, Instant};

use tonic::{Request, Streaming};
use vidcascade_pipeline::{
    CallError, CallerGone, Embeddings, StageCall, StageCallRequest, StageOutcome, StageReport,
    TextEncoding,
};
use vidcascade_proto::MAX_STAGE_REQUEST_BYTES;
use vidcascade_proto::convert::{overrides_to_wire, video_from_wire, video_to_wire};
use vidcascade_proto::v1::text_encoder_client::TextEncoderClient;
use vidcascade_proto::v1::video_stage_client::VideoStageClient;
use vidcascade_proto::v1::{self, stage_event};
use vidcascade_proto::wire::VideoAssembler;
use vidcascade_runtime::telemetry::inject_context;
use vidcascade_spec::Video;

use crate::error::GatewayError;
use crate::replicas::{InFlight, Replica, ReplicaSet, is_replica_failure};

/// The text encoder's and every diffusion stage's replicas.
#[derive(Debug)]
pub struct ReplicaBackend {
    /// The text encoder's replicas.
    pub encoder: ReplicaSet,
    /// Each diffusion stage's replicas, in manifest order.
    pub stages: Vec<ReplicaSet>,
    /// Attempts per call when replicas refuse before streaming.
    pub attempts: usize,
    /// Ask stages for a resumable checkpoint every this many steps (0: none; a failover then
    /// restarts the stage from noise).
    pub checkpoint_every: u32,
    /// Reruns of a stage call on another replica after its replica died mid-stream.
    pub failovers: usize,
}

impl ReplicaBackend {
    /// The encoder's and every stage's replica sets.
    pub fn sets(&self) -> impl Iterator<Item = &ReplicaSet> {
        std::iter::once(&self.encoder).chain(&self.stages)
    }
}

/// A request with the call's deadline and the caller's trace context.
fn request<T>(message: T, deadline: Instant) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    inject_context(request.metadata_mut());
    request
}

impl TextEncoding for ReplicaBackend {
    type Embedding = v1::Tensor;

    async fn encode(
        &self,
        prompt: &str,
        deadline: Instant,
    ) -> Result<Embeddings<v1::Tensor>, CallError> {
        let (response, _replica, _in_flight) = self
            .encoder
            .call(self.attempts, |replica| {
                let call = request(
                    v1::EncodeRequest {
                        prompts: vec![prompt.to_string(), String::new()],
                    },
                    deadline,
                );
                async move { TextEncoderClient::new(replica.channel).encode(call).await }
            })
            .await
            .map_err(prompt_error)?;
        let mut embeddings = response.into_inner().embeddings;
        match (embeddings.len(), embeddings.pop(), embeddings.pop()) {
            (2, Some(unconditional), Some(text)) => Ok(Embeddings {
                text,
                unconditional,
            }),
            (count, ..) => Err(GatewayError::BadResponse {
                stage: self.encoder.name().to_string(),
                reason: format!("asked for 2 embeddings, got {count}"),
            }
            .into()),
        }
    }
}

/// The text encoder is the authority on tokens: its INVALID_ARGUMENT about `prompts[0]` (too
/// many tokens, say) is the client's `prompt` being invalid, not a gateway bug.
fn prompt_error(err: GatewayError) -> CallError {
    match &err {
        GatewayError::Stage { status, .. }
            if status.code() == tonic::Code::InvalidArgument
                && status.message().starts_with("prompts[0]") =>
        {
            let message = status.message().replacen("prompts[0]", "prompt", 1);
            CallError::new(vidcascade_spec::ErrorType::InvalidArgument, message)
        }
        _ => err.into(),
    }
}

impl StageCall<v1::Tensor> for ReplicaBackend {
    async fn generate(
        &self,
        call: StageCallRequest<'_, v1::Tensor>,
        report: &StageReport<'_>,
    ) -> Result<StageOutcome, CallError> {
        let set = self
            .stages
            .get(call.index)
            .ok_or_else(|| GatewayError::NoReplicas {
                service: call.stage.manifest.name.clone(),
            })?;
        let mut message = v1::StageRequest {
            request_id: call.request_id.to_string(),
            text_embedding: Some(call.text.text.clone()),
            uncond_embedding: Some(call.text.unconditional.clone()),
            conditioning: call.conditioning.map(video_to_wire),
            context: call.context.map(video_to_wire),
            seed: call.seed,
            sampler: Some(overrides_to_wire(&call.stage.overrides)),
            preview_every: call.preview_every,
            checkpoint_every: self.checkpoint_every,
            resume: None,
        };
        let mut run = RunState::default();
        let mut failovers = 0;
        loop {
            let (stream, first, replica, _in_flight) =
                self.attempt(set, &message, call.deadline).await?;
            let follower = Follower {
                stage: set.name(),
                address: &replica.address,
                report,
                resumed_at: message.resume.as_ref().map_or(0, |c| c.step),
            };
            let reason = match follower.follow(stream, first, &mut run).await {
                Ok(outcome) => {
                    replica.health.record_success();
                    return Ok(outcome);
                }
                Err(Followed::Failed(err)) => return Err(err),
                Err(Followed::ReplicaLost(reason)) => reason,
            };
            replica.failed(set.name());
            if failovers >= self.failovers {
                return Err(GatewayError::ReplicaLost {
                    stage: set.name().to_string(),
                    address: replica.address.clone(),
                    reason,
                    failovers,
                }
                .into());
            }
            failovers += 1;
            let from_step = run.checkpoint.as_ref().map_or(0, |c| c.step);
            tracing::warn!(stage = %set.name(), address = %replica.address, from_step, %reason, "replica lost mid-stream; resuming on another");
            metrics::counter!("vidcascade_gateway_stage_failovers_total", "stage" => set.name().to_string())
                .increment(1);
            message.resume = run.checkpoint.clone();
        }
    }
}

/// A started stage stream: its first event and the replica serving it.
type Started = (
    Streaming<v1::StageEvent>,
    Option<v1::StageEvent>,
    Replica,
    InFlight,
);

impl ReplicaBackend {
    /// Starts `message` on some replica of `set`; refusals before the first event are retried.
    async fn attempt(
        &self,
        set: &ReplicaSet,
        message: &v1::StageRequest,
        deadline: Instant,
    ) -> Result<Started, CallError> {
        let ((stream, first), replica, in_flight) = set
            .call(self.attempts, |replica| {
                let call = request(message.clone(), deadline);
                async move {
                    let mut stream = VideoStageClient::new(replica.channel)
                        .max_decoding_message_size(MAX_STAGE_REQUEST_BYTES)
                        .max_encoding_message_size(MAX_STAGE_REQUEST_BYTES)
                        .generate(call)
                        .await?
                        .into_inner();
                    // The first event proves the stage took the call; until then it may be
                    // retried.
                    let first = stream.message().await?;
                    Ok((stream, first))
                }
            })
            .await?;
        Ok((stream, first, replica, in_flight))
    }
}

/// What a stage call has reached, across replicas: the latest checkpoint and the last step
/// reported to the client.
#[derive(Debug, Default)]
struct RunState {
    checkpoint: Option<v1::StageCheckpoint>,
    reported_step: u32,
    previewed_step: u32,
}

/// How following a stream ended, when it did not end in the output.
enum Followed {
    /// The call failed; no other replica would do better.
    Failed(CallError),
    /// The replica died under the call (broken connection, stream cut before `done`): why.
    ReplicaLost(String),
}

impl From<CallError> for Followed {
    fn from(err: CallError) -> Self {
        Self::Failed(err)
    }
}

impl From<GatewayError> for Followed {
    fn from(err: GatewayError) -> Self {
        Self::Failed(err.into())
    }
}

impl From<CallerGone> for Followed {
    fn from(gone: CallerGone) -> Self {
        Self::Failed(gone.into())
    }
}

/// Reads one stage stream: progress and previews into the run's events, checkpoints kept,
/// the output assembled.
struct Follower<'a> {
    stage: &'a str,
    address: &'a str,
    report: &'a StageReport<'a>,
    /// Steps run by replicas before this one (the step this stream resumed from).
    resumed_at: u32,
}

impl Follower<'_> {
    fn bad(&self, reason: String) -> GatewayError {
        GatewayError::BadResponse {
            stage: self.stage.to_string(),
            reason,
        }
    }

    /// A stream error: the replica's loss when it is one, else the call's failure.
    fn lost(&self, status: tonic::Status) -> Followed {
        if is_replica_failure(&status) {
            Followed::ReplicaLost(vidcascade_spec::request::echo(status.message()))
        } else {
            Followed::Failed(
                GatewayError::Stage {
                    stage: self.stage.to_string(),
                    address: self.address.to_string(),
                    status,
                }
                .into(),
            )
        }
    }

    async fn follow(
        &self,
        mut stream: Streaming<v1::StageEvent>,
        first: Option<v1::StageEvent>,
        run: &mut RunState,
    ) -> Result<StageOutcome, Followed> {
        let mut assembler = VideoAssembler::new();
        let mut video: Option<v1::Video> = None;
        let mut next = first;
        loop {
            let Some(message) = next.take() else {
                let reason = "the stream ended before `done`".to_string();
                return Err(Followed::ReplicaLost(reason));
            };
            match message.event {
                Some(stage_event::Event::Accepted(_)) | None => {}
                Some(stage_event::Event::Progress(progress)) => {
                    // After a failover the resumed run repeats steps the client already saw.
                    if progress.step > run.reported_step {
                        run.reported_step = progress.step;
                        let (step, total) = (progress.step as usize, progress.total_steps as usize);
                        self.report.progress(step, total).await?;
                    }
                }
                Some(stage_event::Event::Preview(preview)) => self.preview(preview, run).await?,
                Some(stage_event::Event::Checkpoint(checkpoint)) => {
                    run.checkpoint = Some(checkpoint);
                }
                Some(stage_event::Event::OutputChunk(chunk)) => {
                    let whole = assembler
                        .push(chunk)
                        .map_err(|err| self.bad(format!("output video: {err}")))?;
                    video = whole.or(video);
                }
                Some(stage_event::Event::Done(done)) => return Ok(self.done(video.take(), &done)?),
            }
            next = stream.message().await.map_err(|status| self.lost(status))?;
        }
    }

    async fn preview(&self, preview: v1::Preview, run: &mut RunState) -> Result<(), Followed> {
        if preview.step <= run.previewed_step {
            return Ok(());
        }
        run.previewed_step = preview.step;
        let frames = preview
            .video
            .ok_or_else(|| self.bad("a preview without a video".into()))?;
        let frames = self.decode(frames, "preview")?;
        self.report.preview(preview.step as usize, frames).await?;
        Ok(())
    }

    fn decode(&self, video: v1::Video, what: &str) -> Result<Video, GatewayError> {
        video_from_wire(video).map_err(|err| self.bad(format!("{what} video: {err}")))
    }

    fn done(
        &self,
        video: Option<v1::Video>,
        done: &v1::StageDone,
    ) -> Result<StageOutcome, CallError> {
        let video = video.ok_or_else(|| self.bad("`done` before the whole output video".into()))?;
        Ok(StageOutcome {
            video: self.decode(video, "output")?,
            queued: Duration::from_millis(done.queue_ms),
            run: Duration::from_millis(done.run_ms),
            steps: (self.resumed_at + done.steps_run) as usize,
        })
    }
}
