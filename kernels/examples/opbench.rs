//! Scratch: time single ops at the shipped stages' shapes.
use candle_core::{Device, Result, Tensor};
use std::time::Instant;
use vidcascade_kernels::cpu::*;

fn time(label: &str, flop: f64, f: impl Fn() -> Result<Tensor>) -> Result<()> {
    for _ in 0..5 {
        f()?;
    }
    let mut ts = Vec::new();
    for _ in 0..50 {
        let s = Instant::now();
        f()?;
        ts.push(s.elapsed().as_secs_f64());
    }
    ts.sort_by(f64::total_cmp);
    let t = ts[25];
    println!(
        "{label:40} {:8.1} us  {:6.1} GFLOP/s",
        t * 1e6,
        flop / t / 1e9
    );
    Ok(())
}

fn main() -> Result<()> {
    configure_threads(Workload::Inference);
    let d = Device::Cpu;
    for &(n, c, o, h) in &[
        (16usize, 16usize, 16usize, 16usize),
        (16, 32, 32, 8),
        (16, 64, 32, 8),
        (16, 48, 16, 16),
        (16, 16, 16, 32),
        (16, 48, 16, 32),
        (32, 24, 24, 16),
        (32, 48, 48, 8),
    ] {
        let x = Tensor::randn(0f32, 1.0, (n, c, h, h), &d)?;
        let w = Tensor::randn(0f32, 1.0, (o, c, 3, 3), &d)?;
        let b = Tensor::randn(0f32, 1.0, o, &d)?;
        let flop = 2.0 * (n * o * c * 9 * h * h) as f64;
        vidcascade_kernels::cpu::on_workers(|| {
            time(&format!("conv3x3 n{n} c{c} o{o} {h}x{h}"), flop, || {
                x.apply_op3_no_bwd(&w, &b, &Conv2d { stride: 1 })
            })
        })?;
        let gn = GroupNorm {
            groups: 8,
            eps: 1e-5,
            statistics: Statistics::PerImage,
            affine: Affine::channels(vec![1.0; c], vec![0.0; c]),
            silu: true,
        };
        vidcascade_kernels::cpu::on_workers(|| {
            time(&format!("gn+silu n{n} c{c} {h}x{h}"), 0.0, || {
                x.apply_op1_no_bwd(&gn)
            })
        })?;
        let w1 = Tensor::randn(0f32, 1.0, (3 * c, c, 1, 1), &d)?;
        let b1 = Tensor::zeros(3 * c, candle_core::DType::F32, &d)?;
        vidcascade_kernels::cpu::on_workers(|| {
            time(
                &format!("1x1 n{n} c{c}->{} {h}x{h}", 3 * c),
                2.0 * (n * 3 * c * c * h * h) as f64,
                || x.apply_op3_no_bwd(&w1, &b1, &Conv2d { stride: 1 }),
            )
        })?;
        let qkv = Tensor::randn(0f32, 1.0, (n, 3 * c, h * h), &d)?;
        let att = Attention {
            heads: 4,
            scale: 0.3,
            bias: AttentionBias::None,
            frames: None,
        };
        let p = h * h;
        vidcascade_kernels::cpu::on_workers(|| {
            time(
                &format!("self-attn n{n} c{c} {h}x{h}"),
                4.0 * (n * p * p * c) as f64,
                || qkv.apply_op1_no_bwd(&att),
            )
        })?;
        let tatt = Attention {
            heads: 4,
            scale: 0.3,
            bias: AttentionBias::None,
            frames: Some(n / 2),
        };
        vidcascade_kernels::cpu::on_workers(|| {
            time(
                &format!("temporal-attn n{n} c{c} {h}x{h}"),
                4.0 * (n * (n / 2) * c * p) as f64,
                || qkv.apply_op1_no_bwd(&tatt),
            )
        })?;
        let wt = Tensor::randn(0f32, 1.0, (c, c, 3), &d)?;
        let bt = Tensor::zeros(c, candle_core::DType::F32, &d)?;
        vidcascade_kernels::cpu::on_workers(|| {
            time(
                &format!("temporal-conv n{n} c{c} {h}x{h}"),
                2.0 * (n * c * c * 3 * p) as f64,
                || x.apply_op3_no_bwd(&wt, &bt, &TemporalConv { frames: n }),
            )
        })?;
        vidcascade_kernels::cpu::on_workers(|| {
            time(&format!("candle add n{n} c{c} {h}x{h}"), 0.0, || &x + &x)
        })?;
    }
    Ok(())
}
