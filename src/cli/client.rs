//! `vidcascade client`: one generation through a running gateway, with the same progress
//! display and output files as `generate`, fed by the gateway's event stream.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tonic::Request;
use tonic::transport::Channel;
use vidcascade_media::{WriteOptions, write_png, write_video};
use vidcascade_proto::convert::{overrides_to_wire, video_from_wire};
use vidcascade_proto::v1::gateway_client::GatewayClient;
use vidcascade_proto::v1::{self, generate_event::Event};
use vidcascade_proto::wire::VideoAssembler;

use super::ClientArgs;
use super::files::{filmstrip, preview_path, stage_path, wrote_line};
use super::progress::Progress;

/// Largest message the client accepts (stage videos and final chunks stay far below it).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A gRPC status as one readable line.
fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("gateway answered {:?}: {}", status.code(), status.message())
}

/// Runs `client`.
pub fn run(args: ClientArgs) -> anyhow::Result<()> {
    args.output.check()?;
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 86_400.0) {
        bail!(
            "--timeout must be in (0, 86400] seconds, got {}",
            args.timeout
        );
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(generate(args))
}

async fn generate(args: ClientArgs) -> anyhow::Result<()> {
    let channel = Channel::from_shared(args.addr.clone())
        .with_context(|| {
            format!(
                "--addr `{}` is not a URL like http://127.0.0.1:50051",
                args.addr
            )
        })?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| {
            format!(
                "cannot reach the gateway at {} (start one with `vidcascade serve`)",
                args.addr
            )
        })?;
    let mut client = GatewayClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let info = client
        .info(v1::InfoRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let stages: Vec<String> = info
        .stages
        .iter()
        .filter(|s| s.kind() != v1::StageKind::TextEncoder)
        .map(|s| s.name.clone())
        .collect();
    let overrides = args.sampling.overrides(&stages)?;
    let request = v1::GenerateRequest {
        prompt: args.prompt.clone(),
        seed: args.seed,
        stage_overrides: overrides
            .iter()
            .map(|(stage, o)| (stage.clone(), overrides_to_wire(o)))
            .collect(),
        preview_every: args.output.preview_every.unwrap_or(0) as u32,
        output: Some(v1::OutputOptions {
            include_stage_videos: args.output.save_stages.is_some(),
            max_chunk_bytes: 0,
        }),
        ..Default::default()
    };
    let mut request = Request::new(request);
    request.set_timeout(Duration::from_secs_f64(args.timeout));
    let started = Instant::now();
    let mut stream = client
        .generate(request)
        .await
        .map_err(status_error)?
        .into_inner();

    let options = WriteOptions {
        scale: args.output.scale,
    };
    let preview = preview_path(&args.output.output);
    let mut progress = Progress::new();
    let mut stage_started = Instant::now();
    let mut stage_index = 0;
    let mut stage_video = VideoAssembler::new();
    let mut final_video = VideoAssembler::new();
    let mut result: Option<(v1::Video, Vec<v1::StageTiming>)> = None;
    while let Some(event) = stream.message().await.map_err(status_error)? {
        match event.event {
            Some(Event::Accepted(accepted)) => eprintln!(
                "request {}: seed {}, {} clip(s), queue position {}",
                accepted.request_id, accepted.seed, accepted.clips, accepted.queue_position
            ),
            Some(Event::StageStarted(stage)) => {
                let shape = stage
                    .output_shape
                    .map(|s| format!("{}x{}x{} @ {} fps", s.frames, s.height, s.width, s.fps))
                    .unwrap_or_default();
                progress.stage_started(&stage.stage, &shape, stage.total_steps as usize);
                stage_started = Instant::now();
            }
            Some(Event::Progress(p)) => {
                progress.step(&p.stage, p.step as usize, p.total_steps as usize);
            }
            Some(Event::Preview(p)) => {
                if let Some(video) = p.video {
                    let video = video_from_wire(video).context("preview from the gateway")?;
                    let (w, h, rgb) = filmstrip(&video, args.output.scale);
                    write_png(&preview, w, h, &rgb)?;
                }
            }
            Some(Event::StageCompleted(done)) => {
                let whole = match done.video {
                    None => true,
                    Some(chunk) => match stage_video.push(chunk)? {
                        None => false,
                        Some(video) => {
                            stage_index += 1;
                            if let Some(dir) = &args.output.save_stages {
                                let name = if done.clip > 0 {
                                    format!("{}-clip{}", done.stage, done.clip)
                                } else {
                                    done.stage.clone()
                                };
                                let path = stage_path(dir, stage_index, &name, &args.output.output);
                                write_video(&video_from_wire(video)?, &path, &options)?;
                            }
                            true
                        }
                    },
                };
                if whole {
                    progress.stage_completed(&done.stage, stage_started.elapsed());
                }
            }
            Some(Event::Completed(completed)) => {
                let chunk = completed
                    .video
                    .context("a final video event without a video")?;
                if let Some(video) = final_video.push(chunk)? {
                    result = Some((video, completed.timings));
                }
            }
            None => {}
        }
    }
    let (video, timings) = result.context("the gateway's stream ended without the final video")?;
    let video = video_from_wire(video)?;
    write_video(&video, &args.output.output, &options)
        .with_context(|| format!("writing {}", args.output.output.display()))?;
    let summary: Vec<String> = timings
        .iter()
        .map(|t| format!("{} {} ms", t.stage, t.run_ms + t.queue_ms))
        .collect();
    println!(
        "{} [{}]",
        wrote_line(
            &args.output.output,
            &video,
            args.output.scale,
            started.elapsed().as_secs_f64()
        ),
        summary.join(", ")
    );
    Ok(())
}
