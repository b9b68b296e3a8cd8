//! Same-padding 2D convolution for inference: tiled im2col + GEMM, parallel over images.
//!
//! The training path (`vidcascade_models::layers::SameConv`) unfolds the whole padded input into
//! `k x k` shifted copies and runs one huge product; here each image is cut into tiles of about
//! [`TILE_POSITIONS`] output positions, a tile's columns are unfolded into a per-thread scratch
//! buffer that stays in cache, and one product per tile writes the output in place, bias
//! included. Stride 2 unfolds only the positions it keeps. Images go to rayon's pool, each
//! product runs on its worker thread.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, bail};
use rayon::prelude::*;

use super::contiguous_f32;
use super::gemm::{MatMut, MatRef, matmul};
use super::simd::vectorized;

/// Output positions per unfolded tile: the scratch of a 3x3 conv over 48 channels is then
/// 432 x 256 floats (442 KB), which stays in a core's L2.
const TILE_POSITIONS: usize = 256;

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `y = conv(x, weight) + bias` with zero "same" padding (`k / 2` on each side) and stride 1
/// or 2, for `x` `[N, C, H, W]` with `weight` `[O, C, kh, kw]` (odd sizes), or `x` `[N, C, L]`
/// with `weight` `[O, C, k]` (a 1D convolution). `bias` is `[O]`. Apply with
/// `x.apply_op3_no_bwd(&weight, &bias, &Conv2d { stride })`.
#[derive(Debug, Clone, Copy)]
pub struct Conv2d {
    /// 1 keeps the size; 2 halves height and width (which must then be even).
    pub stride: usize,
}

/// Sizes of one convolution, resolved from the operands' shapes.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    images: usize,
    channels: usize,
    height: usize,
    width: usize,
    out_channels: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    out_height: usize,
    out_width: usize,
}

impl Geometry {
    fn new(x: &[usize], w: &[usize], bias: &[usize], stride: usize) -> Result<Self> {
        let ((images, channels, height, width), (out_channels, in_c, kh, kw)) = match (x, w) {
            ([n, c, h, wd], [o, i, kh, kw]) => ((*n, *c, *h, *wd), (*o, *i, *kh, *kw)),
            ([n, c, l], [o, i, k]) => ((*n, *c, 1, *l), (*o, *i, 1, *k)),
            _ => bail!("conv: input {x:?} and weight {w:?} must both be 2D or both 1D"),
        };
        if in_c != channels {
            bail!("conv: weight takes {in_c} channels, input has {channels}");
        }
        if kh % 2 == 0 || kw % 2 == 0 {
            bail!("conv: kernel {kh}x{kw} must have odd sizes for same padding");
        }
        if bias != [out_channels] {
            bail!("conv: bias {bias:?} must be [{out_channels}]");
        }
        let halves = |len: usize| len == 1 || len.is_multiple_of(2);
        let (out_height, out_width) = match stride {
            1 => (height, width),
            2 if halves(height) && halves(width) => (height.div_ceil(2), width.div_ceil(2)),
            _ => bail!("conv: stride {stride} over {height}x{width} is not supported"),
        };
        Ok(Self {
            images,
            channels,
            height,
            width,
            out_channels,
            kh,
            kw,
            stride,
            out_height,
            out_width,
        })
    }

    fn taps(&self) -> usize {
        self.channels * self.kh * self.kw
    }

    fn out_positions(&self) -> usize {
        self.out_height * self.out_width
    }

    fn output_shape(&self, rank: usize) -> Shape {
        if rank == 3 {
            (self.images, self.out_channels, self.out_width).into()
        } else {
            (
                self.images,
                self.out_channels,
                self.out_height,
                self.out_width,
            )
                .into()
        }
    }

    /// A pointwise convolution needs no unfolding: the image already is the `[C, H*W]` matrix.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1
    }

    /// Unfolds output rows `rows` of `image` into `cols` (`[taps, rows.len() * out_width]`).
    #[inline(always)]
    fn unfold(&self, image: &[f32], rows: std::ops::Range<usize>, cols: &mut [f32]) {
        let tile = rows.len() * self.out_width;
        let plane_size = self.height * self.width;
        let mut chunks = cols.chunks_exact_mut(tile);
        for c in 0..self.channels {
            let plane = &image[c * plane_size..][..plane_size];
            for di in 0..self.kh {
                for dj in 0..self.kw {
                    let Some(dst) = chunks.next() else { return };
                    if self.stride == 1 {
                        self.unfold_shifted(plane, rows.start, (di, dj), dst);
                    } else {
                        self.unfold_strided(plane, rows.clone(), (di, dj), dst);
                    }
                }
            }
        }
    }

    /// Stride 1: tap `(di, dj)` of a tile starting at output row `first_row` is the plane
    /// shifted by `(di - kh/2) * W + (dj - kw/2)` in flattened order, so it is one copy; the
    /// positions that shift would take across a row edge (columns `j + dj - kw/2` outside the
    /// row) are then zeroed, and rows above or below the plane fall outside the copied range.
    #[inline(always)]
    fn unfold_shifted(
        &self,
        plane: &[f32],
        first_row: usize,
        (di, dj): (usize, usize),
        dst: &mut [f32],
    ) {
        let (ph, pw, w) = (self.kh / 2, self.kw / 2, self.width);
        // Source index of dst[0]: (first_row + di - ph) * W + dj - pw, possibly negative.
        let shift = ((first_row + di) * w + dj) as isize - (ph * w + pw) as isize;
        let len = dst.len() as isize;
        let start = (-shift).clamp(0, len) as usize;
        let end = (plane.len() as isize - shift).clamp(0, len) as usize;
        dst[..start].fill(0.0);
        if start < end {
            let from = (start as isize + shift) as usize;
            dst[start..end].copy_from_slice(&plane[from..from + (end - start)]);
        }
        dst[end.max(start)..].fill(0.0);
        // Columns whose tap falls left of column 0 (dj < pw) or right of column W-1 (dj > pw).
        let (lo, hi) = if dj < pw {
            (0, (pw - dj).min(w))
        } else {
            (w - (dj - pw).min(w), w)
        };
        if lo < hi {
            for row in dst.chunks_exact_mut(w) {
                row[lo..hi].fill(0.0);
            }
        }
    }

    /// Stride 2: one element at a time (only the downsampling convolutions).
    #[inline(always)]
    fn unfold_strided(
        &self,
        plane: &[f32],
        rows: std::ops::Range<usize>,
        (di, dj): (usize, usize),
        dst: &mut [f32],
    ) {
        let (ph, pw) = (self.kh / 2, self.kw / 2);
        for (r, i) in rows.enumerate() {
            let out = &mut dst[r * self.out_width..][..self.out_width];
            match (i * self.stride + di)
                .checked_sub(ph)
                .filter(|&row| row < self.height)
            {
                Some(row) => self.unfold_row(&plane[row * self.width..][..self.width], dj, pw, out),
                None => out.fill(0.0),
            }
        }
    }

    /// One output row's tap `dj` from source row `src`: `out[j] = src[j * stride + dj - pw]`.
    #[inline(always)]
    fn unfold_row(&self, src: &[f32], dj: usize, pw: usize, out: &mut [f32]) {
        for (j, o) in out.iter_mut().enumerate() {
            *o = (j * self.stride + dj)
                .checked_sub(pw)
                .and_then(|col| src.get(col))
                .copied()
                .unwrap_or(0.0);
        }
    }

    /// Convolves one image into `out` (`[O, out positions]`, already holding the bias).
    fn image(&self, image: &[f32], weight: &[f32], out: &mut [f32]) -> Result<()> {
        let positions = self.out_positions();
        let taps = self.taps();
        let w = MatRef::rows(weight, self.out_channels, taps, taps);
        if self.is_pointwise() {
            let x = MatRef::rows(image, taps, positions, positions);
            let dst = MatMut::rows(out, self.out_channels, positions, positions);
            return matmul(dst, w, x, true);
        }
        let rows_per_tile = (TILE_POSITIONS / self.out_width).max(1);
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            for start in (0..self.out_height).step_by(rows_per_tile) {
                let rows = start..(start + rows_per_tile).min(self.out_height);
                let tile = rows.len() * self.out_width;
                scratch.resize(taps * tile, 0.0);
                let cols = &mut scratch[..taps * tile];
                vectorized(
                    #[inline(always)]
                    || self.unfold(image, rows, cols),
                );
                let dst = MatMut::rows(
                    &mut out[start * self.out_width..],
                    self.out_channels,
                    tile,
                    positions,
                );
                matmul(dst, w, MatRef::rows(cols, taps, tile, tile), true)?;
            }
            Ok(())
        })
    }
}

impl CustomOp3 for Conv2d {
    fn name(&self) -> &'static str {
        "vidcascade-conv2d"
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
        let g = Geometry::new(xl.dims(), wl.dims(), bl.dims(), self.stride)?;
        let x = contiguous_f32(xs, xl, "conv", "input")?;
        let weight = contiguous_f32(ws, wl, "conv", "weight")?;
        let bias = contiguous_f32(bs, bl, "conv", "bias")?;
        let in_size = g.channels * g.height * g.width;
        let out_size = g.out_channels * g.out_positions();
        // The output starts as the bias (one write pass, no zeroing first); the products add.
        let mut out = Vec::with_capacity(g.images * out_size);
        for _ in 0..g.images {
            for &b in bias {
                out.extend(std::iter::repeat_n(b, g.out_positions()));
            }
        }
        if out_size > 0 && in_size > 0 {
            out.par_chunks_mut(out_size)
                .zip(x.par_chunks(in_size))
                .try_for_each(|(out, image)| g.image(image, weight, out))?;
        }
        Ok((CpuStorage::F32(out), g.output_shape(xl.dims().len())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// The definition, one output element at a time.
    fn naive(x: &Tensor, w: &Tensor, b: &Tensor, stride: usize) -> Result<Vec<f32>> {
        let (n, c, h, wd) = x.dims4()?;
        let (o, _, kh, kw) = w.dims4()?;
        let (x, w, b) = (
            x.flatten_all()?.to_vec1::<f32>()?,
            w.flatten_all()?.to_vec1::<f32>()?,
            b.to_vec1::<f32>()?,
        );
        let (ho, wo) = (h.div_ceil(stride), wd.div_ceil(stride));
        let mut out = Vec::new();
        for img in 0..n {
            for oc in 0..o {
                for i in 0..ho {
                    for j in 0..wo {
                        let mut acc = b[oc];
                        for ic in 0..c {
                            for di in 0..kh {
                                for dj in 0..kw {
                                    let r = (i * stride + di) as isize - (kh / 2) as isize;
                                    let s = (j * stride + dj) as isize - (kw / 2) as isize;
                                    if r >= 0 && s >= 0 && (r as usize) < h && (s as usize) < wd {
                                        acc += x
                                            [((img * c + ic) * h + r as usize) * wd + s as usize]
                                            * w[((oc * c + ic) * kh + di) * kw + dj];
                                    }
                                }
                            }
                        }
                        out.push(acc);
                    }
                }
            }
        }
        Ok(out)
    }

    fn check(x: (usize, usize, usize, usize), o: usize, k: usize, stride: usize) -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, x, &dev)?;
        let w = Tensor::randn(0f32, 1.0, (o, x.dim(1)?, k, k), &dev)?;
        let b = Tensor::randn(0f32, 1.0, o, &dev)?;
        let got = x.apply_op3_no_bwd(&w, &b, &Conv2d { stride })?;
        let want = naive(&x, &w, &b, stride)?;
        let got = got.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
        }
        Ok(())
    }

    #[test]
    fn tiled_convolutions_match_the_definition() -> Result<()> {
        check((2, 3, 6, 8), 5, 3, 1)?;
        check((3, 4, 5, 7), 2, 1, 1)?;
        check((2, 5, 6, 8), 5, 3, 2)?;
        // Taller than one tile (256 / 40 = 6 rows per tile): tiles and edges meet correctly.
        check((1, 2, 20, 40), 3, 3, 1)?;
        check((1, 2, 1, 9), 3, 3, 1)?;
        // A kernel wider and taller than the image: every tap of some rows and columns pads.
        check((2, 2, 3, 2), 3, 5, 1)?;
        check((1, 3, 2, 1), 2, 5, 1)?;
        Ok(())
    }

    #[test]
    fn one_dimensional_inputs_convolve_over_their_last_axis() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (4, 3, 7), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (2, 3, 3), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 2, &dev)?;
        let got = x.apply_op3_no_bwd(&w, &b, &Conv2d { stride: 1 })?;
        assert_eq!(got.dims(), &[4, 2, 7]);
        let want = naive(&x.unsqueeze(2)?, &w.unsqueeze(2)?, &b, 1)?;
        for (g, w) in got.flatten_all()?.to_vec1::<f32>()?.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4 * (1.0 + w.abs()));
        }
        Ok(())
    }

    #[test]
    fn mismatched_operands_are_errors_not_panics() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 4, 4), candle_core::DType::F32, &dev)?;
        let w = Tensor::zeros((2, 4, 3, 3), candle_core::DType::F32, &dev)?;
        let b = Tensor::zeros(2, candle_core::DType::F32, &dev)?;
        assert!(x.apply_op3_no_bwd(&w, &b, &Conv2d { stride: 1 }).is_err());
        let odd = Tensor::zeros((1, 4, 5, 5), candle_core::DType::F32, &dev)?;
        assert!(odd.apply_op3_no_bwd(&w, &b, &Conv2d { stride: 2 }).is_err());
        Ok(())
    }
}
