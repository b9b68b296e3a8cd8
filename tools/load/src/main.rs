//! `vidcascade-load`: load tests of the gateway, the text encoder or one diffusion stage alone.
//!
//! ```text
//! vidcascade-load record --model models/shapes --out payload.bin
//! vidcascade-load run --target stage:ssr --addr http://127.0.0.1:50064 --payload payload.bin \
//!     --rate 0.5 --arrivals poisson --duration 60 --metrics 127.0.0.1:50074 --json runs.jsonl
//! vidcascade-load sweep --target stage:base --addr ... --payload payload.bin \
//!     --rates 0.25,0.5,1,2 --requests 16 --plot base-latency.png
//! vidcascade-load run --target gateway --addr http://127.0.0.1:50051 --concurrency 4 --requests 8
//! vidcascade-load in-process --model models/shapes --requests 3
//! ```
//!
//! Every run prints one markdown table row; `--json` appends a JSON line, `--csv` a CSV row.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use vidcascade_engine::EmbeddedCascade;
use vidcascade_load::capacity::Capacity;
use vidcascade_load::payload::{Payload, RecordOptions, record};
use vidcascade_load::report::{Report, knee};
use vidcascade_load::runner::{RunResult, RunSpec};
use vidcascade_load::schedule::{Arrivals, LoadModel};
use vidcascade_load::target::{Driver, Outcome, Target};
use vidcascade_load::{measure, plot};
use vidcascade_spec::GenerateRequest;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The prompts requests cycle through unless `--prompt` is given.
const DEFAULT_PROMPTS: [&str; 4] = [
    "a red circle moving left on a black background",
    "a blue square moving up on a white background",
    "a green triangle moving right on a gray background",
    "a yellow circle moving down on a black background",
];

/// Load tests of vidcascade services.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One run at one load.
    Run(RunArgs),
    /// Runs at increasing load (rates or concurrencies) and finds the saturation knee.
    Sweep(SweepArgs),
    /// Records realistic requests for every service of a model into a payload file.
    Record(RecordArgs),
    /// The whole cascade in this process, one request at a time (the no-network baseline).
    InProcess(InProcessArgs),
    /// Per-stage capacity table and JSON summary from a standard sweep's JSON lines.
    Capacity(CapacityArgs),
}

#[derive(Debug, Args)]
struct CapacityArgs {
    /// The sweep's reports (JSON lines).
    #[arg(long)]
    json: PathBuf,
    /// Write the markdown table here (else stdout).
    #[arg(long)]
    table: Option<PathBuf>,
    /// Write the JSON summary here.
    #[arg(long)]
    summary: Option<PathBuf>,
}

/// What is loaded and with what.
#[derive(Debug, Args)]
struct TargetArgs {
    /// `gateway`, `encoder` or `stage:NAME`.
    #[arg(long, default_value = "gateway")]
    target: Target,
    /// The target's address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Recorded requests (`record`); needed for the encoder and stages.
    #[arg(long)]
    payload: Option<PathBuf>,
    /// Gateway prompts (repeat); requests cycle through them.
    #[arg(long = "prompt")]
    prompts: Vec<String>,
    /// Gateway: request i is seeded `seed + i`.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Deadline of every request, in seconds.
    #[arg(long)]
    deadline: Option<f64>,
    /// Prometheus endpoints (`host:port`, repeat) read before and after each run.
    #[arg(long = "metrics")]
    metrics: Vec<String>,
}

/// How long a run lasts.
#[derive(Debug, Args)]
struct LengthArgs {
    /// Requests to send per run (after the warm-up).
    #[arg(long)]
    requests: Option<usize>,
    /// Seconds to send requests for, per run.
    #[arg(long)]
    duration: Option<f64>,
    /// Untimed requests before measuring.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
}

/// Where reports go.
#[derive(Debug, Args)]
struct OutputArgs {
    /// Name of this configuration in the reports.
    #[arg(long, default_value = "")]
    label: String,
    /// Append every report as a JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Append every report as a CSV row to this file.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    length: LengthArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// Closed loop: requests in flight.
    #[arg(long, conflicts_with = "rate")]
    concurrency: Option<usize>,
    /// Open loop: arrivals per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: how arrivals are spaced.
    #[arg(long, value_enum, default_value_t = Arrivals::Poisson)]
    arrivals: Arrivals,
    /// Open loop: seed of the arrival times.
    #[arg(long, default_value_t = 1)]
    arrival_seed: u64,
}

#[derive(Debug, Args)]
struct SweepArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    length: LengthArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// Open-loop rates to sweep, per second, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "concurrencies")]
    rates: Vec<f64>,
    /// Closed-loop concurrencies to sweep, comma-separated.
    #[arg(long, value_delimiter = ',')]
    concurrencies: Vec<usize>,
    /// Open loop: how arrivals are spaced.
    #[arg(long, value_enum, default_value_t = Arrivals::Poisson)]
    arrivals: Arrivals,
    /// Write the sweep's plot to this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Title of the plot.
    #[arg(long, default_value = "")]
    title: String,
}

#[derive(Debug, Args)]
struct RecordArgs {
    /// Model repository.
    #[arg(long, default_value = "models/shapes")]
    model: PathBuf,
    /// The payload file to write.
    #[arg(long)]
    out: PathBuf,
    /// Prompts to record (repeat); default: four prompts of the shapes world.
    #[arg(long = "prompt")]
    prompts: Vec<String>,
    /// Prompt i is seeded `seed + i`.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The stages' preview cadence in the recorded requests (0: none).
    #[arg(long, default_value_t = 0)]
    preview_every: u32,
}

#[derive(Debug, Args)]
struct InProcessArgs {
    /// Model repository.
    #[arg(long, default_value = "models/shapes")]
    model: PathBuf,
    /// Generations to time (after one untimed warm-up).
    #[arg(long, default_value_t = 4)]
    requests: usize,
    /// Prompt of every request.
    #[arg(long, default_value = DEFAULT_PROMPTS[0])]
    prompt: String,
    #[command(flatten)]
    output: OutputArgs,
}

fn main() -> anyhow::Result<()> {
    // Before any thread starts (see vidcascade_kernels::cpu::configure_threads).
    vidcascade_kernels::cpu::configure_threads(vidcascade_kernels::cpu::Workload::Inference);
    match Cli::parse().command {
        Command::Record(args) => record_payload(&args),
        Command::InProcess(args) => in_process(&args),
        Command::Capacity(args) => capacity(&args),
        Command::Run(args) => tokio::runtime::Runtime::new()?.block_on(run(args)),
        Command::Sweep(args) => tokio::runtime::Runtime::new()?.block_on(sweep(args)),
    }
}

fn record_payload(args: &RecordArgs) -> anyhow::Result<()> {
    let prompts = prompts_or_default(&args.prompts);
    let started = Instant::now();
    let payload = record(
        &args.model,
        &RecordOptions {
            prompts,
            seed: args.seed,
            preview_every: args.preview_every,
        },
    )?;
    payload.save(&args.out)?;
    let stages: Vec<&str> = payload.stages.iter().map(|s| s.stage.as_str()).collect();
    eprintln!(
        "recorded {} prompts for the encoder and {stages:?} into {} in {:.1} s",
        payload.prompts.len(),
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn capacity(args: &CapacityArgs) -> anyhow::Result<()> {
    let reports = vidcascade_load::report::read_json_lines(&args.json)?;
    let capacity = Capacity::from_reports(&reports);
    if capacity.stages.is_empty() {
        bail!(
            "{}: no runs labelled `stage=NAME kind=service threads=N` (see benches/stages.sh)",
            args.json.display()
        );
    }
    let table = capacity.table();
    match &args.table {
        Some(path) => {
            std::fs::write(path, &table).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{table}"),
    }
    if let Some(path) = &args.summary {
        let json = serde_json::to_string_pretty(&capacity)? + "\n";
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn prompts_or_default(prompts: &[String]) -> Vec<String> {
    if prompts.is_empty() {
        DEFAULT_PROMPTS.iter().map(|p| p.to_string()).collect()
    } else {
        prompts.to_vec()
    }
}

async fn driver(args: &TargetArgs) -> anyhow::Result<Arc<Driver>> {
    let payload = args.payload.as_deref().map(Payload::load).transpose()?;
    let deadline = match args.deadline {
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => bail!("--deadline must be positive seconds, got {s}"),
        None => None,
    };
    let prompts = prompts_or_default(&args.prompts);
    let driver = Driver::connect(
        &args.target,
        &args.addr,
        &prompts,
        args.seed,
        payload.as_ref(),
        deadline,
    )
    .await?;
    Ok(Arc::new(driver))
}

fn spec(length: &LengthArgs, load: LoadModel, quiet: bool) -> anyhow::Result<RunSpec> {
    let duration = match length.duration {
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => bail!("--duration must be positive seconds, got {s}"),
        None => None,
    };
    if length.requests == Some(0) {
        bail!("--requests must be at least 1");
    }
    if length.requests.is_none() && duration.is_none() {
        bail!("give --requests N or --duration SECONDS");
    }
    Ok(RunSpec {
        load,
        requests: length.requests,
        duration,
        warmup: length.warmup,
        progress: !quiet,
    })
}

fn load_model(args: &RunArgs) -> anyhow::Result<LoadModel> {
    match (args.concurrency, args.rate) {
        (Some(0), _) => bail!("--concurrency must be at least 1"),
        (_, Some(rate)) if !(rate.is_finite() && rate > 0.0) => {
            bail!("--rate must be a positive number of requests per second, got {rate}")
        }
        (_, Some(rate)) => Ok(LoadModel::Open {
            rate,
            arrivals: args.arrivals,
            seed: args.arrival_seed,
        }),
        (concurrency, None) => Ok(LoadModel::Closed {
            concurrency: concurrency.unwrap_or(1),
        }),
    }
}

fn emit(report: &Report, output: &OutputArgs, header: bool) -> anyhow::Result<()> {
    if header {
        println!("{}", Report::table_header());
    }
    println!("{}", report.table_row());
    if let Some(path) = &output.json {
        report.append_json(path)?;
    }
    if let Some(path) = &output.csv {
        report.append_csv(path)?;
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let spec = spec(&args.length, load_model(&args)?, args.output.quiet)?;
    let driver = driver(&args.target).await?;
    let (report, _) = measure(driver, &spec, &args.target.metrics, &args.output.label).await?;
    emit(&report, &args.output, true)
}

async fn sweep(args: SweepArgs) -> anyhow::Result<()> {
    let loads: Vec<LoadModel> = if !args.rates.is_empty() {
        if let Some(bad) = args.rates.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
            bail!("--rates: every rate must be positive, got {bad}");
        }
        let mut rates = args.rates.clone();
        rates.sort_by(f64::total_cmp);
        rates
            .iter()
            .map(|&rate| LoadModel::Open {
                rate,
                arrivals: args.arrivals,
                seed: 1,
            })
            .collect()
    } else if !args.concurrencies.is_empty() {
        if args.concurrencies.contains(&0) {
            bail!("--concurrencies: every concurrency must be at least 1");
        }
        let mut levels = args.concurrencies.clone();
        levels.sort_unstable();
        levels
            .iter()
            .map(|&concurrency| LoadModel::Closed { concurrency })
            .collect()
    } else {
        bail!("give --rates R1,R2,... (open loop) or --concurrencies C1,C2,... (closed loop)");
    };
    let driver = driver(&args.target).await?;
    let mut reports = Vec::new();
    for (i, load) in loads.iter().enumerate() {
        let spec = spec(&args.length, *load, args.output.quiet)?;
        let (report, _) = measure(
            driver.clone(),
            &spec,
            &args.target.metrics,
            &args.output.label,
        )
        .await?;
        emit(&report, &args.output, i == 0)?;
        reports.push(report);
    }
    finish_sweep(&args, &reports)
}

fn finish_sweep(args: &SweepArgs, reports: &[Report]) -> anyhow::Result<()> {
    let open = !args.rates.is_empty();
    if open {
        match knee(reports) {
            Some(rate) => {
                println!("saturation knee: {rate} requests/s (the highest rate kept up with)")
            }
            None => println!("saturation knee: below the lowest rate swept"),
        }
    } else if let Some(best) = reports
        .iter()
        .max_by(|a, b| a.achieved_rate.total_cmp(&b.achieved_rate))
    {
        println!(
            "best throughput: {:.3} requests/s at {} in flight",
            best.achieved_rate,
            best.concurrency.unwrap_or(0)
        );
    }
    let Some(path) = &args.plot else {
        return Ok(());
    };
    let title = if args.title.is_empty() {
        args.target.target.to_string()
    } else {
        args.title.clone()
    };
    if open {
        plot::latency_vs_rate(reports, &title, path)
    } else {
        plot::throughput_vs_concurrency(reports, &title, path)
    }
}

fn in_process(args: &InProcessArgs) -> anyhow::Result<()> {
    if args.requests == 0 {
        bail!("--requests must be at least 1");
    }
    let cascade = EmbeddedCascade::load(&args.model, &candle_core::Device::Cpu)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let generate = |seed: u64, sent_at: Duration| -> anyhow::Result<Outcome> {
        let started = Instant::now();
        let mut first_progress = None;
        cascade.generate(
            &GenerateRequest::new(args.prompt.clone()).with_seed(seed),
            None,
            |event| {
                if let vidcascade_pipeline::Event::Progress { .. } = event {
                    first_progress.get_or_insert(started.elapsed());
                }
                std::ops::ControlFlow::Continue(())
            },
        )?;
        Ok(Outcome {
            sent_at,
            latency: started.elapsed(),
            first_progress,
            queued: None,
            code: tonic::Code::Ok,
        })
    };
    generate(0, Duration::ZERO)?;
    let started = Instant::now();
    let outcomes = (0..args.requests)
        .map(|i| generate(i as u64, started.elapsed()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let result = RunResult {
        outcomes,
        wall: started.elapsed(),
        sending: started.elapsed(),
    };
    let report = Report::new(
        &args.output.label,
        "in-process",
        &LoadModel::Closed { concurrency: 1 },
        &result,
        None,
    );
    emit(&report, &args.output, true)
}
