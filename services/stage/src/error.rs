//! Everything a stage call can fail with, and its gRPC status (mapped here and nowhere else).

use vidcascade_core::CascadeError;
use vidcascade_core::engine::SubmitError;
use vidcascade_core::wire::TensorWireError;
use vidcascade_proto::wire::WireError;

/// Why a `VideoStage.Generate` call failed.
#[derive(Debug, thiserror::Error)]
pub enum StageServiceError {
    /// A required field is missing.
    #[error("{field}: required")]
    Missing {
        /// The field.
        field: &'static str,
    },
    /// A field the stage cannot use.
    #[error("{field}: {reason}")]
    Unsupported {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A tensor field breaks the wire contract.
    #[error("{field}.{source}")]
    Tensor {
        /// The field holding the tensor.
        field: &'static str,
        /// What is wrong with it.
        source: TensorWireError,
    },
    /// A video field breaks the wire contract.
    #[error(transparent)]
    Video(#[from] WireError),
    /// The queue is full or the stage is draining.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// The stage rejected or failed the request.
    #[error(transparent)]
    Cascade(#[from] CascadeError),
    /// The caller's deadline passed.
    #[error("deadline exceeded in stage `{stage}` after {completed_steps} of {total_steps} steps")]
    DeadlineExceeded {
        /// The stage.
        stage: String,
        /// Steps done.
        completed_steps: usize,
        /// Steps asked for.
        total_steps: usize,
    },
    /// The worker went away without an answer (it stopped).
    #[error("the stage worker stopped before answering")]
    WorkerGone,
}

impl StageServiceError {
    /// Label for `vidcascade_stage_requests_total{outcome}`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Missing { .. }
            | Self::Unsupported { .. }
            | Self::Tensor { .. }
            | Self::Video(_) => "invalid_argument",
            Self::Submit(SubmitError::QueueFull { .. }) => "rejected",
            Self::Submit(SubmitError::ShuttingDown) => "draining",
            Self::Cascade(err) if err.kind() == "invalid_request" => "invalid_argument",
            Self::Cascade(_) | Self::WorkerGone => "failed",
            Self::DeadlineExceeded { .. } => "deadline_exceeded",
        }
    }
}

impl From<StageServiceError> for tonic::Status {
    fn from(err: StageServiceError) -> Self {
        let message = err.to_string();
        match err.outcome() {
            "invalid_argument" => Self::invalid_argument(message),
            "rejected" => Self::resource_exhausted(message),
            "draining" => Self::unavailable(message),
            "deadline_exceeded" => Self::deadline_exceeded(message),
            _ => Self::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_outcome() {
        let full: tonic::Status =
            StageServiceError::Submit(SubmitError::QueueFull { limit: 3 }).into();
        assert_eq!(full.code(), tonic::Code::ResourceExhausted);
        let draining: tonic::Status = StageServiceError::Submit(SubmitError::ShuttingDown).into();
        assert_eq!(draining.code(), tonic::Code::Unavailable);
        let invalid: tonic::Status = StageServiceError::Cascade(CascadeError::InvalidRequest {
            field: "sampler.steps".into(),
            reason: "must be in 1..=1000, got 0".into(),
        })
        .into();
        assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
        assert!(
            invalid.message().contains("sampler.steps"),
            "{}",
            invalid.message()
        );
        let missing: tonic::Status = StageServiceError::Missing {
            field: "text_embedding",
        }
        .into();
        assert_eq!(missing.code(), tonic::Code::InvalidArgument);
    }
}
