//! Small building blocks shared by the text encoder and the Video U-Net.
//!
//! Everything here is composed from differentiable tensor ops on purpose: candle 0.11's fused
//! `ops::rms_norm`, `ops::layer_norm`, `ops::softmax_last_dim` and `sdpa` have no backward pass
//! (gradients silently stop), and the training tool runs this very code.

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{Conv1d, Conv1dConfig, Conv2d, Conv2dConfig, Init, Linear, VarBuilder};

/// T5's RMS norm: `x / sqrt(mean(x^2) + eps) * weight`, no mean subtraction and no bias.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Loads `weight` of size `dim`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        Ok(Self { weight, eps })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let variance = x.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x.broadcast_div(&(variance + self.eps)?.sqrt()?)?;
        normed.broadcast_mul(&self.weight)
    }
}

/// Layer norm over the last dimension with a learned scale and shift.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` of size `dim`.
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
        Ok(Self {
            weight,
            bias,
            eps: 1e-5,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let centered = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let variance = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(variance + self.eps)?.sqrt()?)?;
        normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// Scaled dot-product attention over `[N, heads, Lq, d]` x `[N, heads, Lk, d]`.
///
/// `bias`, when given, is added to the logits (it broadcasts: relative position biases,
/// or `-inf`-like values on padded keys).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let logits = (q.matmul(&k.t()?)? * scale)?;
    let logits = match bias {
        Some(b) => logits.broadcast_add(b)?,
        None => logits,
    };
    candle_nn::ops::softmax(&logits, D::Minus1)?.matmul(v)
}

/// Splits `[N, L, heads * d]` into `[N, heads, L, d]`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (n, l, width) = x.dims3()?;
    x.reshape((n, l, heads, width / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// Merges `[N, heads, L, d]` back into `[N, L, heads * d]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (n, heads, l, d) = x.dims4()?;
    x.transpose(1, 2)?.contiguous()?.reshape((n, l, heads * d))
}

/// Additive attention bias from a `[N, L]` key mask (1 = attend, 0 = padding): `[N, 1, 1, L]`
/// holding 0 or a large negative number.
pub fn key_padding_bias(mask: &Tensor) -> Result<Tensor> {
    let (n, l) = mask.dims2()?;
    ((mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?.reshape((n, 1, 1, l))
}

/// A linear layer whose weight and bias start at zero, so a new residual branch starts as the
/// identity (the usual diffusion-model initialisation of output projections).
pub fn zero_linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", Init::Const(0.0))?;
    let bias = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
    Ok(Linear::new(weight, Some(bias)))
}

/// A `k x k` same-padding 2D convolution (stride 1), optionally zero-initialised.
pub fn conv2d_same(
    in_c: usize,
    out_c: usize,
    k: usize,
    zero: bool,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: k / 2,
        ..Default::default()
    };
    if zero {
        let weight = vb.get_with_hints((out_c, in_c, k, k), "weight", Init::Const(0.0))?;
        let bias = vb.get_with_hints(out_c, "bias", Init::Const(0.0))?;
        return Ok(Conv2d::new(weight, Some(bias), cfg));
    }
    candle_nn::conv2d(in_c, out_c, k, cfg, vb)
}

/// A stride-2 `3 x 3` convolution that halves height and width.
pub fn conv2d_down(channels: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        stride: 2,
        ..Default::default()
    };
    candle_nn::conv2d(channels, channels, 3, cfg, vb)
}

/// A same-padding 1D convolution over time, zero-initialised so it starts as a no-op branch.
pub fn zero_conv1d_same(channels: usize, k: usize, vb: VarBuilder) -> Result<Conv1d> {
    let cfg = Conv1dConfig {
        padding: k / 2,
        ..Default::default()
    };
    let weight = vb.get_with_hints((channels, channels, k), "weight", Init::Const(0.0))?;
    let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
    Ok(Conv1d::new(weight, Some(bias), cfg))
}

/// Transformer-style sinusoidal embedding of one scalar per batch row: `[B] -> [B, dim]`.
///
/// Scalars are expected in [0, 1] (diffusion time, augmentation level) and are scaled by 1000 so
/// the frequencies cover the range the way integer-timestep models do.
pub fn sinusoidal_embedding(values: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let device = values.device();
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10_000f64.ln()) * i as f64 / half as f64).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), device)?;
    let args = (values.to_dtype(DType::F32)?.unsqueeze(1)? * 1000.0)?.broadcast_mul(&freqs)?;
    Tensor::cat(&[args.cos()?, args.sin()?], 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rms_norm_matches_hand_computation() -> Result<()> {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let norm = RmsNorm {
            weight: Tensor::new(&[1.0f32, 2.0], &Device::Cpu)?,
            eps: 0.0,
        };
        let _ = vb;
        // x = [3, 4]: rms = sqrt(12.5); out = [3, 8] / sqrt(12.5).
        let y = norm
            .forward(&Tensor::new(&[[3.0f32, 4.0]], &Device::Cpu)?)?
            .to_vec2::<f32>()?;
        let r = 12.5f32.sqrt();
        assert!((y[0][0] - 3.0 / r).abs() < 1e-6 && (y[0][1] - 8.0 / r).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn padding_bias_blocks_padded_keys() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::ones((1, 1, 1, 2), DType::F32, &dev)?;
        let k = Tensor::ones((1, 1, 3, 2), DType::F32, &dev)?;
        let v = Tensor::new(&[[[[1.0f32], [2.0], [100.0]]]], &dev)?;
        let bias = key_padding_bias(&Tensor::new(&[[1.0f32, 1.0, 0.0]], &dev)?)?;
        let out = attention(&q, &k, &v, 1.0, Some(&bias))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!((out[0] - 1.5).abs() < 1e-5, "{out:?}");
        Ok(())
    }

    #[test]
    fn sinusoidal_embedding_separates_times() -> Result<()> {
        let t = Tensor::new(&[0.0f32, 0.5, 1.0], &Device::Cpu)?;
        let e = sinusoidal_embedding(&t, 16)?;
        assert_eq!(e.dims(), &[3, 16]);
        let rows = e.to_vec2::<f32>()?;
        assert_ne!(rows[0], rows[1]);
        assert_eq!(rows[0][0], 1.0); // cos(0)
        Ok(())
    }
}
