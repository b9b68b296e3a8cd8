//! Classifier-free guidance (Ho & Salimans 2022) in v-space.
//!
//! The conditional and unconditional predictions come from one batched network call (the sampler
//! puts both rows in the same batch); this module only combines them:
//! `v = v_uncond + w (v_cond - v_uncond)`. With `w = 1` the result is exactly `v_cond`, and the
//! sampler skips the unconditional row altogether.

use candle_core::{Result, Tensor};

/// Combines conditional and unconditional v predictions with guidance weight `weight`.
pub fn classifier_free_guidance(v_cond: &Tensor, v_uncond: &Tensor, weight: f64) -> Result<Tensor> {
    if weight == 1.0 {
        return Ok(v_cond.clone());
    }
    let delta = (v_cond - v_uncond)?;
    v_uncond + (delta * weight)?
}

/// Whether a guidance weight needs the unconditional prediction at all.
pub fn needs_unconditional(weight: f64) -> bool {
    weight != 1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn guidance_extrapolates_away_from_the_unconditional_prediction() -> Result<()> {
        let c = Tensor::new(&[1.0f32, -2.0, 0.5], &Device::Cpu)?;
        let u = Tensor::new(&[0.5f32, -1.0, 0.5], &Device::Cpu)?;
        let v = classifier_free_guidance(&c, &u, 3.0)?.to_vec1::<f32>()?;
        // 0.5 + 3 * 0.5 = 2.0; -1 + 3 * -1 = -4; equal inputs stay put.
        assert_eq!(v, vec![2.0, -4.0, 0.5]);
        Ok(())
    }

    #[test]
    fn weight_one_is_the_conditional_prediction_and_zero_the_unconditional() -> Result<()> {
        let c = Tensor::new(&[1.25f32, 7.0], &Device::Cpu)?;
        let u = Tensor::new(&[-3.0f32, 2.0], &Device::Cpu)?;
        assert_eq!(
            classifier_free_guidance(&c, &u, 1.0)?.to_vec1::<f32>()?,
            vec![1.25, 7.0]
        );
        assert_eq!(
            classifier_free_guidance(&c, &u, 0.0)?.to_vec1::<f32>()?,
            vec![-3.0, 2.0]
        );
        assert!(!needs_unconditional(1.0));
        assert!(needs_unconditional(0.0));
        Ok(())
    }
}
