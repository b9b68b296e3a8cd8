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
pub mod embeddings;
pub mod resnet;
pub mod spatial_attention;
pub mod temporal;

use candle_core::{Module, Result as CandleResult, Tensor};
use candle_nn::{GroupNorm, VarBuilder, group_norm};

pub use config::{Prediction, TemporalMixing, VideoUNetConfig};
use embeddings::{LayoutMap, PooledText, ScalarEmbedding, clip_progress};
use resnet::ResBlock;
use spatial_attention::SpatialAttention;
use temporal::TemporalBlock;

use crate::ModelError;
use crate::layers::{SameConv, conv2d_down, conv2d_same};

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
        let groups = cfg.norm_groups;
        let layer = |in_c: usize,
                     out_c: usize,
                     attention: bool,
                     vb: VarBuilder,
                     i: usize|
         -> CandleResult<Layer> {
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
        };

        let levels = cfg.channel_mult.len();
        let mut skip_channels = vec![cfg.model_channels];
        let mut channels = cfg.model_channels;
        let mut down = Vec::with_capacity(levels);
        for level in 0..levels {
            let vb_level = vb.pp("down").pp(level);
            let out_c = cfg.level_channels(level);
            let mut layers = Vec::new();
            for i in 0..cfg.num_res_blocks {
                layers.push(layer(
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

        let vb_mid = vb.pp("mid");
        let mid = vec![
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
        ];

        let mut up = Vec::with_capacity(levels);
        for level in (0..levels).rev() {
            let vb_level = vb.pp("up").pp(level);
            let out_c = cfg.level_channels(level);
            let mut layers = Vec::new();
            for i in 0..=cfg.num_res_blocks {
                let skip = skip_channels.pop().unwrap_or(0);
                layers.push(layer(
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

        Ok(Self {
            config: cfg.clone(),
            time_embed: ScalarEmbedding::new(cfg.model_channels, emb_dim, vb.pp("time_embed"))?,
            aug_embed: if cfg.is_super_resolution() {
                Some(ScalarEmbedding::new(
                    cfg.model_channels,
                    emb_dim,
                    vb.pp("aug_embed"),
                )?)
            } else {
                None
            },
            frame_embed: if cfg.frame_embedding {
                Some(ScalarEmbedding::new(
                    cfg.model_channels,
                    emb_dim,
                    vb.pp("frame_embed"),
                )?)
            } else {
                None
            },
            layout: if cfg.layout_channels > 0 {
                Some(LayoutMap::new(
                    emb_dim,
                    cfg.context_dim,
                    cfg.layout_channels,
                    cfg.layout_grid,
                    cfg.layout_storyboard_knots,
                    vb.pp("layout"),
                )?)
            } else {
                None
            },
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
            out_norm: group_norm(groups, channels, 1e-5, vb.pp("out_norm"))?,
            conv_out: conv2d_same(channels, cfg.out_channels, 3, true, vb.pp("conv_out"))?,
        })
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
        let cfg = &self.config;
        let invalid =
            |field: &'static str, reason: String| Err(ModelError::InvalidInput { field, reason });
        let dims = inputs.z.dims();
        let [b, c, f, h, w] = dims else {
            return invalid(
                "z",
                format!("must be [batch, channels, frames, height, width], got {dims:?}"),
            );
        };
        let (b, c, f, h, w) = (*b, *c, *f, *h, *w);
        if c != cfg.in_channels {
            return invalid(
                "z",
                format!("has {c} channels, the model takes {}", cfg.in_channels),
            );
        }
        let divisor = cfg.spatial_divisor();
        if h % divisor != 0 || w % divisor != 0 || h == 0 || w == 0 {
            return invalid(
                "z",
                format!(
                    "height {h} and width {w} must be positive multiples of {divisor} for this U-Net's depth"
                ),
            );
        }
        if cfg.layout_channels > 0 && (h % cfg.layout_grid != 0 || w % cfg.layout_grid != 0) {
            return invalid(
                "z",
                format!(
                    "height {h} and width {w} must be multiples of the layout grid {}",
                    cfg.layout_grid
                ),
            );
        }
        if cfg.temporal == TemporalMixing::Attention && f > cfg.max_frames {
            return invalid(
                "z",
                format!(
                    "has {f} frames, the model covers at most {}",
                    cfg.max_frames
                ),
            );
        }
        if inputs.t.dims() != [b] {
            return invalid("t", format!("must be [{b}], got {:?}", inputs.t.dims()));
        }
        let ctx = inputs.context.dims();
        if ctx.len() != 3 || ctx[0] != b || ctx[2] != cfg.context_dim {
            return invalid(
                "context",
                format!("must be [{b}, tokens, {}], got {ctx:?}", cfg.context_dim),
            );
        }
        if inputs.context_mask.dims() != [b, ctx[1]] {
            return invalid(
                "context_mask",
                format!(
                    "must be [{b}, {}], got {:?}",
                    ctx[1],
                    inputs.context_mask.dims()
                ),
            );
        }
        match (cfg.is_super_resolution(), inputs.cond, inputs.aug_level) {
            (false, None, None) => {}
            (false, _, _) => {
                return invalid("cond", "a base model takes no conditioning video".into());
            }
            (true, Some(cond), Some(aug)) => {
                let want = [b, cfg.cond_channels, f, h, w];
                if cond.dims() != want {
                    return invalid("cond", format!("must be {want:?}, got {:?}", cond.dims()));
                }
                if aug.dims() != [b] {
                    return invalid("aug_level", format!("must be [{b}], got {:?}", aug.dims()));
                }
            }
            (true, _, _) => {
                return invalid(
                    "cond",
                    "a super-resolution model needs both a conditioning video and its augmentation level".into(),
                );
            }
        }
        Ok((b, f, h, w))
    }

    /// The network output `[B, out_channels, F, H, W]`: `v`, or the residual over the upsampled
    /// conditioning video (see [`Prediction`]), as the config says.
    pub fn forward(&self, inputs: &UNetInputs<'_>) -> Result<Tensor, ModelError> {
        let (b, frames, h, w) = self.check_inputs(inputs)?;
        Ok(self.forward_unchecked(inputs, b, frames, h, w)?)
    }

    fn forward_unchecked(
        &self,
        inputs: &UNetInputs<'_>,
        b: usize,
        frames: usize,
        h: usize,
        w: usize,
    ) -> CandleResult<Tensor> {
        // Global embedding per video, then repeated per frame: [B*F, emb].
        let pooled_text = PooledText::pool(inputs.context, inputs.context_mask)?;
        let mut emb =
            (self.time_embed.forward(inputs.t)? + self.text_pool.project(&pooled_text)?)?;
        if let (Some(aug_embed), Some(aug)) = (&self.aug_embed, inputs.aug_level) {
            emb = (emb + aug_embed.forward(aug)?)?;
        }
        let per_frame = |t: &Tensor| -> CandleResult<Tensor> {
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
        };
        let mut emb = per_frame(&emb)?;
        if let Some(frame_embed) = &self.frame_embed {
            let progress: Vec<f32> = (0..b * frames)
                .map(|i| clip_progress(i % frames, frames))
                .collect();
            let progress = Tensor::from_vec(progress, b * frames, emb.device())?;
            emb = (emb + frame_embed.forward(&progress)?)?;
        }
        let ctx = per_frame(inputs.context)?;
        let mask = per_frame(inputs.context_mask)?;

        // [B, C, F, H, W] -> [B*F, C, H, W]
        let fold = |t: &Tensor| -> CandleResult<Tensor> {
            let c = t.dim(1)?;
            t.permute((0, 2, 1, 3, 4))?
                .contiguous()?
                .reshape((b * frames, c, h, w))
        };
        let mut x = fold(inputs.z)?;
        if let Some(cond) = inputs.cond {
            x = Tensor::cat(&[x, fold(cond)?], 1)?;
        }
        if self.config.position_channels {
            let coordinates = coordinate_maps(b * frames, h, w, x.device())?;
            x = Tensor::cat(&[x, coordinates], 1)?;
        }
        if let Some(layout) = &self.layout {
            let map = layout.forward(&emb, &pooled_text, frames, h, w)?;
            x = Tensor::cat(&[x, map], 1)?;
        }

        let mut h_ = self.conv_in.forward(&x)?;
        let mut skips = vec![h_.clone()];
        for level in &self.down {
            for layer in &level.layers {
                h_ = layer.forward(&h_, &emb, frames, &ctx, &mask)?;
                skips.push(h_.clone());
            }
            if let Some(down) = &level.resample {
                h_ = down.forward(&h_)?;
                skips.push(h_.clone());
            }
        }
        for layer in &self.mid {
            h_ = layer.forward(&h_, &emb, frames, &ctx, &mask)?;
        }
        for level in &self.up {
            for layer in &level.layers {
                let skip = skips
                    .pop()
                    .ok_or_else(|| candle_core::Error::Msg("U-Net skip stack underflow".into()))?;
                h_ = layer.forward(&Tensor::cat(&[h_, skip], 1)?, &emb, frames, &ctx, &mask)?;
            }
            if let Some(up) = &level.resample {
                let (_, _, hh, ww) = h_.dims4()?;
                h_ = up.forward(&h_.upsample_nearest2d(2 * hh, 2 * ww)?)?;
            }
        }
        let out = self
            .conv_out
            .forward(&self.out_norm.forward(&h_)?.silu()?)?;
        // [B*F, C, H, W] -> [B, C, F, H, W]
        let c = out.dim(1)?;
        out.reshape((b, frames, c, h, w))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()
    }
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
