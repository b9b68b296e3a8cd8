//! Everything a stage call can fail with, its outcome, and its gRPC status (mapped here and
//! nowhere else).

use vidcascade_engine::EngineError;
use vidcascade_proto::wire::WireError;
use vidcascade_spec::ErrorType;
use vidcascade_spec::sampling::SettingError;

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
    /// A field breaks the wire contract (a video, an enum value).
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A sampler setting is out of range.
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// The engine rejected or failed the request.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl StageServiceError {
    /// The outcome label (`vidcascade_stage_requests_total{outcome}`) and status of this error.
    pub fn error_type(&self) -> ErrorType {
        match self {
            Self::Missing { .. }
            | Self::Unsupported { .. }
            | Self::Tensor { .. }
            | Self::Wire(_)
            | Self::Setting(_) => ErrorType::InvalidArgument,
            Self::Engine(err) => err.error_type(),
        }
    }
}

impl From<StageServiceError> for tonic::Status {
    fn from(err: StageServiceError) -> Self {
        vidcascade_proto::convert::status(err.error_type(), err.to_string())
    }
}

/// Why a wire tensor could not become a model tensor.
#[derive(Debug, thiserror::Error)]
pub enum TensorWireError {
    /// The message breaks the contract.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A value is NaN or infinite.
    #[error("data: element {index} is not a finite number")]
    NonFinite {
        /// Flat index of the first offending element.
        index: usize,
    },
    /// The tensor could not be built.
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// A wire tensor as an f32 tensor on `device`; non-finite values are rejected.
pub fn tensor_from_wire(
    tensor: &vidcascade_proto::v1::Tensor,
    device: &candle_core::Device,
) -> Result<candle_core::Tensor, TensorWireError> {
    let (shape, values) = tensor.to_f32()?;
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(TensorWireError::NonFinite { index });
    }
    Ok(candle_core::Tensor::from_vec(values, shape, device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidcascade_proto::v1;

    #[test]
    fn statuses_follow_the_error_type() {
        let full: tonic::Status = StageServiceError::Engine(EngineError::QueueFull {
            worker: "stage `base`".into(),
            limit: 3,
        })
        .into();
        assert_eq!(full.code(), tonic::Code::ResourceExhausted);
        let draining: tonic::Status = StageServiceError::Engine(EngineError::ShuttingDown {
            worker: "stage `base`".into(),
        })
        .into();
        assert_eq!(draining.code(), tonic::Code::Unavailable);
        let invalid: tonic::Status = StageServiceError::Setting(SettingError {
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

    #[test]
    fn non_finite_values_are_rejected() -> anyhow::Result<()> {
        let wire = v1::Tensor::from_f32(&[2], &[1.0, f32::NAN], v1::DType::F32)?;
        match tensor_from_wire(&wire, &candle_core::Device::Cpu) {
            Err(TensorWireError::NonFinite { index: 1 }) => Ok(()),
            other => anyhow::bail!("expected NonFinite at 1, got {other:?}"),
        }
    }
}
