//! Conversions between this crate's types and the `vidcascade.v1` messages, so the services
//! and the CLI client move videos and embeddings across the wire the same way.

use candle_core::{Device, Tensor};
use vidcascade_diffusion::SamplerKind;
use vidcascade_models::repository::{StageKind, StageManifest, VideoShape};
use vidcascade_proto::v1;
use vidcascade_proto::wire::{WireError, validate_video};

use crate::stage::StageOverrides;
use crate::video::Video;

/// Per-request sampler settings from the wire; unset fields keep the stage's defaults.
pub fn overrides_from_wire(settings: Option<&v1::SamplerSettings>) -> StageOverrides {
    let Some(settings) = settings else {
        return StageOverrides::default();
    };
    StageOverrides {
        steps: settings.steps.map(|s| s as usize),
        guidance: settings.guidance.map(f64::from),
        sampler: match settings.sampler() {
            v1::Sampler::Unspecified => None,
            v1::Sampler::Ddim => Some(SamplerKind::Ddim),
            v1::Sampler::Ancestral => Some(SamplerKind::Ancestral),
        },
        noise_augmentation: settings.noise_augmentation.map(f64::from),
        threshold_quantile: settings.threshold_quantile.map(f64::from),
    }
}

/// Sampler settings for the wire (unset fields stay unset).
pub fn overrides_to_wire(overrides: &StageOverrides) -> v1::SamplerSettings {
    v1::SamplerSettings {
        steps: overrides.steps.map(|s| s.min(u32::MAX as usize) as u32),
        guidance: overrides.guidance.map(|g| g as f32),
        sampler: match overrides.sampler {
            None => v1::Sampler::Unspecified,
            Some(SamplerKind::Ddim) => v1::Sampler::Ddim,
            Some(SamplerKind::Ancestral) => v1::Sampler::Ancestral,
        } as i32,
        noise_augmentation: overrides.noise_augmentation.map(|a| a as f32),
        threshold_quantile: overrides.threshold_quantile.map(|q| q as f32),
    }
}

/// A manifest video shape on the wire.
pub fn shape_to_wire(shape: &VideoShape) -> v1::VideoShape {
    v1::VideoShape {
        frames: shape.frames as u32,
        height: shape.height as u32,
        width: shape.width as u32,
        fps: shape.fps,
    }
}

/// A stage kind on the wire.
pub fn kind_to_wire(kind: StageKind) -> v1::StageKind {
    match kind {
        StageKind::TextEncoder => v1::StageKind::TextEncoder,
        StageKind::Base => v1::StageKind::Base,
        StageKind::Tsr => v1::StageKind::Tsr,
        StageKind::Ssr => v1::StageKind::Ssr,
    }
}

/// A stage's defaults as wire sampler settings (every field set).
pub fn defaults_to_wire(stage: &StageManifest) -> v1::SamplerSettings {
    let defaults = stage.defaults;
    overrides_to_wire(&StageOverrides {
        steps: Some(defaults.steps),
        guidance: Some(defaults.guidance),
        sampler: Some(defaults.sampler),
        noise_augmentation: Some(defaults.noise_augmentation),
        threshold_quantile: defaults.threshold_quantile,
    })
}

/// A video as a `vidcascade.v1.Video` message (whole, `first_frame_index` 0).
pub fn video_to_wire(video: &Video) -> v1::Video {
    v1::Video {
        width: video.width as u32,
        height: video.height as u32,
        fps: video.fps,
        first_frame_index: 0,
        total_frames: video.frames.len() as u32,
        frames: video.frames.clone(),
    }
}

/// A whole `vidcascade.v1.Video` message as a video, after checking it against the contract.
pub fn video_from_wire(video: v1::Video) -> Result<Video, WireError> {
    validate_video(&video)?;
    Ok(Video {
        width: video.width as usize,
        height: video.height as usize,
        fps: video.fps,
        frames: video.frames,
    })
}

/// An embedding `[tokens, dim]` (or any f32 tensor) as a wire tensor of `dtype`.
pub fn tensor_to_wire(tensor: &Tensor, dtype: v1::DType) -> Result<v1::Tensor, TensorWireError> {
    let values = tensor.flatten_all()?.to_vec1::<f32>()?;
    Ok(v1::Tensor::from_f32(tensor.dims(), &values, dtype)?)
}

/// A wire tensor as an f32 tensor on `device`; non-finite values are rejected.
pub fn tensor_from_wire(tensor: &v1::Tensor, device: &Device) -> Result<Tensor, TensorWireError> {
    let (shape, values) = tensor.to_f32()?;
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(TensorWireError::NonFinite { index });
    }
    Ok(Tensor::from_vec(values, shape, device)?)
}

/// Why a tensor could not cross the wire.
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
    /// The tensor could not be built or read.
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn videos_and_tensors_round_trip() -> anyhow::Result<()> {
        let video = Video {
            width: 2,
            height: 1,
            fps: 4.0,
            frames: vec![vec![0, 1, 2, 3, 4, 5], vec![250, 251, 252, 253, 254, 255]],
        };
        assert_eq!(video_from_wire(video_to_wire(&video))?, video);

        let tensor = Tensor::new(&[[0.5f32, -1.25], [3.0, 0.0]], &Device::Cpu)?;
        let back = tensor_from_wire(&tensor_to_wire(&tensor, v1::DType::F32)?, &Device::Cpu)?;
        assert_eq!(back.to_vec2::<f32>()?, tensor.to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn sampler_settings_round_trip() {
        let overrides = StageOverrides {
            steps: Some(7),
            guidance: Some(2.5),
            sampler: Some(SamplerKind::Ancestral),
            noise_augmentation: None,
            threshold_quantile: Some(0.5),
        };
        let back = overrides_from_wire(Some(&overrides_to_wire(&overrides)));
        assert_eq!(back, overrides);
        assert_eq!(overrides_from_wire(None), StageOverrides::default());
    }

    #[test]
    fn non_finite_values_are_rejected() -> anyhow::Result<()> {
        let wire = v1::Tensor::from_f32(&[2], &[1.0, f32::NAN], v1::DType::F32)?;
        match tensor_from_wire(&wire, &Device::Cpu) {
            Err(TensorWireError::NonFinite { index: 1 }) => Ok(()),
            other => anyhow::bail!("expected NonFinite at 1, got {other:?}"),
        }
    }
}
