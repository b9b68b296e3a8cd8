//! Multi-head attention for inference, reading heads where they lie.
//!
//! The composed path splits `[N, L, heads * d]` into `[N, heads, L, d]` copies, runs one tiny
//! matrix product per (image, head) through candle (18k of them per base step, each paying a
//! dispatch and a thread hand-off) and merges the heads back. Here the queries, keys and values
//! are strided views of the projection's output in the convolutions' `[N, C, positions]`
//! layout (or the text's `[B, L, 2C]` token layout), each (image, head) pair is two products
//! on the worker thread plus a fused scale-bias-softmax, and the result lands in `[N, C, P]`.
//! Temporal attention (few frames, many pixels) is computed pixel-parallel instead: every
//! score, softmax and weighted sum is a loop over the pixels of a frame, which vectorises.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, bail};
use rayon::prelude::*;

use super::contiguous_f32;
use super::gemm::{MatMut, MatRef, matmul};
use super::simd::{exp_shifted_sum, scale_add_max, vectorized};
use super::tiled_attention::{self, TILED_ABOVE};

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// What is added to the scaled scores before the softmax.
#[derive(Debug, Clone)]
pub enum AttentionBias {
    /// Nothing.
    None,
    /// A `[rows, keys]` mask (1 = attend, 0 = padding) per key-value row: padding gets
    /// `-1e9`, as the composed path's `key_padding_bias` does.
    KeyMask(Vec<f32>),
    /// A `[heads, queries, keys]` bias shared by every sequence (temporal attention's learned
    /// relative-position bias).
    PerHead(Vec<f32>),
}

/// Self- or cross-attention in the convolution layout. Apply:
/// - spatial self-attention: `qkv.apply_op1_no_bwd(&Attention { .. })` with `qkv`
///   `[N, 3C, P]` (queries, keys, values stacked on channels), giving `[N, C, P]`;
/// - cross-attention: `q.apply_op2_no_bwd(&kv, &Attention { .. })` with `q` `[N, C, P]` and
///   `kv` `[B, L, 2C]` (keys then values per token; image `n` reads row `n / (N / B)`);
/// - temporal attention: `qkv.apply_op1_no_bwd(&Attention { frames: Some(F), .. })`, the
///   sequences being the `F` consecutive images of each clip at every position.
#[derive(Debug, Clone)]
pub struct Attention {
    /// Number of heads (divides C).
    pub heads: usize,
    /// Multiplies the scores (usually `1 / sqrt(head dim)`).
    pub scale: f32,
    /// Added to the scaled scores.
    pub bias: AttentionBias,
    /// `Some(F)`: attend across the `F` frames of each clip, per position.
    pub frames: Option<usize>,
}

/// Where one operand's head `h` of image `n` lives in its buffer: element (token `t`, channel
/// `j`) is at `n * batch + offset + h * d * channel + t * token + j * channel`.
#[derive(Debug, Clone, Copy)]
struct Operand {
    batch: usize,
    offset: usize,
    token: usize,
    channel: usize,
    tokens: usize,
}

impl Operand {
    fn view<'a>(&self, data: &'a [f32], n: usize, h: usize, d: usize) -> MatRef<'a> {
        MatRef {
            data: &data[n * self.batch + self.offset + h * d * self.channel..],
            rows: self.tokens,
            cols: d,
            row_stride: self.token,
            col_stride: self.channel,
        }
    }
}

impl Attention {
    fn head_dim(&self, channels: usize) -> Result<usize> {
        if self.heads == 0 || !channels.is_multiple_of(self.heads) {
            bail!(
                "attention: {} heads do not divide {channels} channels",
                self.heads
            );
        }
        Ok(channels / self.heads)
    }

    /// A per-head bias table must cover `[heads, queries, keys]`.
    fn check_bias(&self, queries: usize, keys: usize) -> Result<()> {
        match &self.bias {
            AttentionBias::PerHead(t) if t.len() != self.heads * queries * keys => bail!(
                "attention: bias has {} values for [{}, {queries}, {keys}]",
                t.len(),
                self.heads
            ),
            _ => Ok(()),
        }
    }

    /// `scores = softmax(scores * scale + bias)` row by row (`[queries, keys]`).
    #[inline(always)]
    fn softmax(&self, scores: &mut [f32], keys: usize, head: usize, bias_row: Option<&[f32]>) {
        let queries = scores.len() / keys;
        for (i, row) in scores.chunks_exact_mut(keys).enumerate() {
            let bias = match (&self.bias, bias_row) {
                (AttentionBias::PerHead(table), _) => {
                    Some(&table[(head * queries + i) * keys..][..keys])
                }
                (_, row_bias) => row_bias,
            };
            let max = scale_add_max(row, self.scale, bias);
            let inv = 1.0 / exp_shifted_sum(row, max);
            row.iter_mut().for_each(|s| *s *= inv);
        }
    }

    /// One image: for every head, `out_h = softmax(q_h k_h^T) v_h` written into `out`
    /// (`[C, P]`).
    #[allow(clippy::too_many_arguments)]
    fn image(
        &self,
        (qd, q): (&[f32], Operand),
        (kd, k): (&[f32], Operand),
        (vd, v): (&[f32], Operand),
        (n, kv_row): (usize, usize),
        d: usize,
        mask: Option<&[f32]>,
        out: &mut [f32],
    ) -> Result<()> {
        let (queries, keys) = (q.tokens, k.tokens);
        SCORES.with(|scratch| {
            let mut scores = scratch.borrow_mut();
            if keys <= TILED_ABOVE {
                scores.resize(queries * keys, 0.0);
            }
            for h in 0..self.heads {
                if keys > TILED_ABOVE {
                    let views = (
                        q.view(qd, n, h, d),
                        k.view(kd, kv_row, h, d),
                        v.view(vd, kv_row, h, d),
                    );
                    let dst = MatMut {
                        data: &mut out[h * d * queries..],
                        rows: queries,
                        cols: d,
                        row_stride: 1,
                        col_stride: queries,
                    };
                    tiled_attention::attend(self, h, views, mask, dst)?;
                    continue;
                }
                let dst = MatMut::rows(&mut scores[..queries * keys], queries, keys, keys);
                matmul(
                    dst,
                    q.view(qd, n, h, d),
                    k.view(kd, kv_row, h, d).t(),
                    false,
                )?;
                vectorized(
                    #[inline(always)]
                    || self.softmax(&mut scores[..queries * keys], keys, h, mask),
                );
                let positions = queries;
                let dst = MatMut {
                    data: &mut out[h * d * positions..],
                    rows: queries,
                    cols: d,
                    row_stride: 1,
                    col_stride: positions,
                };
                let p = MatRef::rows(&scores[..queries * keys], queries, keys, keys);
                matmul(dst, p, v.view(vd, kv_row, h, d), false)?;
            }
            Ok(())
        })
    }

    fn self_attention(&self, qkv: &[f32], shape: &[usize]) -> Result<(Vec<f32>, Shape)> {
        let &[n, c3, p] = shape else {
            bail!("attention: qkv {shape:?} must be [N, 3C, positions]")
        };
        if c3 % 3 != 0 {
            bail!("attention: qkv has {c3} channels, not 3C");
        }
        let c = c3 / 3;
        let d = self.head_dim(c)?;
        self.check_bias(p, p)?;
        if let AttentionBias::KeyMask(_) = self.bias {
            bail!("attention: a key mask applies to text keys (cross-attention), not to qkv");
        }
        let operand = |offset| Operand {
            batch: c3 * p,
            offset,
            token: 1,
            channel: p,
            tokens: p,
        };
        let (q, k, v) = (operand(0), operand(c * p), operand(2 * c * p));
        per_image((n, c, p), |i, out| {
            self.image((qkv, q), (qkv, k), (qkv, v), (i, i), d, None, out)
        })
    }

    fn cross_attention(
        &self,
        qd: &[f32],
        qs: &[usize],
        kvd: &[f32],
        kvs: &[usize],
    ) -> Result<(Vec<f32>, Shape)> {
        let (&[n, c, p], &[rows, keys, c2]) = (qs, kvs) else {
            bail!("attention: q {qs:?} must be [N, C, P] and kv {kvs:?} [B, L, 2C]")
        };
        if c2 != 2 * c || rows == 0 || n % rows != 0 {
            bail!("attention: q {qs:?} and kv {kvs:?} do not match");
        }
        let d = self.head_dim(c)?;
        self.check_bias(p, keys)?;
        let mask = match &self.bias {
            AttentionBias::KeyMask(mask) if mask.len() == rows * keys => {
                Some(mask.iter().map(|m| (m - 1.0) * 1e9).collect::<Vec<f32>>())
            }
            AttentionBias::KeyMask(mask) => {
                bail!(
                    "attention: mask has {} values for [{rows}, {keys}]",
                    mask.len()
                )
            }
            _ => None,
        };
        let q = Operand {
            batch: c * p,
            offset: 0,
            token: 1,
            channel: p,
            tokens: p,
        };
        let kv = |offset| Operand {
            batch: keys * c2,
            offset,
            token: c2,
            channel: 1,
            tokens: keys,
        };
        let (k, v) = (kv(0), kv(c));
        let per_row = n / rows;
        per_image((n, c, p), |i, out| {
            let row = i / per_row;
            let mask = mask.as_deref().map(|m| &m[row * keys..][..keys]);
            self.image((qd, q), (kvd, k), (kvd, v), (i, row), d, mask, out)
        })
    }
}

/// A `[n, c, p]` output computed image by image on rayon's pool by `image(index, out)`.
fn per_image(
    (n, c, p): (usize, usize, usize),
    image: impl Fn(usize, &mut [f32]) -> Result<()> + Sync,
) -> Result<(Vec<f32>, Shape)> {
    let mut out = vec![0.0f32; n * c * p];
    if !out.is_empty() {
        out.par_chunks_mut(c * p)
            .enumerate()
            .try_for_each(|(i, out)| image(i, out))?;
    }
    Ok((out, (n, c, p).into()))
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "vidcascade-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous_f32(storage, layout, "attention", "qkv")?;
        let (out, shape) = match self.frames {
            None => self.self_attention(qkv, layout.dims())?,
            Some(frames) => super::temporal_attention::attend(self, frames, qkv, layout.dims())?,
        };
        Ok((CpuStorage::F32(out), shape))
    }
}

impl CustomOp2 for Attention {
    fn name(&self) -> &'static str {
        "vidcascade-cross-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        kvs: &CpuStorage,
        kvl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = contiguous_f32(qs, ql, "attention", "q")?;
        let kv = contiguous_f32(kvs, kvl, "attention", "kv")?;
        let (out, shape) = self.cross_attention(q, ql.dims(), kv, kvl.dims())?;
        Ok((CpuStorage::F32(out), shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// softmax(q k^T * scale + bias) v for one sequence: q `[Lq][d]`, k and v `[Lk][d]`.
    fn naive(
        q: &[Vec<f32>],
        k: &[Vec<f32>],
        v: &[Vec<f32>],
        scale: f32,
        bias: &dyn Fn(usize, usize) -> f32,
    ) -> Vec<Vec<f32>> {
        q.iter()
            .enumerate()
            .map(|(i, qi)| {
                let logits: Vec<f64> = k
                    .iter()
                    .enumerate()
                    .map(|(j, kj)| {
                        let dot: f32 = qi.iter().zip(kj).map(|(a, b)| a * b).sum();
                        (dot * scale + bias(i, j)) as f64
                    })
                    .collect();
                let max = logits.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                let total: f64 = e.iter().sum();
                (0..v[0].len())
                    .map(|c| {
                        (e.iter().zip(v).map(|(p, vj)| p * vj[c] as f64).sum::<f64>() / total)
                            as f32
                    })
                    .collect()
            })
            .collect()
    }

    /// Tokens `[L][d]` of head `h` from a `[channels][positions]` image: channel rows
    /// `offset + h*d ..` read at every position.
    fn tokens(image: &[f32], positions: usize, offset: usize, h: usize, d: usize) -> Vec<Vec<f32>> {
        (0..positions)
            .map(|p| {
                (0..d)
                    .map(|j| image[(offset + h * d + j) * positions + p])
                    .collect()
            })
            .collect()
    }

    fn close(got: f32, want: f32) {
        assert!(
            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
            "{got} vs {want}"
        );
    }

    /// `want[pos][j]` (head `h` of image `img`) against `got` in the `[N, C, P]` layout.
    fn check_head(
        got: &[f32],
        want: &[Vec<f32>],
        (img, h): (usize, usize),
        (c, d, p): (usize, usize, usize),
    ) {
        for (pos, row) in want.iter().enumerate() {
            for (j, w) in row.iter().enumerate() {
                close(got[(img * c + h * d + j) * p + pos], *w);
            }
        }
    }

    /// Self-attention of `qkv` `[N, 3C, P]` by `op` against the definition, every image and
    /// head; `bias(h, i, j)` is what `op` adds to head `h`'s score of query `i` and key `j`.
    fn check_self_attention(
        qkv: &Tensor,
        op: &Attention,
        bias: &dyn Fn(usize, usize, usize) -> f32,
    ) -> Result<()> {
        let (n, c3, p) = qkv.dims3()?;
        let (c, heads) = (c3 / 3, op.heads);
        let got = qkv.apply_op1_no_bwd(op)?.flatten_all()?.to_vec1::<f32>()?;
        let data = qkv.flatten_all()?.to_vec1::<f32>()?;
        let d = c / heads;
        for img in 0..n {
            let image = &data[img * c3 * p..][..c3 * p];
            for h in 0..heads {
                let want = naive(
                    &tokens(image, p, 0, h, d),
                    &tokens(image, p, c, h, d),
                    &tokens(image, p, 2 * c, h, d),
                    op.scale,
                    &|i, j| bias(h, i, j),
                );
                check_head(&got, &want, (img, h), (c, d, p));
            }
        }
        Ok(())
    }

    /// Cross-attention of `q` `[N, C, P]` to `kv` `[B, L, 2C]` with key mask `mask` `[B, L]`
    /// against the definition, every image and head.
    fn check_cross_attention(
        q: &Tensor,
        kv: &Tensor,
        heads: usize,
        scale: f32,
        mask: &[f32],
    ) -> Result<()> {
        let ((n, c, p), (rows, keys, _)) = (q.dims3()?, kv.dims3()?);
        let op = Attention {
            heads,
            scale,
            bias: AttentionBias::KeyMask(mask.to_vec()),
            frames: None,
        };
        let got = q
            .apply_op2_no_bwd(kv, &op)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let (qd, kvd) = (
            q.flatten_all()?.to_vec1::<f32>()?,
            kv.flatten_all()?.to_vec1::<f32>()?,
        );
        let d = c / heads;
        for img in 0..n {
            let row = img / (n / rows);
            let text = |offset: usize, h: usize| -> Vec<Vec<f32>> {
                (0..keys)
                    .map(|t| {
                        (0..d)
                            .map(|j| kvd[(row * keys + t) * 2 * c + offset + h * d + j])
                            .collect()
                    })
                    .collect()
            };
            for h in 0..heads {
                let bias = |_: usize, t: usize| (mask[row * keys + t] - 1.0) * 1e9;
                let want = naive(
                    &tokens(&qd[img * c * p..], p, 0, h, d),
                    &text(0, h),
                    &text(c, h),
                    scale,
                    &bias,
                );
                check_head(&got, &want, (img, h), (c, d, p));
            }
        }
        Ok(())
    }

    #[test]
    fn spatial_self_attention_matches_the_definition() -> Result<()> {
        let qkv = Tensor::randn(0f32, 1.0, (3, 3 * 8, 10), &Device::Cpu)?;
        let op = Attention {
            heads: 2,
            scale: 0.5,
            bias: AttentionBias::None,
            frames: None,
        };
        check_self_attention(&qkv, &op, &|_, _, _| 0.0)
    }

    #[test]
    fn cross_attention_shares_text_rows_and_skips_padding() -> Result<()> {
        // 4 images over 2 text rows of 4 tokens.
        let q = Tensor::randn(0f32, 1.0, (4, 6, 5), &Device::Cpu)?;
        let kv = Tensor::randn(0f32, 1.0, (2, 4, 12), &Device::Cpu)?;
        let mask = [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0];
        check_cross_attention(&q, &kv, 3, 0.7, &mask)
    }

    #[test]
    fn temporal_attention_attends_across_frames_with_its_bias() -> Result<()> {
        // 300 positions: more than one pixel block.
        let (clips, frames, c, p, heads) = (2, 3, 4, 300, 2);
        let qkv = Tensor::randn(0f32, 1.0, (clips * frames, 3 * c, p), &Device::Cpu)?;
        let table: Vec<f32> = (0..heads * frames * frames)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let op = Attention {
            heads,
            scale: 0.6,
            bias: AttentionBias::PerHead(table.clone()),
            frames: Some(frames),
        };
        let got = qkv.apply_op1_no_bwd(&op)?.flatten_all()?.to_vec1::<f32>()?;
        let data = qkv.flatten_all()?.to_vec1::<f32>()?;
        let d = c / heads;
        for b in 0..clips {
            for pos in (0..p).step_by(37) {
                for h in 0..heads {
                    let seq = |offset: usize| -> Vec<Vec<f32>> {
                        (0..frames)
                            .map(|f| {
                                (0..d)
                                    .map(|j| {
                                        data[(((b * frames + f) * 3 * c) + offset + h * d + j) * p
                                            + pos]
                                    })
                                    .collect()
                            })
                            .collect()
                    };
                    let bias = |i: usize, j: usize| table[(h * frames + i) * frames + j];
                    let want = naive(&seq(0), &seq(c), &seq(2 * c), 0.6, &bias);
                    for (f, r) in want.iter().enumerate() {
                        for (j, w) in r.iter().enumerate() {
                            close(got[(((b * frames + f) * c) + h * d + j) * p + pos], *w);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn long_sequences_take_the_tiled_online_softmax_and_match_the_definition() -> Result<()> {
        // 600 tokens: 3 key tiles (the last one partial) and 10 query tiles, with a per-head
        // bias so the tiles must pick the right slice of it.
        let (n, c, p, heads) = (2, 8, 600, 2);
        let qkv = (Tensor::randn(0f32, 1.0, (n, 3 * c, p), &Device::Cpu)? * 2.0)?;
        let table: Vec<f32> = (0..heads * p * p)
            .map(|i| ((i % 977) as f32 * 0.01).sin())
            .collect();
        let op = Attention {
            heads,
            scale: 0.5,
            bias: AttentionBias::PerHead(table.clone()),
            frames: None,
        };
        check_self_attention(&qkv, &op, &|h, i, j| table[(h * p + i) * p + j])
    }

    #[test]
    fn long_padded_texts_mask_their_padding_in_every_tile() -> Result<()> {
        let (rows, keys, c) = (2, 300, 4);
        let q = Tensor::randn(0f32, 1.0, (2, c, 3), &Device::Cpu)?;
        let kv = Tensor::randn(0f32, 1.0, (rows, keys, 2 * c), &Device::Cpu)?;
        // Row 0 attends to its first 270 keys (padding spans the second and third tiles' end),
        // row 1 to every key.
        let mask: Vec<f32> = (0..rows * keys)
            .map(|i| if i < 270 || i >= keys { 1.0 } else { 0.0 })
            .collect();
        check_cross_attention(&q, &kv, 2, 0.7, &mask)
    }

    #[test]
    fn malformed_operands_are_errors() -> Result<()> {
        let qkv = Tensor::zeros((2, 12, 5), candle_core::DType::F32, &Device::Cpu)?;
        let op = Attention {
            heads: 3,
            scale: 1.0,
            bias: AttentionBias::None,
            frames: None,
        };
        assert!(
            qkv.apply_op1_no_bwd(&op).is_err(),
            "3 heads cannot split 4 channels"
        );
        let op = Attention {
            heads: 2,
            scale: 1.0,
            bias: AttentionBias::None,
            frames: Some(3),
        };
        assert!(
            qkv.apply_op1_no_bwd(&op).is_err(),
            "2 images are not clips of 3"
        );
        let op = Attention {
            heads: 2,
            scale: 1.0,
            bias: AttentionBias::PerHead(vec![0.0; 3]),
            frames: Some(2),
        };
        assert!(qkv.apply_op1_no_bwd(&op).is_err(), "bias table too short");
        let op = Attention {
            heads: 2,
            scale: 1.0,
            bias: AttentionBias::PerHead(vec![0.0; 2 * 5 * 4]),
            frames: None,
        };
        assert!(
            qkv.apply_op1_no_bwd(&op).is_err(),
            "spatial bias table too short"
        );
        let op = Attention {
            heads: 2,
            scale: 1.0,
            bias: AttentionBias::KeyMask(vec![1.0; 5]),
            frames: None,
        };
        assert!(
            qkv.apply_op1_no_bwd(&op).is_err(),
            "a key mask without text keys"
        );
        Ok(())
    }
}
