//! vidcascade-gateway: the public `vidcascade.v1.Gateway`.
//!
//! For each request the gateway checks admission (draining, capacity), then runs the cascade
//! pipeline (`vidcascade-pipeline`: validation — every violation is INVALID_ARGUMENT naming the
//! field and the limit — planning, the deadline shared across stages by expected work, text
//! encoder -> base -> every SR stage) over [`backend::ReplicaBackend`], and forwards one ordered
//! stream: accepted, then per stage and clip started / progress / previews / completed (with
//! that stage's video when asked, so the client sees the low-resolution result long before the
//! final one), then the final video with timings. It links no tensor code.
//!
//! Stage replicas come from [`discovery`] (a static list, DNS names re-resolved periodically,
//! or a Kubernetes Service's EndpointSlices watched live, [`kubernetes`]) and
//! [`replicas`] balances each call to the replica with the fewest calls in flight. A stage call
//! that fails with UNAVAILABLE (or RESOURCE_EXHAUSTED) before streaming anything is retried on
//! another replica. When the client goes away the pipeline drops its stage call, which cancels
//! it, and the stage evicts the sample at its next denoising step.
//!
//! Metrics: `vidcascade_gateway_requests_total{outcome}`, `vidcascade_gateway_in_flight`,
//! `vidcascade_gateway_waiting`, `vidcascade_gateway_request_seconds`,
//! `vidcascade_gateway_stage_seconds{stage}`, `vidcascade_gateway_stage_retries_total{stage}`.

pub mod auth;
pub mod backend;
pub mod config;
pub mod discovery;
pub mod encoding;
pub mod error;
pub mod events;
pub mod health;
pub mod http;
pub mod kubernetes;
pub mod line;
pub mod replicas;
pub mod service;

pub use config::{GatewayCli, GatewayConfig};
pub use service::GatewayServer;
