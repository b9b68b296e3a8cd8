//! The pipeline's events as `vidcascade.v1.GenerateEvent`s: videos chunked below the message
//! limit (raw frames) or encoded and cut into byte ranges (`OutputOptions.format`), stage
//! videos only when the client asked for them, each clip's new frames as soon as the clip is done
//! (videos of more than one clip), timings on the last final chunk.

use vidcascade_media::OutputFormat;
use vidcascade_pipeline::{Event, PipelineError, Plan, StageTiming};
use vidcascade_proto::convert::{kind_to_wire, shape_to_wire, video_to_wire};
use vidcascade_proto::v1::{self, generate_event};
use vidcascade_proto::wire::{DEFAULT_CHUNK_BYTES, chunk_video};
use vidcascade_spec::Video;

use crate::encoding::encode_pieces;
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
    /// Leave the final frames out of `Completed` (a multi-clip video's clips carry them).
    omit_final_video: bool,
    chunk_bytes: usize,
    /// The encoded format asked for; `None` sends raw frames.
    format: Option<OutputFormat>,
    seed: u64,
    clips: usize,
    final_shape: v1::VideoShape,
}

impl WireEvents {
    /// The wire options of a planned request (`format` already checked against the plan).
    pub fn new(plan: &Plan, output: &v1::OutputOptions, format: Option<OutputFormat>) -> Self {
        Self {
            include_stage_videos: output.include_stage_videos,
            omit_final_video: output.omit_final_video && plan.clips.len() > 1,
            format,
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

    /// The video as raw chunks, or as encoded pieces when a format was asked for.
    async fn pieces(&self, video: Video, what: &str) -> Result<Vec<Piece>, GatewayError> {
        match self.format {
            None => Ok(chunk_video(&video_to_wire(&video), self.chunk_bytes)
                .into_iter()
                .map(Piece::Raw)
                .collect()),
            Some(format) => {
                let what = format!("{what} as {format}");
                let pieces = encode_pieces(video, format, self.chunk_bytes, what).await?;
                Ok(pieces.into_iter().map(Piece::Encoded).collect())
            }
        }
    }

    /// The wire events of one pipeline event, in order.
    pub async fn convert(&self, event: Event) -> Result<Vec<generate_event::Event>, GatewayError> {
        use generate_event::Event as Wire;
        Ok(match event {
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
            } => vec![self.preview(stage, step, video, clip).await?],
            Event::StageCompleted {
                stage, clip, video, ..
            } => {
                let video = video.filter(|_| self.include_stage_videos);
                self.stage_completed(stage, clip, video).await?
            }
            Event::Completed { video, timings } => self.completed(video, timings).await?,
            // A one-clip video's frames come once, in `Completed`.
            Event::ClipCompleted { .. } if self.clips == 1 => Vec::new(),
            Event::ClipCompleted {
                clip,
                segment,
                ends_segment,
                first_frame,
                video,
            } => {
                let what = format!("the frames of clip {clip}");
                let pieces = self.pieces(video, &what).await?;
                pieces
                    .into_iter()
                    .map(|piece| {
                        let (video, encoded) = Piece::split(Some(piece));
                        Wire::ClipCompleted(v1::ClipCompleted {
                            clip: clip as u32,
                            segment: segment as u32,
                            segment_completed: ends_segment,
                            first_frame: first_frame as u32,
                            video,
                            encoded,
                        })
                    })
                    .collect()
            }
        })
    }

    /// A preview, whole: raw, or every encoded piece in one message.
    async fn preview(
        &self,
        stage: String,
        step: usize,
        video: Video,
        clip: usize,
    ) -> Result<generate_event::Event, GatewayError> {
        let (video, encoded) = match self.format {
            None => (Some(video_to_wire(&video)), Vec::new()),
            Some(_) => {
                let what = format!("the preview of stage `{stage}`");
                let pieces = self.pieces(video, &what).await?;
                (
                    None,
                    pieces.into_iter().filter_map(Piece::encoded).collect(),
                )
            }
        };
        Ok(generate_event::Event::Preview(v1::Preview {
            stage,
            step: step as u32,
            video,
            clip: clip as u32,
            encoded,
        }))
    }

    /// One `StageCompleted` per piece of `video`, or one without a video.
    async fn stage_completed(
        &self,
        stage: String,
        clip: usize,
        video: Option<Video>,
    ) -> Result<Vec<generate_event::Event>, GatewayError> {
        let pieces: Vec<Option<Piece>> = match video {
            Some(video) => {
                let what = format!("the video of stage `{stage}`");
                self.pieces(video, &what)
                    .await?
                    .into_iter()
                    .map(Some)
                    .collect()
            }
            None => vec![None],
        };
        Ok(pieces
            .into_iter()
            .map(|piece| {
                let (video, encoded) = Piece::split(piece);
                generate_event::Event::StageCompleted(v1::StageCompleted {
                    stage: stage.clone(),
                    video,
                    clip: clip as u32,
                    encoded,
                })
            })
            .collect())
    }

    /// The final video in pieces, the timings on the last one (only the timings when the
    /// clips have sent the frames and the client asked not to get them again).
    async fn completed(
        &self,
        video: Video,
        timings: Vec<StageTiming>,
    ) -> Result<Vec<generate_event::Event>, GatewayError> {
        let timings: Vec<v1::StageTiming> = timings.into_iter().map(timing_to_wire).collect();
        if self.omit_final_video {
            return Ok(vec![generate_event::Event::Completed(v1::Completed {
                timings,
                ..Default::default()
            })]);
        }
        let pieces = self.pieces(video, "the final video").await?;
        let last = pieces.len().saturating_sub(1);
        let mut timings = Some(timings);
        Ok(pieces
            .into_iter()
            .enumerate()
            .map(|(i, piece)| {
                let (video, encoded) = Piece::split(Some(piece));
                generate_event::Event::Completed(v1::Completed {
                    video,
                    encoded,
                    timings: if i == last {
                        timings.take().unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                })
            })
            .collect())
    }
}

/// One piece of a video on the wire.
enum Piece {
    /// A chunk of raw frames.
    Raw(v1::Video),
    /// A byte range of an encoded file.
    Encoded(v1::EncodedVideo),
}

impl Piece {
    /// The `(video, encoded)` fields of a message carrying `piece`.
    fn split(piece: Option<Self>) -> (Option<v1::Video>, Option<v1::EncodedVideo>) {
        match piece {
            Some(Self::Raw(video)) => (Some(video), None),
            Some(Self::Encoded(encoded)) => (None, Some(encoded)),
            None => (None, None),
        }
    }

    fn encoded(self) -> Option<v1::EncodedVideo> {
        match self {
            Self::Encoded(encoded) => Some(encoded),
            Self::Raw(_) => None,
        }
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
