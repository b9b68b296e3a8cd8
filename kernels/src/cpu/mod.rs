//! CPU inference ops as candle custom ops, plus the process-wide settings they rely on.

mod attention;
mod conv;
mod gemm;
mod norm;
mod simd;
mod temporal_attention;
mod temporal_conv;
mod threads;

pub use attention::{Attention, AttentionBias};
pub use conv::Conv2d;
pub use gemm::{MatMut, MatRef, matmul};
pub use norm::{Affine, GroupNorm, LayerNorm, Statistics};
pub use temporal_conv::TemporalConv;
pub use threads::resolve_thread_count;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, bail};

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
