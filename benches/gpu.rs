//! The GPU bench, one JSON object per line on stdout (`benches/gpu.sh` runs it on a GPU machine
//! next to PyTorch and turns the lines into tables):
//!
//! - `attention`: the flash kernel at Imagen-Video-sized shapes (40x64 and 80x128 frames, head
//!   dims 64 and 128, text cross-attention, temporal attention), f16 and bf16, in TFLOP/s
//!   (`4 B H Lq Lk d` per call); `gpu attention-shapes` prints the cases for the PyTorch side;
//! - `copy`: a device-to-device copy, the bandwidth ceiling (bytes read + written per second);
//! - `sampler`: the fused sampler step, bytes it must move (z, cond and uncond v in; z and x0 out)
//!   per second;
//! - `stage_step`: one denoising step of each shipped stage on the GPU (f32, f16) and the CPU;
//! - `generate`: the shipped cascade end to end, GPU and CPU;
//! - `scaling`: random-weight stages at growing sizes up to Imagen Video's, step time and memory.
//!
//! `cargo bench --bench gpu -- cpu-scaling` runs the scaling rows on the CPU alone (no GPU, no
//! cuda feature needed): the largest sizes that fit on this machine's cores, stopping past
//! `VIDCASCADE_BENCH_CPU_LIMIT_S` (default 120) seconds a forward pass. Without a CUDA device
//! the GPU sections print "skipped: no CUDA device".

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::json;
use vidcascade_diffusion::step_batch;
use vidcascade_engine::stage::UNetVelocity;
use vidcascade_engine::{Compute, DiffusionStage, EmbeddedCascade, Precision};
use vidcascade_kernels::cpu::{Workload, configure_threads};
use vidcascade_kernels::flash::{FlashBias, flash_attention};
use vidcascade_kernels::sampler::{FusedSamplerStep, SampleSpec, Update};
use vidcascade_models::ModelRepository;
use vidcascade_models::repository::weights::expected_tensors;
use vidcascade_models::unet::{UNetInputs, VideoUNet, VideoUNetConfig};
use vidcascade_spec::GenerateRequest;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PROMPT: &str = "a red circle moving left on a black background";

/// One attention case: name, batch, heads, lq, lk, d, bias (`none`, `key`, `head`).
type AttentionCase = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    usize,
    &'static str,
);

const ATTENTION: [AttentionCase; 6] = [
    ("spatial 40x64 d64", 16, 8, 2560, 2560, 64, "none"),
    ("spatial 40x64 d128", 16, 4, 2560, 2560, 128, "none"),
    ("spatial 80x128 d64", 4, 8, 10240, 10240, 64, "none"),
    ("spatial 80x128 d128", 4, 4, 10240, 10240, 128, "none"),
    ("cross 40x64 x 77 tokens d64", 16, 8, 2560, 77, 64, "key"),
    (
        "temporal 16 frames at 40x64 d64",
        2560,
        8,
        16,
        16,
        64,
        "head",
    ),
];

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Median wall time of `runs` calls of `f` in milliseconds, the device drained around each.
fn time_ms(
    device: &Device,
    runs: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    f()?; // warm-up: module loading, allocator pools
    device.synchronize()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        device.synchronize()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(times))
}

/// Mean wall time of one of `calls` back-to-back calls of `f` in milliseconds, the device
/// drained once before and once after (GPU work queues up; a sync per call would time the
/// launch latency of small calls, not the kernel).
fn time_queued_ms(
    device: &Device,
    calls: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    f()?;
    device.synchronize()?;
    let start = Instant::now();
    for _ in 0..calls {
        f()?;
    }
    device.synchronize()?;
    Ok(start.elapsed().as_secs_f64() * 1e3 / calls as f64)
}

fn emit(value: serde_json::Value) {
    println!("{value}");
}

fn attention_bias(
    kind: &str,
    batch: usize,
    heads: usize,
    lq: usize,
    lk: usize,
    device: &Device,
) -> anyhow::Result<FlashBias> {
    Ok(match kind {
        "key" => FlashBias::KeyPadding(Tensor::zeros((batch, lk), DType::F32, device)?),
        "head" => FlashBias::PerHead(Tensor::randn(0f32, 1.0, (heads, lq, lk), device)?),
        _ => FlashBias::None,
    })
}

fn bench_attention(gpu: &Device) -> anyhow::Result<()> {
    for dtype in [DType::F16, DType::BF16] {
        for (name, batch, heads, lq, lk, d, bias) in ATTENTION {
            let q = Tensor::randn(0f32, 1.0, (batch, heads, lq, d), gpu)?.to_dtype(dtype)?;
            let k = Tensor::randn(0f32, 1.0, (batch, heads, lk, d), gpu)?.to_dtype(dtype)?;
            let v = Tensor::randn(0f32, 1.0, (batch, heads, lk, d), gpu)?.to_dtype(dtype)?;
            let bias = attention_bias(bias, batch, heads, lq, lk, gpu)?;
            let scale = 1.0 / (d as f32).sqrt();
            let ms = time_queued_ms(gpu, 20, || {
                flash_attention(&q, &k, &v, scale, bias.clone())?;
                Ok(())
            })?;
            let flop = 4.0 * (batch * heads * lq * lk * d) as f64;
            emit(
                json!({"kind": "attention", "name": name, "dtype": format!("{dtype:?}").to_lowercase(),
                "batch": batch, "heads": heads, "lq": lq, "lk": lk, "d": d, "ms": ms,
                "tflops": flop / ms / 1e9}),
            );
        }
    }
    Ok(())
}

fn bench_copy(gpu: &Device) -> anyhow::Result<()> {
    let elements = 256 << 20; // 1 GiB of f32
    let x = Tensor::zeros(elements, DType::F32, gpu)?;
    let ms = time_queued_ms(gpu, 20, || {
        x.copy()?;
        Ok(())
    })?;
    let bytes = 2.0 * 4.0 * elements as f64;
    emit(json!({"kind": "copy", "bytes": bytes, "ms": ms, "gbps": bytes / ms / 1e6}));
    Ok(())
}

/// The shipped repository (or `VIDCASCADE_BENCH_MODEL`).
fn shipped() -> PathBuf {
    std::env::var_os("VIDCASCADE_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/shapes"))
}

/// Median ms of one denoising step of every stage of `root` on `compute`.
fn stage_steps(root: &Path, compute: &Compute) -> anyhow::Result<Vec<(String, f64)>> {
    let repository = ModelRepository::open(root)?;
    let texts = repository
        .load_text_encoder(&compute.device)?
        .encode(&[PROMPT, ""])?;
    let mut previous: Option<Tensor> = None;
    let mut rows = Vec::new();
    for manifest in repository.manifest().diffusion_stages() {
        let stage = DiffusionStage::load_on(&repository, &manifest.name, compute)?;
        let (state, conditioning) =
            stage.prepare_defaults((&texts[0], &texts[1]), previous.as_ref(), 0)?;
        let model = UNetVelocity {
            unet: stage.unet(),
            samples: vec![&conditioning],
        };
        let ms = time_ms(&compute.device, 10, || {
            let mut s = state.clone();
            step_batch(&model, &mut [&mut s])?;
            Ok(())
        })?;
        rows.push((manifest.name.clone(), ms));
        previous = Some(state.latent().clamp(-1f32, 1f32)?.to_device(&Device::Cpu)?);
    }
    Ok(rows)
}

fn computes(gpu: &Device) -> Vec<Compute> {
    let on_gpu = |precision| Compute {
        device: gpu.clone(),
        precision,
    };
    vec![
        on_gpu(Precision::F16),
        on_gpu(Precision::F32),
        Compute::cpu(),
    ]
}

fn bench_stage_steps(gpu: &Device) -> anyhow::Result<()> {
    for compute in computes(gpu) {
        for (stage, ms) in stage_steps(&shipped(), &compute)? {
            emit(
                json!({"kind": "stage_step", "stage": stage, "device": compute.spec().to_string(),
                "dtype": compute.precision.to_string(), "ms": ms}),
            );
        }
    }
    Ok(())
}

fn bench_generate(gpu: &Device) -> anyhow::Result<()> {
    let request = GenerateRequest {
        prompt: PROMPT.into(),
        seed: Some(1),
        ..GenerateRequest::default()
    };
    for compute in computes(gpu) {
        let cascade = EmbeddedCascade::alone_on(ModelRepository::open(shipped())?, &compute)?;
        let ms = time_ms(&compute.device, 5, || {
            cascade.generate(&request, None, |_| std::ops::ControlFlow::Continue(()))?;
            Ok(())
        })?;
        emit(
            json!({"kind": "generate", "device": compute.spec().to_string(),
            "dtype": compute.precision.to_string(),
            "seconds": ms / 1e3}),
        );
    }
    Ok(())
}

/// A stage layout at a size: (label, shipped stage whose config it takes, frames, height, width).
type ScalingCase = (&'static str, &'static str, usize, usize, usize);

const SCALING: [ScalingCase; 8] = [
    ("base (shipped size)", "base", 8, 16, 16),
    ("base", "base", 16, 24, 40),
    ("base", "base", 16, 48, 80),
    ("ssr (shipped size)", "ssr", 16, 32, 32),
    ("ssr", "ssr", 32, 48, 80),
    ("ssr", "ssr", 32, 96, 160),
    ("ssr", "ssr", 32, 192, 320),
    ("ssr", "ssr", 64, 192, 320),
];

/// A U-Net of `config` with random weights in `dtype` on `device` (plain tensors: the
/// inference path).
fn random_unet(
    config: &VideoUNetConfig,
    dtype: DType,
    device: &Device,
) -> anyhow::Result<VideoUNet> {
    let mut weights = HashMap::new();
    for (name, shape) in expected_tensors(|vb| VideoUNet::new(vb, config))? {
        let t = Tensor::randn(0f32, 0.05, shape.as_slice(), device)?.to_dtype(dtype)?;
        weights.insert(name, t);
    }
    Ok(VideoUNet::new(
        VarBuilder::from_tensors(weights, dtype, device),
        config,
    )?)
}

/// One forward of a guided batch (cond + uncond rows) at `frames x h x w`, in ms.
fn scaling_step(
    config: &VideoUNetConfig,
    dtype: DType,
    device: &Device,
    (f, h, w): (usize, usize, usize),
    runs: usize,
) -> anyhow::Result<f64> {
    let unet = random_unet(config, dtype, device)?;
    let z = Tensor::randn(0f32, 1.0, (2, config.in_channels, f, h, w), device)?;
    let cond = config
        .is_super_resolution()
        .then(|| Tensor::randn(0f32, 1.0, (2, config.cond_channels, f, h, w), device))
        .transpose()?;
    let aug = config
        .is_super_resolution()
        .then(|| Tensor::new(&[0.1f32, 0.1], device))
        .transpose()?;
    let t = Tensor::new(&[0.5f32, 0.5], device)?;
    let context = Tensor::randn(0f32, 1.0, (2, 16, config.context_dim), device)?;
    let mask = Tensor::ones((2, 16), DType::F32, device)?;
    let inputs = UNetInputs {
        z: &z,
        t: &t,
        context: &context,
        context_mask: &mask,
        cond: cond.as_ref(),
        aug_level: aug.as_ref(),
        known_frames: None,
    };
    time_ms(device, runs, || {
        unet.forward(&inputs)?;
        Ok(())
    })
}

fn stage_config(stage: &str) -> anyhow::Result<VideoUNetConfig> {
    Ok(ModelRepository::open(shipped())?
        .unet_config(stage)?
        .clone())
}

/// Device memory in use (total - free: what the allocator holds, pools included), in bytes.
#[cfg(feature = "cuda")]
fn memory_in_use(device: &Device) -> anyhow::Result<Option<usize>> {
    let Device::Cuda(cuda) = device else {
        return Ok(None);
    };
    let (free, total) = cuda.cuda_stream().context().mem_get_info()?;
    Ok(Some(total - free))
}

#[cfg(not(feature = "cuda"))]
fn memory_in_use(_device: &Device) -> anyhow::Result<Option<usize>> {
    Ok(None)
}

fn bench_scaling(gpu: &Device) -> anyhow::Result<()> {
    for (label, stage, f, h, w) in SCALING {
        let config = stage_config(stage)?;
        let ms = scaling_step(&config, DType::F16, gpu, (f, h, w), 5)
            .with_context(|| format!("{label} {f}x{h}x{w}"))?;
        emit(
            json!({"kind": "scaling", "label": label, "stage": stage, "device": "cuda:0",
            "dtype": "f16", "frames": f, "height": h, "width": w, "ms": ms,
            "memory_bytes": memory_in_use(gpu)?}),
        );
    }
    Ok(())
}

/// This process's peak resident memory (`VmHWM`), in bytes: rows run smallest first, so it is
/// the peak of the largest row so far.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The scaling rows on the CPU in f32, smallest first, until a step takes longer than the limit.
fn cpu_scaling() -> anyhow::Result<()> {
    let threads = configure_threads(Workload::Inference);
    let limit_s: f64 = std::env::var("VIDCASCADE_BENCH_CPU_LIMIT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120.0);
    for (label, stage, f, h, w) in SCALING {
        let config = stage_config(stage)?;
        let ms = scaling_step(&config, DType::F32, &Device::Cpu, (f, h, w), 1)?;
        emit(
            json!({"kind": "scaling", "label": label, "stage": stage, "device": "cpu", "threads": threads,
            "dtype": "f32", "frames": f, "height": h, "width": w, "ms": ms,
            "peak_rss_bytes": peak_rss_bytes()}),
        );
        if ms / 1e3 > limit_s {
            break;
        }
    }
    Ok(())
}

fn print_attention_shapes() {
    for (name, batch, heads, lq, lk, d, bias) in ATTENTION {
        emit(
            json!({"name": name, "batch": batch, "heads": heads, "lq": lq, "lk": lk, "d": d, "bias": bias}),
        );
    }
}

fn main() -> anyhow::Result<()> {
    let command = std::env::args().nth(1).unwrap_or_default();
    match command.as_str() {
        "attention-shapes" => {
            print_attention_shapes();
            return Ok(());
        }
        "cpu-scaling" => return cpu_scaling(),
        _ => {}
    }
    configure_threads(Workload::Inference);
    let gpu = match Device::new_cuda(0) {
        Ok(gpu) => gpu,
        Err(err) => {
            println!("skipped: no CUDA device ({err})");
            return Ok(());
        }
    };
    let sections = std::env::var("VIDCASCADE_GPU_BENCH")
        .unwrap_or_else(|_| "attention,copy,sampler,stage,generate,scaling".into());
    for section in sections.split(',') {
        let started = Instant::now();
        match section {
            "attention" => bench_attention(&gpu)?,
            "copy" => bench_copy(&gpu)?,
            "sampler" => bench_sampler(&gpu)?,
            "stage" => bench_stage_steps(&gpu)?,
            "generate" => bench_generate(&gpu)?,
            "scaling" => bench_scaling(&gpu)?,
            other => anyhow::bail!("unknown section `{other}`"),
        }
        eprintln!("{section}: {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Sampler cases: (name, samples, elements per sample, thresholding, ancestral).
const SAMPLER: [(&str, usize, usize, bool, bool); 4] = [
    (
        "base 16x40x64, DDIM, thresholded",
        8,
        3 * 16 * 40 * 64,
        true,
        false,
    ),
    (
        "ssr 32x80x128, DDIM, thresholded",
        4,
        3 * 32 * 80 * 128,
        true,
        false,
    ),
    (
        "ssr 32x80x128, ancestral, thresholded",
        4,
        3 * 32 * 80 * 128,
        true,
        true,
    ),
    (
        "ssr 32x80x128, DDIM, no threshold",
        4,
        3 * 32 * 80 * 128,
        false,
        false,
    ),
];

/// The fused sampler step of guided samples (a cond and an uncond row each), in GB/s of the
/// bytes it must move: z and both v rows read, z and x0 written (the select's extra passes over
/// x0 are not counted, so this is what a caller gets out of the bandwidth).
fn bench_sampler(gpu: &Device) -> anyhow::Result<()> {
    for (name, samples, n, threshold, ancestral) in SAMPLER {
        let z = Tensor::randn(0f32, 1.0, (samples, n), gpu)?;
        let v_all = Tensor::randn(0f32, 1.0, (2 * samples, n), gpu)?;
        let flags = Tensor::zeros(samples, DType::U32, gpu)?;
        let update = if ancestral {
            Update::Ancestral {
                c_z: 0.4,
                c_x: 0.5,
                std: 0.3,
                seed: 7,
                stream: 0,
            }
        } else {
            Update::Ddim {
                alpha_s: 0.8,
                sigma_s: 0.6,
            }
        };
        let specs: Vec<SampleSpec> = (0..samples)
            .map(|i| SampleSpec {
                cond_row: i,
                uncond_row: Some(samples + i),
                guidance: 3.0,
                alpha_t: 0.6,
                sigma_t: 0.8,
                threshold_quantile: threshold.then_some(0.995),
                update,
                step: 2,
            })
            .collect();
        let step = FusedSamplerStep::new(specs);
        let ms = time_queued_ms(gpu, 20, || {
            step.forward(&z, &v_all, &flags)?;
            Ok(())
        })?;
        let bytes = 5.0 * 4.0 * (samples * n) as f64;
        emit(
            json!({"kind": "sampler", "name": name, "samples": samples, "elements": n,
            "ms": ms, "gbps": bytes / ms / 1e6}),
        );
    }
    Ok(())
}
