//! Progress reporting for `generate`: a bar per stage (steps, elapsed, ETA) on a terminal, plain
//! lines otherwise (CI logs, pipes), so the same command reads well in both places.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Where progress goes.
pub enum Progress {
    /// Interactive bars on stderr.
    Bars {
        /// All bars.
        multi: MultiProgress,
        /// The current stage's bar.
        current: Option<ProgressBar>,
    },
    /// One line per stage start, every ~10 % of steps, and stage end.
    Lines {
        /// Last reported decile of the current stage.
        last_decile: usize,
    },
}

impl Progress {
    /// Bars when stderr is a terminal, lines otherwise.
    pub fn new() -> Self {
        if std::io::stderr().is_terminal() {
            Progress::Bars {
                multi: MultiProgress::new(),
                current: None,
            }
        } else {
            Progress::Lines { last_decile: 0 }
        }
    }

    /// A stage begins.
    pub fn stage_started(&mut self, stage: &str, shape: &str, steps: usize) {
        match self {
            Progress::Bars { multi, current } => {
                let style = ProgressStyle::with_template(
                    "{prefix:>6} {bar:30.cyan/blue} {pos:>3}/{len} steps  {elapsed_precise}  eta {eta}  {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar());
                let bar = multi.add(ProgressBar::new(steps as u64).with_style(style));
                bar.set_prefix(stage.to_string());
                bar.set_message(shape.to_string());
                *current = Some(bar);
            }
            Progress::Lines { last_decile } => {
                *last_decile = 0;
                eprintln!("{stage}: started ({shape}, {steps} steps)");
            }
        }
    }

    /// A step finished.
    pub fn step(&mut self, stage: &str, step: usize, total: usize) {
        match self {
            Progress::Bars { current, .. } => {
                if let Some(bar) = current {
                    bar.set_position(step as u64);
                }
            }
            Progress::Lines { last_decile } => {
                let decile = step * 10 / total.max(1);
                if decile > *last_decile && step < total {
                    *last_decile = decile;
                    eprintln!("{stage}: step {step}/{total}");
                }
            }
        }
    }

    /// A stage finished.
    pub fn stage_completed(&mut self, stage: &str, elapsed: Duration) {
        match self {
            Progress::Bars { current, .. } => {
                if let Some(bar) = current.take() {
                    bar.finish();
                }
            }
            Progress::Lines { .. } => eprintln!("{stage}: done in {:.2} s", elapsed.as_secs_f64()),
        }
    }
}
