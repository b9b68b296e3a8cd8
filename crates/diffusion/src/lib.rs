//! v-prediction diffusion maths shared by every stage of the cascade.
//!
//! Imagen Video (Ho et al. 2022, arXiv 2210.02303) samples every model of its cascade the same way:
//! a continuous-time cosine schedule, a network that predicts `v = alpha * eps - sigma * x`,
//! classifier-free guidance and dynamic thresholding. This crate holds that maths once, for the
//! base stage and every super-resolution stage alike:
//!
//! - [`schedule`]: the cosine log-SNR schedule and the time grid of a run;
//! - [`guidance`] and [`threshold`]: classifier-free guidance and per-sample dynamic thresholding;
//! - [`step`]: the DDIM (eta = 0) and ancestral (DDPM posterior) updates;
//! - [`sampler`]: per-sample state and a batched step in which every sample carries its own time,
//!   so requests can join or leave a running batch at any step boundary (step-level batching);
//! - [`noise`]: seeded, portable Gaussian noise, so a seeded run is bit-for-bit repeatable.
//!
//! The network is behind the [`VelocityModel`] trait, so this crate knows nothing about U-Nets.

pub mod error;
pub mod guidance;
pub mod noise;
pub mod sampler;
pub mod schedule;
pub mod step;
pub mod threshold;

pub use error::DiffusionError;
pub use sampler::{
    Checkpoint, ModelRow, SampleState, SampleStep, SamplerKind, SamplerSettings, VelocityModel,
    step_batch,
};
pub use schedule::CosineSchedule;
