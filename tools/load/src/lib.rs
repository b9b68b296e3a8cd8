//! vidcascade-load: load tests of the gateway, the text encoder, or one diffusion stage alone.
//!
//! - [`payload`]: realistic requests for a stage alone (embeddings from the real encoder,
//!   conditioning videos from the real upstream stages), recorded once and replayed.
//! - [`schedule`]: closed loop (N in flight) or open loop (Poisson or constant arrivals at a
//!   rate), seeded.
//! - [`target`]: one measured call to the gateway, the encoder or a stage.
//! - [`runner`]: a run (warm-up excluded, bounded by requests or duration, progress bar).
//! - [`scrape`]: the services' metrics before and after (batch sizes, queue depth).
//! - [`report`]: percentiles, outcomes by status code, JSON lines, CSV, the saturation knee.
//! - [`plot`]: PNG plots of sweeps.
//! - [`capacity`]: per-stage capacity (service time, throughput per batch size, batching gain,
//!   best threads) from a standard sweep, as a table and a JSON summary.
//! - [`planner`]: replicas per stage for an arrival rate and a latency target, by a
//!   discrete-event simulation of the cascade with step-level batching.
//!
//! The JSON lines ([`report::Report`], one per run) are the input of capacity planning: per
//! stage, service time at batch 1 and maximum throughput per batch size.

pub mod capacity;
pub mod payload;
pub mod planner;
pub mod plot;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod scrape;
pub mod target;

use std::sync::Arc;

use crate::report::Report;
use crate::runner::{RunResult, RunSpec};
use crate::scrape::MetricsDelta;
use crate::target::Driver;

/// Warms `driver` up, then runs `spec` against it, reading the services' metrics at `metrics`
/// (`host:port`) before and after the run, and reports it as `label`.
pub async fn measure(
    driver: Arc<Driver>,
    spec: &RunSpec,
    metrics: &[String],
    label: &str,
) -> anyhow::Result<(Report, RunResult)> {
    let target = driver.target().to_string();
    runner::warm_up(&driver, spec).await;
    let before = match metrics.is_empty() {
        true => None,
        false => Some(scrape::scrape(metrics).await?),
    };
    let result = runner::run(driver, spec).await?;
    let delta = match before {
        Some(before) => Some(MetricsDelta {
            before,
            after: scrape::scrape(metrics).await?,
        }),
        None => None,
    };
    let report = Report::new(label, &target, &spec.load, &result, delta.as_ref());
    Ok((report, result))
}
