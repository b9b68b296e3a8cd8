//! vidcascade-engine: the workers that own the models, and embedded mode.
//!
//! - [`stage_worker`]: the stage engine — bounded queue, step-level batching, eviction of gone
//!   callers, deadlines, per-sample errors — the only denoising loop in the codebase;
//! - [`text_worker`]: the text encoder's worker on the same [`queue`];
//! - [`stage`]: one diffusion stage — conditioning with noise augmentation, and the adapter that
//!   lets the sampler batch any mix of requests through a U-Net;
//! - [`video`]: RGB8 videos to model tensors and back, and the upsampling between stages;
//! - [`embedded`]: the cascade pipeline run on in-process engines (`vidcascade generate`).

pub mod compute;
pub mod embedded;
pub mod error;
pub mod queue;
pub mod stage;
pub mod stage_worker;
pub mod stats;
pub mod text_worker;
pub mod video;

pub use compute::{Compute, DeviceSpec, Precision};
pub use embedded::{CascadeOutput, EmbeddedCascade, StageOutput};
pub use error::EngineError;
pub use stage::{DiffusionStage, KnownFrames};
pub use stage_worker::{EngineConfig, JobEvent, JobHandle, StageEngine, StageJob};
pub use stats::EngineStats;
pub use text_worker::{TextEngine, TextEngineConfig};
pub use vidcascade_diffusion::Checkpoint;
