//! The CUDA kernel's algorithm in plain Rust: the same key tiles of [`KEY_TILE`], the same
//! online-softmax recurrence, and the same rounding points (the probabilities and the output are
//! rounded to the element type, scores and sums stay `f32`). It is the op's `cpu_fwd`, so the
//! algorithm is tested on every machine, and the yardstick the GPU test compares against.

use super::{FlashShape, KEY_TILE};

/// An additive bias on the logits, as `f32` slices (see [`super::FlashBias`]).
#[derive(Debug, Clone, Copy)]
pub enum BiasRef<'a> {
    /// No bias.
    None,
    /// `[batch, lk]`, shared by the heads of a batch entry.
    Key(&'a [f32]),
    /// `[heads, lq, lk]`, shared by the batch entries.
    Head(&'a [f32]),
}

impl BiasRef<'_> {
    /// The bias of `(bh, query, key)`'s logit.
    fn at(&self, shape: &FlashShape, bh: usize, query: usize, key: usize) -> f32 {
        match self {
            Self::None => 0.0,
            Self::Key(bias) => bias[(bh / shape.heads) * shape.lk + key],
            Self::Head(bias) => bias[((bh % shape.heads) * shape.lq + query) * shape.lk + key],
        }
    }
}

/// `softmax(q k^T * scale + bias) v` for `q` `[BH, lq, d]`, `k` and `v` `[BH, lk, d]`, one key
/// tile at a time; `round` maps an `f32` to the nearest value of the element type (the identity
/// for `f32`). The slices' lengths must match `shape` (the op checks them).
pub fn flash_attention(
    (q, k, v): (&[f32], &[f32], &[f32]),
    shape: FlashShape,
    scale: f32,
    bias: BiasRef<'_>,
    round: fn(f32) -> f32,
) -> Vec<f32> {
    let FlashShape { lq, lk, d, .. } = shape;
    let mut out = vec![0.0f32; shape.batch_heads * lq * d];
    for bh in 0..shape.batch_heads {
        let keys = &k[bh * lk * d..(bh + 1) * lk * d];
        let values = &v[bh * lk * d..(bh + 1) * lk * d];
        for query in 0..lq {
            let row = &q[(bh * lq + query) * d..(bh * lq + query + 1) * d];
            let logit = |key: usize| {
                let key_row = &keys[key * d..(key + 1) * d];
                let dot: f32 = row.iter().zip(key_row).map(|(a, b)| a * b).sum();
                dot * scale + bias.at(&shape, bh, query, key)
            };
            let dst = &mut out[(bh * lq + query) * d..(bh * lq + query + 1) * d];
            attend_row(logit, values, lk, d, round, dst);
        }
    }
    out
}

/// One query row: the online softmax over key tiles, then the normalised, rounded output.
fn attend_row(
    logit: impl Fn(usize) -> f32,
    values: &[f32],
    lk: usize,
    d: usize,
    round: fn(f32) -> f32,
    out: &mut [f32],
) {
    let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0f32);
    let mut acc = vec![0.0f32; d];
    for key0 in (0..lk).step_by(KEY_TILE) {
        let tile: Vec<f32> = (key0..lk.min(key0 + KEY_TILE)).map(&logit).collect();
        let new_max = tile.iter().copied().fold(max, f32::max);
        let empty = new_max == f32::NEG_INFINITY;
        let correction = if empty { 1.0 } else { (max - new_max).exp() };
        acc.iter_mut().for_each(|a| *a *= correction);
        let mut tile_sum = 0.0f32;
        for (offset, &x) in tile.iter().enumerate() {
            let p = if empty { 0.0 } else { (x - new_max).exp() };
            tile_sum += p;
            let p = round(p);
            let value = &values[(key0 + offset) * d..(key0 + offset + 1) * d];
            acc.iter_mut().zip(value).for_each(|(a, v)| *a += p * v);
        }
        sum = sum * correction + tile_sum;
        max = new_max;
    }
    let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
    out.iter_mut()
        .zip(&acc)
        .for_each(|(o, a)| *o = round(a * inv));
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// `n` values uniform in `[-amplitude, amplitude)`, the same for the same seed.
    fn values(seed: u64, n: usize, amplitude: f32) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| rng.random_range(-amplitude..amplitude))
            .collect()
    }

    /// The textbook definition in f64: the whole score row, then softmax, then the weighted sum.
    fn naive(
        (q, k, v): (&[f32], &[f32], &[f32]),
        shape: FlashShape,
        scale: f32,
        bias: BiasRef<'_>,
    ) -> Vec<f64> {
        let FlashShape { lq, lk, d, .. } = shape;
        let mut out = Vec::with_capacity(shape.batch_heads * lq * d);
        for bh in 0..shape.batch_heads {
            for i in 0..lq {
                let logits: Vec<f64> = (0..lk)
                    .map(|j| {
                        let dot: f64 = (0..d)
                            .map(|c| {
                                q[(bh * lq + i) * d + c] as f64 * k[(bh * lk + j) * d + c] as f64
                            })
                            .sum();
                        dot * scale as f64 + bias.at(&shape, bh, i, j) as f64
                    })
                    .collect();
                let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = logits.iter().map(|x| (x - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for c in 0..d {
                    let dot: f64 = (0..lk)
                        .map(|j| weights[j] * v[(bh * lk + j) * d + c] as f64)
                        .sum();
                    out.push(dot / total);
                }
            }
        }
        out
    }

    fn half_round(x: f32) -> f32 {
        half::f16::from_f32(x).to_f32()
    }

    /// Runs both on random data and returns the largest |difference| over max |v|.
    fn relative_error(shape: FlashShape, bias_kind: u8, round: fn(f32) -> f32) -> f64 {
        let FlashShape { lq, lk, d, .. } = shape;
        let bh = shape.batch_heads;
        let round_all = |x: Vec<f32>| x.into_iter().map(round).collect::<Vec<f32>>();
        let q = round_all(values(1, bh * lq * d, 2.0));
        let k = round_all(values(2, bh * lk * d, 2.0));
        let v = round_all(values(3, bh * lk * d, 1.0));
        let batch = bh / shape.heads;
        // Key padding like the U-Net's: the last third of each batch entry's keys is padding.
        let key_bias: Vec<f32> = (0..batch * lk)
            .map(|i| if i % lk >= lk - lk / 3 { -1e9 } else { 0.0 })
            .collect();
        let head_bias = values(4, shape.heads * lq * lk, 3.0);
        let bias = match bias_kind {
            0 => BiasRef::None,
            1 => BiasRef::Key(&key_bias),
            _ => BiasRef::Head(&head_bias),
        };
        let scale = 1.0 / (d as f32).sqrt();
        let got = flash_attention((&q, &k, &v), shape, scale, bias, round);
        let want = naive((&q, &k, &v), shape, scale, bias);
        let peak = v.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
        got.iter()
            .zip(&want)
            .map(|(g, w)| (*g as f64 - w).abs() / peak)
            .fold(0.0, f64::max)
    }

    fn shape(batch: usize, heads: usize, lq: usize, lk: usize, d: usize) -> FlashShape {
        FlashShape {
            batch_heads: batch * heads,
            heads,
            lq,
            lk,
            d,
        }
    }

    #[test]
    fn tiled_online_softmax_matches_the_naive_softmax_in_f32() {
        // Key counts below, at, just above and well above one tile; odd head dims.
        for (lq, lk, d) in [
            (1, 1, 6),
            (7, 31, 12),
            (33, 32, 8),
            (16, 33, 64),
            (64, 77, 6),
        ] {
            for bias_kind in 0..3 {
                let err = relative_error(shape(2, 3, lq, lk, d), bias_kind, |x| x);
                assert!(
                    err < 1e-5,
                    "lq {lq} lk {lk} d {d} bias {bias_kind}: error {err:e}"
                );
            }
        }
    }

    #[test]
    fn with_f16_rounding_the_error_stays_within_a_few_half_ulps() {
        // The probabilities and the output are rounded to f16 (unit roundoff 2^-11 = 4.9e-4).
        for (lq, lk, d) in [(8, 40, 12), (16, 100, 32)] {
            for bias_kind in 0..3 {
                let err = relative_error(shape(1, 2, lq, lk, d), bias_kind, half_round);
                assert!(
                    err < 2e-3,
                    "lq {lq} lk {lk} d {d} bias {bias_kind}: {err:e}"
                );
            }
        }
    }

    #[test]
    fn large_logits_do_not_overflow_and_fully_masked_rows_average_the_values() {
        let s = shape(1, 1, 2, 40, 4);
        let q = vec![30.0f32; 2 * 4];
        let k = values(5, 40 * 4, 3.0);
        let v = values(6, 40 * 4, 1.0);
        let out = flash_attention((&q, &k, &v), s, 1.0, BiasRef::None, |x| x);
        assert!(out.iter().all(|x| x.is_finite()), "{out:?}");
        // Every key padded: all logits are -1e9 + tiny, so the weights are uniform, as in the
        // composed path (a -1e9 bias, not -inf, so no NaN).
        let key_bias = vec![-1e9f32; 40];
        let small = vec![0.0f32; 2 * 4];
        let out = flash_attention((&small, &k, &v), s, 1.0, BiasRef::Key(&key_bias), |x| x);
        for c in 0..4 {
            let mean = (0..40).map(|j| v[j * 4 + c]).sum::<f32>() / 40.0;
            assert!(
                (out[c] - mean).abs() < 1e-5,
                "column {c}: {} vs {mean}",
                out[c]
            );
        }
    }
}
