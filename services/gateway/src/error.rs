//! Everything a generation can fail with, and its gRPC status (mapped here and nowhere else).

use std::time::Duration;

use tonic::Code;

/// Why a `Gateway.Generate` call failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request breaks a documented limit.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field, as the proto spells it (`stage_overrides[base].steps`).
        field: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// Too many requests are waiting.
    #[error("the gateway is at capacity ({limit} requests waiting); retry later")]
    Overloaded {
        /// The waiting limit.
        limit: usize,
    },
    /// The gateway is shutting down.
    #[error("the gateway is shutting down and accepts no new requests")]
    Draining,
    /// The deadline passed.
    #[error("deadline exceeded after {elapsed:?} while {during}")]
    DeadlineExceeded {
        /// What was running.
        during: String,
        /// Time since the request arrived.
        elapsed: Duration,
    },
    /// Discovery knows no replica of a service.
    #[error("no replica of `{service}` is known (check --stage/--encoder and discovery)")]
    NoReplicas {
        /// The service.
        service: String,
    },
    /// A discovered address is not usable.
    #[error("replica address `{address}` of `{service}` is invalid: {reason}")]
    BadAddress {
        /// The service.
        service: String,
        /// The address.
        address: String,
        /// Why.
        reason: String,
    },
    /// A stage answered with an error status.
    #[error("stage `{stage}` ({address}): {}", status.message())]
    Stage {
        /// The stage.
        stage: String,
        /// The replica.
        address: String,
        /// Its status.
        status: tonic::Status,
    },
    /// A stage's answer broke the contract.
    #[error("stage `{stage}` sent a bad response: {reason}")]
    BadResponse {
        /// The stage.
        stage: String,
        /// What was wrong.
        reason: String,
    },
}

impl GatewayError {
    /// An INVALID_ARGUMENT error.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The status code.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::Overloaded { .. } => Code::ResourceExhausted,
            Self::Draining | Self::NoReplicas { .. } => Code::Unavailable,
            Self::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Self::BadAddress { .. } | Self::BadResponse { .. } => Code::Internal,
            // A stage's INVALID_ARGUMENT means the gateway built a bad request; the client's
            // request was valid, so report INTERNAL rather than blame the client.
            Self::Stage { status, .. } => match status.code() {
                Code::InvalidArgument => Code::Internal,
                code => code,
            },
        }
    }

    /// Label for `vidcascade_gateway_requests_total{outcome}`.
    pub fn outcome(&self) -> &'static str {
        match self.code() {
            Code::InvalidArgument => "invalid_argument",
            Code::ResourceExhausted => "rejected",
            Code::Unavailable => "unavailable",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::Cancelled => "cancelled",
            _ => "failed",
        }
    }
}

impl From<GatewayError> for tonic::Status {
    fn from(err: GatewayError) -> Self {
        tonic::Status::new(err.code(), err.to_string())
    }
}
