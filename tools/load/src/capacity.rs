//! Per-stage capacity from a standard sweep's reports (`benches/stages.sh`): service time at
//! batch 1, maximum throughput per batch size, the batching gain and the best threads per
//! process — as a markdown table for people and a JSON summary for capacity planning.
//!
//! The sweep labels its runs with `key=value` words: `stage=base kind=service threads=2`
//! (closed loop, one in flight, max batch 1: the service time), `stage=base kind=capacity
//! batch=4` (closed loop with enough in flight to fill batches of 4: the maximum throughput).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::report::Report;

/// One stage's capacity on the machine the sweep ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageCapacity {
    /// Median seconds per request alone (batch 1, the best thread count).
    pub service_time_s: f64,
    /// Threads per process with the lowest service time.
    pub best_threads: usize,
    /// Median service time per thread count.
    pub service_time_by_threads: BTreeMap<usize, f64>,
    /// Requests per second at each maximum batch size.
    pub max_throughput_per_s: BTreeMap<usize, f64>,
    /// Best throughput over batch-1 throughput.
    pub batching_gain: f64,
}

/// The capacity summary of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// Per stage (including `encoder` when it was swept).
    pub stages: BTreeMap<String, StageCapacity>,
}

/// The value of `key=value` in a run's label.
fn label_value<'a>(report: &'a Report, key: &str) -> Option<&'a str> {
    report
        .label
        .split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

impl Capacity {
    /// The capacity of every stage the reports label.
    pub fn from_reports(reports: &[Report]) -> Self {
        let mut stages = BTreeMap::new();
        let names: std::collections::BTreeSet<&str> = reports
            .iter()
            .filter_map(|r| label_value(r, "stage"))
            .collect();
        for name in names {
            let of_stage = |kind: &'static str| {
                reports.iter().filter(move |r| {
                    label_value(r, "stage") == Some(name) && label_value(r, "kind") == Some(kind)
                })
            };
            let by_threads: BTreeMap<usize, f64> = of_stage("service")
                .filter_map(|r| Some((label_value(r, "threads")?.parse().ok()?, r.latency?.p50)))
                .collect();
            let throughput: BTreeMap<usize, f64> = of_stage("capacity")
                .filter_map(|r| Some((label_value(r, "batch")?.parse().ok()?, r.achieved_rate)))
                .collect();
            let Some((&best_threads, &service_time_s)) =
                by_threads.iter().min_by(|a, b| a.1.total_cmp(b.1))
            else {
                continue;
            };
            let single = throughput.get(&1).copied().unwrap_or(0.0);
            let best = throughput.values().copied().fold(0.0, f64::max);
            stages.insert(
                name.to_string(),
                StageCapacity {
                    service_time_s,
                    best_threads,
                    service_time_by_threads: by_threads,
                    batching_gain: if single > 0.0 { best / single } else { 0.0 },
                    max_throughput_per_s: throughput,
                },
            );
        }
        Self { stages }
    }

    /// The markdown table: one row per stage.
    pub fn table(&self) -> String {
        let batches: std::collections::BTreeSet<usize> = self
            .stages
            .values()
            .flat_map(|s| s.max_throughput_per_s.keys().copied())
            .collect();
        let mut out = String::from("| stage | service time at batch 1 (s) |");
        for batch in &batches {
            out += &format!(" max throughput, batch {batch} (req/s) |");
        }
        out += " batching gain | best threads per process (service time by threads) |\n|---|---|";
        out += &"---|".repeat(batches.len() + 2);
        for (name, stage) in &self.stages {
            out += &format!("\n| {name} | {:.3} |", stage.service_time_s);
            for batch in &batches {
                out += &match stage.max_throughput_per_s.get(batch) {
                    Some(rate) => format!(" {rate:.3} |"),
                    None => " - |".to_string(),
                };
            }
            let threads: Vec<String> = stage
                .service_time_by_threads
                .iter()
                .map(|(t, s)| format!("{t}: {s:.3} s"))
                .collect();
            out += &format!(
                " {:.2}x | {} ({}) |",
                stage.batching_gain,
                stage.best_threads,
                threads.join(", ")
            );
        }
        out + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Percentiles;
    use crate::runner::RunResult;
    use crate::schedule::LoadModel;

    fn report(label: &str, p50: f64, achieved: f64) -> Report {
        let mut report = Report::new(
            label,
            "stage:base",
            &LoadModel::Closed { concurrency: 1 },
            &RunResult {
                outcomes: Vec::new(),
                wall: std::time::Duration::from_secs(1),
                sending: std::time::Duration::from_secs(1),
            },
            None,
        );
        report.latency = Some(Percentiles {
            p50,
            p90: p50,
            p99: p50,
            max: p50,
        });
        report.achieved_rate = achieved;
        report
    }

    #[test]
    fn the_table_picks_the_best_threads_and_the_batching_gain() {
        let reports = [
            report("stage=base kind=service threads=1", 1.5, 0.6),
            report("stage=base kind=service threads=2", 1.0, 0.9),
            report("stage=base kind=capacity batch=1", 1.0, 1.0),
            report("stage=base kind=capacity batch=4", 1.2, 2.5),
            report("unlabelled", 9.0, 9.0),
        ];
        let capacity = Capacity::from_reports(&reports);
        let base = &capacity.stages["base"];
        assert_eq!((base.best_threads, base.service_time_s), (2, 1.0));
        assert!((base.batching_gain - 2.5).abs() < 1e-9);
        assert_eq!(capacity.stages.len(), 1);
        let table = capacity.table();
        assert!(
            table.contains("| base | 1.000 | 1.000 | 2.500 | 2.50x | 2 (1: 1.500 s, 2: 1.000 s) |"),
            "{table}"
        );
    }
}
