//! Known frames ("context"): the input that lets a stage continue from given frames.
//!
//! Image-to-video gives the first frame, a continuation (a story's next segment) the previous
//! clip's last frames. The U-Net sees them as [`CONTEXT_CHANNELS`] extra channels per frame — the
//! frame's RGB where it is given (zero elsewhere) and a mask plane — read by their own
//! convolution whose output is added to the first convolution's. That convolution starts at zero,
//! so adding context to a trained stage changes nothing until training teaches it to look, and
//! "nothing given" is exactly the all-zero input (the convolution's bias alone).

use candle_core::{Module, Result as CandleResult, Tensor};
use candle_nn::VarBuilder;

use super::config::CONTEXT_CHANNELS;
use crate::layers::{SameConv, conv2d_same};

/// The known-frames input `[B, CONTEXT_CHANNELS, F, H, W]` of `video` `[B, 3, F, H, W]` where
/// `given` `[B, F]` is 1 (the frame is known) or 0.
pub fn known_frames(video: &Tensor, given: &Tensor) -> CandleResult<Tensor> {
    let (b, c, f, h, w) = video.dims5()?;
    if c + 1 != CONTEXT_CHANNELS {
        candle_core::bail!("known frames need RGB videos, got {c} channels");
    }
    let mask = given
        .to_dtype(video.dtype())?
        .reshape((b, 1, f, 1, 1))?
        .broadcast_as((b, 1, f, h, w))?
        .contiguous()?;
    Tensor::cat(&[video.broadcast_mul(&mask)?, mask], 1)
}

/// The convolution that reads the known frames.
#[derive(Debug, Clone)]
pub(super) struct ContextInput {
    conv: SameConv,
}

impl ContextInput {
    /// A zero-initialised `3 x 3` convolution to `channels` (under `vb`, `context_in`).
    pub(super) fn new(channels: usize, vb: VarBuilder) -> CandleResult<Self> {
        Ok(Self {
            conv: conv2d_same(CONTEXT_CHANNELS, channels, 3, true, vb)?,
        })
    }

    /// What the known frames add to the first convolution's output `first` `[B*F, C, H, W]`:
    /// `known` folded to `[B*F, CONTEXT_CHANNELS, H, W]`, or `None` (nothing given: the
    /// convolution of zeros, i.e. its bias).
    pub(super) fn add_to(&self, first: &Tensor, known: Option<&Tensor>) -> CandleResult<Tensor> {
        match known {
            Some(known) => first + self.conv.forward(known)?,
            None => match self.conv.bias() {
                Some(bias) => first.broadcast_add(&bias.reshape((1, bias.dim(0)?, 1, 1))?),
                None => Ok(first.clone()),
            },
        }
    }
}
