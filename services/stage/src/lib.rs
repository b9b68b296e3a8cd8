//! vidcascade-stage: serves one diffusion stage of a model repository (the base model
//! or any TSR/SSR stage) as `vidcascade.v1.VideoStage`.
//!
//! The model lives on one worker thread ([`vidcascade_engine::StageEngine`]); requests
//! wait in a bounded queue (full: RESOURCE_EXHAUSTED) and join the running batch at any step
//! boundary. A caller that disconnects or whose `grpc-timeout` passes leaves the batch at the
//! next step. Progress and previews stream back as the stage denoises, then the output video
//! in chunks.
//!
//! Metrics (Prometheus, label `stage`): `vidcascade_stage_requests_total{outcome}`,
//! `vidcascade_stage_queue_depth`, `vidcascade_stage_running_requests`,
//! `vidcascade_stage_pending_steps`, `vidcascade_stage_queued_work_seconds` (pending steps x
//! recent step time: the autoscaling signal), `vidcascade_stage_batch_size` and
//! `vidcascade_stage_step_seconds` (histograms).

mod checkpoint;
pub mod config;
pub mod error;
mod metrics;
pub mod service;

pub use config::{StageArgs, StageConfig};
pub use service::StageServer;
