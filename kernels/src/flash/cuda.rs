//! Launching `flash_attention.cu` on candle's stream: picks the entry point for the dtype and
//! the padded head dimension, sizes the dynamic shared memory, and passes absent biases as null
//! pointers.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result, Storage, bail};

use super::{FlashAttention, FlashBias, FlashShape, KEY_TILE, QUERY_TILE};
use crate::cuda::{FLASH_ATTENTION, function};

/// Threads per block (4 warps, 16 query rows each).
const THREADS: u32 = 128;
/// Shared memory a kernel may use without opting in.
const DEFAULT_SHARED_LIMIT: usize = 48 * 1024;

/// The head-dim padding of the entry point that serves `d` (the smallest of 16, 32, 64, 128).
fn padded_head_dim(d: usize) -> usize {
    [16, 32, 64, 128]
        .into_iter()
        .find(|&p| d <= p)
        .unwrap_or(128)
}

/// Dynamic shared memory of the kernel for padding `dp` and element size `elem` (the sum in
/// the kernel's header comment).
fn shared_bytes(dp: usize, elem: usize) -> usize {
    (QUERY_TILE * dp + 2 * KEY_TILE * dp) * elem
        + QUERY_TILE * KEY_TILE * (4 + elem)
        + QUERY_TILE * dp * 4
}

/// A contiguous operand's elements from its layout's offset on.
fn operand<'a, T: CudaDType>(storage: &'a CudaStorage, layout: &Layout) -> Result<CudaView<'a, T>> {
    Ok(storage.as_cuda_slice::<T>()?.slice(layout.start_offset()..))
}

/// Runs the kernel and returns the `[B, heads, Lq, d]` output.
pub(super) fn forward(
    op: &FlashAttention,
    shape: FlashShape,
    q: (&CudaStorage, &Layout),
    k: (&CudaStorage, &Layout),
    v: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let dtype = q.0.dtype();
    if k.0.dtype() != dtype || v.0.dtype() != dtype {
        bail!("flash attention: q, k and v must share one dtype");
    }
    match dtype {
        DType::F16 => launch::<half::f16>(op, shape, "f16", q, k, v),
        DType::BF16 => launch::<half::bf16>(op, shape, "bf16", q, k, v),
        other => bail!("flash attention on the GPU takes f16 or bf16, got {other:?}"),
    }
}

fn launch<T: CudaDType + DeviceRepr>(
    op: &FlashAttention,
    shape: FlashShape,
    type_name: &str,
    q: (&CudaStorage, &Layout),
    k: (&CudaStorage, &Layout),
    v: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let device = q.0.device().clone();
    let dp = padded_head_dim(shape.d);
    let func = function(
        &device,
        FLASH_ATTENTION,
        &format!("flash_attention_{type_name}_d{dp}"),
    )?;
    let shared = shared_bytes(dp, std::mem::size_of::<T>());
    if shared > DEFAULT_SHARED_LIMIT {
        func.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            shared as i32,
        )
        .w()?;
    }
    let (q_view, k_view, v_view) = (
        operand::<T>(q.0, q.1)?,
        operand::<T>(k.0, k.1)?,
        operand::<T>(v.0, v.1)?,
    );
    // SAFETY: the kernel writes every element of `out` (each row < lq, each column < d) before
    // anything reads it.
    let out: CudaSlice<T> = unsafe { device.alloc::<T>(shape.batch_heads * shape.lq * shape.d) }?;
    let bias_tensor = match &op.bias {
        FlashBias::None => None,
        FlashBias::KeyPadding(t) | FlashBias::PerHead(t) => Some(t.contiguous()?),
    };
    let bias_guard = bias_tensor.as_ref().map(|t| t.storage_and_layout());
    let bias_view = match &bias_guard {
        None => None,
        Some((storage, layout)) => match &**storage {
            Storage::Cuda(s) => Some(operand::<f32>(s, layout)?),
            _ => bail!("flash attention: the bias must be on the same CUDA device"),
        },
    };
    let null: u64 = 0;
    let (heads, lq, lk, d) = (
        shape.heads as i32,
        shape.lq as i32,
        shape.lk as i32,
        shape.d as i32,
    );
    let stream = device.cuda_stream();
    let mut builder = stream.launch_builder(&func);
    builder.arg(&q_view).arg(&k_view).arg(&v_view).arg(&out);
    match (&op.bias, &bias_view) {
        (FlashBias::KeyPadding(_), Some(bias)) => builder.arg(bias).arg(&null),
        (FlashBias::PerHead(_), Some(bias)) => builder.arg(&null).arg(bias),
        _ => builder.arg(&null).arg(&null),
    };
    builder.arg(&heads).arg(&lq).arg(&lk).arg(&d).arg(&op.scale);
    let config = LaunchConfig {
        grid_dim: (
            shape.batch_heads as u32,
            shape.lq.div_ceil(QUERY_TILE) as u32,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: shared as u32,
    };
    // SAFETY: the arguments match the entry point's signature in flash_attention.cu (four
    // element pointers, two f32 pointers or null, four ints, one float); q, k, v and out hold
    // batch_heads * l * d elements as `shape` was checked against their layouts, and the biases
    // were checked to be [batch, lk] / [heads, lq, lk] f32; the grid covers every (row, query
    // tile) and the kernel bounds-checks the last tile.
    unsafe { builder.launch(config) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_matches_the_kernel_layout() {
        // f16, d=64: q 64*64*2 + k, v 2*32*64*2 + scores 64*32*4 + p 64*32*2 + out 64*64*4.
        assert_eq!(shared_bytes(64, 2), 8192 + 8192 + 8192 + 4096 + 16384);
        assert_eq!(padded_head_dim(6), 16);
        assert_eq!(padded_head_dim(64), 64);
        assert_eq!(padded_head_dim(65), 128);
        // The largest configuration fits the 227 KiB an H100/H200 block may opt into.
        assert!(shared_bytes(128, 2) <= 227 * 1024);
    }
}
