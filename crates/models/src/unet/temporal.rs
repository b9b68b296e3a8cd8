//! Mixing across frames (the "time" half of space-time separability). Every pixel position is a
//! sequence of `F` frames; [`TemporalAttention`] lets each frame attend to all others with a
//! learned relative-position bias (so the model knows which way time runs, which it needs to move
//! a shape in the captioned direction), and [`TemporalConv`] convolves over neighbouring frames.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder, embedding, linear_no_bias};
use vidcascade_kernels::cpu::{
    Attention, AttentionBias, Statistics, TemporalConv as TemporalConvOp,
};

use super::config::TemporalMixing;
use crate::fast;
use crate::layers::{
    GroupNorm, LayerNorm, LogitBias, SameConv, merge_heads, multi_head_attention, split_heads,
    zero_conv1d_same, zero_linear,
};

/// `[B*F, C, H, W]` -> `[B*H*W, F, C]`.
fn to_sequences(x: &Tensor, frames: usize) -> Result<Tensor> {
    let (bf, c, h, w) = x.dims4()?;
    let b = bf / frames;
    x.reshape((b, frames, c, h, w))?
        .permute((0, 3, 4, 1, 2))?
        .contiguous()?
        .reshape((b * h * w, frames, c))
}

/// `[B*H*W, F, C]` -> `[B*F, C, H, W]`.
fn from_sequences(x: &Tensor, frames: usize, h: usize, w: usize) -> Result<Tensor> {
    let (bhw, _, c) = x.dims3()?;
    let b = bhw / (h * w);
    x.reshape((b, h, w, frames, c))?
        .permute((0, 3, 4, 1, 2))?
        .contiguous()?
        .reshape((b * frames, c, h, w))
}

/// Self-attention over frames with a learned bias per head and relative offset.
#[derive(Debug, Clone)]
pub struct TemporalAttention {
    norm: LayerNorm,
    qkv: Linear,
    proj: Linear,
    relative_bias: Embedding,
    heads: usize,
    max_frames: usize,
}

impl TemporalAttention {
    /// A block for `channels` channels and clips of up to `max_frames` frames.
    pub fn new(channels: usize, heads: usize, max_frames: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: LayerNorm::new(channels, vb.pp("norm"))?,
            qkv: linear_no_bias(channels, 3 * channels, vb.pp("qkv"))?,
            proj: zero_linear(channels, channels, vb.pp("proj"))?,
            relative_bias: embedding(2 * max_frames - 1, heads, vb.pp("relative_bias"))?,
            heads,
            max_frames,
        })
    }

    /// `[heads, F, F]` bias, entry `(i, j)` looked up at offset `j - i`.
    fn position_bias(&self, frames: usize, device: &candle_core::Device) -> Result<Tensor> {
        let offsets: Vec<u32> = (0..frames)
            .flat_map(|i| (0..frames).map(move |j| (j + self.max_frames - 1 - i) as u32))
            .collect();
        let offsets = Tensor::from_vec(offsets, (frames, frames), device)?;
        self.relative_bias.forward(&offsets)?.permute((2, 0, 1))
    }

    /// `x` `[B*F, C, H, W]` with `frames` frames per video.
    pub fn forward(&self, x: &Tensor, frames: usize) -> Result<Tensor> {
        if frames > self.max_frames {
            candle_core::bail!(
                "temporal attention covers at most {} frames, got {frames}",
                self.max_frames
            );
        }
        if fast::applies(&[x, self.qkv.weight()]) {
            return self.forward_inference(x, frames);
        }
        let (_, c, h, w) = x.dims4()?;
        let seq = to_sequences(x, frames)?;
        let qkv = self.qkv.forward(&self.norm.forward(&seq)?)?;
        let q = split_heads(&qkv.narrow(2, 0, c)?, self.heads)?;
        let k = split_heads(&qkv.narrow(2, c, c)?, self.heads)?;
        let v = split_heads(&qkv.narrow(2, 2 * c, c)?, self.heads)?;
        let bias = self.position_bias(frames, x.device())?;
        let scale = 1.0 / ((c / self.heads) as f64).sqrt();
        let attended = merge_heads(&multi_head_attention(
            &q,
            &k,
            &v,
            scale,
            LogitBias::PerHead(&bias),
        )?)?;
        let out = (seq + self.proj.forward(&attended)?)?;
        from_sequences(&out, frames, h, w)
    }

    /// The same maths pixel-parallel in the `[B*F, C, H, W]` layout (no sequence transposes).
    fn forward_inference(&self, x: &Tensor, frames: usize) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let x = x.reshape((n, c, h * w))?;
        let qkv = fast::pointwise(&self.norm.forward_channels(&x)?, &self.qkv)?;
        let bias = self.position_bias(frames, x.device())?;
        let attended = qkv.apply_op1_no_bwd(&Attention {
            heads: self.heads,
            scale: (1.0 / ((c / self.heads) as f64).sqrt()) as f32,
            bias: AttentionBias::PerHead(bias.flatten_all()?.to_vec1()?),
            frames: Some(frames),
        })?;
        (x + fast::pointwise(&attended, &self.proj)?)?.reshape((n, c, h, w))
    }
}

/// `GN -> SiLU -> conv1d over frames (zero-init)`, residual.
#[derive(Debug, Clone)]
pub struct TemporalConv {
    norm: GroupNorm,
    conv: SameConv,
}

impl TemporalConv {
    /// A block for `channels` channels with an odd `kernel`.
    pub fn new(channels: usize, kernel: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: GroupNorm::new(groups, channels, 1e-5, vb.pp("norm"))?,
            conv: zero_conv1d_same(channels, kernel, vb.pp("conv"))?,
        })
    }

    /// `x` `[B*F, C, H, W]` with `frames` frames per video.
    pub fn forward(&self, x: &Tensor, frames: usize) -> Result<Tensor> {
        if let (Some(bias), true) = (self.conv.bias(), fast::applies(&[x, self.conv.weight()])) {
            // GN over each pixel's frames, SiLU, conv over adjacent frames: no transposes.
            let stats = Statistics::PerPosition { frames };
            let normed = fast::group_norm(x, self.norm.params(), stats, None, true)?;
            let op = TemporalConvOp { frames };
            return x + normed.apply_op3_no_bwd(&self.conv.weight().contiguous()?, bias, &op)?;
        }
        let (_, _, h, w) = x.dims4()?;
        // [B*H*W, F, C] -> [B*H*W, C, F] for conv1d over time.
        let seq = to_sequences(x, frames)?.transpose(1, 2)?.contiguous()?;
        let mixed = self.conv.forward(&self.norm.forward(&seq)?.silu()?)?;
        let out = (seq + mixed)?.transpose(1, 2)?.contiguous()?;
        from_sequences(&out, frames, h, w)
    }
}

/// Either kind of temporal mixing, as the config chose.
#[derive(Debug, Clone)]
pub enum TemporalBlock {
    /// See [`TemporalAttention`].
    Attention(TemporalAttention),
    /// See [`TemporalConv`].
    Conv(TemporalConv),
}

impl TemporalBlock {
    /// The block `mixing` asks for.
    pub fn new(
        mixing: TemporalMixing,
        channels: usize,
        cfg: &super::VideoUNetConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(match mixing {
            TemporalMixing::Attention => Self::Attention(TemporalAttention::new(
                channels,
                cfg.num_heads,
                cfg.max_frames,
                vb,
            )?),
            TemporalMixing::Conv => Self::Conv(TemporalConv::new(
                channels,
                cfg.temporal_kernel,
                cfg.norm_groups,
                vb,
            )?),
        })
    }

    /// `x` `[B*F, C, H, W]` with `frames` frames per video.
    pub fn forward(&self, x: &Tensor, frames: usize) -> Result<Tensor> {
        match self {
            Self::Attention(block) => block.forward(x, frames),
            Self::Conv(block) => block.forward(x, frames),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn sequence_layout_round_trips() -> Result<()> {
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 4.0 * 2.0 * 5.0, &Device::Cpu)?.reshape((
            2 * 3,
            4,
            2,
            5,
        ))?;
        let seq = to_sequences(&x, 3)?;
        assert_eq!(seq.dims(), &[2 * 2 * 5, 3, 4]);
        let back = from_sequences(&seq, 3, 2, 5)?;
        assert_eq!(
            back.flatten_all()?.to_vec1::<f32>()?,
            x.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn temporal_attention_rejects_clips_longer_than_its_table() -> Result<()> {
        let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
        let block = TemporalAttention::new(8, 2, 4, vb)?;
        let x = Tensor::zeros((5, 8, 2, 2), DType::F32, &Device::Cpu)?;
        assert!(block.forward(&x, 5).is_err());
        assert!(block.forward(&x.narrow(0, 0, 4)?, 4).is_ok());
        Ok(())
    }
}
