//! Diagnostic probe for the base stage's use of the text (not part of training): the v-loss of
//! one set of ground-truth clips with their true captions, shuffled captions and the empty prompt
//! at fixed times, and the background colour of the one-shot x0 estimate at high noise.
//!
//! `cargo run --release -p vidcascade-train --example text_probe [model_dir] [weights]`

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use vidcascade_diffusion::CosineSchedule;
use vidcascade_diffusion::noise::GaussianNoise;
use vidcascade_engine::stage::{DiffusionStage, pad_embeddings};
use vidcascade_engine::{EngineConfig, StageEngine, StageJob};
use vidcascade_models::repository::ModelRepository;
use vidcascade_models::{TextEncoder, UNetInputs, VideoUNet};
use vidcascade_shapes::render::{Placement, render_chw};
use vidcascade_shapes::world::{Scene, held_out_scenes, training_scenes};
use vidcascade_spec::StageOverrides;

fn context(encoder: &TextEncoder, captions: &[String]) -> anyhow::Result<(Tensor, Tensor)> {
    let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
    let texts = encoder.encode(&refs)?;
    let trefs: Vec<&Tensor> = texts.iter().collect();
    Ok(pad_embeddings(&trefs)?)
}

/// Mean colour of the one-pixel border of every frame, per clip: `[B, 3]`.
fn border_colour(x: &Tensor) -> anyhow::Result<Vec<[f32; 3]>> {
    let (b, _, f, h, w) = x.dims5()?;
    let mut out = Vec::new();
    for i in 0..b {
        let clip = x.get(i)?; // [3, F, H, W]
        let mut c = [0f32; 3];
        for (ch, slot) in c.iter_mut().enumerate() {
            let plane = clip.get(ch)?.to_vec3::<f32>()?;
            let mut s = 0f32;
            let mut n = 0f32;
            for frame in plane.iter().take(f) {
                for (y, row) in frame.iter().enumerate().take(h) {
                    for (xx, v) in row.iter().enumerate().take(w) {
                        if y == 0 || y == h - 1 || xx == 0 || xx == w - 1 {
                            s += v;
                            n += 1.0;
                        }
                    }
                }
            }
            *slot = s / n;
        }
        out.push(c);
    }
    Ok(out)
}

/// Per frame, the centroid of each pixel's distance from `background`, `[3, F, H, W]` in.
fn centroid_track(x0: &Tensor, background: [f32; 3]) -> anyhow::Result<Vec<(f32, f32)>> {
    let (_, f, h, w) = x0.dims4()?;
    let bg = Tensor::new(&background, x0.device())?.reshape((3, 1, 1, 1))?;
    let weight = x0.broadcast_sub(&bg)?.abs()?.sum(0)?.to_vec3::<f32>()?;
    Ok((0..f)
        .map(|k| {
            let (mut sx, mut sy, mut sw) = (0f32, 0f32, 0f32);
            for (y, row) in weight[k].iter().enumerate().take(h) {
                for (x, wt) in row.iter().enumerate().take(w) {
                    // Only pixels clearly off the background count.
                    let wt = (wt - 1.0).max(0.0);
                    sx += wt * x as f32;
                    sy += wt * y as f32;
                    sw += wt;
                }
            }
            (sx / sw.max(1e-6), sy / sw.max(1e-6))
        })
        .collect())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model_dir = PathBuf::from(args.get(1).cloned().unwrap_or("models/shapes".into()));
    let dev = Device::Cpu;
    let repo = ModelRepository::open(&model_dir)?;
    let encoder = repo.load_text_encoder(&dev)?;
    let stage = repo
        .manifest()
        .stage("base")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no base stage"))?;
    let out = stage.output.ok_or_else(|| anyhow::anyhow!("no output"))?;
    let weights = args
        .get(2)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.stage_dir(&stage).join("model.safetensors"));
    let config = repo.unet_config("base")?.clone();
    let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&weights, &dev)?;
    let unet = VideoUNet::new(VarBuilder::from_tensors(tensors, DType::F32, &dev), &config)?;

    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let scenes = training_scenes();
    let n = 16;
    let picked: Vec<(Scene, Placement)> = (0..n)
        .map(|i| {
            (
                scenes[(i * 97 + 13) % scenes.len()],
                Placement::sample(&mut rng),
            )
        })
        .collect();
    let clips: Vec<Tensor> = picked
        .iter()
        .map(|(sc, pl)| {
            Tensor::from_vec(
                render_chw(sc, pl, out.frames, out.height, out.width),
                (3, out.frames, out.height, out.width),
                &dev,
            )
        })
        .collect::<Result<_, _>>()?;
    let x = Tensor::stack(&clips, 0)?;
    let truth: Vec<String> = picked.iter().map(|(s, _)| s.caption()).collect();
    let mut shuffled = truth.clone();
    shuffled.rotate_left(5);
    let empty = vec![String::new(); n];
    // The true caption with the opposite motion word.
    let reversed: Vec<String> = truth
        .iter()
        .map(|c| {
            let swaps = [
                ("moving left", "moving right"),
                ("moving right", "moving left"),
                ("moving up", "moving down"),
                ("moving down", "moving up"),
            ];
            swaps
                .iter()
                .find(|(from, _)| c.contains(from))
                .map(|(from, to)| c.replace(from, to))
                .unwrap_or_else(|| c.clone())
        })
        .collect();
    let variants = [
        ("true", context(&encoder, &truth)?),
        ("shuffled", context(&encoder, &shuffled)?),
        ("empty", context(&encoder, &empty)?),
        ("reversed", context(&encoder, &reversed)?),
    ];
    let true_bg = border_colour(&x)?;
    {
        // Reference: the x0 error of predicting the background everywhere, per frame.
        let bg = Tensor::from_vec(
            true_bg
                .iter()
                .flat_map(|c| c.iter().copied())
                .collect::<Vec<f32>>(),
            (n, 3, 1, 1, 1),
            &dev,
        )?;
        let err = x.broadcast_sub(&bg)?.sqr()?;
        let per_frame: Vec<f32> = (0..out.frames)
            .map(|k| -> anyhow::Result<f32> {
                Ok(err.narrow(2, k, 1)?.mean_all()?.to_scalar::<f32>()?)
            })
            .collect::<Result<_, _>>()?;
        println!(
            "background-only x0 MSE: {:.4} (per frame {:?})",
            err.mean_all()?.to_scalar::<f32>()?,
            per_frame
        );
    }

    let only_centroids = std::env::var("PROBE_CENTROIDS").is_ok();
    {
        // How far apart the encoder puts captions that differ in one word.
        let base_caption = "a red circle moving left on a blue background";
        let a = encoder.encode(&[base_caption])?.remove(0);
        let pooled = |t: &Tensor| -> anyhow::Result<Tensor> { Ok(t.mean(0)?) };
        let norm = |t: &Tensor| -> anyhow::Result<f32> {
            Ok(t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?)
        };
        println!(
            "text: tokens {:?}, |pooled| {:.3}, |tokens| {:.3}",
            a.dims(),
            norm(&pooled(&a)?)?,
            norm(&a)?
        );
        for other in [
            "a red circle moving right on a blue background",
            "a red circle moving up on a blue background",
            "a green circle moving left on a blue background",
            "a red circle moving left on a white background",
            "a red square moving left on a blue background",
        ] {
            let b = encoder.encode(&[other])?.remove(0);
            println!(
                "  vs `{other}`: |pooled diff| {:.4}, |token diff| {:.4}",
                norm(&(pooled(&a)? - pooled(&b)?)?)?,
                norm(&(&a - &b)?)?
            );
        }
    }
    for (i, (sc, _)) in picked.iter().enumerate().take(4) {
        let bg = sc.background.rgb().map(|v| v as f32 / 127.5 - 1.0);
        let track = centroid_track(&x.get(i)?, bg)?;
        println!(
            "  truth `{}`: frame 0 ({:.1}, {:.1}) -> last ({:.1}, {:.1})",
            sc.caption(),
            track[0].0,
            track[0].1,
            track[track.len() - 1].0,
            track[track.len() - 1].1
        );
    }
    println!("v-MSE per caption variant (16 clips, same noise):");
    println!(
        "   t   | true    | shuffled | empty   | reversed motion | x0 border err true | shuffled | empty"
    );
    let times: &[f64] = if only_centroids {
        &[]
    } else {
        &[0.2, 0.5, 0.8, 0.95, 0.999]
    };
    for &t in times {
        let (a, s) = CosineSchedule::default().alpha_sigma(t);
        let eps = GaussianNoise::new(7, 3).tensor(x.dims(), &dev)?;
        let z = ((&x * a)? + (&eps * s)?)?;
        let v_target = ((&eps * a)? - (&x * s)?)?;
        let tt = Tensor::full(t as f32, n, &dev)?;
        let mut losses = Vec::new();
        let mut border_errs = Vec::new();
        for (_, (ctx, mask)) in &variants {
            let v = unet.forward(&UNetInputs {
                z: &z,
                t: &tt,
                context: ctx,
                context_mask: mask,
                cond: None,
                aug_level: None,
                known_frames: None,
            })?;
            losses.push((&v - &v_target)?.sqr()?.mean_all()?.to_scalar::<f32>()?);
            let x0 = ((&z * a)? - (&v * s)?)?;
            let bg = border_colour(&x0)?;
            let err: f32 = bg
                .iter()
                .zip(&true_bg)
                .map(|(p, q)| (0..3).map(|c| (p[c] - q[c]).abs()).sum::<f32>() / 3.0)
                .sum::<f32>()
                / n as f32;
            border_errs.push(err);
        }
        println!(
            "  {t:.3} | {:.5} | {:.5}  | {:.5} | {:.5}         | {:.3}              | {:.3}    | {:.3}",
            losses[0],
            losses[1],
            losses[2],
            losses[3],
            border_errs[0],
            border_errs[1],
            border_errs[2]
        );
    }

    // The conditional mean at t ~ 1 (x0 from pure noise): does it move the right way?
    println!("\ncentroid (x, y) of the t=0.999 x0 estimate, first -> last frame, per caption:");
    for motion in ["left", "right", "up", "down"] {
        let caption = format!("a red circle moving {motion} on a blue background");
        let (ctx, mask) = context(&encoder, std::slice::from_ref(&caption))?;
        let shape = [1, 3, out.frames, out.height, out.width];
        let z = GaussianNoise::new(3, 1).tensor(&shape, &dev)?;
        let (a, s) = CosineSchedule::default().alpha_sigma(0.999);
        let v = unet.forward(&UNetInputs {
            z: &z,
            t: &Tensor::full(0.999f32, 1, &dev)?,
            context: &ctx,
            context_mask: &mask,
            cond: None,
            aug_level: None,
            known_frames: None,
        })?;
        let x0 = ((&z * a)? - (&v * s)?)?.get(0)?;
        let track = centroid_track(&x0, [-1.0, -1.0, 1.0])?;
        if std::env::var("PROBE_MAPS").is_ok() {
            let red = x0.get(0)?.to_vec3::<f32>()?;
            for k in [0, out.frames - 1] {
                println!("  {motion} frame {k}, red channel x0 (0-9 = -1..1):");
                for row in &red[k] {
                    let line: String = row
                        .iter()
                        .map(|v| char::from(b'0' + ((v + 1.0) * 4.5).clamp(0.0, 9.0) as u8))
                        .collect();
                    println!("    {line}");
                }
            }
        }
        println!(
            "  {motion:5}: {}",
            track
                .iter()
                .map(|(x, y)| format!("({x:4.1},{y:4.1})"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }

    if only_centroids || std::env::var("PROBE_NO_SAMPLING").is_ok() {
        return Ok(());
    }
    // Full sampling runs through the serving stage, border colour error vs the caption's background.
    let base = DiffusionStage::load(&repo, "base", &dev)?;
    let uncond = encoder.encode(&[""])?.remove(0);
    let held = held_out_scenes();
    println!("\nsampled border error (mean abs, [-1,1] units) and gray fraction:");
    for (label, guidance, quantile) in [
        ("w=3 thr", 3.0, Some(0.995)),
        ("w=1 thr", 1.0, Some(0.995)),
        ("w=3 none", 3.0, None),
        ("w=1 none", 1.0, None),
    ] {
        for (set, list) in [("train", &scenes), ("held", &held)] {
            let mut err = 0f32;
            let mut gray = 0usize;
            let runs = 8;
            for i in 0..runs {
                let sc = list[(i * 37 + 5) % list.len()];
                let text = encoder.encode(&[sc.caption().as_str()])?.remove(0);
                let overrides = StageOverrides {
                    guidance: Some(guidance),
                    threshold_quantile: quantile,
                    ..Default::default()
                };
                let mut settings = overrides.resolve(base.manifest(), "sampler")?;
                if quantile.is_none() {
                    settings.threshold_quantile = None;
                }
                let engine = StageEngine::start(base.clone(), EngineConfig::default());
                let video = engine
                    .submit(StageJob {
                        text: text.clone(),
                        unconditional: uncond.clone(),
                        low_res: None,
                        known: None,
                        seed: i as u64 + 1,
                        settings,
                        preview_every: 0,
                        deadline: None,
                        checkpoint_every: 0,
                        resume: None,
                    })?
                    .blocking_wait(|_, _| {})?;
                engine.shutdown();
                let got = border_colour(&video.unsqueeze(0)?)?[0];
                let want = sc.background.rgb().map(|v| v as f32 / 127.5 - 1.0);
                err += (0..3).map(|c| (got[c] - want[c]).abs()).sum::<f32>() / 3.0;
                if got.iter().all(|v| v.abs() < 0.35) {
                    gray += 1;
                }
                if i < 2 {
                    println!("    {label} {set} `{}` border {:?}", sc.caption(), got);
                }
            }
            println!(
                "  {label} {set}: err {:.3} gray {gray}/{runs}",
                err / runs as f32
            );
        }
    }
    Ok(())
}
