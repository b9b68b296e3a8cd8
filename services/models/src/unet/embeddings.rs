//! The global conditioning vector of the U-Net: diffusion time, the noise-augmentation level of the
//! conditioning video (SR stages, as in Imagen Video's noise conditioning augmentation), and the
//! pooled text embedding (Imagen adds it to the time embedding). Their sum modulates every residual
//! block.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder, linear};

use crate::layers::{sinusoidal_embedding, zero_linear};

/// `sinusoid -> linear -> SiLU -> linear`, the usual diffusion time MLP.
#[derive(Debug, Clone)]
pub struct ScalarEmbedding {
    fc1: Linear,
    fc2: Linear,
    sinusoid_dim: usize,
}

impl ScalarEmbedding {
    /// `sinusoid_dim` features in, `out_dim` out.
    pub fn new(sinusoid_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: linear(sinusoid_dim, out_dim, vb.pp("fc1"))?,
            fc2: linear(out_dim, out_dim, vb.pp("fc2"))?,
            sinusoid_dim,
        })
    }

    /// `[B]` scalars in [0, 1] to `[B, out_dim]`.
    pub fn forward(&self, values: &Tensor) -> Result<Tensor> {
        let x = sinusoidal_embedding(values, self.sinusoid_dim)?;
        self.fc2.forward(&self.fc1.forward(&x)?.silu()?)
    }
}

/// Projects the masked mean of the text tokens into the embedding space.
#[derive(Debug, Clone)]
pub struct PooledText {
    proj: Linear,
}

impl PooledText {
    /// `context_dim` in, `out_dim` out.
    pub fn new(context_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            proj: linear(context_dim, out_dim, vb.pp("proj"))?,
        })
    }

    /// `[B, L, D]` tokens with `[B, L]` mask to `[B, out_dim]`.
    pub fn forward(&self, context: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let pooled = crate::text_encoder::T5Encoder::masked_mean(context, mask)?;
        self.proj.forward(&pooled)
    }
}

/// A coarse spatial map per frame from that frame's conditioning vector:
/// `SiLU -> linear -> [channels, grid, grid] -> nearest upsampling to the frame`.
///
/// The projection starts at zero and the first convolution's weights for these channels do not:
/// the map then starts empty, and its gradient is the first convolution's input gradient, a
/// direct regression of where things go on the conditioning. (The other way round — a random
/// map read by zero weights — is a saddle: each factor's gradient is proportional to the other,
/// and a caption-independent weight averages the opposite placements of opposite motions away.)
#[derive(Debug, Clone)]
pub struct LayoutMap {
    proj: Linear,
    channels: usize,
    grid: usize,
}

impl LayoutMap {
    /// `emb_dim` in, `channels` maps of `grid x grid` out.
    pub fn new(emb_dim: usize, channels: usize, grid: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            proj: zero_linear(emb_dim, channels * grid * grid, vb.pp("proj"))?,
            channels,
            grid,
        })
    }

    /// `[N, emb_dim]` to `[N, channels, height, width]`; height and width are multiples of the grid.
    pub fn forward(&self, emb: &Tensor, height: usize, width: usize) -> Result<Tensor> {
        let n = emb.dim(0)?;
        self.proj
            .forward(&emb.silu()?)?
            .reshape((n, self.channels, self.grid, self.grid))?
            .upsample_nearest2d(height, width)
    }
}
