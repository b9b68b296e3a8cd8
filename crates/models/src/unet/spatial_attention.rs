//! Per-frame spatial self-attention followed by cross-attention to the text tokens: the two ways
//! a pixel learns about the rest of its frame and about the prompt.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder, linear, linear_no_bias};
use vidcascade_kernels::cpu::{Attention, AttentionBias};

use crate::fast;
use crate::layers::{
    GroupNorm, LayerNorm, LogitBias, merge_heads, multi_head_attention, split_heads, zero_linear,
};

/// Self-attention over the `H*W` positions of each frame, then cross-attention to the text.
#[derive(Debug, Clone)]
pub struct SpatialAttention {
    norm: GroupNorm,
    qkv: Linear,
    proj: Linear,
    cross_norm: LayerNorm,
    cross_q: Linear,
    cross_kv: Linear,
    cross_proj: Linear,
    heads: usize,
    channels: usize,
}

impl SpatialAttention {
    /// A block for `channels` channels attending to `context_dim`-wide text tokens.
    pub fn new(
        channels: usize,
        context_dim: usize,
        heads: usize,
        groups: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            norm: GroupNorm::new(groups, channels, 1e-5, vb.pp("norm"))?,
            qkv: linear_no_bias(channels, 3 * channels, vb.pp("qkv"))?,
            proj: zero_linear(channels, channels, vb.pp("proj"))?,
            cross_norm: LayerNorm::new(channels, vb.pp("cross_norm"))?,
            cross_q: linear_no_bias(channels, channels, vb.pp("cross_q"))?,
            cross_kv: linear(context_dim, 2 * channels, vb.pp("cross_kv"))?,
            cross_proj: zero_linear(channels, channels, vb.pp("cross_proj"))?,
            heads,
            channels,
        })
    }

    /// `x` `[N, C, H, W]` (N = videos x frames); `context` `[N, L, D]`; `mask` `[N, L]`.
    pub fn forward(&self, x: &Tensor, context: &Tensor, mask: &Tensor) -> Result<Tensor> {
        if fast::applies(&[x, context, self.qkv.weight(), self.cross_kv.weight()]) {
            return self.forward_inference(x, context, mask);
        }
        let (n, c, h, w) = x.dims4()?;
        let scale = 1.0 / ((c / self.heads) as f64).sqrt();
        // [N, C, H, W] -> [N, HW, C]
        let tokens = |t: &Tensor| -> Result<Tensor> {
            t.reshape((n, c, h * w))?.transpose(1, 2)?.contiguous()
        };

        let normed = tokens(&self.norm.forward(x)?)?;
        let qkv = self.qkv.forward(&normed)?;
        let q = split_heads(&qkv.narrow(2, 0, c)?, self.heads)?;
        let k = split_heads(&qkv.narrow(2, c, c)?, self.heads)?;
        let v = split_heads(&qkv.narrow(2, 2 * c, c)?, self.heads)?;
        let attended = merge_heads(&multi_head_attention(&q, &k, &v, scale, LogitBias::None)?)?;
        let x_tokens = (tokens(x)? + self.proj.forward(&attended)?)?;

        let q = split_heads(
            &self.cross_q.forward(&self.cross_norm.forward(&x_tokens)?)?,
            self.heads,
        )?;
        let kv = self.cross_kv.forward(context)?;
        let k = split_heads(&kv.narrow(2, 0, self.channels)?, self.heads)?;
        let v = split_heads(&kv.narrow(2, self.channels, self.channels)?, self.heads)?;
        let bias = LogitBias::KeyPadding(mask);
        let attended = merge_heads(&multi_head_attention(&q, &k, &v, scale, bias)?)?;
        let x_tokens = (x_tokens + self.cross_proj.forward(&attended)?)?;

        x_tokens
            .transpose(1, 2)?
            .contiguous()?
            .reshape((n, c, h, w))
    }

    /// The same maths in the `[N, C, H, W]` layout with the kernels' attention (no token
    /// transposes, no per-head copies).
    fn forward_inference(&self, x: &Tensor, context: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let scale = (1.0 / ((c / self.heads) as f64).sqrt()) as f32;
        let x = x.reshape((n, c, h * w))?;
        let qkv = fast::pointwise(&self.norm.forward(&x)?, &self.qkv)?;
        let attended = qkv.apply_op1_no_bwd(&Attention {
            heads: self.heads,
            scale,
            bias: AttentionBias::None,
            frames: None,
        })?;
        let x = (x + fast::pointwise(&attended, &self.proj)?)?;

        let q = fast::pointwise(&self.cross_norm.forward_channels(&x)?, &self.cross_q)?;
        let kv = self.cross_kv.forward(context)?.contiguous()?;
        let attended = q.apply_op2_no_bwd(
            &kv,
            &Attention {
                heads: self.heads,
                scale,
                bias: AttentionBias::KeyMask(
                    mask.flatten_all()?
                        .to_dtype(candle_core::DType::F32)?
                        .to_vec1()?,
                ),
                frames: None,
            },
        )?;
        (x + fast::pointwise(&attended, &self.cross_proj)?)?.reshape((n, c, h, w))
    }
}
