//! The error type of the in-process cascade.

use vidcascade_diffusion::DiffusionError;
use vidcascade_models::ModelError;

/// What can go wrong while running a cascade.
#[derive(Debug, thiserror::Error)]
pub enum CascadeError {
    /// The request is invalid; nothing ran.
    #[error("invalid request field `{field}`: {reason}")]
    InvalidRequest {
        /// The field, as the API spells it (`stages.base.steps`).
        field: String,
        /// What was wrong and what is accepted.
        reason: String,
    },
    /// The observer stopped the run (the caller left or ran out of time).
    #[error("cancelled during stage `{stage}` after {completed_steps} of {total_steps} steps")]
    Cancelled {
        /// The stage that was running.
        stage: String,
        /// Steps it had completed.
        completed_steps: usize,
        /// Steps it was configured for.
        total_steps: usize,
    },
    /// Loading or running a network failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The sampler failed.
    #[error("stage `{stage}`: {source}")]
    Diffusion {
        /// The stage that was running.
        stage: String,
        /// The sampler's error.
        source: DiffusionError,
    },
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl CascadeError {
    /// A short label for metrics (`requests_total{outcome=...}`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. } => "invalid_request",
            Self::Cancelled { .. } => "cancelled",
            Self::Model(ModelError::PromptTooLong { .. }) => "invalid_request",
            Self::Model(_) => "model",
            Self::Diffusion { .. } => "sampler",
            Self::Tensor(_) => "tensor",
        }
    }
}
