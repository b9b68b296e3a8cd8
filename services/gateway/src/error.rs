//! Everything a generation can fail with, and its gRPC status (mapped here and nowhere else).

use vidcascade_pipeline::{CallError, PipelineError};
use vidcascade_proto::convert::{error_type_of, status};
use vidcascade_spec::ErrorType;

use crate::replicas::is_replica_failure;

/// Why a `Gateway.Generate` call failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Too many requests are waiting.
    #[error("the gateway is at capacity ({limit} requests waiting); retry later")]
    Overloaded {
        /// The waiting limit.
        limit: usize,
    },
    /// The gateway is shutting down.
    #[error("the gateway is shutting down and accepts no new requests")]
    Draining,
    /// The cascade run stopped (invalid request, deadline, a stage's failure, client gone).
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
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
    /// A replica died under a stage call and no other replica could continue the run.
    #[error(
        "stage `{stage}`: its replica failed mid-stream ({reason}) and {failovers} failover(s) to other replicas did not finish the run"
    )]
    ReplicaLost {
        /// The stage.
        stage: String,
        /// The replica.
        address: String,
        /// What the broken stream said.
        reason: String,
        /// Reruns on other replicas before this loss.
        failovers: usize,
    },
    /// Encoding a video in the requested format failed (admission checked that it fits, so
    /// this is a bug).
    #[error("encoding {what} failed: {reason}")]
    Encode {
        /// Which video, e.g. "the final video as GIF".
        what: String,
        /// The encoder's error.
        reason: String,
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
    /// The outcome label (`vidcascade_gateway_requests_total{outcome}`) and status.
    pub fn error_type(&self) -> ErrorType {
        match self {
            Self::Overloaded { .. } => ErrorType::ResourceExhausted,
            Self::Draining | Self::NoReplicas { .. } | Self::ReplicaLost { .. } => {
                ErrorType::Unavailable
            }
            // A broken connection is the replica's failure: worth retrying, not a bug.
            Self::Stage { status, .. }
                if is_replica_failure(status)
                    && status.code() != tonic::Code::ResourceExhausted =>
            {
                ErrorType::Unavailable
            }
            Self::Pipeline(err) => err.error_type(),
            Self::BadAddress { .. } | Self::BadResponse { .. } | Self::Encode { .. } => {
                ErrorType::Internal
            }
            // A stage's INVALID_ARGUMENT means the gateway built a bad request; the client's
            // request was valid, so report INTERNAL rather than blame the client.
            Self::Stage { status, .. } => match error_type_of(status.code()) {
                ErrorType::InvalidArgument => ErrorType::Internal,
                other => other,
            },
        }
    }
}

impl From<GatewayError> for tonic::Status {
    fn from(err: GatewayError) -> Self {
        status(err.error_type(), err.to_string())
    }
}

/// A failed replica call as the pipeline sees it.
impl From<GatewayError> for CallError {
    fn from(err: GatewayError) -> Self {
        let message = match &err {
            // The pipeline names the stage. Replica addresses are internal: they go to the log,
            // not to the public caller.
            GatewayError::Stage {
                stage,
                address,
                status,
            } => {
                tracing::warn!(%stage, %address, code = ?status.code(), "stage call failed");
                status.message().to_string()
            }
            GatewayError::ReplicaLost {
                stage,
                address,
                reason,
                ..
            } => {
                tracing::warn!(%stage, %address, %reason, "replica lost");
                err.to_string()
            }
            GatewayError::BadAddress { service, .. } => {
                tracing::warn!(error = %err, "bad replica address");
                format!("no usable replica of `{service}`")
            }
            other => other.to_string(),
        };
        CallError::new(err.error_type(), message)
    }
}
