//! vidcascade-pipeline: one cascade run, whatever carries it.
//!
//! [`plan`] checks a [`GenerateRequest`](vidcascade_spec::GenerateRequest) against the manifest
//! and fixes every clip, stage, setting and seed; [`run`] then drives the plan through two
//! traits — [`TextEncoding`] (a prompt to embeddings) and [`StageCall`] (one diffusion stage
//! call) — sharing the caller's deadline among the stages by their expected cost, handing each
//! stage the previous stage's RGB8 video, and emitting the one ordered [`Event`] stream.
//!
//! Embedded mode (`vidcascade generate`) implements the traits with in-process engines; the
//! gateway implements them with replica sets of gRPC clients. Both run this code, so they
//! cannot drift apart, and this crate holds no tensor code.

pub mod backend;
pub mod context;
pub mod error;
pub mod event;
pub mod plan;
pub mod run;

pub use backend::{
    CallError, CallerGone, Embeddings, StageCall, StageCallRequest, StageOutcome, StageReport,
    TextEncoding,
};
pub use error::PipelineError;
pub use event::{Event, StageTiming};
pub use plan::{ClipPlan, Plan, StagePlan, plan};
pub use run::{RunLimits, run};
