//! `vidcascade info`: what a model repository holds.

use std::path::Path;

use vidcascade_spec::StageKind;

/// Prints the stages of the repository at `model`.
pub fn run(model: &Path) -> anyhow::Result<()> {
    let repo = super::open_repository(model)?;
    let manifest = repo.manifest();
    println!("model: {} ({})", manifest.name, model.display());
    if !manifest.description.is_empty() {
        println!("       {}", manifest.description);
    }
    let encoder = repo.text_encoder_config();
    println!(
        "{:<14} {:<13} {:<22} {:<22} {:>5} {:>8} {:<9} {:>4}",
        "stage", "kind", "input", "output", "steps", "guidance", "sampler", "aug"
    );
    for stage in &manifest.stages {
        if stage.kind == StageKind::TextEncoder {
            println!(
                "{:<14} {:<13} prompt (<= {} tokens) -> [tokens, {}] (T5, {} layers)",
                stage.name,
                stage.kind.as_str(),
                encoder.max_tokens,
                encoder.d_model,
                encoder.num_layers
            );
            continue;
        }
        let d = stage.defaults;
        println!(
            "{:<14} {:<13} {:<22} {:<22} {:>5} {:>8} {:<9} {:>4}",
            stage.name,
            stage.kind.as_str(),
            stage.input.map_or("text".to_string(), |s| s.to_string()),
            stage.output.map_or("-".to_string(), |s| s.to_string()),
            d.steps,
            d.guidance,
            format!("{:?}", d.sampler).to_lowercase(),
            d.noise_augmentation
        );
    }
    Ok(())
}
