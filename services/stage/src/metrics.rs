//! Publishes the engine's live counters as Prometheus gauges, a few times a second.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use vidcascade_engine::EngineStats;

/// How often the gauges are refreshed.
const PERIOD: Duration = Duration::from_millis(100);

/// Copies `stats` into the stage's gauges until the process ends.
pub async fn publish_gauges(stage: String, stats: Arc<EngineStats>) {
    let queue_depth = metrics::gauge!("vidcascade_stage_queue_depth", "stage" => stage.clone());
    let running = metrics::gauge!("vidcascade_stage_running_requests", "stage" => stage.clone());
    let pending = metrics::gauge!("vidcascade_stage_pending_steps", "stage" => stage.clone());
    let work = metrics::gauge!("vidcascade_stage_queued_work_seconds", "stage" => stage);
    let mut ticker = tokio::time::interval(PERIOD);
    loop {
        ticker.tick().await;
        queue_depth.set(stats.queued.load(Ordering::Relaxed) as f64);
        running.set(stats.running.load(Ordering::Relaxed) as f64);
        pending.set(stats.pending_steps.load(Ordering::Relaxed) as f64);
        work.set(stats.queued_work_seconds());
    }
}

/// Counts one finished request by outcome.
pub fn count_outcome(stage: &str, outcome: &str) {
    metrics::counter!(
        "vidcascade_stage_requests_total",
        "stage" => stage.to_string(),
        "outcome" => outcome.to_string()
    )
    .increment(1);
}
