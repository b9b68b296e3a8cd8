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
    use crate::repository::scaffold::Scaffold;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn random_unet(config: &VideoUNetConfig) -> anyhow::Result<VideoUNet> {
        let varmap = VarMap::new();
        let unet = VideoUNet::new(
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
            config,
        )?;
        // Training init zeroes the output branches; give every weight a value so outputs depend on inputs.
        for var in varmap.all_vars() {
            let noise = Tensor::randn(0f32, 0.2, var.dims(), &Device::Cpu)?;
            var.set(&noise)?;
        }
        Ok(unet)
    }

    struct Batch {
        z: Tensor,
        t: Tensor,
        context: Tensor,
        mask: Tensor,
        cond: Option<Tensor>,
        aug: Option<Tensor>,
    }

    impl Batch {
        fn new(
            config: &VideoUNetConfig,
            b: usize,
            f: usize,
            side: usize,
            t: &[f32],
        ) -> anyhow::Result<Self> {
            let dev = Device::Cpu;
            let sr = config.is_super_resolution();
            Ok(Self {
                z: Tensor::randn(0f32, 1.0, (b, 3, f, side, side), &dev)?,
                t: Tensor::new(t, &dev)?,
                context: Tensor::randn(0f32, 1.0, (b, 5, config.context_dim), &dev)?,
                mask: Tensor::ones((b, 5), DType::F32, &dev)?,
                cond: if sr {
                    Some(Tensor::randn(0f32, 1.0, (b, 3, f, side, side), &dev)?)
                } else {
                    None
                },
                aug: if sr {
                    Some(Tensor::full(0.1f32, b, &dev)?)
                } else {
                    None
                },
            })
        }

        fn inputs(&self) -> UNetInputs<'_> {
            UNetInputs {
                z: &self.z,
                t: &self.t,
                context: &self.context,
                context_mask: &self.mask,
                cond: self.cond.as_ref(),
                aug_level: self.aug.as_ref(),
            }
        }
    }

    fn stage_configs() -> Vec<(String, VideoUNetConfig, usize, usize)> {
        Scaffold::tiny()
            .stages
            .into_iter()
            .map(|s| {
                let out = s.manifest.output.expect("diffusion stage output");
                (s.manifest.name, s.unet, out.frames, out.height)
            })
            .collect()
    }

    #[test]
    fn output_shape_matches_input_for_base_tsr_and_ssr_configs() -> anyhow::Result<()> {
        for (name, config, frames, side) in stage_configs() {
            let unet = random_unet(&config)?;
            let batch = Batch::new(&config, 2, frames, side, &[0.3, 0.9])?;
            let v = unet.forward(&batch.inputs())?;
            assert_eq!(v.dims(), &[2, 3, frames, side, side], "stage {name}");
            assert!(crate::repository::scaffold::all_finite(&v)?, "stage {name}");
        }
        Ok(())
    }

    #[test]
    fn the_frame_embedding_tells_identical_frames_apart() -> anyhow::Result<()> {
        // Temporal attention averages identical frames into identical frames; only the frame's
        // position in the clip can make their predictions differ.
        let (_, config, frames, side) = stage_configs().remove(0);
        assert!(
            config.frame_embedding,
            "the tiny base stage embeds frame positions"
        );
        let spread_across_frames = |config: &VideoUNetConfig| -> anyhow::Result<f32> {
            let unet = random_unet(config)?;
            let mut batch = Batch::new(config, 1, frames, side, &[0.5])?;
            let frame = Tensor::randn(0f32, 1.0, (1, 3, 1, side, side), &Device::Cpu)?;
            batch.z = frame.repeat((1, 1, frames, 1, 1))?;
            let v = unet.forward(&batch.inputs())?;
            let first = v.narrow(2, 0, 1)?;
            Ok(v.broadcast_sub(&first)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?)
        };
        assert!(spread_across_frames(&config)? > 1e-3);
        // The storyboard also tells frames apart (by their place in the clip); drop it too.
        let without = VideoUNetConfig {
            frame_embedding: false,
            layout_storyboard_knots: 0,
            ..config
        };
        assert!(spread_across_frames(&without)? < 1e-5);
        Ok(())
    }

    #[test]
    fn a_residual_prediction_needs_a_matching_conditioning_video() {
        let (_, base, _, _) = stage_configs().remove(0);
        let config = VideoUNetConfig {
            prediction: Prediction::X0Residual,
            ..base
        };
        match config.validate() {
            Err(ModelError::InvalidConfig { field, .. }) => assert_eq!(field, "prediction"),
            other => panic!("expected an invalid prediction, got {other:?}"),
        }
    }

    #[test]
    fn position_and_layout_maps_tell_interior_pixels_of_a_uniform_frame_apart() -> anyhow::Result<()>
    {
        // Far from the borders a translation-equivariant network maps a uniform input to a
        // uniform output; only the coordinate maps tell it where a pixel is.
        let (_, config, frames, _) = stage_configs().remove(0);
        assert!(config.position_channels, "the tiny base stage has them");
        let side = 64;
        let interior_spread = |config: &VideoUNetConfig| -> anyhow::Result<f32> {
            let unet = random_unet(config)?;
            let mut batch = Batch::new(config, 1, frames, side, &[0.5])?;
            batch.z = Tensor::full(0.3f32, (1, 3, frames, side, side), &Device::Cpu)?;
            let v = unet.forward(&batch.inputs())?;
            let pixel = |y: usize, x: usize| -> anyhow::Result<Tensor> {
                Ok(v.narrow(3, y, 1)?.narrow(4, x, 1)?)
            };
            Ok((pixel(32, 28)? - pixel(32, 36)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?)
        };
        assert!(interior_spread(&config)? > 1e-3);
        // The layout map, computed from the conditioning vector, also varies across the frame.
        let layout_only = VideoUNetConfig {
            position_channels: false,
            ..config.clone()
        };
        assert!(layout_only.layout_channels > 0);
        assert!(interior_spread(&layout_only)? > 1e-3);
        let neither = VideoUNetConfig {
            position_channels: false,
            layout_channels: 0,
            layout_storyboard_knots: 0,
            ..config
        };
        assert!(interior_spread(&neither)? < 1e-4);
        Ok(())
    }

    #[test]
    fn a_zero_storyboard_changes_nothing_and_a_trained_one_depends_on_the_caption()
    -> anyhow::Result<()> {
        let (_, config, frames, side) = stage_configs().remove(0);
        assert!(config.layout_storyboard_knots > 0, "the tiny base has one");
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let with = VideoUNet::new(vb.clone(), &config)?;
        let without = VideoUNet::new(
            vb,
            &VideoUNetConfig {
                layout_storyboard_knots: 0,
                ..config.clone()
            },
        )?;
        let storyboard = |name: &str| name.starts_with("layout.storyboard.");
        let vars = varmap.data().lock().expect("varmap lock").clone();
        for (name, var) in &vars {
            let value = if storyboard(name) {
                Tensor::zeros(var.dims(), DType::F32, &Device::Cpu)?
            } else {
                Tensor::randn(0f32, 0.2, var.dims(), &Device::Cpu)?
            };
            var.set(&value)?;
        }
        let batch = Batch::new(&config, 2, frames, side, &[0.9, 0.9])?;
        let gap = |a: &Tensor, b: &Tensor| -> anyhow::Result<f32> {
            Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        // Zero storyboard (a migration's starting point): the same function as without it.
        let v_with = with.forward(&batch.inputs())?;
        assert!(gap(&v_with, &without.forward(&batch.inputs())?)? < 1e-6);
        // Trained: two clips with the same noise and time but different captions come apart more.
        let same_noise = Batch {
            z: batch.z.narrow(0, 0, 1)?.repeat((2, 1, 1, 1, 1))?,
            ..batch
        };
        let caption_gap = |unet: &VideoUNet| -> anyhow::Result<f32> {
            let v = unet.forward(&same_noise.inputs())?;
            gap(&v.narrow(0, 0, 1)?, &v.narrow(0, 1, 1)?)
        };
        let before = caption_gap(&with)?;
        for (name, var) in &vars {
            if storyboard(name) {
                var.set(&Tensor::randn(0f32, 1.0, var.dims(), &Device::Cpu)?)?;
            }
        }
        assert!(caption_gap(&with)? > before + 1e-3);
        Ok(())
    }

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

    #[test]
    fn a_storyboard_needs_a_layout_map_and_two_knots() {
        let (_, base, _, _) = stage_configs().remove(0);
        for bad in [
            VideoUNetConfig {
                layout_channels: 0,
                ..base.clone()
            },
            VideoUNetConfig {
                layout_storyboard_knots: 1,
                ..base.clone()
            },
        ] {
            match bad.validate() {
                Err(ModelError::InvalidConfig { field, .. }) => {
                    assert_eq!(field, "layout_storyboard_knots")
                }
                other => panic!("expected an invalid storyboard, got {other:?}"),
            }
        }
    }

    #[test]
    fn configs_written_before_frame_embedding_and_prediction_still_load() -> anyhow::Result<()> {
        let (_, config, _, _) = stage_configs().remove(1);
        let mut json = serde_json::to_value(&config)?;
        let fields = json.as_object_mut().expect("a JSON object");
        fields.remove("frame_embedding");
        fields.remove("prediction");
        fields.remove("position_channels");
        fields.remove("layout_channels");
        fields.remove("layout_grid");
        fields.remove("layout_storyboard_knots");
        let old: VideoUNetConfig = serde_json::from_value(json)?;
        assert!(!old.frame_embedding && !old.position_channels);
        assert_eq!(old.layout_channels, 0);
        assert_eq!(old.layout_storyboard_knots, 0);
        assert_eq!(old.prediction, Prediction::V);
        Ok(())
    }

    #[test]
    fn each_row_of_a_mixed_timestep_batch_is_computed_independently() -> anyhow::Result<()> {
        let (_, config, frames, side) = stage_configs().remove(0);
        let unet = random_unet(&config)?;
        let batch = Batch::new(&config, 3, frames, side, &[0.05, 0.5, 1.0])?;
        let together = unet.forward(&batch.inputs())?;
        for row in 0..3 {
            let single = Batch {
                z: batch.z.narrow(0, row, 1)?,
                t: batch.t.narrow(0, row, 1)?,
                context: batch.context.narrow(0, row, 1)?,
                mask: batch.mask.narrow(0, row, 1)?,
                cond: None,
                aug: None,
            };
            let alone = unet.forward(&single.inputs())?;
            let diff = (together.narrow(0, row, 1)? - alone)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-4, "row {row} differs by {diff}");
        }
        // And the time input matters: the same video at two times gives two predictions.
        let a = together.get(0)?;
        let b = together.get(1)?;
        assert!((a - b)?.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        Ok(())
    }

    #[test]
    fn padded_text_tokens_do_not_change_the_prediction() -> anyhow::Result<()> {
        let (_, config, frames, side) = stage_configs().remove(0);
        let unet = random_unet(&config)?;
        let batch = Batch::new(&config, 1, frames, side, &[0.5])?;
        let short = Batch {
            context: batch.context.narrow(1, 0, 3)?,
            mask: batch.mask.narrow(1, 0, 3)?,
            z: batch.z.clone(),
            t: batch.t.clone(),
            cond: None,
            aug: None,
        };
        let padded_mask = Tensor::new(&[[1f32, 1.0, 1.0, 0.0, 0.0]], &Device::Cpu)?;
        let padded = Batch {
            mask: padded_mask,
            ..batch
        };
        let a = unet.forward(&short.inputs())?;
        let b = unet.forward(&padded.inputs())?;
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "padding leaked into the prediction: {diff}");
        Ok(())
    }

    #[test]
    fn bad_inputs_name_the_field() -> anyhow::Result<()> {
        let (_, base, frames, side) = stage_configs().remove(0);
        let unet = random_unet(&base)?;
        let good = Batch::new(&base, 1, frames, side, &[0.5])?;

        let odd_size = Batch::new(&base, 1, frames, side + 1, &[0.5])?;
        let err = unet.forward(&odd_size.inputs()).expect_err("odd size");
        assert!(
            err.to_string().contains("`z`") && err.to_string().contains("multiples of 2"),
            "{err}"
        );

        let too_long = Batch::new(&base, 1, base.max_frames + 1, side, &[0.5])?;
        let err = unet
            .forward(&too_long.inputs())
            .expect_err("too many frames");
        assert!(err.to_string().contains("at most 8"), "{err}");

        let mut inputs = good.inputs();
        let wrong_t = Tensor::new(&[0.5f32, 0.5], &Device::Cpu)?;
        inputs.t = &wrong_t;
        assert!(
            unet.forward(&inputs)
                .expect_err("t")
                .to_string()
                .contains("`t`")
        );

        let mut inputs = good.inputs();
        let cond = good.z.clone();
        inputs.cond = Some(&cond);
        assert!(
            unet.forward(&inputs)
                .expect_err("cond")
                .to_string()
                .contains("`cond`")
        );
        Ok(())
    }
}
