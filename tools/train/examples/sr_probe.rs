//! Diagnostic probe for the SR stages (not part of training): one-shot x0 estimates on
//! ground-truth clips at fixed noise levels, full frames vs training-sized windows, EMA vs raw
//! weights, plus full sampling runs with ground-truth conditioning.
//!
//! `cargo run --release -p vidcascade-train --example sr_probe [model_dir] [run_dir]`

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use vidcascade_diffusion::CosineSchedule;
use vidcascade_diffusion::noise::GaussianNoise;
use vidcascade_engine::stage::{DiffusionStage, augment, pad_embeddings};
use vidcascade_engine::video::resample;
use vidcascade_engine::{EngineConfig, StageEngine, StageJob};
use vidcascade_models::repository::ModelRepository;
use vidcascade_models::{UNetInputs, VideoUNet};
use vidcascade_shapes::render::{Placement, render_chw};
use vidcascade_shapes::world::{Scene, training_scenes};
use vidcascade_spec::StageOverrides;

fn psnr(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
    let a = a.clamp(-1f32, 1f32)?;
    let mse = (a - b)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
    Ok(10.0 * (4.0 / mse.max(1e-12)).log10())
}

/// Mean of per-clip PSNRs.
fn mean_psnr(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
    let n = a.dim(0)?;
    let mut s = 0.0;
    for i in 0..n {
        s += psnr(&a.get(i)?, &b.get(i)?)?;
    }
    Ok(s / n as f64)
}

struct Clips {
    hi: Tensor,   // [B, 3, F, H, W]
    cond: Tensor, // resampled clean low-res [B, 3, F, H, W]
    ctx: Tensor,
    mask: Tensor,
}

fn load_unet(
    config: &vidcascade_models::unet::VideoUNetConfig,
    file: &PathBuf,
    dev: &Device,
) -> anyhow::Result<VideoUNet> {
    let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(file, dev)?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, dev);
    Ok(VideoUNet::new(vb, config)?)
}

fn crop(
    x: &Tensor,
    f0: usize,
    f: usize,
    y0: usize,
    x0: usize,
    side: usize,
) -> anyhow::Result<Tensor> {
    Ok(x.narrow(2, f0, f)?
        .narrow(3, y0, side)?
        .narrow(4, x0, side)?
        .contiguous()?)
}

/// One forward pass at time t (same t for every clip), returns the x0 estimate.
fn x0_estimate(
    unet: &VideoUNet,
    clips: &Clips,
    cond: &Tensor,
    hi: &Tensor,
    t: f64,
    aug: f64,
    seed: u64,
) -> anyhow::Result<(Tensor, Tensor)> {
    let dev = hi.device();
    let b = hi.dim(0)?;
    let (a, s) = CosineSchedule::default().alpha_sigma(t);
    let eps = GaussianNoise::new(seed, 7).tensor(hi.dims(), dev)?;
    let z = ((hi * a)? + (&eps * s)?)?;
    let tt = Tensor::full(t as f32, b, dev)?;
    let aa = Tensor::full(aug as f32, b, dev)?;
    let cond = if aug > 0.0 {
        let mut v = Vec::new();
        for i in 0..b {
            v.push(augment(&cond.get(i)?, aug, seed + i as u64)?);
        }
        Tensor::stack(&v, 0)?
    } else {
        cond.clone()
    };
    let inputs = UNetInputs {
        z: &z,
        t: &tt,
        context: &clips.ctx,
        context_mask: &clips.mask,
        cond: Some(&cond),
        aug_level: Some(&aa),
        known_frames: None,
    };
    let v = unet.forward(&inputs)?;
    let x0 = ((&z * a)? - (v * s)?)?;
    Ok((x0, z))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model_dir = PathBuf::from(args.get(1).cloned().unwrap_or("models/shapes".into()));
    let run_dir = PathBuf::from(args.get(2).cloned().unwrap_or("train-runs".into()));
    let only: Option<String> = std::env::var("PROBE_STAGE").ok();
    let do_sample = std::env::var("PROBE_SAMPLE").is_ok();
    let dev = Device::Cpu;
    let repo = ModelRepository::open(&model_dir)?;
    let encoder = repo.load_text_encoder(&dev)?;

    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let scenes = training_scenes();
    let n_clips = 6;
    let picked: Vec<(Scene, Placement)> = (0..n_clips)
        .map(|i| {
            let sc = scenes[(i * 97 + 13) % scenes.len()];
            (sc, Placement::sample(&mut rng))
        })
        .collect();

    for stage_name in ["tsr", "ssr"] {
        if let Some(o) = &only
            && o != stage_name
        {
            continue;
        }
        let stage = repo
            .manifest()
            .stage(stage_name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no stage {stage_name}"))?;
        let (Some(out), Some(inp)) = (stage.output, stage.input) else {
            anyhow::bail!("{stage_name} is not a super-resolution stage");
        };
        let config = repo.unet_config(stage_name)?.clone();

        let mut his = Vec::new();
        let mut conds = Vec::new();
        let mut caps = Vec::new();
        for (sc, pl) in &picked {
            let hi = Tensor::from_vec(
                render_chw(sc, pl, out.frames, out.height, out.width),
                (3, out.frames, out.height, out.width),
                &dev,
            )?;
            let lo = Tensor::from_vec(
                render_chw(sc, pl, inp.frames, inp.height, inp.width),
                (3, inp.frames, inp.height, inp.width),
                &dev,
            )?;
            his.push(hi);
            conds.push(resample(&lo, out.frames, out.height, out.width)?);
            caps.push(sc.caption());
        }
        let refs: Vec<&str> = caps.iter().map(String::as_str).collect();
        let texts = encoder.encode(&refs)?;
        let trefs: Vec<&Tensor> = texts.iter().collect();
        let (ctx, mask) = pad_embeddings(&trefs)?;
        let clips = Clips {
            hi: Tensor::stack(&his, 0)?,
            cond: Tensor::stack(&conds, 0)?,
            ctx,
            mask,
        };
        println!(
            "\n=== {stage_name}: {} clips {}x{}x{}; PSNR(upsampled cond, target) = {:.2} dB",
            n_clips,
            out.frames,
            out.height,
            out.width,
            mean_psnr(&clips.cond, &clips.hi)?
        );

        if std::env::var("PROBE_ABLATE").is_ok() {
            let unet = load_unet(
                &config,
                &repo.stage_dir(&stage).join("model.safetensors"),
                &dev,
            )?;
            let zeros = clips.cond.zeros_like()?;
            let shuffled = Tensor::cat(
                &[
                    clips.cond.narrow(0, 1, n_clips - 1)?,
                    clips.cond.narrow(0, 0, 1)?,
                ],
                0,
            )?;
            println!(
                "   t   | x0 true cond | x0 zero cond | x0 shuffled cond | copy-z baseline z/alpha | err~eps coef | corr(err,eps)"
            );
            for &t in &[0.05, 0.1, 0.3, 0.5, 0.8] {
                let (a, s) = CosineSchedule::default().alpha_sigma(t);
                let eps = GaussianNoise::new(11, 7).tensor(clips.hi.dims(), &dev)?;
                let (x0, z) = x0_estimate(&unet, &clips, &clips.cond, &clips.hi, t, 0.0, 11)?;
                let (x0z, _) = x0_estimate(&unet, &clips, &zeros, &clips.hi, t, 0.0, 11)?;
                let (x0s, _) = x0_estimate(&unet, &clips, &shuffled, &clips.hi, t, 0.0, 11)?;
                let err = (&x0 - &clips.hi)?;
                let dot = (&err * &eps)?.sum_all()?.to_scalar::<f32>()? as f64;
                let ee = eps.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
                let rr = err.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
                println!(
                    "  {t:.2} | {:10.2}   | {:10.2}   | {:10.2}       | {:10.2}              | {:8.4}     | {:6.3}",
                    mean_psnr(&x0, &clips.hi)?,
                    mean_psnr(&x0z, &clips.hi)?,
                    mean_psnr(&x0s, &clips.hi)?,
                    mean_psnr(&(&z / a)?, &clips.hi)?,
                    dot / ee,
                    dot / (ee * rr).sqrt()
                );
                let _ = s;
                if std::env::var("PROBE_DUMP").is_ok() {
                    for (name, tensor) in [
                        ("x0", &x0),
                        ("hi", &clips.hi),
                        ("cond", &clips.cond),
                        ("z", &z),
                    ] {
                        let v = tensor.flatten_all()?.to_vec1::<f32>()?;
                        let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                        std::fs::write(
                            format!("/tmp/probe_{stage_name}_{name}_t{t:.2}.f32"),
                            bytes,
                        )?;
                    }
                }
            }
            continue;
        }
        let ema_file = repo.stage_dir(&stage).join("model.safetensors");
        let raw_file = run_dir.join(stage_name).join("raw.safetensors");
        let mut weights = vec![("ema", ema_file)];
        if raw_file.exists() && std::env::var("PROBE_RAW").is_ok() {
            weights.push(("raw", raw_file));
        }
        // Training window: 8 frames, 16x16, at offsets multiple of the up-sampling factor.
        let (wf, wside) = (8usize.min(out.frames), 16usize.min(out.height));
        let (f0, y0) = (
            (out.frames - wf) / 2 / 2 * 2,
            (out.height - wside) / 2 / 2 * 2,
        );
        for (wname, file) in &weights {
            let unet = load_unet(&config, file, &dev)?;
            println!(
                "--- weights {wname}  (window: frames {f0}..{}, y/x {y0}..{})",
                f0 + wf,
                y0 + wside
            );
            println!(
                "   t     aug | PSNR noisy z | x0 full | x0 full on window | x0 window-run | x0=cond (same window)"
            );
            for &aug in &[0.0, 0.15] {
                for &t in &[0.1, 0.5] {
                    let (x0, z) = x0_estimate(&unet, &clips, &clips.cond, &clips.hi, t, aug, 11)?;
                    let full = mean_psnr(&x0, &clips.hi)?;
                    let noisy = mean_psnr(&z, &clips.hi)?;
                    let full_w = mean_psnr(
                        &crop(&x0, f0, wf, y0, y0, wside)?,
                        &crop(&clips.hi, f0, wf, y0, y0, wside)?,
                    )?;
                    // Same noise, same content, but the network only sees the window.
                    let wclips = Clips {
                        hi: crop(&clips.hi, f0, wf, y0, y0, wside)?,
                        cond: crop(&clips.cond, f0, wf, y0, y0, wside)?,
                        ctx: clips.ctx.clone(),
                        mask: clips.mask.clone(),
                    };
                    let (a, s) = CosineSchedule::default().alpha_sigma(t);
                    let zw = crop(&z, f0, wf, y0, y0, wside)?;
                    let tt = Tensor::full(t as f32, n_clips, &dev)?;
                    let aa = Tensor::full(aug as f32, n_clips, &dev)?;
                    let condw = if aug > 0.0 {
                        // reuse the augmented full conditioning cropped, to keep noise identical
                        let mut v = Vec::new();
                        for i in 0..n_clips {
                            v.push(augment(&clips.cond.get(i)?, aug, 11 + i as u64)?);
                        }
                        crop(&Tensor::stack(&v, 0)?, f0, wf, y0, y0, wside)?
                    } else {
                        wclips.cond.clone()
                    };
                    let vw = unet.forward(&UNetInputs {
                        z: &zw,
                        t: &tt,
                        context: &wclips.ctx,
                        context_mask: &wclips.mask,
                        cond: Some(&condw),
                        aug_level: Some(&aa),
                        known_frames: None,
                    })?;
                    let x0w = ((&zw * a)? - (vw * s)?)?;
                    let win = mean_psnr(&x0w, &wclips.hi)?;
                    let base = mean_psnr(&wclips.cond, &wclips.hi)?;
                    println!(
                        "  {t:.2}  {aug:.2} | {noisy:8.2}     | {full:7.2} | {full_w:7.2}           | {win:7.2}       | {base:7.2}"
                    );
                }
            }
            if do_sample {
                let ds = StageEngine::start(
                    DiffusionStage::new(stage.clone(), unet.clone(), dev.clone()),
                    EngineConfig::default(),
                );
                for &steps in &[12usize] {
                    for &aug in &[0.0] {
                        let mut settings = StageOverrides {
                            steps: Some(steps),
                            noise_augmentation: Some(aug),
                            ..Default::default()
                        }
                        .resolve(&stage, "sampler")?;
                        settings.noise_augmentation = aug;
                        let mut tot = 0.0;
                        let n = 3;
                        for i in 0..n {
                            let low = Tensor::from_vec(
                                render_chw(
                                    &picked[i].0,
                                    &picked[i].1,
                                    inp.frames,
                                    inp.height,
                                    inp.width,
                                ),
                                (3, inp.frames, inp.height, inp.width),
                                &dev,
                            )?;
                            let emb = texts[i].clone();
                            let unc = encoder.encode(&[""])?.remove(0);
                            let handle = ds.submit(StageJob {
                                text: emb,
                                unconditional: unc,
                                low_res: Some(low),
                                known: None,
                                seed: 5 + i as u64,
                                settings,
                                preview_every: 1,
                                deadline: None,
                                checkpoint_every: 0,
                                resume: None,
                            })?;
                            let x = handle.blocking_wait(|step, x0| {
                                if i == 0
                                    && let (Some(x0), Ok(hi)) = (x0, clips.hi.get(0))
                                    && let Ok(p) = psnr(x0, &hi)
                                {
                                    println!("    step {step} x0 PSNR {p:.2}");
                                }
                            })?;
                            tot += psnr(&x, &clips.hi.get(i)?)?;
                        }
                        println!(
                            "  sample {wname} steps {steps} aug {aug}: PSNR(output, target) = {:.2} dB (cond baseline {:.2})",
                            tot / n as f64,
                            mean_psnr(&clips.cond.narrow(0, 0, n)?, &clips.hi.narrow(0, 0, n)?)?
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
