//! `vidcascade info`: what a model repository holds, or what a running gateway serves.

use std::path::Path;

use vidcascade_proto::v1;
use vidcascade_spec::StageKind;

use super::InfoArgs;

/// Prints the stages of `--model`'s repository, or of the gateway at `--addr`.
pub fn run(args: &InfoArgs) -> anyhow::Result<()> {
    match &args.addr {
        Some(addr) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(gateway(addr, args)),
        None => repository(&args.model.model),
    }
}

/// Asks the gateway at `addr` for its `Info` and prints it.
async fn gateway(addr: &str, args: &InfoArgs) -> anyhow::Result<()> {
    let mut client = super::client::connect(addr, &args.access).await?;
    let request = super::client::authorized(v1::InfoRequest {}, args.access.api_key.as_deref())?;
    let info = client
        .info(request)
        .await
        .map_err(|status| {
            anyhow::anyhow!("gateway answered {:?}: {}", status.code(), status.message())
        })?
        .into_inner();
    let model = info.model.unwrap_or_default();
    let build = info.build.unwrap_or_default();
    println!(
        "gateway: {addr} (model {}, build {})",
        model.name, build.version
    );
    println!(
        "{:<14} {:<13} {:<22} {:<22} {:>5} {:>8}",
        "stage", "kind", "input", "output", "steps", "guidance"
    );
    let shape = |s: Option<v1::VideoShape>| {
        s.map_or("-".to_string(), |s| {
            format!("{}x{}x{} @ {} fps", s.frames, s.height, s.width, s.fps)
        })
    };
    for stage in info.stages {
        let defaults = stage.defaults.unwrap_or_default();
        println!(
            "{:<14} {:<13} {:<22} {:<22} {:>5} {:>8}",
            stage.name,
            stage
                .kind()
                .as_str_name()
                .trim_start_matches("STAGE_KIND_")
                .to_lowercase(),
            shape(stage.input),
            shape(stage.output),
            defaults.steps.map_or("-".into(), |s| s.to_string()),
            defaults.guidance.map_or("-".into(), |g| g.to_string()),
        );
    }
    println!(
        "limits: prompts <= {} tokens and {} bytes, <= {} s of video ({} segments), {} generations at once",
        info.max_prompt_tokens,
        info.max_prompt_bytes,
        info.max_seconds,
        info.max_segments,
        info.max_concurrent_requests
    );
    Ok(())
}

/// Prints the stages of the repository at `model`.
fn repository(model: &Path) -> anyhow::Result<()> {
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
