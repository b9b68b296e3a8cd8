//! Times each CPU inference op alone at the shapes of the shipped stages (16 or 32 images of
//! 8x8 to 32x32 with 16-64 channels), median of 50 calls on rayon's workers, and prints GFLOP/s
//! for the ops that are matrix products. A quick way to see which op a kernel change moved:
//!
//! ```text
//! cargo run --release -p vidcascade-kernels --example ops
//! ```

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use vidcascade_kernels::cpu::{
    Affine, Attention, AttentionBias, Conv2d, GroupNorm, Statistics, TemporalConv, Workload,
    configure_threads, on_workers,
};

/// Prints the median time of `f` and, when `flop > 0`, its rate.
fn time(label: &str, flop: f64, f: impl Fn() -> Result<Tensor> + Send + Sync) -> Result<()> {
    let seconds = on_workers(|| -> Result<f64> {
        for _ in 0..5 {
            f()?;
        }
        let mut times = Vec::with_capacity(50);
        for _ in 0..50 {
            let start = Instant::now();
            f()?;
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    })?;
    let rate = if flop > 0.0 {
        format!("{:6.1} GFLOP/s", flop / seconds / 1e9)
    } else {
        String::new()
    };
    println!("{label:36} {:9.1} us  {rate}", seconds * 1e6);
    Ok(())
}

/// Every op at `n` images of `c` channels, `side x side`.
fn shape(n: usize, c: usize, side: usize) -> Result<()> {
    let dev = Device::Cpu;
    let p = side * side;
    let x = Tensor::randn(0f32, 1.0, (n, c, side, side), &dev)?;
    let tag = format!("n{n} c{c} {side}x{side}");
    let w3 = Tensor::randn(0f32, 1.0, (c, c, 3, 3), &dev)?;
    let bias = Tensor::zeros(c, DType::F32, &dev)?;
    let conv_flop = 2.0 * (n * c * c * 9 * p) as f64;
    time(&format!("conv 3x3 {tag}"), conv_flop, || {
        x.apply_op3_no_bwd(&w3, &bias, &Conv2d { stride: 1 })
    })?;
    let w1 = Tensor::randn(0f32, 1.0, (3 * c, c, 1, 1), &dev)?;
    let bias3 = Tensor::zeros(3 * c, DType::F32, &dev)?;
    time(
        &format!("1x1 to 3C {tag}"),
        2.0 * (n * 3 * c * c * p) as f64,
        || x.apply_op3_no_bwd(&w1, &bias3, &Conv2d { stride: 1 }),
    )?;
    let norm = GroupNorm {
        groups: 8,
        eps: 1e-5,
        statistics: Statistics::PerImage,
        affine: Affine::channels(vec![1.0; c], vec![0.0; c]),
        silu: true,
    };
    time(&format!("group norm + SiLU {tag}"), 0.0, || {
        x.apply_op1_no_bwd(&norm)
    })?;
    let qkv = Tensor::randn(0f32, 1.0, (n, 3 * c, p), &dev)?;
    let spatial = Attention {
        heads: 4,
        scale: 0.3,
        bias: AttentionBias::None,
        frames: None,
    };
    time(
        &format!("self-attention {tag}"),
        4.0 * (n * p * p * c) as f64,
        || qkv.apply_op1_no_bwd(&spatial),
    )?;
    let frames = n / 2;
    let temporal = Attention {
        frames: Some(frames),
        ..spatial
    };
    time(
        &format!("temporal attention {tag}"),
        4.0 * (n * frames * c * p) as f64,
        || qkv.apply_op1_no_bwd(&temporal),
    )?;
    let wt = Tensor::randn(0f32, 1.0, (c, c, 3), &dev)?;
    time(
        &format!("temporal conv {tag}"),
        2.0 * (n * c * c * 3 * p) as f64,
        || x.apply_op3_no_bwd(&wt, &bias, &TemporalConv { frames }),
    )?;
    Ok(())
}

fn main() -> Result<()> {
    configure_threads(Workload::Inference);
    for (n, c, side) in [
        (16, 16, 16),
        (16, 32, 8),
        (16, 16, 32),
        (32, 24, 16),
        (32, 48, 8),
    ] {
        shape(n, c, side)?;
    }
    Ok(())
}
