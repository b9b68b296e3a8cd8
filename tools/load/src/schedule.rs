//! When requests are sent: closed loop (a fixed number in flight, the next sent when one
//! finishes) or open loop (arrivals at a rate, independent of how fast the service answers —
//! the load a service sees from many independent users, which is what finds its saturation
//! point; a closed loop slows down with the service and hides it).
//!
//! Open-loop arrivals are constant (every 1/rate seconds) or a Poisson process (exponential
//! gaps with mean 1/rate), drawn from a seeded ChaCha8 stream so a run can be repeated.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How open-loop arrivals are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// Exponential gaps: independent users.
    Poisson,
    /// Equal gaps.
    Constant,
}

/// The load model of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoadModel {
    /// `concurrency` requests in flight at all times.
    Closed {
        /// Requests in flight.
        concurrency: usize,
    },
    /// Requests arrive at `rate` per second whatever the service does.
    Open {
        /// Arrivals per second.
        rate: f64,
        /// How they are spaced.
        arrivals: Arrivals,
        /// Seed of the Poisson gaps.
        seed: u64,
    },
}

impl LoadModel {
    /// `closed` or `open`, for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Closed { .. } => "closed",
            Self::Open { .. } => "open",
        }
    }
}

/// Arrival times (offsets from the start) of an open-loop run: at most `limit` of them, none at
/// or after `duration` (when given).
pub fn arrival_times(
    rate: f64,
    arrivals: Arrivals,
    seed: u64,
    limit: usize,
    duration: Option<Duration>,
) -> Vec<Duration> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut at = 0.0_f64;
    let end = duration.map_or(f64::INFINITY, |d| d.as_secs_f64());
    let mut times = Vec::new();
    while times.len() < limit {
        let gap = match arrivals {
            Arrivals::Constant => 1.0 / rate,
            // Inverse CDF of the exponential: -ln(U) / rate, U in (0, 1].
            Arrivals::Poisson => -(1.0 - rng.random::<f64>()).ln() / rate,
        };
        // The first request goes at 0 for a constant rate, after one gap for Poisson (a
        // Poisson process has no arrival at time 0).
        if times.is_empty() && arrivals == Arrivals::Constant {
            times.push(Duration::ZERO);
            continue;
        }
        at += gap;
        if at >= end {
            break;
        }
        times.push(Duration::from_secs_f64(at));
    }
    times
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(times: &[Duration]) -> Vec<f64> {
        times
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect()
    }

    fn mean_and_cv(values: &[f64]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn poisson_gaps_are_exponential_with_the_asked_rate() {
        let times = arrival_times(4.0, Arrivals::Poisson, 11, 20_000, None);
        assert_eq!(times.len(), 20_000);
        let gaps = gaps(&times);
        let (mean, cv) = mean_and_cv(&gaps);
        // Mean 1/rate = 0.25 s; an exponential's coefficient of variation is 1. With 20 000
        // gaps both are within 2 % (the standard error of the mean is 0.7 %).
        assert!((mean - 0.25).abs() < 0.005, "mean gap {mean}");
        assert!((cv - 1.0).abs() < 0.03, "coefficient of variation {cv}");
        // Memorylessness: P(gap > t) = exp(-rate t) at t = mean (e^-1) and t = 2 mean (e^-2).
        for (t, expected) in [(0.25, (-1.0f64).exp()), (0.5, (-2.0f64).exp())] {
            let share = gaps.iter().filter(|&&g| g > t).count() as f64 / gaps.len() as f64;
            assert!((share - expected).abs() < 0.01, "P(gap > {t}) = {share}");
        }
        // Counts in 1 s windows have mean = variance = rate (Poisson dispersion index 1).
        let windows = times.last().map_or(0, |t| t.as_secs() as usize);
        let mut counts = vec![0.0; windows];
        for t in &times {
            if let Some(c) = counts.get_mut(t.as_secs() as usize) {
                *c += 1.0;
            }
        }
        let (count_mean, count_cv) = mean_and_cv(&counts);
        let dispersion = (count_cv * count_mean).powi(2) / count_mean;
        assert!((count_mean - 4.0).abs() < 0.1, "mean count {count_mean}");
        assert!((dispersion - 1.0).abs() < 0.1, "dispersion {dispersion}");
    }

    #[test]
    fn the_same_seed_gives_the_same_arrivals() {
        let a = arrival_times(2.0, Arrivals::Poisson, 5, 100, None);
        assert_eq!(a, arrival_times(2.0, Arrivals::Poisson, 5, 100, None));
        assert_ne!(a, arrival_times(2.0, Arrivals::Poisson, 6, 100, None));
    }

    #[test]
    fn constant_arrivals_are_evenly_spaced_and_bounded_by_the_duration() {
        let times = arrival_times(
            2.0,
            Arrivals::Constant,
            0,
            100,
            Some(Duration::from_secs(3)),
        );
        let secs: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
        assert_eq!(secs, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
        let bounded = arrival_times(
            1.0,
            Arrivals::Poisson,
            1,
            1000,
            Some(Duration::from_secs(10)),
        );
        assert!(bounded.iter().all(|t| *t < Duration::from_secs(10)));
    }
}
