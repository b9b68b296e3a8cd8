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
use vidcascade_spec::Video;

use super::files::{filmstrip, preview_path, stage_file_name, stage_path, wrote_line};
use super::progress::Progress;
use super::story::{NewFrames, StorySoFar};
use super::{ClientArgs, GatewayAccess};

/// Largest message the client accepts (stage videos and final chunks stay far below it).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A gRPC status as one readable line.
fn status_error(status: tonic::Status) -> anyhow::Error {
    let message = super::in_flag_terms(status.message());
    anyhow::anyhow!("gateway answered {:?}: {message}", status.code())
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
    let mut client = connect(&args.addr, &args.access).await?;
    let stages = diffusion_stages(&mut client, args.access.api_key.as_deref()).await?;
    let request = build_request(&args, &stages)?;
    let started = Instant::now();
    let mut stream = client
        .generate(request)
        .await
        .map_err(status_error)?
        .into_inner();

    let mut writer = EventWriter::new(&args);
    while let Some(event) = stream.message().await.map_err(status_error)? {
        writer.write(event)?;
    }
    let (video, timings) = writer
        .result
        .context("the gateway's stream ended without the final video")?;
    write_result(&args, &writer.options, video, &timings, started)
}

/// A request carrying the API key, when there is one.
pub(super) fn authorized<T>(message: T, api_key: Option<&str>) -> anyhow::Result<Request<T>> {
    let mut request = Request::new(message);
    if let Some(key) = api_key {
        let value = format!("Bearer {key}")
            .parse()
            .context("--api-key / VIDCASCADE_API_KEY is not valid metadata (printable ASCII)")?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// A gateway client connected to `addr` (over TLS, trusting `--ca`, for https:// URLs).
pub(super) async fn connect(
    addr: &str,
    access: &GatewayAccess,
) -> anyhow::Result<GatewayClient<Channel>> {
    let mut endpoint = Channel::from_shared(addr.to_owned())
        .with_context(|| format!("--addr `{addr}` is not a URL like http://127.0.0.1:50051"))?;
    if addr.starts_with("https://") {
        let ca = access
            .ca
            .as_ref()
            .context("an https:// gateway needs --ca (the PEM CA certificate to trust)")?;
        let pem = std::fs::read(ca).with_context(|| format!("reading --ca {}", ca.display()))?;
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem));
        endpoint = endpoint.tls_config(tls).context("setting up TLS")?;
    }
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| {
            format!("cannot reach the gateway at {addr} (start one with `vidcascade serve`)")
        })?;
    Ok(GatewayClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
}

/// The names of the gateway's diffusion stages (every stage but the text encoder).
async fn diffusion_stages(
    client: &mut GatewayClient<Channel>,
    api_key: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let info = client
        .info(authorized(v1::InfoRequest {}, api_key)?)
        .await
        .map_err(status_error)?
        .into_inner();
    Ok(info
        .stages
        .iter()
        .filter(|s| s.kind() != v1::StageKind::TextEncoder)
        .map(|s| s.name.clone())
        .collect())
}

/// The generation request `args` ask for, with their deadline.
fn build_request(
    args: &ClientArgs,
    stages: &[String],
) -> anyhow::Result<Request<v1::GenerateRequest>> {
    let overrides = args.sampling.overrides(stages)?;
    let mut request = v1::GenerateRequest {
        seed: Some(args.seed),
        stage_overrides: overrides
            .iter()
            .map(|(stage, o)| (stage.clone(), overrides_to_wire(o)))
            .collect(),
        preview_every: args.output.preview_every.unwrap_or(0) as u32,
        output: Some(v1::OutputOptions {
            include_stage_videos: args.output.save_stages.is_some(),
            // A story's clips bring every final frame as they complete.
            omit_final_video: true,
            // Raw frames: the client scales and encodes them itself, exactly as `generate`.
            ..Default::default()
        }),
        ..Default::default()
    };
    args.story
        .apply_wire(args.prompt.as_deref(), &mut request)?;
    let mut request = authorized(request, args.access.api_key.as_deref())?;
    request.set_timeout(Duration::from_secs_f64(args.timeout));
    Ok(request)
}

/// Shows progress and writes previews and stage videos as the gateway's events arrive, and
/// assembles the final video.
struct EventWriter<'a> {
    args: &'a ClientArgs,
    options: WriteOptions,
    preview: std::path::PathBuf,
    progress: Progress,
    stage_started: Instant,
    /// Whether the current stage has a progress row (diffusion stages do).
    showing: bool,
    stage_index: usize,
    stage_video: VideoAssembler,
    clip_video: VideoAssembler,
    story: StorySoFar,
    final_video: VideoAssembler,
    /// The final video and the stages' timings, once all of it has arrived.
    result: Option<(Video, Vec<v1::StageTiming>)>,
}

impl<'a> EventWriter<'a> {
    fn new(args: &'a ClientArgs) -> Self {
        Self {
            args,
            options: WriteOptions {
                scale: args.output.scale,
            },
            preview: preview_path(&args.output.output),
            progress: Progress::new(),
            stage_started: Instant::now(),
            showing: false,
            stage_index: 0,
            stage_video: VideoAssembler::new(),
            clip_video: VideoAssembler::new(),
            story: StorySoFar::default(),
            final_video: VideoAssembler::new(),
            result: None,
        }
    }

    fn write(&mut self, event: v1::GenerateEvent) -> anyhow::Result<()> {
        match event.event {
            Some(Event::Accepted(accepted)) => eprintln!(
                "request {}: seed {}, {} clip(s), queue position {}",
                accepted.request_id, accepted.seed, accepted.clips, accepted.queue_position
            ),
            Some(Event::StageStarted(stage)) => {
                self.stage_started = Instant::now();
                // As `generate` shows it: a row per diffusion stage, none for the text encoder.
                self.showing = stage.output_shape.is_some();
                if let Some(s) = stage.output_shape {
                    let shape = format!("{}x{}x{} @ {} fps", s.frames, s.height, s.width, s.fps);
                    self.progress
                        .stage_started(&stage.stage, &shape, stage.total_steps as usize);
                }
            }
            Some(Event::Progress(p)) => {
                self.progress
                    .step(&p.stage, p.step as usize, p.total_steps as usize);
            }
            Some(Event::Preview(p)) => {
                if let Some(video) = p.video {
                    let video = video_from_wire(video).context("preview from the gateway")?;
                    let (w, h, rgb) = filmstrip(&video, self.args.output.scale);
                    write_png(&self.preview, w, h, &rgb)?;
                }
            }
            Some(Event::StageCompleted(done)) => self.stage_completed(done)?,
            Some(Event::ClipCompleted(done)) => self.clip_completed(done)?,
            Some(Event::Completed(completed)) => self.completed(completed)?,
            None => {}
        }
        Ok(())
    }

    /// One chunk of the final video; a story's `Completed` has none (its clips sent every frame).
    fn completed(&mut self, completed: v1::Completed) -> anyhow::Result<()> {
        let video = match completed.video {
            Some(chunk) => match self.final_video.push(chunk)? {
                Some(video) => {
                    video_from_wire(video).context("the final video from the gateway")?
                }
                None => return Ok(()),
            },
            None => self
                .story
                .take()
                .context("a final video event without a video, and no clips before it")?,
        };
        self.result = Some((video, completed.timings));
        Ok(())
    }

    /// One chunk of a clip's new frames (stories): once the clip is whole, adds it to the
    /// story so far.
    fn clip_completed(&mut self, done: v1::ClipCompleted) -> anyhow::Result<()> {
        let chunk = done.video.context("a clip event without a video")?;
        if let Some(video) = self.clip_video.push(chunk)? {
            let new = NewFrames {
                clip: done.clip as usize,
                segment: done.segment as usize,
                ends_segment: done.segment_completed,
                first_frame: done.first_frame as usize,
                video: video_from_wire(video).context("a clip's frames from the gateway")?,
            };
            self.story
                .add(new, &self.args.output.output, &self.options)?;
        }
        Ok(())
    }

    /// One chunk of a stage's output: once the stage's video is whole, saves it (if asked to)
    /// and reports the stage done.
    fn stage_completed(&mut self, done: v1::StageCompleted) -> anyhow::Result<()> {
        let whole = match done.video {
            None => true,
            Some(chunk) => match self.stage_video.push(chunk)? {
                None => false,
                Some(video) => {
                    self.stage_index += 1;
                    if let Some(dir) = &self.args.output.save_stages {
                        let name = stage_file_name(&done.stage, done.clip as usize);
                        let path =
                            stage_path(dir, self.stage_index, &name, &self.args.output.output);
                        write_video(&video_from_wire(video)?, &path, &self.options)?;
                    }
                    true
                }
            },
        };
        if whole && self.showing {
            self.progress
                .stage_completed(&done.stage, self.stage_started.elapsed());
        }
        Ok(())
    }
}

/// Writes the final video and prints what was written with the stages' times.
fn write_result(
    args: &ClientArgs,
    options: &WriteOptions,
    video: Video,
    timings: &[v1::StageTiming],
    started: Instant,
) -> anyhow::Result<()> {
    write_video(&video, &args.output.output, options)?;
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
