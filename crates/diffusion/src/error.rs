//! The one error type of the diffusion maths.

/// What can go wrong while sampling.
#[derive(Debug, thiserror::Error)]
pub enum DiffusionError {
    /// A sampler setting is outside its valid range.
    #[error("invalid sampler setting `{field}`: {reason}")]
    InvalidSetting {
        /// The setting's name, as users spell it.
        field: &'static str,
        /// What was wrong and what was expected.
        reason: String,
    },
    /// A tensor held NaN or infinity where a finite value is required.
    #[error(
        "non-finite value in {what} (sample {sample}, step {step}): NaN or infinity is rejected"
    )]
    NonFinite {
        /// Which quantity was checked ("initial noise", "model output", ...).
        what: &'static str,
        /// Index of the sample in its request.
        sample: usize,
        /// Denoising step at which it was found (0 = before the first step).
        step: usize,
    },
    /// Tensors of a batch disagree in shape.
    #[error("shape mismatch in {what}: expected {expected:?}, found {found:?}")]
    Shape {
        /// Which tensor was checked.
        what: &'static str,
        /// The shape that was expected.
        expected: Vec<usize>,
        /// The shape that was found.
        found: Vec<usize>,
    },
    /// The step callback asked the loop to stop (the caller went away or ran out of time).
    #[error("sampling stopped by the caller after {completed_steps} of {total_steps} steps")]
    Cancelled {
        /// Steps that had completed when the loop stopped.
        completed_steps: usize,
        /// Steps the run was configured for.
        total_steps: usize,
    },
    /// The network rejected its inputs or failed in a way of its own.
    #[error("model failed: {0}")]
    Model(Box<dyn std::error::Error + Send + Sync>),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}
