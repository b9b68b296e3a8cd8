//! A same-padding convolution over the frames of each clip, computed in the `[B*F, C, P]`
//! layout of the spatial layers: the training path transposes the video into `[B*H*W, C, F]`
//! sequences, runs a 1D convolution and transposes back; here output frame `f` is one product
//! of the (reordered) weight with frames `f - k/2 ..= f + k/2`, which already lie next to each
//! other in memory as a `[k*C, P]` matrix.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, bail};
use rayon::prelude::*;

use super::contiguous_f32;
use super::gemm::{MatMut, MatRef, matmul};

/// `y[b, f] = bias + sum_dt W[:, :, dt] x[b, f + dt - k/2]` (zero frames outside the clip) for
/// `x` `[B*F, C, ...]`, `weight` `[O, C, k]` (odd k), `bias` `[O]`. Apply with
/// `x.apply_op3_no_bwd(&weight, &bias, &TemporalConv { frames })`.
#[derive(Debug, Clone, Copy)]
pub struct TemporalConv {
    /// Frames per clip.
    pub frames: usize,
}

impl CustomOp3 for TemporalConv {
    fn name(&self) -> &'static str {
        "vidcascade-temporal-conv"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (&[n, c, ..], &[o, wc, k]) = (xl.dims(), wl.dims()) else {
            bail!(
                "temporal conv: input {:?} and weight {:?}",
                xl.dims(),
                wl.dims()
            )
        };
        let frames = self.frames;
        if wc != c || k % 2 == 0 || bl.dims() != [o] || frames == 0 || n % frames != 0 {
            bail!(
                "temporal conv: input {:?}, weight {:?}, bias {:?}, {frames} frames do not fit",
                xl.dims(),
                wl.dims(),
                bl.dims()
            );
        }
        let x = contiguous_f32(xs, xl, "temporal conv", "input")?;
        let weight = contiguous_f32(ws, wl, "temporal conv", "weight")?;
        let bias = contiguous_f32(bs, bl, "temporal conv", "bias")?;
        let p: usize = xl.dims()[2..].iter().product();
        let frame = Frame {
            frames,
            channels: c,
            out_channels: o,
            kernel: k,
            positions: p,
        };
        let reordered = frame.reorder(weight);
        let mut out = vec![0.0f32; n * o * p];
        if !out.is_empty() && p > 0 {
            out.par_chunks_mut(o * p)
                .enumerate()
                .try_for_each(|(i, out)| frame.compute(i, x, &reordered, bias, out))?;
        }
        let mut shape = xl.dims().to_vec();
        shape[1] = o;
        Ok((CpuStorage::F32(out), shape.into()))
    }
}

/// The sizes one output frame is computed from.
#[derive(Debug, Clone, Copy)]
struct Frame {
    frames: usize,
    channels: usize,
    out_channels: usize,
    kernel: usize,
    positions: usize,
}

impl Frame {
    /// `[O, C, k]` -> `[O, k*C]`: column `dt*C + c`, matching the rows of consecutive frames.
    fn reorder(&self, weight: &[f32]) -> Vec<f32> {
        let (o, c, k) = (self.out_channels, self.channels, self.kernel);
        let mut reordered = vec![0.0f32; o * k * c];
        for oc in 0..o {
            for ic in 0..c {
                for dt in 0..k {
                    reordered[oc * k * c + dt * c + ic] = weight[(oc * c + ic) * k + dt];
                }
            }
        }
        reordered
    }

    /// Output image `i` (`[O, P]`): the bias plus one product with the frames in reach.
    fn compute(
        &self,
        i: usize,
        x: &[f32],
        reordered: &[f32],
        bias: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        let (c, k, p) = (self.channels, self.kernel, self.positions);
        let (clip, f) = (i / self.frames, i % self.frames);
        for (oc, row) in out.chunks_exact_mut(p).enumerate() {
            row.fill(bias[oc]);
        }
        let pad = k / 2;
        let first = pad.saturating_sub(f);
        let last = (self.frames + pad - f).min(k);
        if first >= last {
            return Ok(());
        }
        let w = MatRef {
            data: &reordered[first * c..],
            rows: self.out_channels,
            cols: (last - first) * c,
            row_stride: k * c,
            col_stride: 1,
        };
        let frame0 = clip * self.frames + f + first - pad;
        let src = MatRef::rows(&x[frame0 * c * p..], (last - first) * c, p, p);
        matmul(MatMut::rows(out, self.out_channels, p, p), w, src, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module, Tensor};

    #[test]
    fn it_equals_a_1d_convolution_of_the_temporal_sequences() -> Result<()> {
        let dev = Device::Cpu;
        let (b, f, c, o, h, w, k) = (2, 5, 3, 4, 2, 3, 3);
        let x = Tensor::randn(0f32, 1.0, (b * f, c, h, w), &dev)?;
        let weight = Tensor::randn(0f32, 1.0, (o, c, k), &dev)?;
        let bias = Tensor::randn(0f32, 1.0, o, &dev)?;
        let seq = x
            .reshape((b, f, c, h, w))?
            .permute((0, 3, 4, 2, 1))?
            .contiguous()?
            .reshape((b * h * w, c, f))?;
        let conv = candle_nn::Conv1d::new(
            weight.clone(),
            Some(bias.clone()),
            candle_nn::Conv1dConfig {
                padding: k / 2,
                ..Default::default()
            },
        );
        let reference = conv
            .forward(&seq)?
            .reshape((b, h, w, o, f))?
            .permute((0, 4, 3, 1, 2))?
            .contiguous()?;
        let got = x.apply_op3_no_bwd(&weight, &bias, &TemporalConv { frames: f })?;
        assert_eq!(got.dims(), &[b * f, o, h, w]);
        let diff = (got.reshape((b, f, o, h, w))? - reference)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-4, "{diff}");
        Ok(())
    }
}
