//! vidcascade-core: a cascaded text-to-video diffusion pipeline in the style of Imagen Video.
//!
//! This crate is the in-process ("embedded") runtime shared by the CLI and every service:
//!
//! - [`video`]: RGB8 videos, their conversion to and from model tensors, and the upsampling that
//!   turns one stage's output into the next stage's conditioning;
//! - [`stage`]: one diffusion stage (base or super-resolution) — settings, conditioning with noise
//!   augmentation, and the adapter that lets the sampler batch any mix of requests through a U-Net;
//! - [`cascade`]: text encoder -> base -> every SR stage of a model repository, with a per-step
//!   observer for progress, previews and cancellation.
//!
//! ```no_run
//! # fn main() -> Result<(), vidcascade_core::CascadeError> {
//! use std::ops::ControlFlow;
//! use vidcascade_core::cascade::{Cascade, CascadeRequest};
//! let cascade = Cascade::load("models/shapes", &candle_core::Device::Cpu)?;
//! let request = CascadeRequest::new("a red circle moving left on a black background").with_seed(7);
//! let output = cascade.generate(&request, |_event| ControlFlow::Continue(()))?;
//! println!("{} frames", output.final_video().frames.len());
//! # Ok(()) }
//! ```

pub mod cascade;
pub mod engine;
pub mod error;
pub mod output;
pub mod stage;
pub mod video;
pub mod wire;

pub use cascade::{Cascade, CascadeEvent, CascadeOutput, CascadeRequest};
pub use error::CascadeError;
pub use stage::{DiffusionStage, StageOverrides};
pub use video::Video;
