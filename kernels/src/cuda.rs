//! The CUDA side: the PTX of `kernels/cuda/*.cu`, compiled with NVRTC 13.0 by
//! `tools/cuda/gen_ptx.py` and checked in under `kernels/ptx/`, is embedded in the binary and
//! loaded into candle's CUDA context on first use, so a GPU machine needs only the NVIDIA driver
//! (and the CUDA libraries candle links), never NVRTC or CUDA headers. The kernels run on
//! candle's stream, on candle's buffers.

use candle_core::cuda_backend::cudarc::driver::CudaFunction;
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{Result, bail};

/// One `.cu` file of `kernels/cuda/`, as PTX for two virtual architectures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Module {
    name: &'static str,
    sm80: &'static str,
    sm90: &'static str,
}

macro_rules! ptx_module {
    ($stem:literal) => {
        Module {
            name: $stem,
            sm80: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/ptx/",
                $stem,
                ".sm_80.ptx"
            )),
            sm90: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/ptx/",
                $stem,
                ".sm_90.ptx"
            )),
        }
    };
}

/// `kernels/cuda/flash_attention.cu`.
pub(crate) const FLASH_ATTENTION: Module = ptx_module!("flash_attention");
/// `kernels/cuda/sampler_step.cu`.
pub(crate) const SAMPLER_STEP: Module = ptx_module!("sampler_step");

/// The kernel `function` of `module` on `device`: the sm_90 PTX on Hopper and newer, the sm_80
/// PTX (JIT-compiled by the driver) on Ampere and Ada. Older GPUs lack the bf16 tensor cores the
/// kernels use and get an error naming their compute capability. Launch it with
/// `device.cuda_stream().launch_builder(&function)`.
pub(crate) fn function(
    device: &CudaDevice,
    module: Module,
    function: &str,
) -> Result<CudaFunction> {
    let (major, minor) = device.cuda_stream().context().compute_capability().w()?;
    let (suffix, ptx) = match major {
        9.. => ("sm90", module.sm90),
        8 => ("sm80", module.sm80),
        _ => bail!(
            "vidcascade's CUDA kernels need compute capability 8.0 or newer, this GPU has \
             {major}.{minor}"
        ),
    };
    let cache_key = format!("vidcascade_{}_{suffix}", module.name);
    Ok(device
        .get_or_load_custom_func(function, &cache_key, ptx)?
        .into_cuda_function())
}
