//! `vidcascade generate`: the main job — a prompt in, a video file out, every stage in process.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Device;
use vidcascade_core::cascade::{Cascade, CascadeEvent, CascadeRequest};
use vidcascade_core::output::{OutputFormat, WriteOptions, write_png, write_video};
use vidcascade_core::stage::StageOverrides;
use vidcascade_core::video::Video;

use super::progress::Progress;
use super::{GenerateArgs, open_repository, per_stage};

/// Where stage videos go: `<dir>/<n>-<stage>.<ext of the main output>`.
fn stage_path(dir: &Path, index: usize, stage: &str, output: &Path) -> PathBuf {
    match output.extension() {
        Some(ext) => dir.join(format!("{index}-{stage}.{}", ext.to_string_lossy())),
        None => dir.join(format!("{index}-{stage}")),
    }
}

fn preview_path(output: &Path) -> PathBuf {
    let mut name = output
        .file_stem()
        .map(|s| s.to_os_string())
        .unwrap_or_else(|| "out".into());
    name.push(".preview.png");
    output.with_file_name(name)
}

/// Frames side by side in one image (a preview of a whole clip).
fn filmstrip(video: &Video, scale: usize) -> (usize, usize, Vec<u8>) {
    let (w, h) = (video.width * scale, video.height * scale);
    let width = w * video.frames.len();
    let mut rgb = vec![0u8; width * h * 3];
    for (i, frame) in video.frames.iter().enumerate() {
        for y in 0..h {
            for x in 0..w {
                let src = ((y / scale) * video.width + x / scale) * 3;
                let dst = (y * width + i * w + x) * 3;
                rgb[dst..dst + 3].copy_from_slice(&frame[src..src + 3]);
            }
        }
    }
    (width, h, rgb)
}

/// Runs `generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    // Check everything cheap before loading weights or computing anything.
    OutputFormat::from_path(&args.output)?;
    if args.scale == 0 || args.scale > 64 {
        anyhow::bail!("--scale must be in 1..=64, got {}", args.scale);
    }
    if args.preview_every == Some(0) {
        anyhow::bail!("--preview-every must be at least 1");
    }
    let repo = open_repository(&args.model.model)?;
    let stages: Vec<String> = repo
        .manifest()
        .diffusion_stages()
        .map(|s| s.name.clone())
        .collect();
    let mut overrides: BTreeMap<String, StageOverrides> = BTreeMap::new();
    per_stage::<usize>("steps", &args.steps, &stages, &mut overrides, |o, v| {
        o.steps = Some(v)
    })?;
    per_stage::<f64>(
        "guidance",
        &args.guidance,
        &stages,
        &mut overrides,
        |o, v| o.guidance = Some(v),
    )?;
    if let Some(sampler) = args.sampler {
        for stage in &stages {
            overrides.entry(stage.clone()).or_default().sampler = Some(sampler.into());
        }
    }
    let request = CascadeRequest {
        prompt: args.prompt.clone(),
        seed: args.seed,
        overrides,
    };

    let cascade = Cascade::from_repository(repo, &Device::Cpu)?;
    cascade.validate(&request)?;
    let options = WriteOptions { scale: args.scale };
    let preview = preview_path(&args.output);
    let mut progress = Progress::new();
    let mut stage_index = 0;
    let mut write_error: Option<anyhow::Error> = None;

    let output = cascade.generate(&request, |event| {
        match event {
            CascadeEvent::StageStarted { stage, total_steps } => {
                let shape = stage.output.map(|s| s.to_string()).unwrap_or_default();
                progress.stage_started(&stage.name, &shape, total_steps);
            }
            CascadeEvent::Step {
                stage,
                step,
                total_steps,
                x0,
            } => {
                progress.step(stage, step, total_steps);
                if let Some(every) = args.preview_every
                    && (step % every == 0 || step == total_steps)
                {
                    let written = Video::from_tensor(x0, 0.0)
                        .map_err(anyhow::Error::from)
                        .and_then(|v| {
                            let (w, h, rgb) = filmstrip(&v, args.scale);
                            write_png(&preview, w, h, &rgb).map_err(anyhow::Error::from)
                        });
                    if let Err(e) = written {
                        write_error = Some(e);
                        return ControlFlow::Break(());
                    }
                }
            }
            CascadeEvent::StageCompleted {
                stage,
                video,
                elapsed,
            } => {
                progress.stage_completed(stage, elapsed);
                stage_index += 1;
                if let Some(dir) = &args.save_stages {
                    let path = stage_path(dir, stage_index, stage, &args.output);
                    if let Err(e) = write_video(video, &path, &options) {
                        write_error = Some(e.into());
                        return ControlFlow::Break(());
                    }
                }
            }
        }
        ControlFlow::Continue(())
    });
    if let Some(e) = write_error {
        return Err(e);
    }
    let output = output?;
    let video = output.final_video();
    write_video(video, &args.output, &options)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let total: f64 = output.encode_elapsed.as_secs_f64()
        + output
            .stages
            .iter()
            .map(|s| s.elapsed.as_secs_f64())
            .sum::<f64>();
    println!(
        "wrote {} ({} frames, {}x{} @ {} fps, shown at {}x) in {:.1} s",
        args.output.display(),
        video.frames.len(),
        video.width,
        video.height,
        video.fps,
        args.scale,
        total
    );
    Ok(())
}
