//! The inference path: the same layers computed with `vidcascade-kernels`' CPU ops.
//!
//! A layer takes the CPU kernels' path when no gradient can flow through it (no operand is a training
//! variable or the result of a tracked op) and everything is an `f32` tensor on the CPU — that
//! is, whenever the services, `vidcascade generate` or the evaluator sample. The training tool's
//! weights are variables, so it keeps the composed, differentiable ops of [`crate::layers`]
//! without any switch to forget. `tests/inference_path.rs` checks that both paths agree on
//! every stage configuration.
//!
//! Elsewhere (on a CUDA device, or with f16 / bf16 weights) inference takes candle's native ops
//! ([`inference`]: its own convolution and fused softmax rather than the training-oriented
//! composed ones) and the fused flash attention of `vidcascade-kernels` ([`flash`]).

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::Linear;
use vidcascade_kernels::cpu::{Affine, Conv2d, GroupNorm as GroupNormOp, Statistics};

/// Whether `tensors` can take the inference path (see the module docs).
pub fn applies(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| !t.track_op() && t.dtype() == DType::F32 && matches!(t.device(), Device::Cpu))
}

/// Whether no operand can carry a gradient: the native inference ops apply.
pub fn inference(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|t| !t.track_op())
}

/// Whether attention over these operands takes the fused flash kernel: inference in f16 or
/// bf16 (the kernel's element types; on the CPU it runs the kernel's algorithm in Rust).
pub fn flash(tensors: &[&Tensor]) -> bool {
    inference(tensors)
        && tensors
            .iter()
            .all(|t| matches!(t.dtype(), DType::F16 | DType::BF16))
}

/// A group norm's learned parameters and settings, for [`group_norm`].
#[derive(Debug, Clone, Copy)]
pub struct NormParams<'a> {
    /// `[C]` scale (gamma).
    pub weight: &'a Tensor,
    /// `[C]` shift (beta).
    pub bias: &'a Tensor,
    /// Channel groups.
    pub groups: usize,
    /// Added to the variance.
    pub eps: f64,
}

/// Group norm of `x` `[N, C, ...]` over `statistics`, then the norm's affine map, then FiLM
/// (`film` = `[N, C]` scale and shift rows, applied as `* (1 + scale) + shift`), then SiLU.
pub fn group_norm(
    x: &Tensor,
    norm: NormParams<'_>,
    statistics: Statistics,
    film: Option<(&Tensor, &Tensor)>,
    silu: bool,
) -> Result<Tensor> {
    let weight = norm.weight.to_vec1::<f32>()?;
    let bias = norm.bias.to_vec1::<f32>()?;
    let affine = match film {
        None => Affine::channels(weight, bias),
        Some((scale, shift)) => Affine::film(
            &weight,
            &bias,
            &scale.flatten_all()?.to_vec1::<f32>()?,
            &shift.flatten_all()?.to_vec1::<f32>()?,
        ),
    };
    x.contiguous()?.apply_op1_no_bwd(&GroupNormOp {
        groups: norm.groups,
        eps: norm.eps as f32,
        statistics,
        affine,
        silu,
    })
}

/// `conv(x, weight) + bias` with same padding (see [`Conv2d`]); a missing bias is zero.
pub fn conv(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: usize) -> Result<Tensor> {
    let zeros;
    let bias = match bias {
        Some(b) => b,
        None => {
            zeros = Tensor::zeros(weight.dim(0)?, DType::F32, weight.device())?;
            &zeros
        }
    };
    x.contiguous()?
        .apply_op3_no_bwd(&weight.contiguous()?, bias, &Conv2d { stride })
}

/// A linear layer applied to every position of `x` `[N, C, ...]` (a 1x1 convolution), so
/// token projections need no transpose into `[N, positions, C]`.
pub fn pointwise(x: &Tensor, linear: &Linear) -> Result<Tensor> {
    let w = linear.weight();
    let (out_c, in_c) = w.dims2()?;
    let weight = if x.rank() == 4 {
        w.reshape((out_c, in_c, 1, 1))?
    } else {
        w.reshape((out_c, in_c, 1))?
    };
    conv(x, &weight, linear.bias(), 1)
}
