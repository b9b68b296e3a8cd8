//! `vidcascade generate`: the main job — a prompt in, a video file out, every stage in process
//! through the same pipeline the services run (embedded mode).

use std::ops::ControlFlow;

use vidcascade_engine::{Compute, EmbeddedCascade};
use vidcascade_media::{WriteOptions, write_png, write_video};
use vidcascade_pipeline::{Event, plan};
use vidcascade_spec::{GenerateRequest, Video};

use super::files::{filmstrip, preview_path, stage_file_name, stage_path, wrote_line};
use super::progress::Progress;
use super::story::{NewFrames, StorySoFar};
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
    let mut request = GenerateRequest {
        seed: Some(args.seed),
        overrides: args.sampling.overrides(&stages)?,
        preview_every: args.output.preview_every.unwrap_or(0) as u32,
        ..GenerateRequest::default()
    };
    args.story.apply(args.prompt.as_deref(), &mut request)?;
    plan(&request, repo.manifest(), args.seed)
        .map_err(|err| anyhow::anyhow!(super::in_flag_terms(&err.to_string())))?;

    let compute = Compute::open(args.compute.device, args.compute.dtype)?;
    let cascade = EmbeddedCascade::alone_on(repo, &compute)?;
    let mut writer = EventWriter::new(&args, !request.segments.is_empty());
    let output = cascade.generate(&request, None, |event| writer.see(event));
    if let Some(e) = writer.error {
        return Err(e);
    }
    let output = output?;
    let video = &output.final_video;
    write_video(video, &args.output.output, &writer.options)?;
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

/// Shows progress and writes previews and stage videos as the run's events arrive; the first
/// write that fails stops the run.
struct EventWriter<'a> {
    args: &'a GenerateArgs,
    options: WriteOptions,
    progress: Progress,
    stage_index: usize,
    /// A story's frames so far (`None` for a single prompt).
    story: Option<StorySoFar>,
    error: Option<anyhow::Error>,
}

impl<'a> EventWriter<'a> {
    fn new(args: &'a GenerateArgs, is_story: bool) -> Self {
        Self {
            args,
            options: WriteOptions {
                scale: args.output.scale,
            },
            progress: Progress::new(),
            stage_index: 0,
            story: is_story.then(StorySoFar::default),
            error: None,
        }
    }

    fn see(&mut self, event: &Event) -> ControlFlow<()> {
        match self.write(event) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
        }
    }

    fn write(&mut self, event: &Event) -> anyhow::Result<()> {
        let output = &self.args.output;
        match event {
            Event::StageStarted {
                stage,
                output_shape: Some(shape),
                total_steps,
                ..
            } => self
                .progress
                .stage_started(stage, &shape.to_string(), *total_steps),
            Event::Progress {
                stage,
                step,
                total_steps,
                ..
            } => self.progress.step(stage, *step, *total_steps),
            Event::Preview { video, .. } => {
                let (w, h, rgb) = filmstrip(video, output.scale);
                write_png(&preview_path(&output.output), w, h, &rgb)?;
            }
            Event::StageCompleted {
                stage,
                clip,
                video: Some(video),
                elapsed,
            } => {
                self.progress.stage_completed(stage, *elapsed);
                self.stage_index += 1;
                self.save_stage(&stage_file_name(stage, *clip), video)?;
            }
            Event::ClipCompleted {
                clip,
                segment,
                ends_segment,
                first_frame,
                video,
            } => {
                if let Some(story) = &mut self.story {
                    let new = NewFrames {
                        clip: *clip,
                        segment: *segment,
                        ends_segment: *ends_segment,
                        first_frame: *first_frame,
                        video: video.clone(),
                    };
                    story.add(new, &output.output, &self.options)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn save_stage(&self, stage: &str, video: &Video) -> anyhow::Result<()> {
        let output = &self.args.output;
        if let Some(dir) = &output.save_stages {
            let path = stage_path(dir, self.stage_index, stage, &output.output);
            write_video(video, &path, &self.options)?;
        }
        Ok(())
    }
}
