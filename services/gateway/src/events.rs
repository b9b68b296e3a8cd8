//! The pipeline's events as `vidcascade.v1.GenerateEvent`s: videos chunked below the message
//! limit, stage videos only when the client asked for them, timings on the last final chunk.

use vidcascade_pipeline::{Event, PipelineError, Plan, StageTiming};
use vidcascade_proto::convert::{kind_to_wire, shape_to_wire, video_to_wire};
use vidcascade_proto::v1::{self, generate_event};
use vidcascade_proto::wire::{DEFAULT_CHUNK_BYTES, chunk_video};
use vidcascade_spec::Video;

use crate::error::GatewayError;

/// Largest video chunk the gateway sends (well below gRPC's 4 MiB default).
pub const MAX_CHUNK_BYTES: usize = 2 << 20;

/// The client went away: stop everything.
#[derive(Debug)]
pub struct ClientGone;

impl From<ClientGone> for GatewayError {
    fn from(_: ClientGone) -> Self {
        GatewayError::Pipeline(PipelineError::Cancelled)
    }
}

/// How one request's events go on the wire.
#[derive(Debug, Clone)]
pub struct WireEvents {
    include_stage_videos: bool,
    chunk_bytes: usize,
    seed: u64,
    clips: usize,
    final_shape: v1::VideoShape,
}

impl WireEvents {
    /// The wire options of a planned request.
    pub fn new(plan: &Plan, output: &v1::OutputOptions) -> Self {
        Self {
            include_stage_videos: output.include_stage_videos,
            chunk_bytes: match output.max_chunk_bytes as usize {
                0 => DEFAULT_CHUNK_BYTES,
                n => n.min(MAX_CHUNK_BYTES),
            },
            seed: plan.seed,
            clips: plan.clips.len(),
            final_shape: shape_to_wire(&plan.final_shape()),
        }
    }

    /// `Accepted` with the request's id and queue position.
    pub fn accepted(&self, request_id: &str, queue_position: usize) -> generate_event::Event {
        generate_event::Event::Accepted(v1::Accepted {
            request_id: request_id.to_string(),
            queue_position: queue_position as u32,
            seed: self.seed,
            clips: self.clips as u32,
            output_shape: Some(self.final_shape),
        })
    }

    fn chunks(&self, video: &Video) -> Vec<v1::Video> {
        chunk_video(&video_to_wire(video), self.chunk_bytes)
    }

    /// The wire events of one pipeline event, in order.
    pub fn convert(&self, event: Event) -> Vec<generate_event::Event> {
        use generate_event::Event as Wire;
        match event {
            Event::StageStarted {
                stage,
                kind,
                output_shape,
                total_steps,
                clip,
            } => vec![Wire::StageStarted(v1::StageStarted {
                stage,
                kind: kind_to_wire(kind) as i32,
                output_shape: output_shape.as_ref().map(shape_to_wire),
                total_steps: total_steps as u32,
                clip: clip as u32,
            })],
            Event::Progress {
                stage,
                step,
                total_steps,
                clip,
            } => vec![Wire::Progress(v1::Progress {
                stage,
                step: step as u32,
                total_steps: total_steps as u32,
                clip: clip as u32,
            })],
            Event::Preview {
                stage,
                step,
                video,
                clip,
            } => vec![Wire::Preview(v1::Preview {
                stage,
                step: step as u32,
                video: Some(video_to_wire(&video)),
                clip: clip as u32,
            })],
            Event::StageCompleted {
                stage, clip, video, ..
            } => self.stage_completed(stage, clip, video.filter(|_| self.include_stage_videos)),
            Event::Completed { video, timings } => self.completed(&video, timings),
        }
    }

    /// One `StageCompleted` per chunk of `video`, or one without a video.
    fn stage_completed(
        &self,
        stage: String,
        clip: usize,
        video: Option<Video>,
    ) -> Vec<generate_event::Event> {
        let chunks: Vec<Option<v1::Video>> = match video {
            Some(video) => self.chunks(&video).into_iter().map(Some).collect(),
            None => vec![None],
        };
        chunks
            .into_iter()
            .map(|chunk| {
                generate_event::Event::StageCompleted(v1::StageCompleted {
                    stage: stage.clone(),
                    video: chunk,
                    clip: clip as u32,
                })
            })
            .collect()
    }

    /// The final video in chunks, the timings on the last one.
    fn completed(&self, video: &Video, timings: Vec<StageTiming>) -> Vec<generate_event::Event> {
        let chunks = self.chunks(video);
        let last = chunks.len().saturating_sub(1);
        let mut timings = Some(timings.into_iter().map(timing_to_wire).collect());
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, chunk)| {
                generate_event::Event::Completed(v1::Completed {
                    video: Some(chunk),
                    timings: if i == last {
                        timings.take().unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                })
            })
            .collect()
    }
}

fn timing_to_wire(timing: StageTiming) -> v1::StageTiming {
    v1::StageTiming {
        stage: timing.stage,
        clip: timing.clip as u32,
        queue_ms: timing.queued.as_millis() as u64,
        run_ms: timing.run.as_millis() as u64,
        steps_run: timing.steps_run as u32,
    }
}
