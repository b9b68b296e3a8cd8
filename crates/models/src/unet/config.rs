//! The Video U-Net's `config.json`. One architecture serves every diffusion stage; the config
//! says which kind of temporal mixing it uses and whether it takes a conditioning video.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// How information moves across frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemporalMixing {
    /// Self-attention over frames with a learned relative-position bias (Imagen Video's base model):
    /// global in time, so whole-clip motion can be planned.
    Attention,
    /// 1D convolution over frames (Imagen Video's SR models): local in time and cheap at high
    /// resolution and frame counts.
    Conv,
}

/// What the network's output means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The velocity `v = alpha eps - sigma x` (Salimans & Ho 2022), as Imagen Video's models.
    #[default]
    V,
    /// Super-resolution stages: the clean video minus the (un-augmented) upsampled conditioning
    /// video. With a zero-initialised output layer an untrained stage reproduces its upsampled
    /// input and training only learns the correction; the stage converts the estimate to `v`
    /// for the sampler, so sampling, guidance and thresholding are unchanged.
    X0Residual,
}

fn default_groups() -> usize {
    8
}
fn default_temporal_kernel() -> usize {
    3
}
fn default_layout_grid() -> usize {
    8
}

/// Video U-Net hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoUNetConfig {
    /// Channels of the video being denoised (3 for RGB).
    pub in_channels: usize,
    /// Channels of the conditioning video concatenated to the input: 0 for a base stage, 3 for a
    /// super-resolution stage (the upsampled, noise-augmented lower-resolution video).
    pub cond_channels: usize,
    /// Channels of the prediction (v), normally equal to `in_channels`.
    pub out_channels: usize,
    /// Width of the first level; level `i` has `model_channels * channel_mult[i]` channels.
    pub model_channels: usize,
    /// Width multiplier per resolution level; each level after the first halves height and width.
    pub channel_mult: Vec<usize>,
    /// Residual blocks per level on the way down (the way up has one more, for the skip).
    pub num_res_blocks: usize,
    /// Whether each level has spatial self-attention and text cross-attention after its residual
    /// blocks (the middle block always has them). Same length as `channel_mult`.
    pub attention_levels: Vec<bool>,
    /// Attention heads (spatial, cross and temporal attention).
    pub num_heads: usize,
    /// Temporal mixing after every residual block.
    pub temporal: TemporalMixing,
    /// Kernel size of temporal convolutions (odd).
    #[serde(default = "default_temporal_kernel")]
    pub temporal_kernel: usize,
    /// Longest clip the temporal attention's relative-position table covers.
    pub max_frames: usize,
    /// Width of the text embeddings (the text encoder's `d_model`).
    pub context_dim: usize,
    /// Groups of every group norm; must divide every level's width.
    #[serde(default = "default_groups")]
    pub norm_groups: usize,
    /// Adds an embedding of each frame's position in the clip (0 for the first frame, 1 for the
    /// last) to that frame's conditioning vector, so spatial layers know *when* they are: motion
    /// defined over a clip's progress needs it, and relative temporal attention alone only infers
    /// it from the clip's edges. Absent in older configs (false).
    #[serde(default)]
    pub frame_embedding: bool,
    /// What the output predicts (absent in older configs: `v`).
    #[serde(default)]
    pub prediction: Prediction,
    /// Concatenates two coordinate maps (x and y, -1 at the first pixel to 1 at the last) to the
    /// input (CoordConv, Liu et al. 2018). Convolutions are translation-equivariant and the
    /// spatial attention has no position encoding, so without them the network only learns
    /// *where* it is from the zero padding at the borders, and a base stage cannot reliably put a
    /// shape on the side its motion starts from. Absent in older configs (false).
    #[serde(default)]
    pub position_channels: bool,
    /// Channels of a coarse spatial map computed from each frame's conditioning vector (time,
    /// pooled text, the frame's place in the clip) and concatenated to the input. It is a direct
    /// path from the caption and the frame's position in the clip to *where* things go: FiLM is
    /// per channel and blind to position, and cross-attention queries carry no position until the
    /// network has learnt to compute it, which a small network trained briefly does not. 0 (absent
    /// in older configs) turns it off.
    #[serde(default)]
    pub layout_channels: usize,
    /// Side of the layout map's grid; it is upsampled (nearest) to the frame, whose height and
    /// width must be multiples of it.
    #[serde(default = "default_layout_grid")]
    pub layout_grid: usize,
    /// Knots of the layout map's storyboard term (0, absent in older configs, turns it off): a
    /// zero-initialised linear map from the pooled text tokens times hat functions of the frame's
    /// place in the clip (`knots` of them, evenly spaced over the clip) to the layout grid, added
    /// to the map. The conditioning-vector term has to learn *which frame* and *which caption*
    /// as an interaction of a sum through one SiLU; the storyboard term is a linear regression of
    /// the layout on caption x frame features, so a base stage can learn where a motion word puts
    /// the shape in each frame from the noisy gradient of a varied training set. Needs
    /// `layout_channels`.
    #[serde(default)]
    pub layout_storyboard_knots: usize,
    /// Takes known frames: [`CONTEXT_CHANNELS`] extra input channels per frame, the frame's RGB
    /// where it is given (zero elsewhere) and a mask plane (1 where given), read by their own
    /// zero-initialised convolution added to the first one's output. Image-to-video gives the
    /// first frame, a continuation the previous clip's last frames; with nothing given the input
    /// is all zeros, so a stage migrated to take context computes what it computed before, and
    /// a stage trained with random masks (none among them) still generates from text alone.
    /// Absent in older configs (false).
    #[serde(default)]
    pub context_frames: bool,
}

/// Channels of the known-frames input of a stage with `context_frames`: RGB and the mask.
pub const CONTEXT_CHANNELS: usize = 4;

impl VideoUNetConfig {
    /// Width of the time (and augmentation, and pooled text) embedding.
    pub fn embedding_dim(&self) -> usize {
        4 * self.model_channels
    }

    /// Width of level `level`.
    pub fn level_channels(&self, level: usize) -> usize {
        self.model_channels * self.channel_mult[level]
    }

    /// How much each spatial side shrinks at the bottom of the U: `2^(levels - 1)`.
    pub fn spatial_divisor(&self) -> usize {
        1 << self.channel_mult.len().saturating_sub(1)
    }

    /// Channels of the coordinate maps added to the input (0 or 2).
    pub fn position_channel_count(&self) -> usize {
        if self.position_channels { 2 } else { 0 }
    }

    /// Channels the first convolution takes: the noisy video, the conditioning video, the
    /// coordinate maps and the layout map.
    pub fn input_channels(&self) -> usize {
        self.in_channels + self.cond_channels + self.position_channel_count() + self.layout_channels
    }

    /// Whether this model takes a conditioning video (a super-resolution stage).
    pub fn is_super_resolution(&self) -> bool {
        self.cond_channels > 0
    }

    /// Checks that every size fits together.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.validate_positive_sizes()?;
        self.validate_level_lists()?;
        self.validate_kernel_and_embedding()?;
        self.validate_level_widths()?;
        self.validate_layout()?;
        self.validate_prediction()?;
        if !self.model_channels.is_multiple_of(self.norm_groups) {
            return invalid(
                "norm_groups",
                format!(
                    "{} does not divide model_channels {}",
                    self.norm_groups, self.model_channels
                ),
            );
        }
        Ok(())
    }

    /// Every size that must be at least 1.
    fn validate_positive_sizes(&self) -> Result<(), ModelError> {
        for (field, value) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("model_channels", self.model_channels),
            ("num_res_blocks", self.num_res_blocks),
            ("num_heads", self.num_heads),
            ("max_frames", self.max_frames),
            ("context_dim", self.context_dim),
            ("norm_groups", self.norm_groups),
        ] {
            if value == 0 {
                return invalid(field, "must be at least 1".into());
            }
        }
        Ok(())
    }

    /// `channel_mult` is a non-empty list of positive multipliers and `attention_levels` has one
    /// entry per level.
    fn validate_level_lists(&self) -> Result<(), ModelError> {
        if self.channel_mult.is_empty() || self.channel_mult.contains(&0) {
            return invalid(
                "channel_mult",
                format!(
                    "must be a non-empty list of positive multipliers, got {:?}",
                    self.channel_mult
                ),
            );
        }
        if self.attention_levels.len() != self.channel_mult.len() {
            return invalid(
                "attention_levels",
                format!(
                    "must have one entry per level ({}), got {}",
                    self.channel_mult.len(),
                    self.attention_levels.len()
                ),
            );
        }
        Ok(())
    }

    /// The temporal kernel is odd and `model_channels` even (for the sinusoidal embedding).
    fn validate_kernel_and_embedding(&self) -> Result<(), ModelError> {
        if self.temporal_kernel.is_multiple_of(2) {
            return invalid(
                "temporal_kernel",
                format!("must be odd, got {}", self.temporal_kernel),
            );
        }
        if !self.model_channels.is_multiple_of(2) {
            return invalid(
                "model_channels",
                format!(
                    "must be even (sinusoidal embedding), got {}",
                    self.model_channels
                ),
            );
        }
        Ok(())
    }

    /// `norm_groups` and `num_heads` divide every level's width.
    fn validate_level_widths(&self) -> Result<(), ModelError> {
        for level in 0..self.channel_mult.len() {
            let width = self.level_channels(level);
            if !width.is_multiple_of(self.norm_groups) {
                return invalid(
                    "norm_groups",
                    format!(
                        "{} does not divide level {level}'s width {width}",
                        self.norm_groups
                    ),
                );
            }
            if !width.is_multiple_of(self.num_heads) {
                return invalid(
                    "num_heads",
                    format!(
                        "{} does not divide level {level}'s width {width}",
                        self.num_heads
                    ),
                );
            }
        }
        Ok(())
    }

    /// The layout map's grid and storyboard settings fit together.
    fn validate_layout(&self) -> Result<(), ModelError> {
        if self.layout_channels > 0 && self.layout_grid == 0 {
            return invalid(
                "layout_grid",
                "must be at least 1 when layout_channels is set".into(),
            );
        }
        if self.layout_storyboard_knots > 0 && self.layout_channels == 0 {
            return invalid(
                "layout_storyboard_knots",
                "needs layout_channels > 0 (the storyboard adds to the layout map)".into(),
            );
        }
        if self.layout_storyboard_knots == 1 {
            return invalid(
                "layout_storyboard_knots",
                "must be 0 (off) or at least 2 (one knot cannot tell frames apart)".into(),
            );
        }
        Ok(())
    }

    /// `x0_residual` needs a super-resolution stage whose conditioning video matches the output.
    fn validate_prediction(&self) -> Result<(), ModelError> {
        if self.prediction == Prediction::X0Residual
            && (!self.is_super_resolution() || self.cond_channels != self.out_channels)
        {
            return invalid(
                "prediction",
                format!(
                    "x0_residual needs a super-resolution stage whose conditioning video has the output's {} channels, got cond_channels {}",
                    self.out_channels, self.cond_channels
                ),
            );
        }
        Ok(())
    }
}

/// A [`ModelError::InvalidConfig`] for `field`.
fn invalid(field: &'static str, reason: String) -> Result<(), ModelError> {
    Err(ModelError::InvalidConfig { field, reason })
}
