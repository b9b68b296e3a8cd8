//! The whole GPU path against the CPU: a denoising step of every shipped stage, and a full
//! generation, on `--device cuda` in f32 and f16.
//!
//! Runs wherever a CUDA device opens (a `--features cuda` build on a GPU machine); elsewhere each
//! test prints "skipped: no CUDA device" and returns. `benches/gpu.sh` runs these binaries there.

use candle_core::{Device, Tensor};
use std::path::Path;
use vidcascade_diffusion::step_batch;
use vidcascade_engine::stage::UNetVelocity;
use vidcascade_engine::{Compute, DeviceSpec, DiffusionStage, EmbeddedCascade, Precision};
use vidcascade_models::ModelRepository;
use vidcascade_spec::GenerateRequest;

const PROMPT: &str = "a red circle moving left on a black background";

/// The shipped repository: `VIDCASCADE_BENCH_MODEL` when set (a test binary carried to a GPU
/// machine, where the build's checkout path does not exist), else this checkout's.
fn shipped() -> std::path::PathBuf {
    std::env::var_os("VIDCASCADE_BENCH_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/shapes"))
}

/// The GPU in `precision`, or `None` after saying why the test is skipped.
fn gpu(precision: Precision) -> Option<Compute> {
    match Compute::open(DeviceSpec::Cuda(0), precision) {
        Ok(compute) => Some(compute),
        Err(err) => {
            println!("skipped: no CUDA device ({err})");
            None
        }
    }
}

/// The first step's x0 estimate of every stage on `compute`, as host tensors; each SR stage is
/// conditioned on the same host video, so the runs compare stage by stage.
fn first_steps(compute: &Compute) -> anyhow::Result<Vec<(String, Tensor)>> {
    let repository = ModelRepository::open(shipped())?;
    let texts = repository
        .load_text_encoder(&Device::Cpu)?
        .encode(&[PROMPT, ""])?;
    let mut low_res: Option<Tensor> = None;
    let mut out = Vec::new();
    for manifest in repository.manifest().diffusion_stages() {
        let stage = DiffusionStage::load_on(&repository, &manifest.name, compute)?;
        let (mut state, conditioning) =
            stage.prepare_defaults((&texts[0], &texts[1]), low_res.as_ref(), 3)?;
        let model = UNetVelocity {
            unet: stage.unet(),
            samples: vec![&conditioning],
        };
        let step = step_batch(&model, &mut [&mut state])?.remove(0)?;
        let x0 = step
            .ok_or_else(|| anyhow::anyhow!("no step ran"))?
            .to_device(&Device::Cpu)?;
        // The next stage sees a fixed video, not this run's: both runs condition alike.
        let (_, f, h, w) = x0.dims4()?;
        low_res = Some(
            (Tensor::arange(0f32, (3 * f * h * w) as f32, &Device::Cpu)?.reshape((3, f, h, w))?
                / (3 * f * h * w) as f64)?,
        );
        out.push((manifest.name.clone(), x0));
    }
    Ok(out)
}

#[test]
fn a_stage_step_on_the_gpu_matches_the_cpu() -> anyhow::Result<()> {
    for (precision, tolerance) in [
        (Precision::F32, 1e-3f32),
        (Precision::F16, 3e-2),
        (Precision::Bf16, 1e-1),
    ] {
        let Some(compute) = gpu(precision) else {
            return Ok(());
        };
        let want = first_steps(&Compute::cpu())?;
        let got = first_steps(&compute)?;
        for ((stage, w), (_, g)) in want.iter().zip(&got) {
            let diff = (g - w)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            println!("{stage} {precision}: max |gpu - cpu| of the x0 estimate = {diff:.2e}");
            // x0 estimates live in [-1, 1] (dynamic thresholding).
            assert!(
                diff <= tolerance,
                "{stage} {precision}: {diff} > {tolerance}"
            );
        }
    }
    Ok(())
}

#[test]
fn the_shipped_cascade_generates_on_the_gpu_like_on_the_cpu() -> anyhow::Result<()> {
    let Some(compute) = gpu(Precision::F16) else {
        return Ok(());
    };
    let request = GenerateRequest {
        prompt: PROMPT.into(),
        seed: Some(1),
        ..GenerateRequest::default()
    };
    let run = |compute: &Compute| -> anyhow::Result<Vec<u8>> {
        let cascade = EmbeddedCascade::alone_on(ModelRepository::open(shipped())?, compute)?;
        let output = cascade.generate(&request, None, |_| std::ops::ControlFlow::Continue(()))?;
        Ok(output.final_video.frames.concat())
    };
    let cpu = run(&Compute::cpu())?;
    let gpu = run(&compute)?;
    assert_eq!(cpu.len(), gpu.len(), "the same video shape");
    // DDIM from the same initial noise: the videos differ only by rounding (f16 weights).
    let mean_abs = cpu
        .iter()
        .zip(&gpu)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .sum::<f64>()
        / cpu.len() as f64;
    println!("mean |gpu - cpu| pixel difference: {mean_abs:.2} / 255");
    assert!(mean_abs < 4.0, "{mean_abs}");
    Ok(())
}
