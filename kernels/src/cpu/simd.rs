//! Runs plain loops compiled for the widest vector ISA the CPU has.
//!
//! The shipped binaries target baseline x86-64 (SSE2) so they run anywhere; the element-wise
//! loops of the norms and of attention auto-vectorise much better with AVX-512 or AVX2 + FMA.
//! [`vectorized`] calls its closure from a function compiled with those features when the CPU
//! has them: the closure is inlined there and compiled for that ISA, the same technique the
//! `pulp` and `gemm` crates use, with no change to the numbers' order of operations beyond what
//! wider lanes allow (results stay within rounding of the baseline build).

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    })
}

/// Runs `f`, compiled for AVX-512 or AVX2 + FMA when this CPU has them. Mark the closure
/// `#[inline(always)]` (and the functions it calls): a closure that is not inlined into the
/// feature-enabled function is compiled for the baseline ISA.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` checked at run time that this CPU has AVX-512F, AVX-512VL and FMA.
        Isa::Avx512 => unsafe { with_avx512(f) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` checked at run time that this CPU has AVX2 and FMA.
        Isa::Avx2 => unsafe { with_avx2(f) },
        _ => f(),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Lanes of the running sums below: 16 independent accumulators let the compiler keep one
/// AVX-512 register (or two AVX2 registers) of partial sums without reassociating `f32` adds.
const LANES: usize = 16;

/// `sum(xs)` with [`LANES`] partial sums.
#[inline(always)]
pub(crate) fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (a, x) in acc.iter_mut().zip(chunk) {
            *a += x;
        }
    }
    reduce(acc, |a, b| a + b) + chunks.remainder().iter().sum::<f32>()
}

/// Folds [`LANES`] partial results pairwise (8 + 8, 4 + 4, ...), which stays in vector
/// registers, where a sequential fold would be 15 dependent scalar operations.
#[inline(always)]
fn reduce(mut acc: [f32; LANES], op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            acc[i] = op(acc[i], acc[i + width]);
        }
        width /= 2;
    }
    acc[0]
}

/// `xs = xs * scale + bias` (bias per element, or none), returning the new maximum: the first
/// pass of a softmax, in [`LANES`] partial maxima.
#[inline(always)]
pub(crate) fn scale_add_max(xs: &mut [f32], scale: f32, bias: Option<&[f32]>) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut tail = f32::NEG_INFINITY;
    match bias {
        Some(bias) => {
            let mut chunks = xs.chunks_exact_mut(LANES);
            let mut bias_chunks = bias.chunks_exact(LANES);
            for (chunk, b) in (&mut chunks).zip(&mut bias_chunks) {
                for ((x, b), a) in chunk.iter_mut().zip(b).zip(acc.iter_mut()) {
                    *x = *x * scale + b;
                    *a = a.max(*x);
                }
            }
            for (x, b) in chunks
                .into_remainder()
                .iter_mut()
                .zip(bias_chunks.remainder())
            {
                *x = *x * scale + b;
                tail = tail.max(*x);
            }
        }
        None => {
            let mut chunks = xs.chunks_exact_mut(LANES);
            for chunk in &mut chunks {
                for (x, a) in chunk.iter_mut().zip(acc.iter_mut()) {
                    *x *= scale;
                    *a = a.max(*x);
                }
            }
            for x in chunks.into_remainder() {
                *x *= scale;
                tail = tail.max(*x);
            }
        }
    }
    reduce(acc, f32::max).max(tail)
}

/// `xs = e^(xs - shift)`, returning their sum: the second pass of a softmax.
#[inline(always)]
pub(crate) fn exp_shifted_sum(xs: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = xs.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (x, a) in chunk.iter_mut().zip(acc.iter_mut()) {
            *x = exp(*x - shift);
            *a += *x;
        }
    }
    let mut tail = 0.0;
    for x in chunks.into_remainder() {
        *x = exp(*x - shift);
        tail += *x;
    }
    reduce(acc, |a, b| a + b) + tail
}

/// `sum((xs - mean)^2)` with [`LANES`] partial sums.
#[inline(always)]
pub(crate) fn sum_squared_deviations(xs: &[f32], mean: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (a, x) in acc.iter_mut().zip(chunk) {
            let d = x - mean;
            *a += d * d;
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|x| (x - mean) * (x - mean))
        .sum();
    reduce(acc, |a, b| a + b) + tail
}

/// `e^x` without a libm call, so loops over it vectorise: `x = k ln 2 + r` with
/// `|r| <= ln 2 / 2`, a degree-6 Taylor polynomial for `e^r` (relative error < 2e-7 there)
/// and `2^k` built in the exponent bits. Inputs are clamped to [-87, 88] (`e^-87` is near the
/// smallest normal `f32`), so it never returns infinity or NaN for finite inputs.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer (ties to even) with
    // two plain adds, where `f32::round` would be a libm call that blocks vectorisation.
    const ROUNDER: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUNDER;
    let k = shifted - ROUNDER;
    // The integer k sits in the low mantissa bits of `shifted` (its exponent is that of
    // ROUNDER for |k| < 2^22): read it with integer ops, which vectorise, where `k as i32`
    // (a saturating conversion) would not.
    let k_int = shifted.to_bits().wrapping_sub(ROUNDER.to_bits()) as i32;
    let r = k.mul_add(-LN2_LO, k.mul_add(-LN2_HI, x));
    // Horner's rule with fused multiply-adds (one instruction each inside `vectorized`, where
    // FMA is enabled; a libm call in the baseline build, which only CPUs without FMA run).
    let p = (1.0f32 / 720.0)
        .mul_add(r, 1.0 / 120.0)
        .mul_add(r, 1.0 / 24.0)
        .mul_add(r, 1.0 / 6.0)
        .mul_add(r, 0.5)
        .mul_add(r, 1.0)
        .mul_add(r, 1.0);
    p * f32::from_bits(((k_int + 127) as u32) << 23)
}

/// `x * sigmoid(x)`.
#[inline(always)]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_the_whole_range() {
        let mut worst = 0.0f64;
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
        assert_eq!(exp(-1e30), exp(-87.0));
        assert!(exp(1e30).is_finite() && exp(f32::MAX).is_finite());
        assert!((silu(-100.0)).abs() < 1e-30 && (silu(100.0) - 100.0).abs() < 1e-4);
    }

    #[test]
    fn vectorized_code_computes_what_plain_code_does() {
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let plain: f32 = xs.iter().map(|x| x * x).sum();
        let wide: f32 = vectorized(|| xs.iter().map(|x| x * x).sum());
        assert!(
            (plain - wide).abs() <= 1e-3 * plain.abs(),
            "{plain} vs {wide}"
        );
    }
}
