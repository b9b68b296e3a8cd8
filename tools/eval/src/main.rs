//! `vidcascade-eval`: measures a cascade on the held-out prompts of the shapes world.
//!
//! ```text
//! vidcascade-eval --model models/shapes --out docs/eval
//! ```
//! Writes `report.json` (every prompt and the summary), `report.md` (the table) and
//! `contact-sheet.png` (one row per prompt, final frames across).

use std::path::PathBuf;

use anyhow::Context;
use candle_core::Device;
use clap::Parser;
use vidcascade_engine::EmbeddedCascade;
use vidcascade_eval::{contact_sheet, evaluate, markdown, summarise};
use vidcascade_shapes::world::held_out_scenes;

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
    let table = markdown(&results, &summary);
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
