//! `vidcascade-eval`: measures a cascade on the held-out prompts of the shapes world.
//!
//! ```text
//! vidcascade-eval --model models/shapes --out docs/eval
//! ```
//! Writes `report.json` (every prompt and the summary), `report.md` (the table) and
//! `contact-sheet.png` (one row per prompt, final frames across). For a cascade whose stages
//! take context frames it also runs image-to-video and continuation on the same prompts
//! (`context.json`, appended to `report.md`, `context-sheet.png`: image-to-video rows, then
//! the joined continuations). Then it tells `--stories` stories of `--story-segments` turning
//! segments each (`story.json`, appended to `report.md`, the first story as `story.gif`).

use std::path::PathBuf;

use anyhow::Context;
use candle_core::Device;
use clap::Parser;
use vidcascade_engine::EmbeddedCascade;
use vidcascade_eval::context_eval::{
    context_markdown, evaluate_continuation, evaluate_image_to_video, summarise_context,
};
use vidcascade_eval::story_eval::{
    evaluate_story, story_markdown, summarise_stories, turning_story,
};
use vidcascade_eval::{contact_sheet, evaluate, markdown, summarise};
use vidcascade_shapes::world::{Scene, held_out_scenes};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "Evaluate a cascade on held-out shapes-world prompts")]
struct Args {
    /// Model repository.
    #[arg(long, default_value = "models/shapes")]
    model: PathBuf,
    /// Output folder.
    #[arg(long, default_value = "docs/eval")]
    out: PathBuf,
    /// Seeds per prompt.
    #[arg(long, default_value_t = 2)]
    seeds: u64,
    /// Evaluate only the first N held-out prompts.
    #[arg(long)]
    limit: Option<usize>,
    /// Seeds per prompt for image-to-video and continuation (0 skips them).
    #[arg(long, default_value_t = 1)]
    context_seeds: u64,
    /// Stories to tell (0 skips them): the first held-out prompts, turning every segment.
    #[arg(long, default_value_t = 1)]
    stories: usize,
    /// Segments per story.
    #[arg(long, default_value_t = 10)]
    story_segments: usize,
}

fn main() -> anyhow::Result<()> {
    // Before any thread starts (see vidcascade_kernels::cpu::configure_threads).
    vidcascade_kernels::cpu::configure_threads(vidcascade_kernels::cpu::Workload::Inference);
    let args = Args::parse();
    let cascade = EmbeddedCascade::load(&args.model, &Device::Cpu)?;
    let mut scenes = held_out_scenes();
    if let Some(limit) = args.limit {
        scenes.truncate(limit);
    }
    let seeds: Vec<u64> = (0..args.seeds).collect();
    let mut finals = Vec::new();
    let results = evaluate(&cascade, &scenes, &seeds, |r, output| {
        println!(
            "{:<55} seed {} colour {} background {} shape {} motion {} ({:.1} s)",
            r.prompt, r.seed, r.colour_ok, r.background_ok, r.shape_ok, r.motion_ok, r.seconds
        );
        finals.push(output.final_video.clone());
    })?;
    let summary = summarise(&results);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let json = serde_json::json!({"model": args.model, "summary": summary, "results": results});
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    let mut table = markdown(&results, &summary);
    if args.context_seeds > 0 && takes_context(&cascade)? {
        table.push('\n');
        table.push_str(&evaluate_context(&cascade, &scenes, &args)?);
    }
    if args.stories > 0 {
        table.push('\n');
        table.push_str(&evaluate_stories(&cascade, &scenes, &args)?);
    }
    std::fs::write(args.out.join("report.md"), &table)?;
    let refs: Vec<&vidcascade_spec::Video> = finals.iter().collect();
    let (w, h, rgb) = contact_sheet(&refs, 3, 2);
    vidcascade_media::write_png(&args.out.join("contact-sheet.png"), w, h, &rgb)?;
    println!("{table}");
    println!(
        "wrote {}/report.json, report.md, contact-sheet.png",
        args.out.display()
    );
    Ok(())
}

/// Whether every diffusion stage of `cascade` takes context frames.
fn takes_context(cascade: &EmbeddedCascade) -> anyhow::Result<bool> {
    Ok(cascade
        .manifest()
        .diffusion_stages()
        .all(|s| s.max_context_frames > 0))
}

/// Image-to-video and continuation on `scenes`: writes `context.json` and `context-sheet.png`
/// and returns the markdown summary.
fn evaluate_context(
    cascade: &EmbeddedCascade,
    scenes: &[Scene],
    args: &Args,
) -> anyhow::Result<String> {
    let seeds: Vec<u64> = (0..args.context_seeds).map(|s| 100 + 2 * s).collect();
    let mut sheet = Vec::new();
    let images = evaluate_image_to_video(cascade, scenes, &seeds, |r, video| {
        println!(
            "image-to-video {:<55} seed {} frame-0 PSNR {:.1} dB colour {} background {} shape {} motion {}",
            r.prompt, r.seed, r.frame0_psnr, r.colour_ok, r.background_ok, r.shape_ok, r.motion_ok
        );
        sheet.push(video.clone());
    })?;
    let continuations = evaluate_continuation(cascade, scenes, &seeds, |r, video| {
        println!(
            "continuation {:<55} seed {} seam {:?} px in-clip {:?} px ratio {:?}",
            r.prompt, r.seed, r.seam_step, r.in_clip_step, r.seam_ratio
        );
        sheet.push(video.clone());
    })?;
    let summary = summarise_context(&images, &continuations);
    let json = serde_json::json!({"summary": summary, "image_to_video": images, "continuation": continuations});
    std::fs::write(
        args.out.join("context.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    let refs: Vec<&vidcascade_spec::Video> = sheet.iter().collect();
    let (w, h, rgb) = contact_sheet(&refs, 2, 2);
    vidcascade_media::write_png(&args.out.join("context-sheet.png"), w, h, &rgb)?;
    Ok(context_markdown(&summary))
}

/// `--stories` turning stories of the first `scenes`: writes `story.json` and the first story
/// as `story.gif`, and returns the markdown summary.
fn evaluate_stories(
    cascade: &EmbeddedCascade,
    scenes: &[Scene],
    args: &Args,
) -> anyhow::Result<String> {
    let mut stories = Vec::new();
    for (i, subject) in scenes.iter().cycle().take(args.stories).enumerate() {
        let story = turning_story(subject, args.story_segments);
        let (result, video) = evaluate_story(cascade, &story, 200 + i as u64)?;
        let followed = result.segments.iter().filter(|s| s.motion_ok).count();
        println!(
            "story {i}: {} segments ({followed} moving their way), {} frames ({:.1} s), seams {:?}, first segment after {:.1} s of {:.1} s",
            result.segments.len(),
            result.frames,
            result.seconds,
            result.seam_ratios,
            result.first_segment_ready_s,
            result.total_s
        );
        if i == 0 {
            let options = vidcascade_media::WriteOptions { scale: 2 };
            vidcascade_media::write_video(&video, &args.out.join("story.gif"), &options)?;
        }
        stories.push(result);
    }
    let summary = summarise_stories(&stories);
    let json = serde_json::json!({"summary": summary, "stories": stories});
    std::fs::write(
        args.out.join("story.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(story_markdown(&summary))
}
