//! One denoising step (one batched U-Net call plus the sampler update) per diffusion stage, its
//! floating-point rate, and that rate as a share of a 2048^3 `f32` matrix product by the same
//! library (candle's matmul on the `gemm` crate) — the ratio is what to track, since absolute
//! times drift on shared machines (here by up to 1.5x within minutes). Every timed step is
//! paired with one sgemm timed right after it; the share is the median over those pairs.
//!
//! ```text
//! cargo bench --bench denoise_step                     # table on stdout
//! VIDCASCADE_BENCH_JSON=docs/bench/denoise_step.json cargo bench --bench denoise_step
//! VIDCASCADE_BENCH_FILTER=shapes/ssr cargo bench --bench denoise_step   # only matching stages
//! ```
//!
//! Covers the tiny random-weight cascade and the shipped `models/shapes` (or the repository
//! named by `VIDCASCADE_BENCH_MODEL`), each stage at its default guidance (guided stages batch a
//! conditional and an unconditional row). FLOPs per step follow `vidcascade_kernels::cpu::flops`
//! (2mnk per matrix product). The binary installs mimalloc, as the CLI and services do.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};
use vidcascade_diffusion::step_batch;
use vidcascade_engine::DiffusionStage;
use vidcascade_engine::stage::UNetVelocity;
use vidcascade_kernels::cpu::{Workload, configure_threads, flops};
use vidcascade_models::ModelRepository;
use vidcascade_models::repository::scaffold::WeightInit;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PROMPT: &str = "a red circle moving left on a black background";

/// One stage's measurement.
#[derive(Debug, serde::Serialize)]
struct Row {
    stage: String,
    output: String,
    rows: usize,
    ms_per_step: f64,
    mflop_per_step: f64,
    gflops: f64,
    sgemm_gflops: f64,
    share_of_sgemm: f64,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn samples() -> usize {
    std::env::var("VIDCASCADE_BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(15)
}

/// A 2048^3 `f32` product through candle, the reference rate.
struct Sgemm {
    a: Tensor,
    b: Tensor,
}

impl Sgemm {
    const N: usize = 2048;

    fn new() -> anyhow::Result<Self> {
        let a = Tensor::randn(0f32, 1.0, (Self::N, Self::N), &Device::Cpu)?;
        let b = Tensor::randn(0f32, 1.0, (Self::N, Self::N), &Device::Cpu)?;
        a.matmul(&b)?;
        Ok(Self { a, b })
    }

    /// GFLOP/s of one product.
    fn gflops(&self) -> anyhow::Result<f64> {
        let start = Instant::now();
        self.a.matmul(&self.b)?;
        Ok(2.0 * (Self::N.pow(3)) as f64 / start.elapsed().as_secs_f64() / 1e9)
    }
}

/// The repositories to bench: the tiny cascade (written to `scratch`) and the shipped one.
fn repositories(scratch: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let tiny = scratch.join("tiny");
    vidcascade_test_support::tiny_scaffold().write(&tiny, WeightInit::Random { seed: 1 })?;
    let mut repos = vec![("tiny".to_string(), tiny)];
    let shipped = std::env::var_os("VIDCASCADE_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shapes"));
    if shipped.join("manifest.json").exists() {
        let name = shipped
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        repos.push((name, shipped));
    }
    Ok(repos)
}

/// Times every stage of the repository at `root`, each conditioned on the previous stage's
/// output shape (content is irrelevant to timing).
fn bench_repository(name: &str, root: &Path, sgemm: &Sgemm) -> anyhow::Result<Vec<Row>> {
    let device = Device::Cpu;
    let repository = ModelRepository::open(root)?;
    let texts = repository
        .load_text_encoder(&device)?
        .encode(&[PROMPT, ""])?;
    let mut previous = None;
    let mut rows = Vec::new();
    let filter = std::env::var("VIDCASCADE_BENCH_FILTER").unwrap_or_default();
    for manifest in repository.manifest().diffusion_stages() {
        let stage = DiffusionStage::load(&repository, &manifest.name, &device)?;
        let label = format!("{name}/{}", stage.name());
        let (state, conditioning) =
            stage.prepare_defaults((&texts[0], &texts[1]), previous.as_ref(), 0)?;
        let model = UNetVelocity {
            unet: stage.unet(),
            samples: vec![&conditioning],
        };
        let measured = label.contains(&filter);
        let step = || -> anyhow::Result<f64> {
            // A fresh copy of the first step's state: the step measured is always the same one.
            let mut s = state.clone();
            let start = Instant::now();
            step_batch(&model, &mut [&mut s])?;
            Ok(start.elapsed().as_secs_f64())
        };
        step()?;
        if !measured {
            previous = state.latent().clamp(-1f32, 1f32).ok();
            continue;
        }
        let before = flops();
        step()?;
        let flop = (flops() - before) as f64;
        let pairs = (0..samples())
            .map(|_| Ok((step()?, sgemm.gflops()?)))
            .collect::<anyhow::Result<Vec<(f64, f64)>>>()?;
        let seconds = median(pairs.iter().map(|p| p.0).collect());
        let gflops = flop / seconds / 1e9;
        rows.push(Row {
            stage: label,
            output: manifest.output.map(|o| o.to_string()).unwrap_or_default(),
            rows: if state.settings().guidance == 1.0 {
                1
            } else {
                2
            },
            ms_per_step: seconds * 1e3,
            mflop_per_step: flop / 1e6,
            gflops,
            sgemm_gflops: median(pairs.iter().map(|p| p.1).collect()),
            share_of_sgemm: median(pairs.iter().map(|&(t, g)| flop / t / 1e9 / g).collect()),
        });
        previous = state.latent().clamp(-1f32, 1f32).ok();
    }
    Ok(rows)
}

fn main() -> anyhow::Result<()> {
    let threads = configure_threads(Workload::Inference);
    let scratch = tempfile::tempdir()?;
    let repos = repositories(scratch.path())?;
    let sgemm = Sgemm::new()?;
    let mut rows = Vec::new();
    for (name, root) in &repos {
        rows.extend(
            bench_repository(name, root, &sgemm)
                .with_context(|| format!("benching {}", root.display()))?,
        );
    }
    println!("reference: 2048^3 sgemm by candle's matmul, {threads} threads, one after each step");
    println!(
        "| stage | output | rows | ms/step | MFLOP/step | GFLOP/s | sgemm GFLOP/s | share of sgemm |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.0} | {:.1} | {:.0} | {:.1} % |",
            r.stage,
            r.output,
            r.rows,
            r.ms_per_step,
            r.mflop_per_step,
            r.gflops,
            r.sgemm_gflops,
            100.0 * r.share_of_sgemm
        );
    }
    if let Some(path) = std::env::var_os("VIDCASCADE_BENCH_JSON") {
        let report = serde_json::json!({
            "threads": threads,
            "samples": samples(),
            "stages": rows,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    Ok(())
}
