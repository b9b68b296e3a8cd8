//! Everything an Encode call can fail with, and its gRPC status (mapped here only).

use vidcascade_models::ModelError;

/// Why an Encode call failed.
#[derive(Debug, thiserror::Error)]
pub enum EncoderServiceError {
    /// No prompts, or more than the limit.
    #[error("prompts: {reason}")]
    BadBatch {
        /// What is wrong.
        reason: String,
    },
    /// One prompt is too long (bytes or tokens) or cannot be tokenized.
    #[error("prompts[{index}]: {reason}")]
    BadPrompt {
        /// The prompt's index.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The queue is full.
    #[error(
        "the text encoder queue is full ({limit} calls waiting); retry later or on another replica"
    )]
    QueueFull {
        /// The queue limit.
        limit: usize,
    },
    /// The service is draining.
    #[error("the text encoder is shutting down and accepts no new requests")]
    Draining,
    /// The model failed.
    #[error("text encoder failed: {0}")]
    Model(ModelError),
    /// The worker is gone.
    #[error("the text encoder worker stopped")]
    WorkerGone,
}

impl From<ModelError> for EncoderServiceError {
    fn from(err: ModelError) -> Self {
        match err {
            ModelError::PromptTooLong { index, .. } | ModelError::Tokenize { index, .. } => {
                Self::BadPrompt {
                    index,
                    reason: err.to_string(),
                }
            }
            other => Self::Model(other),
        }
    }
}

impl EncoderServiceError {
    /// Label for `vidcascade_encoder_requests_total{outcome}`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::BadBatch { .. } | Self::BadPrompt { .. } => "invalid_argument",
            Self::QueueFull { .. } => "rejected",
            Self::Draining => "draining",
            Self::Model(_) | Self::WorkerGone => "failed",
        }
    }
}

impl From<EncoderServiceError> for tonic::Status {
    fn from(err: EncoderServiceError) -> Self {
        let message = err.to_string();
        match err {
            EncoderServiceError::BadBatch { .. } | EncoderServiceError::BadPrompt { .. } => {
                Self::invalid_argument(message)
            }
            EncoderServiceError::QueueFull { .. } => Self::resource_exhausted(message),
            EncoderServiceError::Draining => Self::unavailable(message),
            EncoderServiceError::Model(_) | EncoderServiceError::WorkerGone => {
                Self::internal(message)
            }
        }
    }
}
