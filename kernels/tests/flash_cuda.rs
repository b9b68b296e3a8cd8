//! The flash attention kernel on a GPU against its CPU reference (the same algorithm in Rust,
//! with the kernel's rounding points), for the U-Net's three uses and every head-dim padding.
//!
//! Runs wherever a CUDA device opens (a `--features cuda` build on a GPU machine); elsewhere
//! it prints "skipped: no CUDA device" and returns.

use candle_core::{DType, Device, Result, Tensor};
use vidcascade_kernels::flash::{FlashBias, flash_attention};

/// The GPU, or `None` after saying why the test is skipped.
fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(device) => Some(device),
        Err(err) => {
            println!("skipped: no CUDA device ({err})");
            None
        }
    }
}

/// Unit roundoff of the element type.
fn unit_roundoff(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => 2f32.powi(-11),
        _ => 2f32.powi(-8),
    }
}

/// One case: (batch, heads, lq, lk, d, bias kind 0 none / 1 key padding / 2 per head).
type Case = (usize, usize, usize, usize, usize, u8);

const CASES: [Case; 7] = [
    (2, 4, 64, 64, 32, 0),     // spatial self-attention, 8x8 frame
    (1, 2, 1024, 1024, 64, 0), // spatial, 32x32 frame: many key tiles and query blocks
    (3, 2, 250, 250, 128, 0),  // the widest padding, ragged tiles
    (6, 4, 100, 13, 12, 1),    // text cross-attention, 13 tokens, 3 padded
    (300, 2, 16, 16, 16, 2),   // temporal attention over 16 frames, many rows
    (40, 3, 7, 7, 6, 2),       // odd frame count and head dim
    (1, 1, 1, 1, 1, 1),        // the smallest call
];

fn bias_for(kind: u8, batch: usize, heads: usize, lq: usize, lk: usize) -> Result<FlashBias> {
    let cpu = Device::Cpu;
    Ok(match kind {
        0 => FlashBias::None,
        1 => {
            let padded = lk.saturating_sub(3).max(1);
            let values: Vec<f32> = (0..batch * lk)
                .map(|i| if i % lk < padded { 0.0 } else { -1e9 })
                .collect();
            FlashBias::KeyPadding(Tensor::from_vec(values, (batch, lk), &cpu)?)
        }
        _ => FlashBias::PerHead(Tensor::randn(0f32, 1.0, (heads, lq, lk), &cpu)?),
    })
}

fn on(bias: &FlashBias, device: &Device) -> Result<FlashBias> {
    Ok(match bias {
        FlashBias::None => FlashBias::None,
        FlashBias::KeyPadding(t) => FlashBias::KeyPadding(t.to_device(device)?),
        FlashBias::PerHead(t) => FlashBias::PerHead(t.to_device(device)?),
    })
}

#[test]
fn flash_attention_on_the_gpu_matches_its_cpu_reference() -> Result<()> {
    let Some(gpu) = gpu() else { return Ok(()) };
    for dtype in [DType::F16, DType::BF16] {
        for (batch, heads, lq, lk, d, kind) in CASES {
            let cpu = Device::Cpu;
            let q = Tensor::randn(0f32, 1.0, (batch, heads, lq, d), &cpu)?.to_dtype(dtype)?;
            let k = Tensor::randn(0f32, 1.0, (batch, heads, lk, d), &cpu)?.to_dtype(dtype)?;
            let v = Tensor::randn(0f32, 1.0, (batch, heads, lk, d), &cpu)?.to_dtype(dtype)?;
            let bias = bias_for(kind, batch, heads, lq, lk)?;
            let scale = 1.0 / (d as f32).sqrt();
            let want = flash_attention(&q, &k, &v, scale, bias.clone())?.to_dtype(DType::F32)?;
            let got = flash_attention(
                &q.to_device(&gpu)?,
                &k.to_device(&gpu)?,
                &v.to_device(&gpu)?,
                scale,
                on(&bias, &gpu)?,
            )?
            .to_device(&cpu)?
            .to_dtype(DType::F32)?;
            let diff = (&got - &want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            let peak = v
                .to_dtype(DType::F32)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            // A few rounding flips of the f16/bf16 probabilities and outputs; f32 sums agree to
            // ~1e-6 whatever their order.
            let tolerance = 4.0 * unit_roundoff(dtype) * peak;
            println!(
                "{dtype:?} b{batch} h{heads} lq{lq} lk{lk} d{d} bias{kind}: max |gpu - cpu| {diff:.2e} (tolerance {tolerance:.2e})"
            );
            assert!(
                diff <= tolerance,
                "{dtype:?} {batch}x{heads}x{lq}x{lk}x{d}: {diff}"
            );
        }
    }
    Ok(())
}

#[test]
fn the_gpu_kernel_refuses_f32_with_a_clear_error() -> Result<()> {
    let Some(gpu) = gpu() else { return Ok(()) };
    let x = Tensor::zeros((1, 1, 4, 8), DType::F32, &gpu)?;
    let err = flash_attention(&x, &x, &x, 1.0, FlashBias::None).expect_err("f32 on the GPU");
    assert!(err.to_string().contains("f16 or bf16"), "{err}");
    Ok(())
}
