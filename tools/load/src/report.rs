//! A run's numbers: offered and achieved rate, latency percentiles, time to the first progress
//! event, time in the stages' queues, outcomes by status code, batch sizes and a metrics
//! snapshot — printed as a table row, appended as JSON lines and CSV rows.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use vidcascade_proto::convert::code_name;

use crate::runner::RunResult;
use crate::schedule::{Arrivals, LoadModel};
use crate::scrape::MetricsDelta;

/// Percentiles of one quantity, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values`; `None` when empty.
    pub fn of(values: impl IntoIterator<Item = Duration>) -> Option<Self> {
        let mut seconds: Vec<f64> = values.into_iter().map(|d| d.as_secs_f64()).collect();
        if seconds.is_empty() {
            return None;
        }
        seconds.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let index = ((p * seconds.len() as f64).ceil() as usize).clamp(1, seconds.len()) - 1;
            seconds[index]
        };
        Some(Self {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: seconds[seconds.len() - 1],
        })
    }
}

/// Everything one run measured (one JSON line; the capacity planner's input).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Name of the configuration (e.g. `max batch 4`).
    pub label: String,
    /// `gateway`, `encoder` or `stage:NAME`.
    pub target: String,
    /// `closed` or `open`.
    pub load: String,
    /// Closed loop: requests in flight.
    pub concurrency: Option<usize>,
    /// Open loop: arrivals asked for, per second.
    pub offered_rate: Option<f64>,
    /// Open loop: how arrivals were spaced.
    pub arrivals: Option<String>,
    /// Requests sent (warm-up excluded).
    pub requests: usize,
    /// Of which answered OK.
    pub ok: usize,
    /// Requests sent per second while sending.
    pub sent_rate: f64,
    /// OK answers per second, first send to last answer.
    pub achieved_rate: f64,
    /// From the first send to the last answer.
    pub wall_s: f64,
    /// End-to-end latency of OK calls.
    pub latency: Option<Percentiles>,
    /// Time to the first progress event (first denoising step) of OK calls.
    pub first_progress: Option<Percentiles>,
    /// Time in the stages' queues, as they report it.
    pub queued: Option<Percentiles>,
    /// Calls per final status code (`OK`, `RESOURCE_EXHAUSTED`, ...).
    pub outcomes: BTreeMap<String, usize>,
    /// Mean samples per batched network call over the run (stage metrics).
    pub mean_batch_size: Option<f64>,
    /// Batched calls per batch-size bucket (`le` -> count) over the run.
    pub batch_sizes: BTreeMap<String, f64>,
    /// The services' `vidcascade_*` samples at the end of the run.
    pub metrics: BTreeMap<String, f64>,
}

impl Report {
    /// The report of `result`, a run of `load` labelled `label` against `target`.
    pub fn new(
        label: &str,
        target: &str,
        load: &LoadModel,
        result: &RunResult,
        metrics: Option<&MetricsDelta>,
    ) -> Self {
        let ok: Vec<_> = result
            .outcomes
            .iter()
            .filter(|o| o.code == tonic::Code::Ok)
            .collect();
        let mut outcomes = BTreeMap::new();
        for outcome in &result.outcomes {
            *outcomes.entry(code_name(outcome.code)).or_insert(0) += 1;
        }
        let (concurrency, offered_rate, arrivals) = match *load {
            LoadModel::Closed { concurrency } => (Some(concurrency), None, None),
            LoadModel::Open { rate, arrivals, .. } => {
                (None, Some(rate), Some(arrivals_name(arrivals)))
            }
        };
        let per_second = |n: usize, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
        Self {
            label: label.to_string(),
            target: target.to_string(),
            load: load.name().to_string(),
            concurrency,
            offered_rate,
            arrivals,
            requests: result.outcomes.len(),
            ok: ok.len(),
            sent_rate: per_second(result.outcomes.len(), result.sending),
            achieved_rate: per_second(ok.len(), result.wall),
            wall_s: result.wall.as_secs_f64(),
            latency: Percentiles::of(ok.iter().map(|o| o.latency)),
            first_progress: Percentiles::of(ok.iter().filter_map(|o| o.first_progress)),
            queued: Percentiles::of(ok.iter().filter_map(|o| o.queued)),
            outcomes,
            mean_batch_size: metrics.and_then(MetricsDelta::mean_batch_size),
            batch_sizes: metrics.map(MetricsDelta::batch_buckets).unwrap_or_default(),
            metrics: metrics.map(|m| m.after.clone()).unwrap_or_default(),
        }
    }

    /// The markdown table header matching [`Report::table_row`].
    pub fn table_header() -> &'static str {
        "| label | target | load | offered/s | requests | OK | achieved/s | p50 s | p90 s | p99 s | max s | first step p50 s | queued p50 s | mean batch | outcomes |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    }

    /// One markdown table row.
    pub fn table_row(&self) -> String {
        let p = |p: Option<Percentiles>, f: fn(&Percentiles) -> f64| {
            p.map_or("-".to_string(), |p| format!("{:.3}", f(&p)))
        };
        let offered = match (self.offered_rate, self.concurrency) {
            (Some(rate), _) => format!("{rate:.2} ({})", self.arrivals.as_deref().unwrap_or("")),
            (None, Some(c)) => format!("closed, {c} in flight"),
            (None, None) => "-".into(),
        };
        format!(
            "| {} | {} | {} | {offered} | {} | {} | {:.3} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.label,
            self.target,
            self.load,
            self.requests,
            self.ok,
            self.achieved_rate,
            p(self.latency, |p| p.p50),
            p(self.latency, |p| p.p90),
            p(self.latency, |p| p.p99),
            p(self.latency, |p| p.max),
            p(self.first_progress, |p| p.p50),
            p(self.queued, |p| p.p50),
            self.mean_batch_size
                .map_or("-".into(), |b| format!("{b:.2}")),
            self.outcomes_text(),
        )
    }

    fn outcomes_text(&self) -> String {
        let parts: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.join(" ")
    }

    /// Appends the report to `path` as one JSON line.
    pub fn append_json(&self, path: &Path) -> anyhow::Result<()> {
        let line = serde_json::to_string(self)?;
        append(path, &format!("{line}\n"), None)
    }

    /// Appends the report to `path` as one CSV row (a header first when the file is new).
    pub fn append_csv(&self, path: &Path) -> anyhow::Result<()> {
        let header = "label,target,load,concurrency,offered_rate,arrivals,requests,ok,sent_rate,achieved_rate,wall_s,latency_p50_s,latency_p90_s,latency_p99_s,latency_max_s,first_progress_p50_s,first_progress_p90_s,queued_p50_s,queued_p90_s,mean_batch_size,outcomes";
        let num = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
        let pick = |p: Option<Percentiles>, f: fn(&Percentiles) -> f64| num(p.map(|p| f(&p)));
        let row = [
            csv_field(&self.label),
            self.target.clone(),
            self.load.clone(),
            self.concurrency.map_or(String::new(), |c| c.to_string()),
            num(self.offered_rate),
            self.arrivals.clone().unwrap_or_default(),
            self.requests.to_string(),
            self.ok.to_string(),
            num(Some(self.sent_rate)),
            num(Some(self.achieved_rate)),
            num(Some(self.wall_s)),
            pick(self.latency, |p| p.p50),
            pick(self.latency, |p| p.p90),
            pick(self.latency, |p| p.p99),
            pick(self.latency, |p| p.max),
            pick(self.first_progress, |p| p.p50),
            pick(self.first_progress, |p| p.p90),
            pick(self.queued, |p| p.p50),
            pick(self.queued, |p| p.p90),
            num(self.mean_batch_size),
            csv_field(&self.outcomes_text()),
        ]
        .join(",");
        append(path, &format!("{row}\n"), Some(header))
    }
}

/// Reads every report of a JSON lines file.
pub fn read_json_lines(path: &Path) -> anyhow::Result<Vec<Report>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

fn append(path: &Path, text: &str, header: Option<&str>) -> anyhow::Result<()> {
    let new = !path.exists();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    if let (true, Some(header)) = (new, header) {
        writeln!(file, "{header}")?;
    }
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn arrivals_name(arrivals: Arrivals) -> String {
    match arrivals {
        Arrivals::Poisson => "poisson".into(),
        Arrivals::Constant => "constant".into(),
    }
}

/// The saturation knee of an open-loop sweep (reports in increasing offered rate): the highest
/// offered rate the target still kept up with — at least 90 % of the offered rate achieved and
/// a p99 latency within 3x the lightest load's.
pub fn knee(reports: &[Report]) -> Option<f64> {
    let base_p99 = reports.first()?.latency?.p99;
    reports
        .iter()
        .take_while(|r| {
            let offered = r.offered_rate.unwrap_or(0.0);
            r.achieved_rate >= 0.9 * offered && r.latency.is_some_and(|l| l.p99 <= 3.0 * base_p99)
        })
        .last()
        .and_then(|r| r.offered_rate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Outcome;

    fn outcome(latency_ms: u64, code: tonic::Code) -> Outcome {
        Outcome {
            sent_at: Duration::ZERO,
            latency: Duration::from_millis(latency_ms),
            first_progress: Some(Duration::from_millis(latency_ms / 10)),
            queued: None,
            code,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() -> anyhow::Result<()> {
        let values = (1..=100).map(Duration::from_millis);
        let p = Percentiles::of(values).context("values")?;
        assert_eq!((p.p50, p.p90, p.p99, p.max), (0.05, 0.09, 0.099, 0.1));
        assert_eq!(Percentiles::of(Vec::new()), None);
        Ok(())
    }

    #[test]
    fn a_report_counts_outcomes_and_times_only_ok_calls() {
        let mut outcomes: Vec<Outcome> =
            (1..=4).map(|i| outcome(i * 100, tonic::Code::Ok)).collect();
        outcomes.push(outcome(5000, tonic::Code::ResourceExhausted));
        let result = RunResult {
            outcomes,
            wall: Duration::from_secs(2),
            sending: Duration::from_secs(1),
        };
        let load = LoadModel::Open {
            rate: 5.0,
            arrivals: Arrivals::Poisson,
            seed: 1,
        };
        let report = Report::new("x", "stage:base", &load, &result, None);
        assert_eq!((report.requests, report.ok), (5, 4));
        assert_eq!(report.outcomes.get("RESOURCE_EXHAUSTED"), Some(&1));
        assert_eq!(report.latency.map(|l| l.max), Some(0.4));
        assert!((report.achieved_rate - 2.0).abs() < 1e-9);
        assert!((report.sent_rate - 5.0).abs() < 1e-9);
        assert_eq!(report.arrivals.as_deref(), Some("poisson"));
        assert!(report.table_row().contains("RESOURCE_EXHAUSTED=1"));
    }

    #[test]
    fn the_knee_is_the_last_rate_kept_up_with() {
        let at = |rate: f64, achieved: f64, p99: f64| Report {
            offered_rate: Some(rate),
            achieved_rate: achieved,
            latency: Some(Percentiles {
                p50: p99,
                p90: p99,
                p99,
                max: p99,
            }),
            ..Report::new(
                "",
                "",
                &LoadModel::Closed { concurrency: 1 },
                &RunResult {
                    outcomes: Vec::new(),
                    wall: Duration::from_secs(1),
                    sending: Duration::from_secs(1),
                },
                None,
            )
        };
        let sweep = [
            at(0.5, 0.5, 1.0),
            at(1.0, 0.98, 1.2),
            at(2.0, 1.3, 5.0),
            at(4.0, 1.3, 9.0),
        ];
        assert_eq!(knee(&sweep), Some(1.0));
    }
}
