//! Scratch: raw single-thread gemm rate at conv shapes, several operand layouts.
use std::time::Instant;
use vidcascade_kernels::cpu::{MatMut, MatRef, matmul};

fn rate(label: &str, flop: f64, mut f: impl FnMut()) {
    for _ in 0..20 {
        f();
    }
    let mut ts = Vec::new();
    for _ in 0..200 {
        let s = Instant::now();
        f();
        ts.push(s.elapsed().as_secs_f64());
    }
    ts.sort_by(f64::total_cmp);
    println!(
        "{label:50} {:7.2} us {:6.1} GFLOP/s",
        ts[100] * 1e6,
        flop / ts[100] / 1e9
    );
}

fn main() -> candle_core::Result<()> {
    for &(o, k, p) in &[
        (16usize, 144usize, 256usize),
        (16, 144, 1024),
        (32, 288, 64),
        (16, 432, 256),
        (48, 432, 256),
        (32, 576, 64),
        (96, 32, 64),
    ] {
        let w: Vec<f32> = (0..o * k).map(|i| (i as f32).sin()).collect();
        let cols: Vec<f32> = (0..k * p).map(|i| (i as f32).cos()).collect();
        let mut dst = vec![0f32; o * p];
        let flop = 2.0 * (o * k * p) as f64;
        rate(
            &format!("o{o} k{k} p{p}: dst[O,P] = W * cols[K,P]"),
            flop,
            || {
                matmul(
                    MatMut::rows(&mut dst, o, p, p),
                    MatRef::rows(&w, o, k, k),
                    MatRef::rows(&cols, k, p, p),
                    true,
                )
                .unwrap()
            },
        );
        rate(
            &format!("o{o} k{k} p{p}: dst[O,P] = W * colsT[P,K]^T"),
            flop,
            || {
                matmul(
                    MatMut::rows(&mut dst, o, p, p),
                    MatRef::rows(&w, o, k, k),
                    MatRef::rows(&cols, p, k, k).t(),
                    true,
                )
                .unwrap()
            },
        );
        let mut dstt = vec![0f32; o * p];
        rate(
            &format!("o{o} k{k} p{p}: dstT[P,O] = colsT[P,K] * W^T"),
            flop,
            || {
                matmul(
                    MatMut::rows(&mut dstt, p, o, o),
                    MatRef::rows(&cols, p, k, k),
                    MatRef::rows(&w, o, k, k).t(),
                    true,
                )
                .unwrap()
            },
        );
    }
    Ok(())
}
