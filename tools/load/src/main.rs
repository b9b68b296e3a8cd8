//! `vidcascade-load`: drives a gateway with `--requests` generations, `--concurrency` at a time,
//! and reports the median and p90 end-to-end latency, the median time to the first stage video
//! (the base stage's output, which the gateway streams long before the final video) and the
//! throughput. `--in-process --model DIR` runs the same requests through the in-process cascade
//! instead, one at a time: the baseline for the services' overhead.
//!
//! ```text
//! vidcascade-load --addr http://127.0.0.1:50051 --requests 8 --concurrency 4 --label "batch 4"
//! vidcascade-load --in-process --model models/shapes --requests 3
//! ```
//!
//! Each run prints one markdown table row and, with `--json FILE`, appends a JSON line.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde::Serialize;
use tokio::sync::Semaphore;
use tonic::transport::Channel;
use vidcascade_engine::EmbeddedCascade;
use vidcascade_pipeline::Event as PipelineEvent;
use vidcascade_proto::v1::gateway_client::GatewayClient;
use vidcascade_proto::v1::{self, generate_event::Event};
use vidcascade_spec::GenerateRequest;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load test of a vidcascade gateway (or of the in-process cascade).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The gateway.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Run in this process instead of calling a gateway.
    #[arg(long)]
    in_process: bool,
    /// Model repository (with --in-process).
    #[arg(long, default_value = "models/shapes")]
    model: PathBuf,
    /// Generations to time (after one untimed warm-up).
    #[arg(long, default_value_t = 4)]
    requests: usize,
    /// Generations in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Prompt of every request.
    #[arg(long, default_value = "a red circle moving left on a black background")]
    prompt: String,
    /// Seed of request i is seed + i.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Name of this configuration in the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Append the result as a JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What one run measured.
#[derive(Debug, Serialize)]
struct Report {
    label: String,
    mode: &'static str,
    requests: usize,
    concurrency: usize,
    median_s: f64,
    p90_s: f64,
    median_first_stage_s: f64,
    wall_s: f64,
    throughput_per_min: f64,
}

/// One generation's timings.
struct Sample {
    total: Duration,
    first_stage: Duration,
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return 0.0;
    }
    let index = ((values.len() - 1) as f64 * p).round() as usize;
    values[index]
}

async fn one_request(channel: Channel, prompt: String, seed: u64) -> anyhow::Result<Sample> {
    let started = Instant::now();
    let mut client = GatewayClient::new(channel).max_decoding_message_size(64 << 20);
    let mut stream = client
        .generate(v1::GenerateRequest {
            prompt,
            seed: Some(seed),
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow::anyhow!("gateway: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let mut first_stage = None;
    let mut completed = false;
    while let Some(event) = stream
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("gateway: {:?}: {}", s.code(), s.message()))?
    {
        match event.event {
            Some(Event::StageCompleted(stage)) if stage.stage != "text-encoder" => {
                first_stage.get_or_insert(started.elapsed());
            }
            Some(Event::Completed(_)) => completed = true,
            _ => {}
        }
    }
    if !completed {
        bail!("the stream ended without the final video");
    }
    let total = started.elapsed();
    Ok(Sample {
        total,
        first_stage: first_stage.unwrap_or(total),
    })
}

async fn run_gateway(args: &Args) -> anyhow::Result<(Vec<Sample>, Duration)> {
    let channel = Channel::from_shared(args.addr.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    one_request(channel.clone(), args.prompt.clone(), args.seed).await?;
    let permits = Arc::new(Semaphore::new(args.concurrency));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.requests {
        let permit = permits.clone().acquire_owned().await?;
        let (channel, prompt, seed) = (channel.clone(), args.prompt.clone(), args.seed + i as u64);
        tasks.spawn(async move {
            let sample = one_request(channel, prompt, seed).await;
            drop(permit);
            sample
        });
    }
    let mut samples = Vec::new();
    while let Some(result) = tasks.join_next().await {
        samples.push(result??);
    }
    Ok((samples, started.elapsed()))
}

fn run_in_process(args: &Args) -> anyhow::Result<(Vec<Sample>, Duration)> {
    let cascade = EmbeddedCascade::load(&args.model, &candle_core::Device::Cpu)?;
    let generate = |seed: u64| -> anyhow::Result<Sample> {
        let started = Instant::now();
        let mut first_stage = None;
        cascade.generate(
            &GenerateRequest::new(args.prompt.clone()).with_seed(seed),
            None,
            |event| {
                if let PipelineEvent::StageCompleted { video: Some(_), .. } = event {
                    first_stage.get_or_insert(started.elapsed());
                }
                std::ops::ControlFlow::Continue(())
            },
        )?;
        let total = started.elapsed();
        Ok(Sample {
            total,
            first_stage: first_stage.unwrap_or(total),
        })
    };
    generate(args.seed)?;
    let started = Instant::now();
    let samples = (0..args.requests)
        .map(|i| generate(args.seed + i as u64))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((samples, started.elapsed()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.requests == 0 || args.concurrency == 0 {
        bail!("--requests and --concurrency must be at least 1");
    }
    if args.in_process && args.concurrency != 1 {
        bail!("--in-process runs one generation at a time; leave --concurrency at 1");
    }
    let (samples, wall) = if args.in_process {
        run_in_process(&args)?
    } else {
        tokio::runtime::Runtime::new()?.block_on(run_gateway(&args))?
    };
    let mut totals: Vec<f64> = samples.iter().map(|s| s.total.as_secs_f64()).collect();
    let mut firsts: Vec<f64> = samples
        .iter()
        .map(|s| s.first_stage.as_secs_f64())
        .collect();
    let report = Report {
        label: args.label.clone(),
        mode: if args.in_process {
            "in-process"
        } else {
            "services"
        },
        requests: args.requests,
        concurrency: args.concurrency,
        median_s: percentile(&mut totals, 0.5),
        p90_s: percentile(&mut totals, 0.9),
        median_first_stage_s: percentile(&mut firsts, 0.5),
        wall_s: wall.as_secs_f64(),
        throughput_per_min: args.requests as f64 / wall.as_secs_f64() * 60.0,
    };
    println!(
        "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
        report.label,
        report.mode,
        report.concurrency,
        report.requests,
        report.median_s,
        report.p90_s,
        report.median_first_stage_s,
        report.throughput_per_min
    );
    if let Some(path) = &args.json {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(file, "{}", serde_json::to_string(&report)?)?;
    }
    Ok(())
}
