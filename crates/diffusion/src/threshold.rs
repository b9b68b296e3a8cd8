//! Dynamic thresholding of the x0 estimate (Saharia et al. 2022, "Imagen", section 2.3).
//!
//! Large guidance weights push the x0 estimate outside the data range [-1, 1]. Static clipping
//! then saturates colours; dynamic thresholding instead picks, per sample, the `p`-quantile `s` of
//! `|x0|`, and when `s > 1` clamps to `[-s, s]` and divides by `s`, pulling saturated pixels inward.

use candle_core::{Result as CandleResult, Tensor};

use crate::DiffusionError;

/// The `p`-quantile of `values` with linear interpolation between order statistics (the
/// definition numpy and torch use by default). `values` must be non-empty and finite.
fn quantile_of_sorted(sorted: &[f32], p: f64) -> f64 {
    let position = p * (sorted.len() - 1) as f64;
    let lo = position.floor() as usize;
    let hi = position.ceil() as usize;
    let frac = position - lo as f64;
    sorted[lo] as f64 + (sorted[hi] as f64 - sorted[lo] as f64) * frac
}

/// The threshold `s = max(1, quantile(|x|, p))` of one sample's values.
pub fn threshold_scale(values: &[f32], quantile: f64) -> f64 {
    if values.is_empty() {
        return 1.0;
    }
    let mut magnitudes: Vec<f32> = values.iter().map(|v| v.abs()).collect();
    magnitudes.sort_by(f32::total_cmp);
    quantile_of_sorted(&magnitudes, quantile).max(1.0)
}

/// Dynamic thresholding of a batch `[B, ...]`, each sample with its own scale.
///
/// Rejects non-finite input: a NaN would poison the quantile and silently produce a NaN video.
/// `step` only labels the error.
pub fn dynamic_threshold(
    x0: &Tensor,
    quantile: f64,
    step: usize,
) -> Result<Tensor, DiffusionError> {
    if !(quantile > 0.0 && quantile <= 1.0) {
        return Err(DiffusionError::InvalidSetting {
            field: "threshold_quantile",
            reason: format!("must be in (0, 1], got {quantile}"),
        });
    }
    let batch = x0.dim(0)?;
    let mut rows = Vec::with_capacity(batch);
    for sample in 0..batch {
        let row = x0.get(sample)?;
        let values = row.flatten_all()?.to_vec1::<f32>()?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(DiffusionError::NonFinite {
                what: "x0 estimate",
                sample,
                step,
            });
        }
        let s = threshold_scale(&values, quantile);
        rows.push(clamp_and_scale(&row, s)?);
    }
    Ok(Tensor::stack(&rows, 0)?)
}

fn clamp_and_scale(row: &Tensor, s: f64) -> CandleResult<Tensor> {
    if s <= 1.0 {
        // clamp(x, -1, 1) / 1: values inside the data range are untouched.
        return row.clamp(-1f32, 1f32);
    }
    row.clamp(-s as f32, s as f32)? / s
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn quantile_matches_numpy_linear_interpolation() {
        // numpy.quantile([1, 2, 3, 4], 0.5) == 2.5; 0.9 -> 3.7
        assert!((quantile_of_sorted(&[1.0, 2.0, 3.0, 4.0], 0.5) - 2.5).abs() < 1e-12);
        assert!((quantile_of_sorted(&[1.0, 2.0, 3.0, 4.0], 0.9) - 3.7).abs() < 1e-6);
        assert_eq!(quantile_of_sorted(&[5.0], 0.995), 5.0);
    }

    #[test]
    fn each_sample_gets_its_own_scale() -> anyhow::Result<()> {
        // Sample 0 stays in range: untouched. Sample 1 has |x| up to 4: with p = 1 the scale is 4.
        let x = Tensor::new(
            &[[0.5f32, -0.25, 1.0, 0.0], [4.0, -2.0, 1.0, 0.0]],
            &Device::Cpu,
        )?;
        let y = dynamic_threshold(&x, 1.0, 1)?.to_vec2::<f32>()?;
        assert_eq!(y[0], vec![0.5, -0.25, 1.0, 0.0]);
        assert_eq!(y[1], vec![1.0, -0.5, 0.25, 0.0]);
        Ok(())
    }

    #[test]
    fn quantile_below_one_clamps_outliers_before_scaling() -> anyhow::Result<()> {
        // |x| sorted = [0, 1, 2, 3, 100]; p = 0.75 -> position 3 -> s = 3.
        let x = Tensor::new(&[[100.0f32, -3.0, 2.0, 1.0, 0.0]], &Device::Cpu)?;
        let y = dynamic_threshold(&x, 0.75, 1)?.to_vec2::<f32>()?;
        assert_eq!(y[0], vec![1.0, -1.0, 2.0 / 3.0, 1.0 / 3.0, 0.0]);
        Ok(())
    }

    #[test]
    fn all_zero_input_stays_zero() -> anyhow::Result<()> {
        let x = Tensor::zeros((2, 3, 4), candle_core::DType::F32, &Device::Cpu)?;
        let y = dynamic_threshold(&x, 0.995, 1)?;
        assert_eq!(y.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn nan_and_infinity_are_rejected_naming_the_sample() -> anyhow::Result<()> {
        let x = Tensor::new(&[[0.0f32, 1.0], [f32::NAN, 0.0]], &Device::Cpu)?;
        let err = dynamic_threshold(&x, 0.995, 7).expect_err("NaN must be rejected");
        assert!(matches!(
            err,
            DiffusionError::NonFinite {
                sample: 1,
                step: 7,
                ..
            }
        ));
        let x = Tensor::new(&[[f32::INFINITY, 1.0]], &Device::Cpu)?;
        assert!(dynamic_threshold(&x, 0.995, 1).is_err());
        Ok(())
    }

    #[test]
    fn quantile_outside_unit_interval_is_rejected() -> anyhow::Result<()> {
        let x = Tensor::zeros((1, 2), candle_core::DType::F32, &Device::Cpu)?;
        for bad in [0.0, -0.5, 1.5, f64::NAN] {
            let err = dynamic_threshold(&x, bad, 0).expect_err("bad quantile");
            assert!(err.to_string().contains("threshold_quantile"), "{err}");
        }
        Ok(())
    }
}
