//! CPU inference ops as candle custom ops, plus the process-wide settings they rely on.

mod attention;
mod conv;
mod gemm;
mod norm;
mod simd;
mod temporal_attention;
mod temporal_conv;
mod threads;
mod tiled_attention;

pub use attention::{Attention, AttentionBias};
pub use conv::Conv2d;
pub use gemm::{MatMut, MatRef, matmul};
pub use norm::{Affine, GroupNorm, LayerNorm, Statistics};
pub use temporal_conv::TemporalConv;
pub use threads::{Workload, configure_threads};

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, bail};

static FLOPS: AtomicU64 = AtomicU64::new(0);

/// Floating-point operations these ops have run in this process, by one rule: `2 m n k` for
/// every `m x k` by `k x n` matrix product (convolutions as their im2col products, projections,
/// attention scores and weighted sums, including the pixel-parallel temporal attention, which
/// does the same products without a GEMM call). Norms, softmax, SiLU and additions are not
/// counted, nor are candle's own small matmuls outside these ops (the time and text
/// embeddings, FiLM projections, text keys and values: under 2 % of a step). Benchmarks divide
/// its growth over a step by the step's time.
pub fn flops() -> u64 {
    FLOPS.load(Ordering::Relaxed)
}

fn count_flops(n: usize) {
    FLOPS.fetch_add(n as u64, Ordering::Relaxed);
}

/// Runs `f` on one of rayon's worker threads (the calling thread waits), so the parallel
/// sections inside it start on a worker that takes its own share of the work, instead of
/// handing every section from outside the pool to sleeping workers.
pub fn on_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// The `f32` elements of a contiguous CPU tensor, or an error naming `op` and `what`.
fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
    what: &str,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        bail!("{op}: {what} must be f32, got {:?}", storage.dtype())
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: {what} must be contiguous"),
    }
}
