//! One run: (after untimed warm-up calls) calls sent by the load model until `--requests` were
//! sent or `--duration` has passed, a progress bar while it runs, every outcome kept.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::schedule::{LoadModel, arrival_times};
use crate::target::{Driver, Outcome};

/// Open-loop requests in flight at most: beyond it the service is far past saturation and the
/// run measures only the load tester's memory.
const MAX_OPEN_IN_FLIGHT: usize = 4096;

/// How long a run lasts and how it loads.
#[derive(Debug, Clone, Copy)]
pub struct RunSpec {
    /// The load model.
    pub load: LoadModel,
    /// Stop sending after this many requests.
    pub requests: Option<usize>,
    /// Stop sending after this long.
    pub duration: Option<Duration>,
    /// Untimed calls before the run (model warm-up, connections).
    pub warmup: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// What a run observed.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Every measured call, in the order they finished.
    pub outcomes: Vec<Outcome>,
    /// From the first send to the last answer.
    pub wall: Duration,
    /// How long requests were being sent.
    pub sending: Duration,
}

/// `spec.warmup` untimed calls, one at a time (model warm-up, connections).
pub async fn warm_up(driver: &Driver, spec: &RunSpec) {
    for i in 0..spec.warmup {
        driver.call(i, Duration::ZERO).await;
    }
}

/// Runs `spec` against `driver` (without its warm-up: see [`warm_up`]).
pub async fn run(driver: Arc<Driver>, spec: &RunSpec) -> anyhow::Result<RunResult> {
    anyhow::ensure!(
        spec.requests.is_some() || spec.duration.is_some(),
        "give --requests or --duration"
    );
    let bar = progress_bar(spec);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let mut outcomes = Vec::new();
    match spec.load {
        LoadModel::Closed { concurrency } => {
            let permits = Arc::new(Semaphore::new(concurrency.max(1)));
            let mut i = 0;
            while more(spec, i, started) {
                let permit = permits.clone().acquire_owned().await?;
                // The wait for a slot may have run past the duration.
                if !more(spec, i, started) {
                    break;
                }
                let (driver, sent_at) = (driver.clone(), started.elapsed());
                tasks.spawn(async move {
                    let outcome = driver.call(i, sent_at).await;
                    drop(permit);
                    outcome
                });
                i += 1;
                collect_finished(&mut tasks, &mut outcomes, &bar);
            }
        }
        LoadModel::Open {
            rate,
            arrivals,
            seed,
        } => {
            let limit = spec.requests.unwrap_or(usize::MAX);
            for (i, at) in arrival_times(rate, arrivals, seed, limit, spec.duration)
                .into_iter()
                .enumerate()
            {
                tokio::time::sleep_until((started + at).into()).await;
                anyhow::ensure!(
                    tasks.len() < MAX_OPEN_IN_FLIGHT,
                    "{MAX_OPEN_IN_FLIGHT} requests in flight: the target is far past saturation at {rate}/s"
                );
                let driver = driver.clone();
                tasks.spawn(async move { driver.call(i, at).await });
                collect_finished(&mut tasks, &mut outcomes, &bar);
            }
        }
    }
    let sending = started.elapsed();
    while let Some(outcome) = tasks.join_next().await {
        outcomes.push(outcome?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(RunResult {
        outcomes,
        wall: started.elapsed(),
        sending,
    })
}

/// Whether request `i` is still to be sent.
fn more(spec: &RunSpec, i: usize, started: Instant) -> bool {
    spec.requests.is_none_or(|n| i < n) && spec.duration.is_none_or(|d| started.elapsed() < d)
}

fn collect_finished(tasks: &mut JoinSet<Outcome>, outcomes: &mut Vec<Outcome>, bar: &ProgressBar) {
    while let Some(Ok(outcome)) = tasks.try_join_next() {
        outcomes.push(outcome);
        bar.inc(1);
    }
}

fn progress_bar(spec: &RunSpec) -> ProgressBar {
    let bar = match spec.requests {
        Some(n) => ProgressBar::new(n as u64),
        None => ProgressBar::no_length(),
    };
    if !spec.progress {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let template = "{elapsed_precise} [{bar:30}] {pos}/{len} answered ({per_sec})";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
