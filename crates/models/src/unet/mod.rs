//! The space-time separable Video U-Net of Imagen Video (Ho et al. 2022, arXiv 2210.02303,
//! section 2.1), one implementation configured per stage.
//!
//! Frames are folded into the batch for everything spatial (2D convolutions, spatial
//! self-attention, text cross-attention), and pixels are folded into the batch for everything
//! temporal (temporal attention in the base stage, temporal convolution in the SR stages), so no
//! 3D convolution is needed. The network predicts `v` (v-parameterisation) from the noisy video,
//! its time `t`, the text tokens and — for super-resolution stages — the upsampled
//! lower-resolution video concatenated on channels together with the level of noise that
//! augmented it.
//!
//! Weight names are the module tree (`down.0.res.0.conv1.weight`, `mid.attn.qkv.weight`, ...).

pub mod config;
mod context;
pub mod embeddings;
pub mod resnet;
pub mod spatial_attention;
pub mod temporal;

use candle_core::{DType, Module, Result as CandleResult, Tensor};
use candle_nn::VarBuilder;

pub use config::{CONTEXT_CHANNELS, Prediction, TemporalMixing, VideoUNetConfig};
use context::ContextInput;
pub use context::known_frames;
use embeddings::{LayoutMap, PooledText, ScalarEmbedding, clip_progress};
use resnet::ResBlock;
use spatial_attention::SpatialAttention;
use temporal::TemporalBlock;

use crate::ModelError;
use crate::layers::{GroupNorm, SameConv, conv2d_down, conv2d_same};

/// The inputs of one forward pass.
#[derive(Debug, Clone, Copy)]
pub struct UNetInputs<'a> {
    /// The noisy video `[B, C, F, H, W]`.
    pub z: &'a Tensor,
    /// Diffusion time per video `[B]`, in [0, 1].
    pub t: &'a Tensor,
    /// Text tokens `[B, L, context_dim]` (padded to a common length).
    pub context: &'a Tensor,
    /// Which tokens are real `[B, L]` (1) or padding (0).
    pub context_mask: &'a Tensor,
    /// SR stages: the upsampled, noise-augmented conditioning video `[B, cond_channels, F, H, W]`.
    pub cond: Option<&'a Tensor>,
    /// SR stages: the augmentation time of `cond` per video `[B]`, in [0, 1].
    pub aug_level: Option<&'a Tensor>,
    /// Stages with `context_frames`: the known frames `[B, CONTEXT_CHANNELS, F, H, W]` (see
    /// [`known_frames`]); `None` gives none.
    pub known_frames: Option<&'a Tensor>,
}

/// `[n, 2, h, w]`: the x and y coordinate of every pixel, from -1 at the first row or column to 1
/// at the last.
fn coordinate_maps(
    n: usize,
    h: usize,
    w: usize,
    device: &candle_core::Device,
) -> CandleResult<Tensor> {
    let ramp = |len: usize| -> Vec<f32> {
        let last = len.saturating_sub(1).max(1) as f32;
        (0..len).map(|i| 2.0 * i as f32 / last - 1.0).collect()
    };
    let xs = Tensor::from_vec(ramp(w), (1, 1, 1, w), device)?.broadcast_as((n, 1, h, w))?;
    let ys = Tensor::from_vec(ramp(h), (1, 1, h, 1), device)?.broadcast_as((n, 1, h, w))?;
    Tensor::cat(&[xs, ys], 1)
}

#[derive(Debug, Clone)]
struct Layer {
    res: ResBlock,
    temporal: TemporalBlock,
    attention: Option<SpatialAttention>,
}

impl Layer {
    /// Layer `i` of a level or the middle block: a residual block from `in_c` to `out_c`
    /// channels, temporal mixing and, if `attention`, spatial self- and text cross-attention,
    /// with weights under `vb.res.{i}`, `vb.temporal.{i}` and `vb.attn.{i}`.
    fn new(
        cfg: &VideoUNetConfig,
        in_c: usize,
        out_c: usize,
        attention: bool,
        vb: VarBuilder,
        i: usize,
    ) -> CandleResult<Self> {
        let emb_dim = cfg.embedding_dim();
        let groups = cfg.norm_groups;
        Ok(Layer {
            res: ResBlock::new(in_c, out_c, emb_dim, groups, vb.pp("res").pp(i))?,
            temporal: TemporalBlock::new(cfg.temporal, out_c, cfg, vb.pp("temporal").pp(i))?,
            attention: if attention {
                Some(SpatialAttention::new(
                    out_c,
                    cfg.context_dim,
                    cfg.num_heads,
                    groups,
                    vb.pp("attn").pp(i),
                )?)
            } else {
                None
            },
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        emb: &Tensor,
        frames: usize,
        ctx: &Tensor,
        mask: &Tensor,
    ) -> CandleResult<Tensor> {
        let h = self.res.forward(x, emb)?;
        let h = self.temporal.forward(&h, frames)?;
        match &self.attention {
            Some(attn) => attn.forward(&h, ctx, mask),
            None => Ok(h),
        }
    }
}

#[derive(Debug, Clone)]
struct Level {
    layers: Vec<Layer>,
    resample: Option<SameConv>,
}

/// The Video U-Net.
#[derive(Debug, Clone)]
pub struct VideoUNet {
    config: VideoUNetConfig,
    time_embed: ScalarEmbedding,
    aug_embed: Option<ScalarEmbedding>,
    frame_embed: Option<ScalarEmbedding>,
    layout: Option<LayoutMap>,
    context_in: Option<ContextInput>,
    text_pool: PooledText,
    conv_in: SameConv,
    down: Vec<Level>,
    mid: Vec<Layer>,
    up: Vec<Level>,
    out_norm: GroupNorm,
    conv_out: SameConv,
}

impl VideoUNet {
    /// Builds the network; every weight comes from `vb` under the module-tree names.
    pub fn new(vb: VarBuilder, config: &VideoUNetConfig) -> Result<Self, ModelError> {
        config.validate()?;
        Ok(Self::build(vb, config)?)
    }

    fn build(vb: VarBuilder, cfg: &VideoUNetConfig) -> CandleResult<Self> {
        let emb_dim = cfg.embedding_dim();
        let (down, mut skip_channels, channels) = Self::build_down(&vb, cfg)?;
        let mid = Self::build_mid(&vb, cfg, channels)?;
        let (up, channels) = Self::build_up(&vb, cfg, channels, &mut skip_channels)?;
        Ok(Self {
            config: cfg.clone(),
            time_embed: ScalarEmbedding::new(cfg.model_channels, emb_dim, vb.pp("time_embed"))?,
            aug_embed: Self::optional_embedding(
                cfg.is_super_resolution(),
                cfg,
                vb.pp("aug_embed"),
            )?,
            frame_embed: Self::optional_embedding(cfg.frame_embedding, cfg, vb.pp("frame_embed"))?,
            layout: Self::build_layout(cfg, vb.pp("layout"))?,
            context_in: cfg
                .context_frames
                .then(|| ContextInput::new(cfg.model_channels, vb.pp("context_in")))
                .transpose()?,
            text_pool: PooledText::new(cfg.context_dim, emb_dim, vb.pp("text_pool"))?,
            conv_in: conv2d_same(
                cfg.input_channels(),
                cfg.model_channels,
                3,
                false,
                vb.pp("conv_in"),
            )?,
            down,
            mid,
            up,
            out_norm: GroupNorm::new(cfg.norm_groups, channels, 1e-5, vb.pp("out_norm"))?,
            conv_out: conv2d_same(channels, cfg.out_channels, 3, true, vb.pp("conv_out"))?,
        })
    }

    /// The way down (`down.{level}`): the levels, the widths of the skip connections they leave
    /// for the way up (the first convolution's included) and the width at the bottom.
    fn build_down(
        vb: &VarBuilder,
        cfg: &VideoUNetConfig,
    ) -> CandleResult<(Vec<Level>, Vec<usize>, usize)> {
        let levels = cfg.channel_mult.len();
        let mut skip_channels = vec![cfg.model_channels];
        let mut channels = cfg.model_channels;
        let mut down = Vec::with_capacity(levels);
        for level in 0..levels {
            let vb_level = vb.pp("down").pp(level);
            let out_c = cfg.level_channels(level);
            let mut layers = Vec::new();
            for i in 0..cfg.num_res_blocks {
                layers.push(Layer::new(
                    cfg,
                    channels,
                    out_c,
                    cfg.attention_levels[level],
                    vb_level.clone(),
                    i,
                )?);
                channels = out_c;
                skip_channels.push(channels);
            }
            let resample = if level + 1 < levels {
                skip_channels.push(channels);
                Some(conv2d_down(channels, vb_level.pp("downsample"))?)
            } else {
                None
            };
            down.push(Level { layers, resample });
        }
        Ok((down, skip_channels, channels))
    }

    /// The middle block (`mid`): a layer with attention, then one without, at `channels` wide.
    fn build_mid(
        vb: &VarBuilder,
        cfg: &VideoUNetConfig,
        channels: usize,
    ) -> CandleResult<Vec<Layer>> {
        let emb_dim = cfg.embedding_dim();
        let groups = cfg.norm_groups;
        let vb_mid = vb.pp("mid");
        Ok(vec![
            Layer {
                res: ResBlock::new(channels, channels, emb_dim, groups, vb_mid.pp("res1"))?,
                temporal: TemporalBlock::new(cfg.temporal, channels, cfg, vb_mid.pp("temporal1"))?,
                attention: Some(SpatialAttention::new(
                    channels,
                    cfg.context_dim,
                    cfg.num_heads,
                    groups,
                    vb_mid.pp("attn"),
                )?),
            },
            Layer {
                res: ResBlock::new(channels, channels, emb_dim, groups, vb_mid.pp("res2"))?,
                temporal: TemporalBlock::new(cfg.temporal, channels, cfg, vb_mid.pp("temporal2"))?,
                attention: None,
            },
        ])
    }

    /// The way up (`up.{level}`, deepest level first), taking the skip widths the way down left
    /// from `skip_channels`: the levels and the width at the top.
    fn build_up(
        vb: &VarBuilder,
        cfg: &VideoUNetConfig,
        mut channels: usize,
        skip_channels: &mut Vec<usize>,
    ) -> CandleResult<(Vec<Level>, usize)> {
        let levels = cfg.channel_mult.len();
        let mut up = Vec::with_capacity(levels);
        for level in (0..levels).rev() {
            let vb_level = vb.pp("up").pp(level);
            let out_c = cfg.level_channels(level);
            let mut layers = Vec::new();
            for i in 0..=cfg.num_res_blocks {
                let skip = skip_channels.pop().unwrap_or(0);
                layers.push(Layer::new(
                    cfg,
                    channels + skip,
                    out_c,
                    cfg.attention_levels[level],
                    vb_level.clone(),
                    i,
                )?);
                channels = out_c;
            }
            let resample = if level > 0 {
                Some(conv2d_same(
                    channels,
                    channels,
                    3,
                    false,
                    vb_level.pp("upsample"),
                )?)
            } else {
                None
            };
            up.push(Level { layers, resample });
        }
        Ok((up, channels))
    }

    /// A scalar embedding into the embedding width under `vb` if `enabled`.
    fn optional_embedding(
        enabled: bool,
        cfg: &VideoUNetConfig,
        vb: VarBuilder,
    ) -> CandleResult<Option<ScalarEmbedding>> {
        enabled
            .then(|| ScalarEmbedding::new(cfg.model_channels, cfg.embedding_dim(), vb))
            .transpose()
    }

    /// The layout map under `vb`, if the config has layout channels.
    fn build_layout(cfg: &VideoUNetConfig, vb: VarBuilder) -> CandleResult<Option<LayoutMap>> {
        (cfg.layout_channels > 0)
            .then(|| {
                LayoutMap::new(
                    cfg.embedding_dim(),
                    cfg.context_dim,
                    cfg.layout_channels,
                    cfg.layout_grid,
                    cfg.layout_storyboard_knots,
                    vb,
                )
            })
            .transpose()
    }

    /// The network's hyper-parameters.
    pub fn config(&self) -> &VideoUNetConfig {
        &self.config
    }

    /// Checks the inputs' shapes against each other and the config.
    fn check_inputs(
        &self,
        inputs: &UNetInputs<'_>,
    ) -> Result<(usize, usize, usize, usize), ModelError> {
        let (b, f, h, w) = self.check_video(inputs.z)?;
        self.check_text(inputs, b)?;
        self.check_conditioning(inputs, [b, self.config.cond_channels, f, h, w])?;
        self.check_known_frames(inputs, [b, CONTEXT_CHANNELS, f, h, w])?;
        Ok((b, f, h, w))
    }

    /// Checks the noisy video `z` against the config: `(batch, frames, height, width)`.
    fn check_video(&self, z: &Tensor) -> Result<(usize, usize, usize, usize), ModelError> {
        let cfg = &self.config;
        let dims = z.dims();
        let [b, c, f, h, w] = dims else {
            return invalid_input(
                "z",
                format!("must be [batch, channels, frames, height, width], got {dims:?}"),
            );
        };
        let (b, c, f, h, w) = (*b, *c, *f, *h, *w);
        if c != cfg.in_channels {
            return invalid_input(
                "z",
                format!("has {c} channels, the model takes {}", cfg.in_channels),
            );
        }
        let divisor = cfg.spatial_divisor();
        if h % divisor != 0 || w % divisor != 0 || h == 0 || w == 0 {
            return invalid_input(
                "z",
                format!(
                    "height {h} and width {w} must be positive multiples of {divisor} for this U-Net's depth"
                ),
            );
        }
        if cfg.layout_channels > 0 && (h % cfg.layout_grid != 0 || w % cfg.layout_grid != 0) {
            return invalid_input(
                "z",
                format!(
                    "height {h} and width {w} must be multiples of the layout grid {}",
                    cfg.layout_grid
                ),
            );
        }
        if cfg.temporal == TemporalMixing::Attention && f > cfg.max_frames {
            return invalid_input(
                "z",
                format!(
                    "has {f} frames, the model covers at most {}",
                    cfg.max_frames
                ),
            );
        }
        Ok((b, f, h, w))
    }

    /// Checks the time, the text tokens and their mask against the batch size `b`.
    fn check_text(&self, inputs: &UNetInputs<'_>, b: usize) -> Result<(), ModelError> {
        let cfg = &self.config;
        if inputs.t.dims() != [b] {
            return invalid_input("t", format!("must be [{b}], got {:?}", inputs.t.dims()));
        }
        let ctx = inputs.context.dims();
        if ctx.len() != 3 || ctx[0] != b || ctx[2] != cfg.context_dim {
            return invalid_input(
                "context",
                format!("must be [{b}, tokens, {}], got {ctx:?}", cfg.context_dim),
            );
        }
        if inputs.context_mask.dims() != [b, ctx[1]] {
            return invalid_input(
                "context_mask",
                format!(
                    "must be [{b}, {}], got {:?}",
                    ctx[1],
                    inputs.context_mask.dims()
                ),
            );
        }
        Ok(())
    }

    /// Checks that a super-resolution model gets a conditioning video of shape `want` and its
    /// augmentation level, and a base model neither.
    fn check_conditioning(
        &self,
        inputs: &UNetInputs<'_>,
        want: [usize; 5],
    ) -> Result<(), ModelError> {
        let b = want[0];
        match (self.config.is_super_resolution(), inputs.cond, inputs.aug_level) {
            (false, None, None) => Ok(()),
            (false, _, _) => invalid_input("cond", "a base model takes no conditioning video".into()),
            (true, Some(cond), Some(aug)) => {
                if cond.dims() != want {
                    return invalid_input("cond", format!("must be {want:?}, got {:?}", cond.dims()));
                }
                if aug.dims() != [b] {
                    return invalid_input("aug_level", format!("must be [{b}], got {:?}", aug.dims()));
                }
                Ok(())
            }
            (true, _, _) => invalid_input(
                "cond",
                "a super-resolution model needs both a conditioning video and its augmentation level".into(),
            ),
        }
    }

    /// Checks that known frames come only to a stage that takes them, shaped `want`.
    fn check_known_frames(
        &self,
        inputs: &UNetInputs<'_>,
        want: [usize; 5],
    ) -> Result<(), ModelError> {
        match inputs.known_frames {
            None => Ok(()),
            Some(_) if !self.config.context_frames => invalid_input(
                "known_frames",
                "this model takes no context frames (its config has no context_frames)".into(),
            ),
            Some(known) if known.dims() != want => invalid_input(
                "known_frames",
                format!("must be {want:?}, got {:?}", known.dims()),
            ),
            Some(_) => Ok(()),
        }
    }

    /// The network output `[B, out_channels, F, H, W]`: `v`, or the residual over the upsampled
    /// conditioning video (see [`Prediction`]), as the config says.
    pub fn forward(&self, inputs: &UNetInputs<'_>) -> Result<Tensor, ModelError> {
        let (b, frames, h, w) = self.check_inputs(inputs)?;
        let dtype = self.dtype();
        if dtype != DType::F32 {
            return Ok(self.forward_as(inputs, dtype, (b, frames, h, w))?);
        }
        // On a rayon worker, the kernels' parallel sections start hot (measured: `generate`
        // 1.0 s instead of 1.25 s, median of six alternating runs).
        Ok(vidcascade_kernels::cpu::on_workers(|| {
            self.forward_unchecked(inputs, b, frames, h, w)
        })?)
    }

    /// The weights' element type (f32, or f16 / bf16 when loaded so for a GPU).
    pub fn dtype(&self) -> DType {
        self.conv_in.weight().dtype()
    }

    /// [`Self::forward`] for f16 / bf16 weights: the inputs (f32, as the sampler keeps them)
    /// are cast to `dtype` and the prediction back to f32. Times and masks stay f32: the time
    /// sinusoids and the key-padding bias are computed in f32 inside.
    fn forward_as(
        &self,
        inputs: &UNetInputs<'_>,
        dtype: DType,
        (b, frames, h, w): (usize, usize, usize, usize),
    ) -> CandleResult<Tensor> {
        let z = inputs.z.to_dtype(dtype)?;
        let context = inputs.context.to_dtype(dtype)?;
        let cond = inputs.cond.map(|c| c.to_dtype(dtype)).transpose()?;
        let known = inputs.known_frames.map(|k| k.to_dtype(dtype)).transpose()?;
        let cast = UNetInputs {
            z: &z,
            context: &context,
            cond: cond.as_ref(),
            known_frames: known.as_ref(),
            ..*inputs
        };
        self.forward_unchecked(&cast, b, frames, h, w)?
            .to_dtype(DType::F32)
    }

    fn forward_unchecked(
        &self,
        inputs: &UNetInputs<'_>,
        b: usize,
        frames: usize,
        h: usize,
        w: usize,
    ) -> CandleResult<Tensor> {
        let conditioning = self.conditioning(inputs, b, frames)?;
        let x = self.input_stack(inputs, &conditioning, b, frames, h, w)?;
        let known = inputs
            .known_frames
            .map(|k| fold_frames(k, b, frames, h, w))
            .transpose()?;
        let h_ = self.backbone(&x, known.as_ref(), &conditioning, frames)?;
        let out = self.conv_out.forward(&self.out_norm.forward_silu(&h_)?)?;
        // [B*F, C, H, W] -> [B, C, F, H, W]
        let c = out.dim(1)?;
        out.reshape((b, frames, c, h, w))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()
    }

    /// The global embedding per video (time, pooled text, augmentation level), repeated per frame
    /// with each frame's place in the clip added, and the text tokens and mask repeated per frame.
    fn conditioning(
        &self,
        inputs: &UNetInputs<'_>,
        b: usize,
        frames: usize,
    ) -> CandleResult<Conditioning> {
        // Global embedding per video, then repeated per frame: [B*F, emb].
        let pooled_text = PooledText::pool(inputs.context, inputs.context_mask)?;
        let mut emb =
            (self.time_embed.forward(inputs.t)? + self.text_pool.project(&pooled_text)?)?;
        if let (Some(aug_embed), Some(aug)) = (&self.aug_embed, inputs.aug_level) {
            emb = (emb + aug_embed.forward(aug)?)?;
        }
        let mut emb = repeat_per_frame(&emb, b, frames)?;
        if let Some(frame_embed) = &self.frame_embed {
            let progress: Vec<f32> = (0..b * frames)
                .map(|i| clip_progress(i % frames, frames))
                .collect();
            let progress = Tensor::from_vec(progress, b * frames, emb.device())?;
            emb = (emb + frame_embed.forward(&progress)?)?;
        }
        Ok(Conditioning {
            ctx: repeat_per_frame(inputs.context, b, frames)?,
            mask: repeat_per_frame(inputs.context_mask, b, frames)?,
            emb,
            pooled_text,
        })
    }

    /// The first convolution's input `[B*F, input_channels, H, W]`: the noisy video, the
    /// conditioning video, the coordinate maps and the layout map, as the config has them.
    fn input_stack(
        &self,
        inputs: &UNetInputs<'_>,
        conditioning: &Conditioning,
        b: usize,
        frames: usize,
        h: usize,
        w: usize,
    ) -> CandleResult<Tensor> {
        let mut x = fold_frames(inputs.z, b, frames, h, w)?;
        if let Some(cond) = inputs.cond {
            x = Tensor::cat(&[x, fold_frames(cond, b, frames, h, w)?], 1)?;
        }
        if self.config.position_channels {
            let coordinates = coordinate_maps(b * frames, h, w, x.device())?.to_dtype(x.dtype())?;
            x = Tensor::cat(&[x, coordinates], 1)?;
        }
        if let Some(layout) = &self.layout {
            let map = layout.forward(&conditioning.emb, &conditioning.pooled_text, frames, h, w)?;
            x = Tensor::cat(&[x, map], 1)?;
        }
        Ok(x)
    }

    /// The U from the first convolution through the way down, the middle and the way up (with
    /// its skip connections), before the output norm.
    fn backbone(
        &self,
        x: &Tensor,
        known: Option<&Tensor>,
        conditioning: &Conditioning,
        frames: usize,
    ) -> CandleResult<Tensor> {
        let Conditioning { emb, ctx, mask, .. } = conditioning;
        let mut h_ = self.conv_in.forward(x)?;
        if let Some(context_in) = &self.context_in {
            h_ = context_in.add_to(&h_, known)?;
        }
        let mut skips = vec![h_.clone()];
        for level in &self.down {
            for layer in &level.layers {
                h_ = layer.forward(&h_, emb, frames, ctx, mask)?;
                skips.push(h_.clone());
            }
            if let Some(down) = &level.resample {
                h_ = down.forward(&h_)?;
                skips.push(h_.clone());
            }
        }
        for layer in &self.mid {
            h_ = layer.forward(&h_, emb, frames, ctx, mask)?;
        }
        for level in &self.up {
            for layer in &level.layers {
                let skip = skips
                    .pop()
                    .ok_or_else(|| candle_core::Error::Msg("U-Net skip stack underflow".into()))?;
                h_ = layer.forward(&Tensor::cat(&[h_, skip], 1)?, emb, frames, ctx, mask)?;
            }
            if let Some(up) = &level.resample {
                let (_, _, hh, ww) = h_.dims4()?;
                h_ = up.forward(&h_.upsample_nearest2d(2 * hh, 2 * ww)?)?;
            }
        }
        Ok(h_)
    }
}

/// What every frame of a forward pass is conditioned on.
struct Conditioning {
    /// The embedding per frame `[B*F, emb]`.
    emb: Tensor,
    /// The text tokens per frame `[B*F, L, context_dim]`.
    ctx: Tensor,
    /// Which tokens are real, per frame `[B*F, L]`.
    mask: Tensor,
    /// The mean of the real text tokens per video, for the layout map.
    pooled_text: Tensor,
}

/// Repeats a per-video tensor `[B, ...]` for each of its `frames` frames: `[B*F, ...]`.
fn repeat_per_frame(t: &Tensor, b: usize, frames: usize) -> CandleResult<Tensor> {
    let mut dims = t.dims().to_vec();
    let rest = dims.split_off(1);
    let mut target = vec![b, frames];
    target.extend_from_slice(&rest);
    let mut flat = vec![b * frames];
    flat.extend_from_slice(&rest);
    t.unsqueeze(1)?
        .broadcast_as(target)?
        .contiguous()?
        .reshape(flat)
}

/// Folds frames into the batch: `[B, C, F, H, W]` -> `[B*F, C, H, W]`.
fn fold_frames(t: &Tensor, b: usize, frames: usize, h: usize, w: usize) -> CandleResult<Tensor> {
    let c = t.dim(1)?;
    t.permute((0, 2, 1, 3, 4))?
        .contiguous()?
        .reshape((b * frames, c, h, w))
}

/// A [`ModelError::InvalidInput`] for `field`.
fn invalid_input<T>(field: &'static str, reason: String) -> Result<T, ModelError> {
    Err(ModelError::InvalidInput { field, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_hats_cover_the_clip_and_interpolate_other_frame_counts() {
        // As many frames as knots: one knot per frame.
        let exact = embeddings::frame_hats(4, 4);
        for f in 0..4 {
            for k in 0..4 {
                assert_eq!(exact[f * 4 + k], if f == k { 1.0 } else { 0.0 });
            }
        }
        // More frames: every row sums to one and the middle frame of 3 sits between knots.
        let finer = embeddings::frame_hats(7, 4);
        for row in finer.chunks(4) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        let middle = embeddings::frame_hats(3, 4);
        assert_eq!(&middle[4..8], &[0.0, 0.5, 0.5, 0.0]);
    }
}
