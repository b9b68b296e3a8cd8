//! Resumable checkpoints on the wire: the `StageCheckpoint` a stage streams every
//! `checkpoint_every` steps, and the `resume` field that lets another replica continue the run.
//!
//! A checkpoint is checked before any work: its step must leave at least one step to run and its
//! latent must have the stage's output shape (checked on the declared shape, before the data is
//! decoded) and hold only finite values.

use candle_core::{Device, Tensor};
use vidcascade_engine::Checkpoint;
use vidcascade_proto::v1;
use vidcascade_spec::VideoShape;

use crate::error::{StageServiceError, tensor_from_wire};

/// The `resume` field of a request whose run has `steps` steps at a stage whose output is
/// `output`, as an engine checkpoint.
pub fn checkpoint_from_wire(
    resume: &v1::StageCheckpoint,
    steps: usize,
    output: VideoShape,
    device: &Device,
) -> Result<Checkpoint, StageServiceError> {
    let step = resume.step as usize;
    if step == 0 || step >= steps {
        return Err(StageServiceError::Unsupported {
            field: "resume.step",
            reason: format!(
                "must be between 1 and {} (the run has {steps} steps), got {step}",
                steps.saturating_sub(1)
            ),
        });
    }
    let latent = resume.latent.as_ref().ok_or(StageServiceError::Missing {
        field: "resume.latent",
    })?;
    let expected = [3, output.frames, output.height, output.width].map(|d| d as u64);
    if latent.shape != expected || latent.dtype() != v1::DType::F32 {
        return Err(StageServiceError::Unsupported {
            field: "resume.latent",
            reason: format!(
                "must be FLOAT32 of shape {expected:?} (this stage's output), got {:?} of shape {:?}",
                latent.dtype(),
                latent.shape
            ),
        });
    }
    let latent = tensor_from_wire(latent, device).map_err(|source| StageServiceError::Tensor {
        field: "resume.latent",
        source,
    })?;
    Ok(Checkpoint {
        latent,
        completed_steps: step,
        noise_position: u128::from(resume.noise_position),
    })
}

/// An engine checkpoint as a `StageCheckpoint` event; `None` when its noise position does not
/// fit the wire's 64 bits (2^64 words of noise: never in practice), so no checkpoint is sent.
pub fn checkpoint_to_wire(
    checkpoint: &Checkpoint,
) -> Result<Option<v1::StageCheckpoint>, candle_core::Error> {
    let Ok(noise_position) = u64::try_from(checkpoint.noise_position) else {
        return Ok(None);
    };
    let latent: &Tensor = &checkpoint.latent;
    let data = latent.flatten_all()?.to_vec1::<f32>()?;
    let latent = v1::Tensor::from_f32(latent.dims(), &data, v1::DType::F32)
        .map_err(|err| candle_core::Error::Msg(err.to_string()))?;
    Ok(Some(v1::StageCheckpoint {
        step: checkpoint.completed_steps as u32,
        latent: Some(latent),
        noise_position,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: VideoShape = VideoShape {
        frames: 2,
        height: 4,
        width: 4,
        fps: 8.0,
    };

    fn wire(step: u32) -> anyhow::Result<v1::StageCheckpoint> {
        let latent = Tensor::ones((3, 2, 4, 4), candle_core::DType::F32, &Device::Cpu)?;
        let checkpoint = Checkpoint {
            latent,
            completed_steps: step as usize,
            noise_position: 77,
        };
        checkpoint_to_wire(&checkpoint)?.ok_or_else(|| anyhow::anyhow!("no checkpoint"))
    }

    #[test]
    fn a_checkpoint_survives_the_wire() -> anyhow::Result<()> {
        let back = checkpoint_from_wire(&wire(3)?, 8, OUTPUT, &Device::Cpu)?;
        assert_eq!(back.completed_steps, 3);
        assert_eq!(back.noise_position, 77);
        assert_eq!(back.latent.dims(), &[3, 2, 4, 4]);
        Ok(())
    }

    #[test]
    fn bad_checkpoints_name_the_field() -> anyhow::Result<()> {
        let field = |resume: &v1::StageCheckpoint, steps| match checkpoint_from_wire(
            resume,
            steps,
            OUTPUT,
            &Device::Cpu,
        ) {
            Err(StageServiceError::Unsupported { field, .. })
            | Err(StageServiceError::Missing { field })
            | Err(StageServiceError::Tensor { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        };
        assert_eq!(field(&wire(0)?, 8), "resume.step");
        assert_eq!(field(&wire(8)?, 8), "resume.step");
        let mut wrong_shape = wire(3)?;
        if let Some(latent) = wrong_shape.latent.as_mut() {
            latent.shape = vec![3, 2, 4, 1 << 40];
        }
        assert_eq!(field(&wrong_shape, 8), "resume.latent");
        let mut no_latent = wire(3)?;
        no_latent.latent = None;
        assert_eq!(field(&no_latent, 8), "resume.latent");
        let mut nan = wire(3)?;
        if let Some(latent) = nan.latent.as_mut() {
            latent.data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        }
        assert_eq!(field(&nan, 8), "resume.latent");
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any `resume` a caller sends is accepted only when it fits the run, and never panics.
        #[test]
        fn any_resume_field_is_checked_before_use(
            step in proptest::prelude::any::<u32>(),
            steps in 1usize..12,
            shape in proptest::collection::vec(
                proptest::prop_oneof![0u64..5, proptest::prelude::Just(u64::MAX)], 0..5),
            dtype in 0i32..5,
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            noise_position in proptest::prelude::any::<u64>(),
        ) {
            let resume = v1::StageCheckpoint {
                step,
                latent: Some(v1::Tensor { dtype, shape, data }),
                noise_position,
            };
            if let Ok(checkpoint) = checkpoint_from_wire(&resume, steps, OUTPUT, &Device::Cpu) {
                proptest::prop_assert!((1..steps).contains(&checkpoint.completed_steps));
                proptest::prop_assert_eq!(checkpoint.latent.dims(), &[3, 2, 4, 4]);
            }
        }
    }
}
