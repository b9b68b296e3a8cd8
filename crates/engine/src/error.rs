//! The one error type of the engine: what a submitted job can fail with, each with its
//! [`ErrorType`] (the outcome label and status the services report).

use vidcascade_diffusion::DiffusionError;
use vidcascade_models::ModelError;
use vidcascade_spec::ErrorType;

/// What can go wrong with a job.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request is invalid; nothing ran.
    #[error("{field}: {reason}")]
    InvalidRequest {
        /// The field, as the caller's API spells it.
        field: String,
        /// What was wrong and what is accepted.
        reason: String,
    },
    /// The queue is at its limit.
    #[error(
        "the {worker} queue is full ({limit} requests waiting); retry later or on another replica"
    )]
    QueueFull {
        /// Which worker (`stage `base``, `text encoder`).
        worker: String,
        /// The queue limit.
        limit: usize,
    },
    /// The engine is draining or stopped.
    #[error("the {worker} is shutting down and accepts no new requests")]
    ShuttingDown {
        /// Which worker.
        worker: String,
    },
    /// The job's deadline passed.
    #[error("deadline exceeded in {worker} after {completed_steps} of {total_steps} steps")]
    DeadlineExceeded {
        /// Which worker.
        worker: String,
        /// Steps done.
        completed_steps: usize,
        /// Steps asked for.
        total_steps: usize,
    },
    /// The job's deadline passed before the worker answered.
    #[error("deadline exceeded in the {worker} before it answered")]
    TimedOut {
        /// Which worker.
        worker: String,
    },
    /// Loading or running a network failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The sampler failed for this sample (a non-finite estimate, say); others in its batch go on.
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
    /// The worker stopped before answering.
    #[error("the {worker} worker stopped before answering")]
    WorkerGone {
        /// Which worker.
        worker: String,
    },
}

impl EngineError {
    /// The outcome label and status of this error.
    pub fn error_type(&self) -> ErrorType {
        match self {
            Self::InvalidRequest { .. }
            | Self::Model(ModelError::PromptTooLong { .. } | ModelError::Tokenize { .. }) => {
                ErrorType::InvalidArgument
            }
            Self::QueueFull { .. } => ErrorType::ResourceExhausted,
            Self::ShuttingDown { .. } => ErrorType::Unavailable,
            Self::DeadlineExceeded { .. } | Self::TimedOut { .. } => ErrorType::DeadlineExceeded,
            Self::Model(_) | Self::Diffusion { .. } | Self::Tensor(_) | Self::WorkerGone { .. } => {
                ErrorType::Internal
            }
        }
    }
}
