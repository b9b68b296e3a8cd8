//! `vidcascade plan`: replicas per stage for an arrival rate and a p90 latency target, from
//! the per-stage capacity a sweep measured (`benches/stages.sh` -> `docs/bench/stages.json`),
//! predicted by a discrete-event simulation of the cascade with step-level batching
//! (`vidcascade_load::planner`); optionally a values file for the Helm chart.

use std::fmt::Write as _;

use anyhow::{Context, bail};
use vidcascade_load::capacity::Capacity;
use vidcascade_load::planner::{Host, Prediction, StageModel, plan};
use vidcascade_spec::Manifest;

use super::PlanArgs;

/// Simulated requests per prediction: enough for a stable p90.
const SIMULATED_REQUESTS: usize = 20_000;

/// Runs `plan`.
pub fn run(args: &PlanArgs) -> anyhow::Result<()> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!(
            "--rate must be a positive number of requests per second, got {}",
            args.rate
        );
    }
    if !(args.p90.is_finite() && args.p90 > 0.0) {
        bail!("--p90 must be positive seconds, got {}", args.p90);
    }
    let text = std::fs::read_to_string(&args.capacity)
        .with_context(|| format!("reading {}", args.capacity.display()))?;
    let capacity: Capacity = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not a capacity summary (vidcascade-load capacity --summary)",
            args.capacity.display()
        )
    })?;
    let manifest = Manifest::load(&args.model.model)?;
    let stages = manifest
        .diffusion_stages()
        .map(|stage| {
            let measured = capacity.stages.get(&stage.name).with_context(|| {
                format!(
                    "{} has no measurement of stage `{}`",
                    args.capacity.display(),
                    stage.name
                )
            })?;
            Ok(StageModel::from_capacity(
                &stage.name,
                stage.defaults.steps,
                args.max_batch,
                measured,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let prediction = plan(
        &stages,
        args.rate,
        args.p90,
        args.max_replicas,
        SIMULATED_REQUESTS,
        1,
        if args.one_host {
            Host::Shared
        } else {
            Host::Dedicated
        },
    );
    print!("{}", table(&prediction, args));
    if args.one_host {
        println!("(one host: every replica shares this machine's cores, one replica per stage)");
    }
    if prediction.p90_s > args.p90 {
        eprintln!(
            "warning: even {} replicas per stage miss the p90 target ({:.2} s > {:.2} s)",
            args.max_replicas, prediction.p90_s, args.p90
        );
    }
    if let Some(path) = &args.values_out {
        std::fs::write(path, values(&prediction, args.max_batch))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "wrote {} (helm install ... -f {})",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

fn table(prediction: &Prediction, args: &PlanArgs) -> String {
    let mut out = format!(
        "{} requests/s, p90 target {:.2} s, max batch {}:\n\
         | stage | replicas | utilisation | mean queue wait (s) | mean time in stage (s) |\n\
         |---|---|---|---|---|\n",
        args.rate, args.p90, args.max_batch
    );
    for (k, (name, replicas)) in prediction.replicas.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {name} | {replicas} | {:.0} % | {:.2} | {:.2} |",
            prediction.utilisation[k].1 * 100.0,
            prediction.mean_wait_s[k].1,
            prediction.mean_stage_s[k].1
        );
    }
    let _ = writeln!(
        out,
        "predicted end-to-end latency: p50 {:.2} s, p90 {:.2} s",
        prediction.p50_s, prediction.p90_s
    );
    out
}

/// A values file pinning each stage's replicas (the autoscaler's floor) and the batch size the
/// plan assumed.
fn values(prediction: &Prediction, max_batch: usize) -> String {
    let mut out = format!(
        "# Written by `vidcascade plan`: each stage's planned replicas as its floor.\n\
         stageDefaults:\n  maxBatchSize: {max_batch}\nstages:\n"
    );
    for (name, replicas) in &prediction.replicas {
        let _ = writeln!(
            out,
            "  - name: {name}\n    replicas: {replicas}\n    autoscaling:\n      minReplicas: {replicas}"
        );
    }
    out
}
