//! Group and layer norms fused with their per-channel affine map, FiLM modulation and SiLU.
//!
//! The composed training path spends a dozen tensor passes (mean, centre, square, mean,
//! divide, scale, shift, FiLM scale, FiLM shift, SiLU) and, for the temporal and token norms,
//! transposes the video into sequences first. Here one op reads the input twice (statistics,
//! then the normalised output) in the `[N, C, positions]` layout the convolutions use.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, bail};
use rayon::prelude::*;

use super::contiguous_f32;
use super::simd::{silu, sum, sum_squared_deviations, vectorized};

/// The per-channel map applied after normalising: `y = x_hat * scale + shift`, either the same
/// for every image (`rows == 1`, a norm's own weight and bias) or one row per image.
#[derive(Debug, Clone)]
pub struct Affine {
    rows: usize,
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl Affine {
    /// A norm's learned `weight` (gamma) and `bias` (beta), shared by all images.
    pub fn channels(weight: Vec<f32>, bias: Vec<f32>) -> Self {
        Self {
            rows: 1,
            scale: weight,
            shift: bias,
        }
    }

    /// The norm's affine map followed by FiLM: `(x_hat * w + b) * (1 + scale) + shift`, where
    /// `film_scale` and `film_shift` are `[N, C]` (one row per image).
    pub fn film(weight: &[f32], bias: &[f32], film_scale: &[f32], film_shift: &[f32]) -> Self {
        let c = weight.len().max(1);
        let rows = film_scale.len() / c;
        let mut scale = Vec::with_capacity(rows * c);
        let mut shift = Vec::with_capacity(rows * c);
        for (i, (s, t)) in film_scale.iter().zip(film_shift).enumerate() {
            let (w, b) = (weight[i % c], bias[i % c]);
            scale.push(w * (1.0 + s));
            shift.push(b * (1.0 + s) + t);
        }
        Self { rows, scale, shift }
    }

    fn check(&self, images: usize, channels: usize) -> Result<()> {
        if self.scale.len() != self.rows * channels || self.shift.len() != self.scale.len() {
            bail!(
                "norm: affine map has {} values, {channels} channels",
                self.scale.len()
            );
        }
        if self.rows != 1 && self.rows != images {
            bail!(
                "norm: affine map has {} rows for {images} images",
                self.rows
            );
        }
        Ok(())
    }

    /// `(scale, shift)` of `channel` in `image`.
    fn at(&self, image: usize, channel: usize, channels: usize) -> (f32, f32) {
        let i = if self.rows == 1 {
            channel
        } else {
            image * channels + channel
        };
        (self.scale[i], self.shift[i])
    }
}

/// What the mean and variance are taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistics {
    /// One mean per image and group, over the group's channels and every position
    /// (`candle_nn::GroupNorm` on `[N, C, H, W]`).
    PerImage,
    /// One mean per position and group, over the group's channels and the `frames` consecutive
    /// images of a clip: a group norm of the temporal sequences `[B*H*W, C, F]` without
    /// transposing, or, with `frames == 1` and one group, a layer norm over the channels of
    /// each token.
    PerPosition {
        /// Images per clip.
        frames: usize,
    },
}

/// A group norm of `x` `[N, C, ...]` (contiguous) over [`Statistics`], then [`Affine`], then an
/// optional SiLU. Apply with `x.apply_op1_no_bwd(&GroupNorm { .. })`.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    /// Channel groups (divides C).
    pub groups: usize,
    /// Added to the variance.
    pub eps: f32,
    /// Which elements share a mean and variance.
    pub statistics: Statistics,
    /// The map applied to the normalised values.
    pub affine: Affine,
    /// Whether SiLU follows.
    pub silu: bool,
}

/// A layer norm over the channels of each token `(image, position)` of `[N, C, ...]`.
#[derive(Debug, Clone)]
pub struct LayerNorm;

impl LayerNorm {
    /// The [`GroupNorm`] that computes it with `weight` and `bias` (eps 1e-5).
    pub fn over_channels(weight: Vec<f32>, bias: Vec<f32>) -> GroupNorm {
        GroupNorm {
            groups: 1,
            eps: 1e-5,
            statistics: Statistics::PerPosition { frames: 1 },
            affine: Affine::channels(weight, bias),
            silu: false,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Dims {
    channels: usize,
    positions: usize,
    group: usize,
}

impl GroupNorm {
    fn dims(&self, shape: &[usize]) -> Result<Dims> {
        let [images, channels, rest @ ..] = shape else {
            bail!("norm: input {shape:?} must be [N, C, ...]")
        };
        let (images, channels) = (*images, *channels);
        if self.groups == 0 || channels % self.groups != 0 {
            bail!(
                "norm: {} groups do not divide {channels} channels",
                self.groups
            );
        }
        if let Statistics::PerPosition { frames } = self.statistics
            && (frames == 0 || images % frames != 0)
        {
            bail!("norm: {images} images are not clips of {frames} frames");
        }
        self.affine.check(images, channels)?;
        Ok(Dims {
            channels,
            positions: rest.iter().product(),
            group: channels / self.groups,
        })
    }

    /// Writes one image's normalised output, given per-(group, position) statistics (one value
    /// per group when the statistics cover whole images).
    #[inline(always)]
    fn apply(&self, d: Dims, n: usize, x: &[f32], out: &mut [f32], stats: &[(&[f32], &[f32])]) {
        for c in 0..d.channels {
            let (scale, shift) = self.affine.at(n, c, d.channels);
            let src = &x[c * d.positions..][..d.positions];
            let dst = &mut out[c * d.positions..][..d.positions];
            match stats[c / d.group] {
                (&[mean], &[rstd]) => {
                    let a = rstd * scale;
                    let b = shift - mean * a;
                    dst.iter_mut().zip(src).for_each(|(o, v)| *o = v * a + b);
                }
                (mean, rstd) => {
                    for (((o, v), m), r) in dst.iter_mut().zip(src).zip(mean).zip(rstd) {
                        *o = (v - m) * r * scale + shift;
                    }
                }
            }
            if self.silu {
                dst.iter_mut().for_each(|o| *o = silu(*o));
            }
        }
    }

    fn per_image(&self, d: Dims, x: &[f32], out: &mut [f32]) {
        let size = d.channels * d.positions;
        out.par_chunks_mut(size)
            .zip(x.par_chunks(size))
            .enumerate()
            .for_each(|(n, (out, image))| {
                vectorized(
                    #[inline(always)]
                    || self.normalize_image(d, n, image, out),
                )
            });
    }

    // The closures handed to `vectorized` only call these `inline(always)` functions, so the
    // whole loop nest is compiled inside the AVX-512 / AVX2 function.
    #[inline(always)]
    fn normalize_image(&self, d: Dims, n: usize, image: &[f32], out: &mut [f32]) {
        let count = (d.group * d.positions) as f32;
        let stats: Vec<([f32; 1], [f32; 1])> = image
            .chunks_exact(d.group * d.positions)
            .map(|g| {
                let mean = sum(g) / count;
                let var = sum_squared_deviations(g, mean) / count;
                ([mean], [1.0 / (var + self.eps).sqrt()])
            })
            .collect();
        let stats: Vec<(&[f32], &[f32])> = stats.iter().map(|(m, r)| (&m[..], &r[..])).collect();
        self.apply(d, n, image, out, &stats);
    }

    #[inline(always)]
    fn normalize_clip(&self, d: Dims, frames: usize, b: usize, clip_x: &[f32], out: &mut [f32]) {
        let image = d.channels * d.positions;
        let stats = self.clip_statistics(d, clip_x, frames);
        let stats: Vec<(&[f32], &[f32])> = stats.iter().map(|(m, r)| (&m[..], &r[..])).collect();
        for f in 0..frames {
            let range = f * image..(f + 1) * image;
            self.apply(
                d,
                b * frames + f,
                &clip_x[range.clone()],
                &mut out[range],
                &stats,
            );
        }
    }

    /// Mean and reciprocal std per (group, position) of one clip: `[groups][positions]` each.
    #[inline(always)]
    fn clip_statistics(&self, d: Dims, clip: &[f32], frames: usize) -> Vec<(Vec<f32>, Vec<f32>)> {
        let count = (d.group * frames) as f32;
        let image = d.channels * d.positions;
        let rows = |g: usize| {
            (0..frames).flat_map(move |f| {
                (g * d.group..(g + 1) * d.group).map(move |c| f * image + c * d.positions)
            })
        };
        (0..self.groups)
            .map(|g| {
                let mut mean = vec![0.0f32; d.positions];
                for start in rows(g) {
                    for (m, v) in mean.iter_mut().zip(&clip[start..start + d.positions]) {
                        *m += v;
                    }
                }
                mean.iter_mut().for_each(|m| *m /= count);
                let mut var = vec![0.0f32; d.positions];
                for start in rows(g) {
                    let row = &clip[start..start + d.positions];
                    for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
                        *s += (v - m) * (v - m);
                    }
                }
                var.iter_mut()
                    .for_each(|s| *s = 1.0 / (*s / count + self.eps).sqrt());
                (mean, var)
            })
            .collect()
    }

    fn per_position(&self, d: Dims, frames: usize, x: &[f32], out: &mut [f32]) {
        let clip = frames * d.channels * d.positions;
        out.par_chunks_mut(clip)
            .zip(x.par_chunks(clip))
            .enumerate()
            .for_each(|(b, (out, clip_x))| {
                vectorized(
                    #[inline(always)]
                    || self.normalize_clip(d, frames, b, clip_x, out),
                )
            });
    }
}

impl CustomOp1 for GroupNorm {
    fn name(&self) -> &'static str {
        "vidcascade-group-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = self.dims(layout.dims())?;
        let x = contiguous_f32(storage, layout, "norm", "input")?;
        let mut out = vec![0.0f32; x.len()];
        if !x.is_empty() {
            match self.statistics {
                Statistics::PerImage => self.per_image(d, x, &mut out),
                Statistics::PerPosition { frames } => self.per_position(d, frames, x, &mut out),
            }
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device, Module, Tensor};

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    #[test]
    fn group_norm_with_film_and_silu_matches_the_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 2.0, (3, 8, 5, 6), &dev)? + 0.7)?;
        let w = Tensor::randn(1f32, 0.3, 8, &dev)?;
        let b = Tensor::randn(0f32, 0.3, 8, &dev)?;
        let scale = Tensor::randn(0f32, 0.5, (3, 8), &dev)?;
        let shift = Tensor::randn(0f32, 0.5, (3, 8), &dev)?;
        let reference = candle_nn::GroupNorm::new(w.clone(), b.clone(), 8, 4, 1e-5)?
            .forward(&x)?
            .broadcast_mul(&(scale.unsqueeze(2)?.unsqueeze(3)? + 1.0)?)?
            .broadcast_add(&shift.unsqueeze(2)?.unsqueeze(3)?)?
            .silu()?;
        let op = GroupNorm {
            groups: 4,
            eps: 1e-5,
            statistics: Statistics::PerImage,
            affine: Affine::film(
                &w.to_vec1()?,
                &b.to_vec1()?,
                &scale.flatten_all()?.to_vec1()?,
                &shift.flatten_all()?.to_vec1()?,
            ),
            silu: true,
        };
        let diff = max_diff(&x.apply_op1_no_bwd(&op)?, &reference)?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }

    #[test]
    fn per_position_statistics_equal_a_group_norm_of_the_temporal_sequences() -> Result<()> {
        let dev = Device::Cpu;
        let (b, f, c, h, w) = (2, 3, 4, 2, 5);
        let x = Tensor::randn(0f32, 1.5, (b * f, c, h, w), &dev)?;
        let gw = Tensor::randn(1f32, 0.3, c, &dev)?;
        let gb = Tensor::randn(0f32, 0.3, c, &dev)?;
        // The composed path: [B*F, C, H, W] -> [B*H*W, C, F], group norm, back.
        let seq = x
            .reshape((b, f, c, h, w))?
            .permute((0, 3, 4, 2, 1))?
            .contiguous()?
            .reshape((b * h * w, c, f))?;
        let normed =
            candle_nn::GroupNorm::new(gw.clone(), gb.clone(), c, 2, 1e-5)?.forward(&seq)?;
        let reference = normed
            .reshape((b, h, w, c, f))?
            .permute((0, 4, 3, 1, 2))?
            .contiguous()?
            .reshape((b * f, c, h, w))?;
        let op = GroupNorm {
            groups: 2,
            eps: 1e-5,
            statistics: Statistics::PerPosition { frames: f },
            affine: Affine::channels(gw.to_vec1()?, gb.to_vec1()?),
            silu: false,
        };
        let diff = max_diff(&x.apply_op1_no_bwd(&op)?, &reference)?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }

    #[test]
    fn layer_norm_over_channels_normalises_each_token() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 6, 7), &dev)?;
        let w = Tensor::randn(1f32, 0.3, 6, &dev)?;
        let b = Tensor::randn(0f32, 0.3, 6, &dev)?;
        let tokens = x.transpose(1, 2)?;
        let centered = tokens.broadcast_sub(&tokens.mean_keepdim(D::Minus1)?)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let reference = centered
            .broadcast_div(&(var + 1e-5)?.sqrt()?)?
            .broadcast_mul(&w)?
            .broadcast_add(&b)?
            .transpose(1, 2)?;
        let op = LayerNorm::over_channels(w.to_vec1()?, b.to_vec1()?);
        let diff = max_diff(&x.apply_op1_no_bwd(&op)?, &reference)?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }

    #[test]
    fn inconsistent_shapes_are_errors() -> Result<()> {
        let x = Tensor::zeros((3, 6, 4), candle_core::DType::F32, &Device::Cpu)?;
        let mut op = LayerNorm::over_channels(vec![1.0; 6], vec![0.0; 6]);
        op.groups = 4;
        assert!(x.apply_op1_no_bwd(&op).is_err());
        op.groups = 1;
        op.statistics = Statistics::PerPosition { frames: 2 };
        assert!(x.apply_op1_no_bwd(&op).is_err());
        Ok(())
    }
}
