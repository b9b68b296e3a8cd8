//! The residual block of the U-Net, applied to every frame independently (the "space" half of
//! space-time separability), modulated by the global embedding with a FiLM scale and shift.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder, linear};
use vidcascade_kernels::cpu::Statistics;

use crate::fast;
use crate::layers::{GroupNorm, SameConv, conv2d_same};

/// `GN -> SiLU -> conv3x3 -> GN * (1 + scale) + shift -> SiLU -> conv3x3 (zero-init)`, plus a
/// 1x1 skip when the width changes.
#[derive(Debug, Clone)]
pub struct ResBlock {
    norm1: GroupNorm,
    conv1: SameConv,
    emb_proj: Linear,
    norm2: GroupNorm,
    conv2: SameConv,
    skip: Option<SameConv>,
    out_channels: usize,
}

impl ResBlock {
    /// A block from `in_c` to `out_c` channels taking an `emb_dim` embedding.
    pub fn new(
        in_c: usize,
        out_c: usize,
        emb_dim: usize,
        groups: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let skip = if in_c != out_c {
            Some(conv2d_same(in_c, out_c, 1, false, vb.pp("skip"))?)
        } else {
            None
        };
        Ok(Self {
            norm1: GroupNorm::new(groups, in_c, 1e-5, vb.pp("norm1"))?,
            conv1: conv2d_same(in_c, out_c, 3, false, vb.pp("conv1"))?,
            emb_proj: linear(emb_dim, 2 * out_c, vb.pp("emb_proj"))?,
            norm2: GroupNorm::new(groups, out_c, 1e-5, vb.pp("norm2"))?,
            conv2: conv2d_same(out_c, out_c, 3, true, vb.pp("conv2"))?,
            skip,
            out_channels: out_c,
        })
    }

    /// `x` is `[B*F, C, H, W]`; `emb` is `[B*F, emb_dim]` (the per-video embedding repeated per frame).
    pub fn forward(&self, x: &Tensor, emb: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let film = self.emb_proj.forward(&emb.silu()?)?;
        if fast::applies(&[&h, &film]) {
            // GN -> FiLM -> SiLU as one op.
            let c = self.out_channels;
            let (scale, shift) = (film.narrow(1, 0, c)?, film.narrow(1, c, c)?);
            let params = self.norm2.params();
            let h = fast::group_norm(
                &h,
                params,
                Statistics::PerImage,
                Some((&scale, &shift)),
                true,
            )?;
            let h = self.conv2.forward(&h)?;
            return self.skip(x)? + h;
        }
        let scale = film
            .narrow(1, 0, self.out_channels)?
            .unsqueeze(2)?
            .unsqueeze(3)?;
        let shift = film
            .narrow(1, self.out_channels, self.out_channels)?
            .unsqueeze(2)?
            .unsqueeze(3)?;
        let h = self
            .norm2
            .forward(&h)?
            .broadcast_mul(&(scale + 1.0)?)?
            .broadcast_add(&shift)?;
        let h = self.conv2.forward(&h.silu()?)?;
        self.skip(x)? + h
    }

    fn skip(&self, x: &Tensor) -> Result<Tensor> {
        match &self.skip {
            Some(conv) => conv.forward(x),
            None => Ok(x.clone()),
        }
    }
}
