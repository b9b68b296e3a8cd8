//! Attention over many keys, one tile of queries and keys at a time with an online softmax
//! (the flash-attention recurrence, Dao et al. 2022, on the CPU): the scores of a whole head
//! (`L x L` floats: 4 MB at 32x32 tokens) never exist at once, only a
//! [`QUERY_BLOCK`] x [`KEY_BLOCK`] tile that stays in cache. Per query row it keeps the running
//! maximum `m` and normaliser `l`; each key tile rescales the partial output by `e^(m_old -
//! m_new)` before adding its own `e^(s - m_new) V`.

use std::cell::RefCell;

use candle_core::Result;

use super::attention::{Attention, AttentionBias};
use super::gemm::{MatMut, MatRef, matmul};
use super::simd::{exp, exp_shifted_sum, scale_add_max, vectorized};

/// Keys per tile.
const KEY_BLOCK: usize = 256;
/// Heads with more keys than this take the tiled path (measured with the `ops` example: at 256
/// keys the tiles already beat the whole score matrix).
pub(crate) const TILED_ABOVE: usize = 128;
/// Queries per tile.
const QUERY_BLOCK: usize = 64;

thread_local! {
    static TILES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `rows` rows of `m` from `start` on.
fn row_range(m: MatRef<'_>, start: usize, rows: usize) -> MatRef<'_> {
    MatRef {
        data: &m.data[start * m.row_stride..],
        rows,
        ..m
    }
}

/// One head: `out = softmax(q k^T * scale + bias) v` for `q` `[Lq, d]`, `k` and `v` `[Lk, d]`
/// (strided views), written into `out` (`[Lq, d]`, strided); `mask_row` is the key-padding
/// bias of this head's text row, if any.
pub(crate) fn attend(
    op: &Attention,
    head: usize,
    (q, k, v): (MatRef<'_>, MatRef<'_>, MatRef<'_>),
    mask_row: Option<&[f32]>,
    out: MatMut<'_>,
) -> Result<()> {
    let (queries, keys, d) = (q.rows, k.rows, q.cols);
    TILES.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        scratch.resize(QUERY_BLOCK * (KEY_BLOCK + d + 2), 0.0);
        let (scores, rest) = scratch.split_at_mut(QUERY_BLOCK * KEY_BLOCK);
        let (acc, stats) = rest.split_at_mut(QUERY_BLOCK * d);
        let (max, norm) = stats.split_at_mut(QUERY_BLOCK);
        for q0 in (0..queries).step_by(QUERY_BLOCK) {
            let qb = QUERY_BLOCK.min(queries - q0);
            max[..qb].fill(f32::NEG_INFINITY);
            norm[..qb].fill(0.0);
            acc[..qb * d].fill(0.0);
            let q_tile = row_range(q, q0, qb);
            for k0 in (0..keys).step_by(KEY_BLOCK) {
                let kb = KEY_BLOCK.min(keys - k0);
                let s = &mut scores[..qb * kb];
                matmul(
                    MatMut::rows(s, qb, kb, kb),
                    q_tile,
                    row_range(k, k0, kb).t(),
                    false,
                )?;
                let bias = |i: usize| -> Option<&[f32]> {
                    match &op.bias {
                        AttentionBias::PerHead(t) => {
                            Some(&t[(head * queries + q0 + i) * keys + k0..][..kb])
                        }
                        _ => mask_row.map(|m| &m[k0..k0 + kb]),
                    }
                };
                vectorized(
                    #[inline(always)]
                    || {
                        online_update(
                            s,
                            kb,
                            op.scale,
                            &bias,
                            (&mut max[..qb], &mut norm[..qb]),
                            &mut acc[..qb * d],
                            d,
                        )
                    },
                );
                let acc_view = MatMut::rows(&mut acc[..qb * d], qb, d, d);
                matmul(
                    acc_view,
                    MatRef::rows(s, qb, kb, kb),
                    row_range(v, k0, kb),
                    true,
                )?;
            }
            for i in 0..qb {
                let inv = 1.0 / norm[i];
                for j in 0..d {
                    out.data[(q0 + i) * out.row_stride + j * out.col_stride] = acc[i * d + j] * inv;
                }
            }
        }
        Ok(())
    })
}

/// Turns a tile's scores into `e^(s - m_new)` row by row, updating each row's running maximum
/// and normaliser and rescaling its partial output.
#[inline(always)]
fn online_update<'b>(
    scores: &mut [f32],
    keys: usize,
    scale: f32,
    bias: &dyn Fn(usize) -> Option<&'b [f32]>,
    (max, norm): (&mut [f32], &mut [f32]),
    acc: &mut [f32],
    d: usize,
) {
    for (i, row) in scores.chunks_exact_mut(keys).enumerate() {
        let tile_max = scale_add_max(row, scale, bias(i));
        let new_max = max[i].max(tile_max);
        let correction = exp(max[i] - new_max);
        norm[i] = norm[i] * correction + exp_shifted_sum(row, new_max);
        acc[i * d..(i + 1) * d]
            .iter_mut()
            .for_each(|a| *a *= correction);
        max[i] = new_max;
    }
}
