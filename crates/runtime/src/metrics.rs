//! Prometheus metrics: one process-wide recorder behind the `metrics` facade, rendered on
//! `GET /metrics`.
//!
//! Metric names follow `vidcascade_<thing>_<unit>`; each service documents its own in its crate.
//! Several services in one process (`vidcascade serve`) share the recorder and tell their series
//! apart by labels.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Histogram buckets for latencies in seconds (a denoising step is ~10 ms-1 s on CPU, a whole
/// generation seconds to minutes).
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Histogram buckets for batch sizes.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// What a metric is.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric of every service, with its `# HELP` text: one table, so the exposition is
/// documented wherever the metric is recorded (docs/services.md lists the same).
const DESCRIPTIONS: &[(Kind, &str, &str)] = &[
    (
        Kind::Gauge,
        "vidcascade_build_info",
        "Always 1; the labels say which build runs.",
    ),
    (
        Kind::Counter,
        "vidcascade_stage_requests_total",
        "Stage requests by outcome.",
    ),
    (
        Kind::Gauge,
        "vidcascade_stage_queue_depth",
        "Stage requests waiting for a batch slot.",
    ),
    (
        Kind::Gauge,
        "vidcascade_stage_running_requests",
        "Samples in the stage's running batch.",
    ),
    (
        Kind::Gauge,
        "vidcascade_stage_pending_steps",
        "Denoising steps still to run, queued and running.",
    ),
    (
        Kind::Gauge,
        "vidcascade_stage_queued_work_seconds",
        "Pending steps times the recent step time: the autoscaling signal.",
    ),
    (
        Kind::Histogram,
        "vidcascade_stage_batch_size",
        "Samples per batched network call.",
    ),
    (
        Kind::Histogram,
        "vidcascade_stage_step_seconds",
        "Wall time of one batched denoising step.",
    ),
    (
        Kind::Counter,
        "vidcascade_encoder_requests_total",
        "Encode calls by outcome.",
    ),
    (
        Kind::Histogram,
        "vidcascade_encoder_seconds",
        "Time to encode one call's prompts.",
    ),
    (
        Kind::Gauge,
        "vidcascade_encoder_queue_depth",
        "Encode calls waiting.",
    ),
    (
        Kind::Counter,
        "vidcascade_gateway_requests_total",
        "Generations by outcome.",
    ),
    (
        Kind::Histogram,
        "vidcascade_gateway_request_seconds",
        "Generation time from admission to the last event, by outcome.",
    ),
    (
        Kind::Histogram,
        "vidcascade_gateway_stage_seconds",
        "Time of one stage call, by stage.",
    ),
    (
        Kind::Counter,
        "vidcascade_gateway_stage_retries_total",
        "Stage calls retried on another replica before streaming.",
    ),
    (
        Kind::Counter,
        "vidcascade_gateway_stage_failovers_total",
        "Stage calls resumed on another replica after a mid-stream failure.",
    ),
    (
        Kind::Counter,
        "vidcascade_gateway_replica_ejections_total",
        "Replicas ejected by outlier detection.",
    ),
    (
        Kind::Counter,
        "vidcascade_gateway_rate_limited_total",
        "Calls refused by the rate limit.",
    ),
    (
        Kind::Gauge,
        "vidcascade_gateway_in_flight",
        "Generations running.",
    ),
    (
        Kind::Gauge,
        "vidcascade_gateway_waiting",
        "Generations waiting for a slot.",
    ),
];

fn describe_all() {
    for &(kind, name, help) in DESCRIPTIONS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
    let build = crate::info::build_info();
    metrics::gauge!("vidcascade_build_info", "version" => build.version, "git_sha" => build.git_sha)
        .set(1.0);
}

/// Installs the process-wide recorder (once; later calls return the same handle).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), BATCH_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        anyhow::bail!("another metrics recorder is already installed in this process");
    }
    let _ = HANDLE.set(handle.clone());
    describe_all();
    Ok(handle)
}

async fn readyz() -> (axum::http::StatusCode, &'static str) {
    if crate::server::is_serving() {
        (axum::http::StatusCode::OK, "ready\n")
    } else {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Binds the metrics endpoint (`/metrics`, and `/healthz` and `/readyz` for probes); returns
/// the bound address and a future that serves it until the process ends.
pub async fn bind(
    addr: SocketAddr,
    handle: PrometheusHandle,
) -> anyhow::Result<(SocketAddr, impl Future<Output = ()> + Send + 'static)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("binding the metrics endpoint on {addr}: {err}"))?;
    let local = listener.local_addr()?;
    let upkeep = handle.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        )
        // Plaintext probes for a TLS-only gRPC port: the process is up / says SERVING.
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    let serve = async move {
        // Histograms keep a rolling window that needs periodic upkeep.
        let upkeep = async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                upkeep.run_upkeep();
            }
        };
        tokio::select! {
            result = axum::serve(listener, app) => {
                if let Err(err) = result {
                    tracing::error!(%err, "metrics endpoint stopped");
                }
            }
            () = upkeep => {}
        }
    };
    Ok((local, serve))
}
