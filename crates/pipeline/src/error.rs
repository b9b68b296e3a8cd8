//! Why a cascade run stopped, each with its [`ErrorType`].

use std::time::Duration;

use vidcascade_spec::ErrorType;

use crate::backend::CallError;

/// What can end a cascade run early.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PipelineError {
    /// The request breaks a documented limit; nothing ran.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field, as the gateway's API spells it (`stage_overrides[base].steps`).
        field: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// The caller's deadline passed.
    #[error("deadline exceeded {what}, of a {:.1} s deadline", deadline.as_secs_f64())]
    DeadlineExceeded {
        /// Where the time went ("in stage `base`: waited 35.2 s for its first step, then ran
        /// 12 of 32 steps in 84.8 s").
        what: String,
        /// The caller's whole deadline.
        deadline: Duration,
    },
    /// The caller went away (its event receiver was dropped).
    #[error("the caller went away")]
    Cancelled,
    /// A text encoder or stage call failed.
    #[error("stage `{stage}`: {source}")]
    Stage {
        /// The stage (or text encoder) that failed.
        stage: String,
        /// Its error.
        source: CallError,
    },
}

impl PipelineError {
    /// An INVALID_ARGUMENT error.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The outcome label and status of this error.
    pub fn error_type(&self) -> ErrorType {
        match self {
            Self::InvalidArgument { .. } => ErrorType::InvalidArgument,
            Self::DeadlineExceeded { .. } => ErrorType::DeadlineExceeded,
            Self::Cancelled => ErrorType::Cancelled,
            Self::Stage { source, .. } => source.error_type,
        }
    }
}
