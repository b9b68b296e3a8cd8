//! Launching `sampler_step.cu` on candle's stream: uploads the per-sample parameters, allocates
//! the outputs and the select's scratch, and enqueues the launches back to back (two, or seven
//! when any sample thresholds). Nothing is read back: the flags stay on the device for the
//! caller to read when it syncs anyway.
//!
//! The PTX is loaded by the crate's shared loader (`crate::cuda`): sm_90 PTX on Hopper and
//! newer, sm_80 on Ampere and Ada.

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{CudaStorage, Layout, Result, Storage, Tensor, bail};

use super::{DeviceParams, Dims, FusedStepOutput};

/// Threads of the element-wise kernels (`BLOCK` in the .cu file).
const BLOCK: u32 = 256;
/// Threads of the select kernel: exactly one warp (`WARP`).
const SELECT_THREADS: u32 = 32;
/// Elements (or groups of four) a thread handles at least before another block is added.
const ITEMS_PER_THREAD: usize = 8;
/// Blocks per sample at most; the loops are grid-stride, so fewer is always correct.
const MAX_BLOCKS_PER_SAMPLE: usize = 1024;
/// `HIST_WORDS` and `STATE_WORDS` of the .cu file.
const HIST_WORDS: usize = 5 * super::radix::BINS;
const STATE_WORDS: usize = 8;

// SAFETY: `DeviceParams` is `#[repr(C)]` and `Copy`, holds only f64, i32, u32 and f32 fields
// and no padding (its size, 88, and its first and last offsets are asserted at compile time),
// exactly the layout of `struct SampleParams` in sampler_step.cu, which asserts the same size.
unsafe impl DeviceRepr for DeviceParams {}

/// The kernel `name` of sampler_step.cu on `device`.
fn function(device: &CudaDevice, name: &str) -> Result<CudaFunction> {
    crate::cuda::function(device, crate::cuda::SAMPLER_STEP, name)
}

/// The elements of a contiguous operand, from its layout's offset to its end.
fn operand<'a, T: CudaDType>(
    tensor: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("fused sampler step: {what} must be contiguous");
    };
    match tensor.as_cuda_slice::<T>()?.try_slice(start..end) {
        Some(view) => Ok(view),
        None => bail!("fused sampler step: {what}'s layout lies outside its buffer"),
    }
}

/// Element-wise grid: `(blocks per sample, samples)` for `items` per sample.
fn grid(items: usize, batch: usize) -> LaunchConfig {
    let per_sample = items
        .div_ceil(BLOCK as usize * ITEMS_PER_THREAD)
        .clamp(1, MAX_BLOCKS_PER_SAMPLE);
    LaunchConfig {
        grid_dim: (per_sample as u32, batch as u32, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Runs the step on CUDA tensors (contiguous, checked by `FusedSamplerStep::forward`).
pub(super) fn forward(
    z: &Tensor,
    v_all: &Tensor,
    flags: &Tensor,
    params: &[DeviceParams],
    dims: Dims,
) -> Result<FusedStepOutput> {
    let (z_storage, z_layout) = z.storage_and_layout();
    let (v_storage, v_layout) = v_all.storage_and_layout();
    let (f_storage, f_layout) = flags.storage_and_layout();
    let (Storage::Cuda(zs), Storage::Cuda(vs), Storage::Cuda(fs)) =
        (&*z_storage, &*v_storage, &*f_storage)
    else {
        bail!("fused sampler step: z, v_all and flags must all be CUDA tensors");
    };
    let inputs = Inputs {
        z: operand::<f32>(zs, z_layout, "z")?,
        v_all: operand::<f32>(vs, v_layout, "v_all")?,
        flags: operand::<u32>(fs, f_layout, "flags")?,
    };
    let device = zs.device.clone();
    let (z_next, x0, flags_out) = launch_all(&device, &inputs, params, dims)?;
    let shape = (dims.batch, dims.n);
    let wrap = |slice: CudaSlice<f32>| {
        Tensor::from((
            Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, device.clone())),
            shape,
        ))
    };
    Ok(FusedStepOutput {
        z_next: wrap(z_next),
        x0: wrap(x0),
        flags: Tensor::from((
            Storage::Cuda(CudaStorage::wrap_cuda_slice(flags_out, device.clone())),
            dims.batch,
        )),
    })
}

/// The input buffers: `z` `[B, N]`, `v_all` `[R, N]`, `flags` `[B]`.
struct Inputs<'a> {
    z: CudaView<'a, f32>,
    v_all: CudaView<'a, f32>,
    flags: CudaView<'a, u32>,
}

/// Enqueues the launches; returns `(z_next, x0, flags)`.
fn launch_all(
    device: &CudaDevice,
    inputs: &Inputs<'_>,
    params: &[DeviceParams],
    dims: Dims,
) -> Result<(CudaSlice<f32>, CudaSlice<f32>, CudaSlice<u32>)> {
    let (batch, n) = (dims.batch, dims.n);
    let stream = device.cuda_stream();
    // A pageable copy of 88 bytes per sample; the driver stages it, no sync.
    let params_dev = device.clone_htod(params)?;
    // SAFETY: `vc_sampler_predict` writes every element of both (every sample's blocks cover
    // indices 0..n with a grid-stride loop) before anything reads them; f32 has no invalid bit
    // patterns in any case.
    let (mut x0, mut z_next) = unsafe {
        (
            device.alloc::<f32>(batch * n)?,
            device.alloc::<f32>(batch * n)?,
        )
    };
    let mut flags_out = device.alloc_zeros::<u32>(batch)?;
    let thresholding = params.iter().any(|p| p.threshold != 0);
    let mut hist = device.alloc_zeros::<u32>(if thresholding { batch * HIST_WORDS } else { 1 })?;
    let mut state = device.alloc_zeros::<u32>(batch * STATE_WORDS)?;
    let n64 = n as u64;

    let predict = function(device, "vc_sampler_predict")?;
    let mut args = stream.launch_builder(&predict);
    args.arg(&inputs.z)
        .arg(&inputs.v_all)
        .arg(&params_dev)
        .arg(&inputs.flags);
    args.arg(&mut x0)
        .arg(&mut z_next)
        .arg(&mut flags_out)
        .arg(&mut hist)
        .arg(&n64);
    // SAFETY: the arguments match `vc_sampler_predict(const float*, const float*, const
    // SampleParams*, const unsigned*, float*, float*, unsigned*, unsigned*, unsigned long long)`;
    // z, x0 and z_next hold batch * n elements, v_all rows * n with every row index of `params`
    // checked below `rows`, flags and flags_out batch, hist batch * HIST_WORDS when any sample
    // thresholds (only thresholded samples touch it); grid y is the sample (batch <= 65535).
    unsafe { args.launch(grid(n, batch)) }.w()?;

    if thresholding {
        launch_quantile_passes(device, (&x0, &params_dev), (&mut state, &mut hist), dims)?;
    }

    let update = function(device, "vc_sampler_update")?;
    let mut args = stream.launch_builder(&update);
    args.arg(&inputs.z)
        .arg(&params_dev)
        .arg(&state)
        .arg(&mut x0)
        .arg(&mut z_next)
        .arg(&n64);
    // SAFETY: matches `vc_sampler_update(const float*, const SampleParams*, const unsigned*,
    // float*, float*, unsigned long long)`; z, x0 and z_next hold batch * n elements and the
    // kernel bounds-checks each of its groups of four against n.
    unsafe { args.launch(grid(n.div_ceil(4), batch)) }.w()?;
    Ok((z_next, x0, flags_out))
}

/// The radix select of every thresholded sample's quantile: three select launches, with a
/// histogram pass over x0 before the second and the third (the first pass's histogram came
/// from `vc_sampler_predict`).
fn launch_quantile_passes(
    device: &CudaDevice,
    (x0, params_dev): (&CudaSlice<f32>, &CudaSlice<DeviceParams>),
    (state, hist): (&mut CudaSlice<u32>, &mut CudaSlice<u32>),
    dims: Dims,
) -> Result<()> {
    let (batch, n64) = (dims.batch, dims.n as u64);
    let stream = device.cuda_stream();
    let radix = function(device, "vc_sampler_radix_hist")?;
    let select = function(device, "vc_sampler_select")?;
    for pass in 0u32..3 {
        if pass > 0 {
            let mut args = stream.launch_builder(&radix);
            args.arg(x0)
                .arg(params_dev)
                .arg(&*state)
                .arg(&mut *hist)
                .arg(&n64)
                .arg(&pass);
            // SAFETY: matches `vc_sampler_radix_hist(const float*, const SampleParams*,
            // const unsigned*, unsigned*, unsigned long long, unsigned)`; x0 holds batch * n
            // elements, state batch * STATE_WORDS, hist batch * HIST_WORDS, and the kernel
            // reads bins only below 2^11 of each of its five histograms per sample.
            unsafe { args.launch(grid(dims.n, batch)) }.w()?;
        }
        let mut args = stream.launch_builder(&select);
        args.arg(params_dev).arg(&*hist).arg(&mut *state).arg(&pass);
        let config = LaunchConfig {
            grid_dim: (batch as u32, 1, 1),
            block_dim: (SELECT_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches `vc_sampler_select(const SampleParams*, const unsigned*,
        // unsigned*, unsigned)`; one block of exactly one warp per sample, as the kernel's
        // lane arithmetic assumes; hist and state sized as above.
        unsafe { args.launch(config) }.w()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_cover_every_sample_and_stay_bounded() {
        let g = grid(1, 3);
        assert_eq!((g.grid_dim, g.block_dim), ((1, 3, 1), (BLOCK, 1, 1)));
        assert_eq!(grid(2048 * 10, 2).grid_dim.0, 10);
        assert_eq!(
            grid(usize::MAX / 2, 1).grid_dim.0,
            MAX_BLOCKS_PER_SAMPLE as u32
        );
    }
}
