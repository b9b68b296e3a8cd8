//! The stage engine's live counters: what the stage service exports as gauges and what the
//! autoscaling signal (queued work in seconds) is computed from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters the services export as metrics.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Requests waiting.
    pub queued: AtomicU64,
    /// Samples in the running batch.
    pub running: AtomicU64,
    /// Denoising steps still to run for queued and running requests (queued work).
    pub pending_steps: AtomicU64,
    /// Network calls made.
    pub batches: AtomicU64,
    /// Sum of batch sizes over all network calls.
    pub batched_samples: AtomicU64,
    /// Requests finished.
    pub completed: AtomicU64,
    /// Requests that failed.
    pub failed: AtomicU64,
    /// Requests dropped because the caller left or cancelled.
    pub cancelled: AtomicU64,
    /// Requests stopped by their deadline.
    pub deadline_exceeded: AtomicU64,
    /// Requests rejected because the queue was full.
    pub rejected: AtomicU64,
    /// Exponential moving average of one step's wall time, in microseconds.
    pub step_micros_ema: AtomicU64,
}

impl EngineStats {
    /// Estimated seconds of work queued and running (pending steps x recent step time).
    pub fn queued_work_seconds(&self) -> f64 {
        self.pending_steps.load(Ordering::Relaxed) as f64
            * self.step_micros_ema.load(Ordering::Relaxed) as f64
            / 1e6
    }

    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn steps_done(&self, steps: usize) {
        self.pending_steps
            .fetch_sub(steps as u64, Ordering::Relaxed);
    }

    pub(crate) fn record_step(&self, elapsed: Duration, batch: usize) {
        let micros = elapsed.as_micros() as u64;
        let ema = self.step_micros_ema.load(Ordering::Relaxed);
        let ema = if ema == 0 {
            micros
        } else {
            (ema * 9 + micros) / 10
        };
        self.step_micros_ema.store(ema, Ordering::Relaxed);
        Self::count(&self.batches);
        self.batched_samples
            .fetch_add(batch as u64, Ordering::Relaxed);
    }
}
