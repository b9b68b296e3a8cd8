//! Diagnostic (not part of training): can the base learn a motion word at all? Trains a copy of
//! the base on two scenes that differ only in the motion word, one fixed placement, at high noise,
//! and prints the t = 0.999 x0 centroid of frame 0 and the last frame for both captions.
//!
//! Knobs (environment): `MO_SCENES=all` trains on every training scene instead of the two,
//! `MO_PLACEMENT=random` draws placements, `MO_TLO` sets the lowest training time (0.9): with all
//! scenes the probe barely moves in 150 steps, which is how the weak real-training signal was found.
//!
//! `cargo run --release -p vidcascade-train --example motion_overfit -- <model_dir> <steps>`

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::SeedableRng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use vidcascade_diffusion::CosineSchedule;
use vidcascade_diffusion::noise::GaussianNoise;
use vidcascade_engine::stage::pad_embeddings;
use vidcascade_models::repository::ModelRepository;
use vidcascade_models::{UNetInputs, VideoUNet};
use vidcascade_shapes::render::{Placement, render_chw};
use vidcascade_shapes::world::{Colour, Motion, Scene, ShapeKind, training_scenes};

fn centroid_x(frame: &[Vec<f32>]) -> f32 {
    // Red channel above the blue background's -1.
    let (mut s, mut w) = (0f32, 0f32);
    for row in frame {
        for (x, v) in row.iter().enumerate() {
            let wt = (v + 0.5).max(0.0);
            s += wt * x as f32;
            w += wt;
        }
    }
    s / w.max(1e-6)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model = PathBuf::from(args.get(1).cloned().unwrap_or("models/shapes".into()));
    let steps: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(150);
    let dev = Device::Cpu;
    let repo = ModelRepository::open(&model)?;
    let encoder = repo.load_text_encoder(&dev)?;
    let config = repo.unet_config("base")?.clone();
    let stage = repo
        .manifest()
        .stage("base")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no base stage"))?;
    let out = stage
        .output
        .ok_or_else(|| anyhow::anyhow!("base has no output shape"))?;
    let mut varmap = VarMap::new();
    let unet = VideoUNet::new(VarBuilder::from_varmap(&varmap, DType::F32, &dev), &config)?;
    varmap.load(repo.stage_dir(&stage).join("model.safetensors"))?;
    let probe_scenes: Vec<Scene> = [Motion::Left, Motion::Right]
        .into_iter()
        .map(|motion| Scene {
            colour: Colour::Red,
            shape: ShapeKind::Circle,
            motion,
            background: Colour::Blue,
        })
        .collect();
    // Knobs: MO_SCENES=all trains on every training scene (default: the two probe scenes),
    // MO_PLACEMENT=random draws placements (default: fixed), MO_TLO is the lowest training time.
    let knob = |name: &str| std::env::var(name).ok();
    let pool: Vec<Scene> = if knob("MO_SCENES").as_deref() == Some("all") {
        training_scenes()
    } else {
        probe_scenes.clone()
    };
    let random_placement = knob("MO_PLACEMENT").as_deref() == Some("random");
    let t_lo: f32 = knob("MO_TLO")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(0.9);
    let probe_captions: Vec<String> = probe_scenes.iter().map(|s| s.caption()).collect();
    let probe_refs: Vec<&str> = probe_captions.iter().map(String::as_str).collect();
    let probe_texts = encoder.encode(&probe_refs)?;
    let probe_trefs: Vec<&Tensor> = probe_texts.iter().collect();
    let (ctx, mask) = pad_embeddings(&probe_trefs)?;
    let b = 8;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let draw_batch = |rng: &mut ChaCha8Rng| -> anyhow::Result<(Tensor, Tensor, Tensor)> {
        let mut clips = Vec::with_capacity(b);
        let mut texts = Vec::with_capacity(b);
        for _ in 0..b {
            let scene = *pool
                .choose(rng)
                .ok_or_else(|| anyhow::anyhow!("no scenes"))?;
            let placement = if random_placement {
                Placement::sample(rng)
            } else {
                Placement::CENTRED
            };
            clips.push(Tensor::from_vec(
                render_chw(&scene, &placement, out.frames, out.height, out.width),
                (3, out.frames, out.height, out.width),
                &dev,
            )?);
            texts.push(encoder.encode(&[scene.caption().as_str()])?.remove(0));
        }
        let trefs: Vec<&Tensor> = texts.iter().collect();
        let (c, m) = pad_embeddings(&trefs)?;
        Ok((Tensor::stack(&clips, 0)?, c, m))
    };
    let report = |unet: &VideoUNet, label: &str| -> anyhow::Result<()> {
        let z =
            GaussianNoise::new(3, 1).tensor(&[2, 3, out.frames, out.height, out.width], &dev)?;
        let (a, s) = CosineSchedule::default().alpha_sigma(0.999);
        let v = unet.forward(&UNetInputs {
            z: &z,
            t: &Tensor::full(0.999f32, 2, &dev)?,
            context: &ctx.narrow(0, 0, 2)?,
            context_mask: &mask.narrow(0, 0, 2)?,
            cond: None,
            aug_level: None,
            known_frames: None,
        })?;
        let x0 = ((&z * a)? - (&v * s)?)?;
        for (i, cap) in probe_captions.iter().enumerate() {
            let red = x0.get(i)?.get(0)?.to_vec3::<f32>()?;
            println!(
                "{label} `{cap}`: frame 0 x {:.1} -> last x {:.1}",
                centroid_x(&red[0]),
                centroid_x(&red[out.frames - 1])
            );
        }
        Ok(())
    };
    report(&unet, "before")?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 1e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    for step in 1..=steps {
        let times: Vec<f32> = (0..b)
            .map(|i| t_lo + (1.0 - t_lo) * ((step * 7 + i * 13) % 97) as f32 / 97.0)
            .collect();
        let (x, ctx, mask) = draw_batch(&mut rng)?;
        let eps = GaussianNoise::new(11, step as u64).tensor(x.dims(), &dev)?;
        let sched = CosineSchedule::default();
        let (al, si): (Vec<f32>, Vec<f32>) = times
            .iter()
            .map(|&t| {
                let (a, s) = sched.alpha_sigma(t as f64);
                (a as f32, s as f32)
            })
            .unzip();
        let a = Tensor::from_vec(al, (b, 1, 1, 1, 1), &dev)?;
        let s = Tensor::from_vec(si, (b, 1, 1, 1, 1), &dev)?;
        let z = (x.broadcast_mul(&a)? + eps.broadcast_mul(&s)?)?;
        let target = (eps.broadcast_mul(&a)? - x.broadcast_mul(&s)?)?;
        let v = unet.forward(&UNetInputs {
            z: &z,
            t: &Tensor::from_vec(times, b, &dev)?,
            context: &ctx,
            context_mask: &mask,
            cond: None,
            aug_level: None,
            known_frames: None,
        })?;
        let loss = (v - target)?.sqr()?.mean_all()?;
        opt.backward_step(&loss)?;
        if step % 25 == 0 {
            println!("step {step} loss {:.4}", loss.to_scalar::<f32>()?);
            report(&unet, &format!("step {step}"))?;
        }
    }
    Ok(())
}
