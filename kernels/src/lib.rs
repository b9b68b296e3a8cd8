//! Compute kernels for inference, kept apart from the models so the one crate allowed `unsafe`
//! stays small and reviewable.
//!
//! [`cpu`] holds the operations the Video U-Net runs when no gradient is needed (sampling in
//! the services and in `vidcascade generate`): a tiled convolution that never materialises the
//! `k x k` unfolded input, group and layer norms fused with their FiLM modulation and SiLU, and
//! multi-head attention that reads heads in place and batches the many tiny per-head products.
//! Each is a candle custom op (`cpu_fwd`), so the models call them on ordinary tensors; the
//! training tool keeps candle's composed, differentiable ops, and tests in `vidcascade-models`
//! check that both paths agree on every stage configuration.
//!
//! [`flash`] is fused attention for the GPU: the CUDA kernel of `kernels/cuda/` (PTX checked in
//! under `kernels/ptx/`, loaded by the private `cuda` module when the `cuda` feature is on) and
//! its algorithm in plain Rust as the op's CPU side, which the tests hold to the textbook
//! definition.
//!
//! On the CPU, `unsafe` appears in exactly three places, each with a `// SAFETY:` comment: the call into the
//! `gemm` crate's strided matrix product (after the bounds of every operand are checked), the
//! calls into functions compiled for AVX-512 / AVX2 (after the CPU is checked for them), and the
//! one-time export of the resolved thread count (only while the process has a single thread).
//!
//! [`sampler`] is the fused sampler step of a batch in which every sample has its own time: the
//! kernels of `kernels/cuda/sampler_step.cu` (guidance, x0/eps, an exact on-device quantile for
//! dynamic thresholding, DDIM or ancestral with Philox noise) and the same algorithm in plain
//! Rust as its CPU side. Like `flash`, its CUDA launches (feature `cuda`) carry their own
//! `// SAFETY:` comments.

pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
pub mod flash;
pub mod sampler;
