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
        // The sinusoids are computed in f32 (an f16 angle of 1000 rad is off by up to 0.5).
        let x =
            sinusoidal_embedding(values, self.sinusoid_dim)?.to_dtype(self.fc1.weight().dtype())?;
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

    /// Projects already pooled text, `[B, D]` to `[B, out_dim]`.
    pub fn project(&self, pooled: &Tensor) -> Result<Tensor> {
        self.proj.forward(pooled)
    }

    /// The masked mean of the tokens, `[B, D]`, before the projection.
    pub fn pool(context: &Tensor, mask: &Tensor) -> Result<Tensor> {
        crate::text_encoder::T5Encoder::masked_mean(context, mask)
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
    storyboard: Option<Storyboard>,
    channels: usize,
    grid: usize,
}

/// The layout map's caption x frame term: `W (pooled_text (x) hats(progress))`, zero-initialised,
/// so its gradient is a linear regression of the first convolution's input gradient on fixed
/// features (see `VideoUNetConfig::layout_storyboard_knots`).
#[derive(Debug, Clone)]
struct Storyboard {
    proj: Linear,
    knots: usize,
}

impl Storyboard {
    /// `[B, text_dim]` pooled text for `frames` frames per clip to `[B * frames, outputs]`.
    fn forward(&self, pooled_text: &Tensor, frames: usize) -> Result<Tensor> {
        let (b, text_dim) = pooled_text.dims2()?;
        let hats = Tensor::from_vec(
            frame_hats(frames, self.knots),
            (1, frames, 1, self.knots),
            pooled_text.device(),
        )?
        .to_dtype(pooled_text.dtype())?;
        let features = pooled_text
            .reshape((b, 1, text_dim, 1))?
            .broadcast_mul(&hats)?
            .reshape((b * frames, text_dim * self.knots))?;
        self.proj.forward(&features)
    }
}

/// Frame `frame`'s place in a clip of `frames`: 0 for the first frame, 1 for the last (0 for a
/// single frame). What the frame embedding and the storyboard both read.
pub fn clip_progress(frame: usize, frames: usize) -> f32 {
    frame as f32 / frames.saturating_sub(1).max(1) as f32
}

/// `knots` hat functions of each frame's place in the clip (0 at the first frame, 1 at the last),
/// row-major `[frames, knots]`: knot `k` sits at `k / (knots - 1)` and falls to zero at its
/// neighbours, so every row sums to one and frame counts other than `knots` interpolate.
pub fn frame_hats(frames: usize, knots: usize) -> Vec<f32> {
    let span = knots.saturating_sub(1) as f32;
    (0..frames)
        .flat_map(|f| {
            let at = clip_progress(f, frames) * span;
            (0..knots).map(move |k| (1.0 - (at - k as f32).abs()).max(0.0))
        })
        .collect()
}

impl LayoutMap {
    /// `emb_dim` in, `channels` maps of `grid x grid` out; with `storyboard_knots > 0`, also the
    /// storyboard term over `text_dim`-wide pooled text.
    pub fn new(
        emb_dim: usize,
        text_dim: usize,
        channels: usize,
        grid: usize,
        storyboard_knots: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let outputs = channels * grid * grid;
        Ok(Self {
            proj: zero_linear(emb_dim, outputs, vb.pp("proj"))?,
            storyboard: if storyboard_knots > 0 {
                Some(Storyboard {
                    proj: zero_linear(text_dim * storyboard_knots, outputs, vb.pp("storyboard"))?,
                    knots: storyboard_knots,
                })
            } else {
                None
            },
            channels,
            grid,
        })
    }

    /// `[N, emb_dim]` to `[N, channels, height, width]`; height and width are multiples of the grid.
    /// `pooled_text` is `[B, text_dim]` (the masked mean of the text tokens) and `emb` holds
    /// `frames` rows per clip.
    pub fn forward(
        &self,
        emb: &Tensor,
        pooled_text: &Tensor,
        frames: usize,
        height: usize,
        width: usize,
    ) -> Result<Tensor> {
        let n = emb.dim(0)?;
        let mut map = self.proj.forward(&emb.silu()?)?;
        if let Some(storyboard) = &self.storyboard {
            map = (map + storyboard.forward(pooled_text, frames)?)?;
        }
        map.reshape((n, self.channels, self.grid, self.grid))?
            .upsample_nearest2d(height, width)
    }
}
