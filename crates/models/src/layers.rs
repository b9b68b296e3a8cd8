//! Small building blocks shared by the text encoder and the Video U-Net.
//!
//! Everything here is composed from differentiable tensor ops on purpose: candle 0.11's fused
//! `ops::rms_norm`, `ops::layer_norm`, `ops::softmax_last_dim` and `sdpa` have no backward pass
//! (gradients silently stop), and the training tool runs this very code.

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};
use vidcascade_kernels::cpu::Statistics;
use vidcascade_kernels::flash::{FlashBias, flash_attention};

use crate::fast;

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

/// A group norm (candle's, checkpoint names `weight` and `bias`) whose parameters the
/// inference path can read.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    inner: candle_nn::GroupNorm,
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// Loads `weight` (ones) and `bias` (zeros) of size `channels`, split into `groups`.
    pub fn new(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        Ok(Self {
            inner: candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?,
            weight,
            bias,
            groups,
            eps,
        })
    }

    /// The parameters, for the inference path's fused ops.
    pub fn params(&self) -> fast::NormParams<'_> {
        fast::NormParams {
            weight: &self.weight,
            bias: &self.bias,
            groups: self.groups,
            eps: self.eps,
        }
    }

    /// `silu(norm(x))`, fused on the inference path.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.normalize(x, true)
    }

    fn normalize(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if fast::applies(&[x, &self.weight, &self.bias]) {
            return fast::group_norm(x, self.params(), Statistics::PerImage, None, silu);
        }
        let y = self.inner.forward(x)?;
        if silu { y.silu() } else { Ok(y) }
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.normalize(x, false)
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

    /// The inference path's layer norm over the channels of `x` `[N, C, ...]` (each position a
    /// token), so attention blocks need not transpose the video into tokens first.
    pub fn forward_channels(&self, x: &Tensor) -> Result<Tensor> {
        let params = fast::NormParams {
            weight: &self.weight,
            bias: &self.bias,
            groups: 1,
            eps: self.eps,
        };
        fast::group_norm(
            x,
            params,
            Statistics::PerPosition { frames: 1 },
            None,
            false,
        )
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.dtype() != DType::F32 {
            // Statistics of f16 / bf16 activations in f32, as candle's group norm does.
            let (weight, bias) = (
                self.weight.to_dtype(DType::F32)?,
                self.bias.to_dtype(DType::F32)?,
            );
            let norm = Self {
                weight,
                bias,
                eps: self.eps,
            };
            return norm.forward(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype());
        }
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
/// or `-inf`-like values on padded keys). The softmax is candle's composed one while gradients
/// flow (training), its fused kernel otherwise.
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
    let weights = if logits.track_op() {
        candle_nn::ops::softmax(&logits, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&logits)?
    };
    weights.matmul(v)
}

/// What is added to the logits of [`multi_head_attention`].
#[derive(Debug, Clone, Copy)]
pub enum LogitBias<'a> {
    /// Nothing (spatial self-attention).
    None,
    /// A `[N, Lk]` mask of real (1) and padding (0) keys (text cross-attention).
    KeyPadding(&'a Tensor),
    /// A `[heads, Lq, Lk]` bias shared by all `N` (temporal attention's relative positions).
    PerHead(&'a Tensor),
}

/// [`attention`] in the token layout, through the fused flash kernel when [`fast::flash`]
/// applies (f16 / bf16 inference) and the composed ops otherwise.
pub fn multi_head_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: LogitBias<'_>,
) -> Result<Tensor> {
    if fast::flash(&[q, k, v]) {
        let bias = match bias {
            LogitBias::None => FlashBias::None,
            LogitBias::KeyPadding(mask) => {
                FlashBias::KeyPadding(key_padding_bias(mask)?.flatten_from(1)?.contiguous()?)
            }
            LogitBias::PerHead(b) => FlashBias::PerHead(b.to_dtype(DType::F32)?.contiguous()?),
        };
        return flash_attention(q, k, v, scale as f32, bias);
    }
    let bias = match bias {
        LogitBias::None => None,
        LogitBias::KeyPadding(mask) => Some(key_padding_bias(mask)?.to_dtype(q.dtype())?),
        LogitBias::PerHead(b) => Some(b.unsqueeze(0)?),
    };
    attention(q, k, v, scale, bias.as_ref())
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

/// A same-padding convolution over the last two dims (2D) or the last dim (1D), computed as an
/// unfold (shifted views of the padded input) followed by one large matrix product.
///
/// Weights have candle's / PyTorch's layout (`[out, in, k, k]` or `[out, in, k]`), so checkpoints
/// are interchangeable with `candle_nn::Conv2d`. It exists because candle 0.11 computes the input
/// gradient of its convolutions with a direct transposed-convolution loop that is ~10x slower
/// than its forward pass on CPU; a matmul's backward is another matmul.
#[derive(Debug, Clone)]
pub struct SameConv {
    weight: Tensor,
    bias: Option<Tensor>,
    kernel: usize,
    stride: usize,
    spatial_dims: usize,
}

impl SameConv {
    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    /// The `[out, in, k(, k)]` weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The `[out]` bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// candle's own convolution (on CUDA: im2col + cuBLAS), for inference off the CPU path.
    fn forward_native(&self, x: &Tensor) -> Result<Tensor> {
        let pad = self.kernel / 2;
        let y = match self.spatial_dims {
            2 => x.conv2d(&self.weight, pad, self.stride, 1, 1)?,
            _ => x.conv1d(&self.weight, pad, self.stride, 1, 1)?,
        };
        match &self.bias {
            None => Ok(y),
            Some(b) => {
                let mut shape = vec![1, b.dim(0)?];
                shape.resize(y.rank(), 1);
                y.broadcast_add(&b.reshape(shape)?)
            }
        }
    }

    fn unfold(&self, x: &Tensor) -> Result<Tensor> {
        let k = self.kernel;
        let pad = k / 2;
        if k == 1 {
            return x.unsqueeze(2);
        }
        let rank = x.rank();
        match self.spatial_dims {
            2 => {
                let (h, w) = (x.dim(rank - 2)?, x.dim(rank - 1)?);
                let padded =
                    x.pad_with_zeros(rank - 2, pad, pad)?
                        .pad_with_zeros(rank - 1, pad, pad)?;
                let mut views = Vec::with_capacity(k * k);
                for di in 0..k {
                    for dj in 0..k {
                        views.push(padded.narrow(rank - 2, di, h)?.narrow(rank - 1, dj, w)?);
                    }
                }
                Tensor::stack(&views, 2)
            }
            _ => {
                let l = x.dim(rank - 1)?;
                let padded = x.pad_with_zeros(rank - 1, pad, pad)?;
                let views = (0..k)
                    .map(|d| padded.narrow(rank - 1, d, l))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::stack(&views, 2)
            }
        }
    }
}

impl Module for SameConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let params: Vec<&Tensor> = [Some(x), Some(&self.weight), self.bias.as_ref()]
            .into_iter()
            .flatten()
            .collect();
        if fast::applies(&params) {
            return fast::conv(x, &self.weight, self.bias.as_ref(), self.stride);
        }
        if fast::inference(&params) {
            return self.forward_native(x);
        }
        let dims = x.dims().to_vec();
        let (n, c) = (dims[0], dims[1]);
        let spatial: Vec<usize> = dims[2..].to_vec();
        let positions: usize = spatial.iter().product();
        let taps = self.kernel.pow(self.spatial_dims as u32);
        // [N, C, taps, *spatial] -> [C * taps, N * positions]: one GEMM for the whole batch.
        let cols = self
            .unfold(x)?
            .reshape((n, c * taps, positions))?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((c * taps, n * positions))?;
        let out_c = self.out_channels();
        let w = self.weight.reshape((out_c, c * taps))?;
        let mut y = w.matmul(&cols)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&b.unsqueeze(1)?)?;
        }
        let mut shape = vec![out_c, n];
        shape.extend_from_slice(&spatial);
        let y = y.reshape(shape)?.transpose(0, 1)?.contiguous()?;
        if self.stride == 1 {
            return Ok(y);
        }
        // Stride 2 (2D only): keep the even positions of the stride-1 result.
        let (h, w) = (spatial[0], spatial[1]);
        y.reshape((n, out_c, h / 2, 2, w / 2, 2))?
            .narrow(3, 0, 1)?
            .narrow(5, 0, 1)?
            .reshape((n, out_c, h / 2, w / 2))
    }
}

fn conv_weights(
    shape: &[usize],
    fan_in: usize,
    zero: bool,
    vb: &VarBuilder,
) -> Result<(Tensor, Tensor)> {
    let out_c = shape[0];
    let (w_init, b_init) = if zero {
        (Init::Const(0.0), Init::Const(0.0))
    } else {
        let bound = 1.0 / (fan_in as f64).sqrt();
        (
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )
    };
    let weight = vb.get_with_hints(shape, "weight", w_init)?;
    let bias = vb.get_with_hints(out_c, "bias", b_init)?;
    Ok((weight, bias))
}

/// A `k x k` same-padding 2D convolution (stride 1), optionally zero-initialised.
pub fn conv2d_same(
    in_c: usize,
    out_c: usize,
    k: usize,
    zero: bool,
    vb: VarBuilder,
) -> Result<SameConv> {
    let (weight, bias) = conv_weights(&[out_c, in_c, k, k], in_c, zero, &vb)?;
    Ok(SameConv {
        weight,
        bias: Some(bias),
        kernel: k,
        stride: 1,
        spatial_dims: 2,
    })
}

/// A stride-2 `3 x 3` convolution that halves height and width.
pub fn conv2d_down(channels: usize, vb: VarBuilder) -> Result<SameConv> {
    let (weight, bias) = conv_weights(&[channels, channels, 3, 3], channels, false, &vb)?;
    Ok(SameConv {
        weight,
        bias: Some(bias),
        kernel: 3,
        stride: 2,
        spatial_dims: 2,
    })
}

/// A same-padding 1D convolution over time, zero-initialised so it starts as a no-op branch.
pub fn zero_conv1d_same(channels: usize, k: usize, vb: VarBuilder) -> Result<SameConv> {
    let (weight, bias) = conv_weights(&[channels, channels, k], channels, true, &vb)?;
    Ok(SameConv {
        weight,
        bias: Some(bias),
        kernel: k,
        stride: 1,
        spatial_dims: 1,
    })
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
    fn unfolded_convolutions_match_candle_convolutions() -> Result<()> {
        let dev = Device::Cpu;
        let vb = VarBuilder::from_tensors(
            [
                (
                    "weight".to_string(),
                    Tensor::randn(0f32, 1.0, (5, 3, 3, 3), &dev)?,
                ),
                ("bias".to_string(), Tensor::randn(0f32, 1.0, 5, &dev)?),
            ]
            .into_iter()
            .collect(),
            DType::F32,
            &dev,
        );
        let x = Tensor::randn(0f32, 1.0, (2, 3, 6, 8), &dev)?;
        let ours = conv2d_same(3, 5, 3, false, vb.clone())?;
        let theirs = candle_nn::Conv2d::new(
            ours.weight.clone(),
            ours.bias.clone(),
            candle_nn::Conv2dConfig {
                padding: 1,
                ..Default::default()
            },
        );
        let diff = (ours.forward(&x)? - theirs.forward(&x)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-4, "stride 1: {diff}");

        let x = Tensor::randn(0f32, 1.0, (2, 5, 6, 8), &dev)?;
        let vb5 = VarBuilder::from_tensors(
            [
                (
                    "weight".to_string(),
                    Tensor::randn(0f32, 1.0, (5, 5, 3, 3), &dev)?,
                ),
                ("bias".to_string(), Tensor::randn(0f32, 1.0, 5, &dev)?),
            ]
            .into_iter()
            .collect(),
            DType::F32,
            &dev,
        );
        let ours = conv2d_down(5, vb5)?;
        let theirs = candle_nn::Conv2d::new(
            ours.weight.clone(),
            ours.bias.clone(),
            candle_nn::Conv2dConfig {
                padding: 1,
                stride: 2,
                ..Default::default()
            },
        );
        let diff = (ours.forward(&x)? - theirs.forward(&x)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-4, "stride 2: {diff}");

        let x = Tensor::randn(0f32, 1.0, (4, 5, 7), &dev)?;
        let conv1 = SameConv {
            weight: Tensor::randn(0f32, 1.0, (5, 5, 3), &dev)?,
            bias: Some(Tensor::randn(0f32, 1.0, 5, &dev)?),
            kernel: 3,
            stride: 1,
            spatial_dims: 1,
        };
        let theirs = candle_nn::Conv1d::new(
            conv1.weight.clone(),
            conv1.bias.clone(),
            candle_nn::Conv1dConfig {
                padding: 1,
                ..Default::default()
            },
        );
        let diff = (conv1.forward(&x)? - theirs.forward(&x)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-4, "1d: {diff}");
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
