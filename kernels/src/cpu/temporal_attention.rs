//! Temporal attention computed pixel-parallel: the sequences are the frames of a clip at each
//! position, so with the projection in `[B*F, 3C, P]` layout every query-key score, softmax
//! step and weighted sum is a loop over a block of pixels that share (frame, channel) indices.

use std::cell::RefCell;

use candle_core::{Result, Shape, bail};
use rayon::prelude::*;

use super::attention::{Attention, AttentionBias};
use super::simd::{exp, vectorized};

/// Pixels per block: the scores of a 16-frame clip are then 16 x 16 x 256 floats (1 MB).
const PIXEL_BLOCK: usize = 256;

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[derive(Debug, Clone, Copy)]
struct Clip {
    frames: usize,
    channels: usize,
    positions: usize,
    head_dim: usize,
}

impl Clip {
    /// Row `channel` of frame `frame` (qkv layout: `[F, 3C, P]` per clip).
    #[inline(always)]
    fn row<'a>(
        &self,
        qkv: &'a [f32],
        frame: usize,
        channel: usize,
        block: (usize, usize),
    ) -> &'a [f32] {
        &qkv[(frame * 3 * self.channels + channel) * self.positions + block.0..][..block.1]
    }
}

/// `[N, 3C, P]` queries, keys and values -> `[N, C, P]`, attending across each clip's frames.
pub(crate) fn attend(
    op: &Attention,
    frames: usize,
    qkv: &[f32],
    shape: &[usize],
) -> Result<(Vec<f32>, Shape)> {
    let &[n, c3, p] = shape else {
        bail!("attention: qkv {shape:?} must be [N, 3C, positions]")
    };
    if c3 % 3 != 0 || frames == 0 || n % frames != 0 {
        bail!("attention: qkv {shape:?} is not clips of {frames} frames with 3C channels");
    }
    let c = c3 / 3;
    if op.heads == 0 || c % op.heads != 0 {
        bail!("attention: {} heads do not divide {c} channels", op.heads);
    }
    if let AttentionBias::PerHead(table) = &op.bias
        && table.len() != op.heads * frames * frames
    {
        bail!(
            "attention: bias has {} values for [{}, {frames}, {frames}]",
            table.len(),
            op.heads
        );
    }
    let clip = Clip {
        frames,
        channels: c,
        positions: p,
        head_dim: c / op.heads,
    };
    let mut out = vec![0.0f32; n * c * p];
    if out.is_empty() {
        return Ok((out, (n, c, p).into()));
    }
    out.par_chunks_mut(frames * c * p)
        .zip(qkv.par_chunks(frames * c3 * p))
        .for_each(|(out, qkv)| {
            SCORES.with(|scratch| {
                let mut scores = scratch.borrow_mut();
                scores.resize(frames * frames * PIXEL_BLOCK.min(p), 0.0);
                vectorized(
                    #[inline(always)]
                    || attend_clip(op, clip, qkv, &mut scores, out),
                )
            })
        });
    Ok((out, (n, c, p).into()))
}

/// Every head and pixel block of one clip (`inline(always)`: compiled inside `vectorized`).
#[inline(always)]
fn attend_clip(op: &Attention, clip: Clip, qkv: &[f32], scores: &mut [f32], out: &mut [f32]) {
    for h in 0..op.heads {
        for start in (0..clip.positions).step_by(PIXEL_BLOCK) {
            let block = (start, PIXEL_BLOCK.min(clip.positions - start));
            head_block(op, clip, h, block, qkv, scores, out);
        }
    }
}

/// One head over one block of pixels of one clip.
#[inline(always)]
fn head_block(
    op: &Attention,
    clip: Clip,
    h: usize,
    block: (usize, usize),
    qkv: &[f32],
    scores: &mut [f32],
    out: &mut [f32],
) {
    let (f, c, d, len) = (clip.frames, clip.channels, clip.head_dim, block.1);
    let score = |fi: usize, fj: usize| (fi * f + fj) * len;
    super::count_flops(4 * f * f * d * len);
    for fi in 0..f {
        for fj in 0..f {
            let s = &mut scores[score(fi, fj)..][..len];
            s.fill(0.0);
            for j in h * d..(h + 1) * d {
                let (q, k) = (clip.row(qkv, fi, j, block), clip.row(qkv, fj, c + j, block));
                s.iter_mut()
                    .zip(q)
                    .zip(k)
                    .for_each(|((s, q), k)| *s += q * k);
            }
            let bias = match &op.bias {
                AttentionBias::PerHead(table) => table[(h * f + fi) * f + fj],
                _ => 0.0,
            };
            s.iter_mut().for_each(|s| *s = *s * op.scale + bias);
        }
        softmax_across_keys(&mut scores[score(fi, 0)..][..f * len], f, len);
        for j in h * d..(h + 1) * d {
            let dst = &mut out[(fi * c + j) * clip.positions + block.0..][..len];
            dst.fill(0.0);
            for fj in 0..f {
                let (s, v) = (
                    &scores[score(fi, fj)..][..len],
                    clip.row(qkv, fj, 2 * c + j, block),
                );
                dst.iter_mut()
                    .zip(s)
                    .zip(v)
                    .for_each(|((o, s), v)| *o += s * v);
            }
        }
    }
}

/// Softmax over `keys` rows of `len` pixels each, independently per pixel.
#[inline(always)]
fn softmax_across_keys(rows: &mut [f32], keys: usize, len: usize) {
    let mut max = rows[..len].to_vec();
    for k in 1..keys {
        max.iter_mut()
            .zip(&rows[k * len..][..len])
            .for_each(|(m, s)| *m = m.max(*s));
    }
    let mut total = vec![0.0f32; len];
    for k in 0..keys {
        let row = &mut rows[k * len..][..len];
        row.iter_mut()
            .zip(&max)
            .zip(total.iter_mut())
            .for_each(|((s, m), t)| {
                *s = exp(*s - m);
                *t += *s;
            });
    }
    total.iter_mut().for_each(|t| *t = 1.0 / *t);
    for k in 0..keys {
        rows[k * len..][..len]
            .iter_mut()
            .zip(&total)
            .for_each(|(s, t)| *s *= t);
    }
}
