//! `vidcascade generate`: the main job — a prompt in, a video file out, every stage in process.

use std::ops::ControlFlow;

use anyhow::Context;
use candle_core::Device;
use vidcascade_core::cascade::{Cascade, CascadeEvent, CascadeRequest};
use vidcascade_core::output::{WriteOptions, write_png, write_video};
use vidcascade_core::video::Video;

use super::files::{filmstrip, preview_path, stage_path, wrote_line};
use super::progress::Progress;
use super::{GenerateArgs, open_repository};

/// Runs `generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    // Check everything cheap before loading weights or computing anything.
    args.output.check()?;
    let repo = open_repository(&args.model.model)?;
    let stages: Vec<String> = repo
        .manifest()
        .diffusion_stages()
        .map(|s| s.name.clone())
        .collect();
    let request = CascadeRequest {
        prompt: args.prompt.clone(),
        seed: args.seed,
        overrides: args.sampling.overrides(&stages)?,
    };

    let cascade = Cascade::from_repository(repo, &Device::Cpu)?;
    cascade.validate(&request)?;
    let options = WriteOptions {
        scale: args.output.scale,
    };
    let preview = preview_path(&args.output.output);
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
                if let Some(every) = args.output.preview_every
                    && (step % every == 0 || step == total_steps)
                {
                    let written = Video::from_tensor(x0, 0.0)
                        .map_err(anyhow::Error::from)
                        .and_then(|v| {
                            let (w, h, rgb) = filmstrip(&v, args.output.scale);
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
                if let Some(dir) = &args.output.save_stages {
                    let path = stage_path(dir, stage_index, stage, &args.output.output);
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
    write_video(video, &args.output.output, &options)
        .with_context(|| format!("writing {}", args.output.output.display()))?;
    let total: f64 = output.encode_elapsed.as_secs_f64()
        + output
            .stages
            .iter()
            .map(|s| s.elapsed.as_secs_f64())
            .sum::<f64>();
    println!(
        "{}",
        wrote_line(&args.output.output, video, args.output.scale, total)
    );
    Ok(())
}
