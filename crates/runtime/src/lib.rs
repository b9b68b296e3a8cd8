//! vidcascade-runtime: the server skeleton shared by every vidcascade service.
//!
//! A service's `main.rs` parses its flags (with [`ServerArgs`] flattened in), validates them
//! before binding anything, loads its model, and hands its gRPC routes to [`serve`]. This crate
//! gives every service the same operational surface:
//!
//! - [`config`]: the common flags / `VIDCASCADE_*` variables, validated before any port is bound
//!   (bad configuration exits with status 64 and names the setting);
//! - [`telemetry`]: `tracing` logs, OpenTelemetry export over OTLP when configured, and the W3C
//!   trace context carried in gRPC metadata from one service to the next;
//! - [`metrics`]: a Prometheus recorder and its `/metrics` HTTP endpoint;
//! - [`info`]: the build and model descriptions every `Info` answer carries;
//! - [`deadline`]: the caller's `grpc-timeout`;
//! - [`tls`]: TLS on every listener, client certificates (mTLS) for the internal services;
//! - [`server`]: grpc.health.v1 (NOT_SERVING until warmed up and again while draining), server
//!   reflection, and graceful drain on SIGTERM/SIGINT with a grace period.

pub mod config;
pub mod deadline;
pub mod info;
pub mod metrics;
pub mod server;
pub mod telemetry;
pub mod tls;

pub use config::exit_config;
pub use config::{ConfigError, ServerArgs, parse_or_exit};
pub use server::{
    Bound, HttpSide, ServeOptions, Service, bind_grpc, run_main, run_service, serve, serve_service,
    shutdown_signal,
};
