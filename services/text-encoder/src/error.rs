//! Everything an Encode call can fail with, its outcome, and its gRPC status (mapped here only).

use vidcascade_engine::EngineError;
use vidcascade_spec::ErrorType;

/// Why an Encode call failed.
#[derive(Debug, thiserror::Error)]
pub enum EncoderServiceError {
    /// The engine rejected or failed the call (bad prompts, full queue, draining, deadline).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// An embedding could not be put on the wire.
    #[error("embeddings: {0}")]
    Wire(#[from] vidcascade_proto::wire::WireError),
    /// An embedding could not be read back from the model's tensor.
    #[error("embeddings: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl EncoderServiceError {
    /// The outcome label (`vidcascade_encoder_requests_total{outcome}`) and status.
    pub fn error_type(&self) -> ErrorType {
        match self {
            Self::Engine(err) => err.error_type(),
            Self::Wire(_) | Self::Tensor(_) => ErrorType::Internal,
        }
    }
}

impl From<EncoderServiceError> for tonic::Status {
    fn from(err: EncoderServiceError) -> Self {
        vidcascade_proto::convert::status(err.error_type(), err.to_string())
    }
}
