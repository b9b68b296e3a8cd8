//! The pipeline's two traits over the gateway's replica sets: text encoding is an `Encode` call
//! and a stage call is a `VideoStage.Generate` stream, each balanced over that service's
//! replicas with retry before the first event. Embeddings stay wire tensors: the gateway never
//! decodes them.

use std::time::{Duration, Instant};

use tonic::{Request, Streaming};
use vidcascade_pipeline::{
    CallError, Embeddings, StageCall, StageCallRequest, StageOutcome, StageReport, TextEncoding,
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
use crate::replicas::ReplicaSet;

/// The text encoder's and every diffusion stage's replicas.
#[derive(Debug)]
pub struct ReplicaBackend {
    /// The text encoder's replicas.
    pub encoder: ReplicaSet,
    /// Each diffusion stage's replicas, in manifest order.
    pub stages: Vec<ReplicaSet>,
    /// Attempts per call when replicas refuse before streaming.
    pub attempts: usize,
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
        let (response, _in_flight) = self
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
        let message = v1::StageRequest {
            request_id: call.request_id.to_string(),
            text_embedding: Some(call.text.text.clone()),
            uncond_embedding: Some(call.text.unconditional.clone()),
            conditioning: call.conditioning.map(video_to_wire),
            context: None,
            seed: call.seed,
            sampler: Some(overrides_to_wire(&call.stage.overrides)),
            preview_every: call.preview_every,
        };
        let ((stream, first, address), _in_flight) = set
            .call(self.attempts, |replica| {
                let call = request(message.clone(), call.deadline);
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
                    Ok((stream, first, replica.address))
                }
            })
            .await?;
        let follower = Follower {
            stage: set.name(),
            address: &address,
            report,
        };
        follower.follow(stream, first).await
    }
}

/// Reads one stage stream: progress and previews into the run's events, the output assembled.
struct Follower<'a> {
    stage: &'a str,
    address: &'a str,
    report: &'a StageReport<'a>,
}

impl Follower<'_> {
    fn bad(&self, reason: String) -> GatewayError {
        GatewayError::BadResponse {
            stage: self.stage.to_string(),
            reason,
        }
    }

    async fn follow(
        &self,
        mut stream: Streaming<v1::StageEvent>,
        first: Option<v1::StageEvent>,
    ) -> Result<StageOutcome, CallError> {
        let mut assembler = VideoAssembler::new();
        let mut video: Option<v1::Video> = None;
        let mut next = first;
        loop {
            let Some(message) = next.take() else {
                return Err(self.bad("the stream ended before `done`".into()).into());
            };
            match message.event {
                Some(stage_event::Event::Accepted(_)) | None => {}
                Some(stage_event::Event::Progress(progress)) => {
                    let (step, total) = (progress.step as usize, progress.total_steps as usize);
                    self.report.progress(step, total).await?;
                }
                Some(stage_event::Event::Preview(preview)) => {
                    let frames = preview
                        .video
                        .ok_or_else(|| self.bad("a preview without a video".into()))?;
                    let frames = self.decode(frames, "preview")?;
                    self.report.preview(preview.step as usize, frames).await?;
                }
                Some(stage_event::Event::OutputChunk(chunk)) => {
                    let whole = assembler
                        .push(chunk)
                        .map_err(|err| self.bad(format!("output video: {err}")))?;
                    video = whole.or(video);
                }
                Some(stage_event::Event::Done(done)) => return self.done(video.take(), &done),
            }
            next = stream
                .message()
                .await
                .map_err(|status| GatewayError::Stage {
                    stage: self.stage.to_string(),
                    address: self.address.to_string(),
                    status,
                })?;
        }
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
            steps: done.steps_run as usize,
        })
    }
}
