//! Serving: health, reflection, the service's routes, warm-up and graceful drain.
//!
//! Life of a service: bind, answer health checks with NOT_SERVING while the model warms up,
//! SERVING once it has, and on SIGTERM/SIGINT go NOT_SERVING, stop admitting work (the service's
//! `on_drain`, so new calls get UNAVAILABLE and the gateway retries them elsewhere), let in-flight
//! streams finish for up to the grace period, then exit.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic::transport::{Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// How a service is served.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Name for logs, e.g. `vidcascade-stage[base]`.
    pub label: String,
    /// Fully qualified gRPC service names reported by grpc.health.v1 (besides the overall `""`).
    pub health_names: Vec<String>,
    /// How long in-flight requests may run after a drain starts.
    pub drain_grace: Duration,
    /// After warm-up, health follows this (SERVING while true) until the drain; `None`: SERVING
    /// from warm-up to drain. The gateway is ready only while every stage has a live replica.
    pub readiness: Option<tokio::sync::watch::Receiver<bool>>,
    /// Services server reflection lists (health and reflection are added to them); the
    /// descriptors of others stay unlisted.
    pub public_services: Vec<String>,
    /// TLS of the listener; `None` = plaintext.
    pub tls: Option<ServerTlsConfig>,
    /// HTTP/2 concurrent streams per connection.
    pub max_streams_per_connection: u32,
}

/// Addresses a service ended up listening on (ports may have been 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// gRPC.
    pub grpc: SocketAddr,
    /// Prometheus `/metrics`, when enabled.
    pub metrics: Option<SocketAddr>,
    /// The service's HTTP API, when it has one.
    pub http: Option<SocketAddr>,
}

impl Bound {
    /// The line a binary prints on stdout once bound, which tests and `vidcascade serve` read.
    pub fn announcement(&self, service: &str) -> String {
        let mut line = format!("{service} listening grpc={}", self.grpc);
        if let Some(metrics) = self.metrics {
            line += &format!(" metrics={metrics}");
        }
        if let Some(http) = self.http {
            line += &format!(" http={http}");
        }
        line
    }
}

/// A service's HTTP API beside its gRPC one: the bound listener and the routes. It starts and
/// drains with the gRPC server: on shutdown it stops accepting, lets open responses (event
/// streams) finish within the same grace period, then cuts them.
#[derive(Debug)]
pub struct HttpSide {
    /// Where it listens.
    pub listener: TcpListener,
    /// What it serves.
    pub router: axum::Router,
}

impl HttpSide {
    /// Binds the HTTP API `service` has (none: `None`), naming `--http-listen` on failure.
    pub async fn of<S: Service>(service: &S) -> anyhow::Result<Option<Self>> {
        let Some((addr, router)) = service.http() else {
            return Ok(None);
        };
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the HTTP address {addr} (--http-listen)"))?;
        Ok(Some(Self { listener, router }))
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` fires, then finishes open responses.
    fn spawn(
        self,
        stop: tokio::sync::oneshot::Receiver<()>,
    ) -> tokio::task::JoinHandle<std::io::Result<()>> {
        let app = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move {
            axum::serve(self.listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop.await;
                })
                .await
        })
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

/// Whether this process's service last reported SERVING: the metrics port's `/readyz`, for
/// probes that cannot speak gRPC over TLS (the kubelet's).
static SERVING: AtomicBool = AtomicBool::new(false);

/// What grpc.health.v1 says for the whole server (`""`), as a flag: SERVING or not.
pub fn is_serving() -> bool {
    SERVING.load(Ordering::Relaxed)
}

async fn set_all(reporter: &HealthReporter, names: &[String], status: ServingStatus) {
    SERVING.store(status == ServingStatus::Serving, Ordering::Relaxed);
    reporter.set_service_status("", status).await;
    for name in names {
        reporter.set_service_status(name.as_str(), status).await;
    }
}

/// Serves `routes` (plus health and reflection) on `listener` until `shutdown` resolves, then
/// drains. `warm_up` runs after binding; health reports SERVING only once it succeeds, and its
/// failure ends the service with that error.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    options: ServeOptions,
    warm_up: impl Future<Output = anyhow::Result<()>>,
    shutdown: impl Future<Output = ()>,
    on_drain: impl FnOnce(),
    http: Option<HttpSide>,
) -> anyhow::Result<()> {
    let (reporter, routes) = add_health_and_reflection(routes, &options).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = spawn_server(listener, routes, &options, stop_rx)?;
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = http.map(|http| http.spawn(http_stopped));

    let label = options.label.as_str();
    tokio::pin!(shutdown);
    let started = std::time::Instant::now();
    let mut stopped = false;
    tokio::select! {
        result = warm_up => {
            result.with_context(|| format!("{label}: warm-up failed"))?;
            let ready = options.readiness.as_ref().is_none_or(|r| *r.borrow());
            let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
            set_all(&reporter, &options.health_names, status).await;
            tracing::info!(service = label, warm_up_ms = started.elapsed().as_millis() as u64, "serving");
        }
        () = &mut shutdown => {
            tracing::info!(service = label, "stopped before warm-up finished");
            stopped = true;
        }
        result = &mut server => {
            return server_ended(label, result);
        }
    }

    let mut readiness = options.readiness.clone();
    // A finished `shutdown` must not be polled again.
    while !stopped {
        tokio::select! {
            () = &mut shutdown => stopped = true,
            result = &mut server => return server_ended(label, result),
            ready = ready_changed(&mut readiness) => {
                let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
                set_all(&reporter, &options.health_names, status).await;
            }
        }
    }
    let _ = stop_http.send(());
    let drained = drain(&reporter, &options, on_drain, stop_tx, server).await;
    if let Some(http) = http {
        finish_http(http, options.drain_grace, &options.label).await;
    }
    drained
}

/// Waits for the HTTP side's open responses for up to `grace` (counted from now, after the
/// gRPC drain), then cuts them.
async fn finish_http(
    mut http: tokio::task::JoinHandle<std::io::Result<()>>,
    grace: Duration,
    label: &str,
) {
    match tokio::time::timeout(grace, &mut http).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => tracing::warn!(service = label, error = %err, "HTTP server failed"),
        Ok(Err(err)) => tracing::warn!(service = label, error = %err, "HTTP server task failed"),
        Err(_) => {
            http.abort();
            tracing::warn!(
                service = label,
                "grace period over; open HTTP responses were cut"
            );
        }
    }
}

/// The next readiness value; pending forever without a readiness source (or once it is gone).
async fn ready_changed(readiness: &mut Option<tokio::sync::watch::Receiver<bool>>) -> bool {
    let Some(receiver) = readiness else {
        return std::future::pending().await;
    };
    match receiver.changed().await {
        Ok(()) => *receiver.borrow_and_update(),
        Err(_) => {
            *readiness = None;
            std::future::pending().await
        }
    }
}

/// The running gRPC server task.
type ServerTask = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

/// Adds grpc.health.v1 (every name NOT_SERVING for now) and both reflection versions, listing
/// the public services only, to `routes`; returns the health reporter with the routes.
async fn add_health_and_reflection(
    routes: Routes,
    options: &ServeOptions,
) -> anyhow::Result<(HealthReporter, Routes)> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    set_all(&reporter, &options.health_names, ServingStatus::NotServing).await;
    // Both reflection versions: grpcurl up to 1.8 and many tools still speak only v1alpha.
    let reflection = || {
        let builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(vidcascade_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health");
        options
            .public_services
            .iter()
            .fold(builder, |builder, name| builder.with_service_name(name))
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("building the reflection service")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building the reflection service (v1alpha)")?;
    let routes = routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok((reporter, routes))
}

/// Spawns the gRPC server on `listener`; it stops accepting once `stop` fires (or is dropped).
fn spawn_server(
    listener: TcpListener,
    routes: Routes,
    options: &ServeOptions,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<ServerTask> {
    let incoming = TcpListenerStream::new(listener);
    let mut builder = Server::builder().max_concurrent_streams(options.max_streams_per_connection);
    if let Some(tls) = options.tls.clone() {
        builder = builder
            .tls_config(tls)
            .context("setting up TLS (--tls-cert / --tls-key / --tls-client-ca)")?;
    }
    Ok(tokio::spawn(async move {
        builder
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop.await;
            })
            .await
    }))
}

/// Goes NOT_SERVING, stops admitting work (`on_drain`), stops the server and lets in-flight
/// requests finish for up to the grace period, then cuts them.
async fn drain(
    reporter: &HealthReporter,
    options: &ServeOptions,
    on_drain: impl FnOnce(),
    stop_tx: tokio::sync::oneshot::Sender<()>,
    mut server: ServerTask,
) -> anyhow::Result<()> {
    let label = options.label.as_str();
    tracing::info!(
        service = label,
        grace_s = options.drain_grace.as_secs_f64(),
        "draining"
    );
    set_all(reporter, &options.health_names, ServingStatus::NotServing).await;
    on_drain();
    let _ = stop_tx.send(());
    match tokio::time::timeout(options.drain_grace, &mut server).await {
        Ok(result) => {
            server_ended(label, result)?;
            tracing::info!(service = label, "drained");
        }
        Err(_) => {
            server.abort();
            tracing::warn!(
                service = label,
                "grace period over; in-flight requests were cut"
            );
        }
    }
    Ok(())
}

fn server_ended(
    label: &str,
    result: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(anyhow::anyhow!("{label}: gRPC server failed: {err}")),
        Err(err) => Err(anyhow::anyhow!("{label}: gRPC server task failed: {err}")),
    }
}

/// Binds the gRPC listener, naming the setting on failure.
pub async fn bind_grpc(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the gRPC address {addr} (--listen / VIDCASCADE_LISTEN)"))
}

/// What a service hands to [`run_service`].
pub trait Service {
    /// Name for logs and the stdout announcement, e.g. `vidcascade-stage[base]`.
    fn label(&self) -> String;
    /// Fully qualified gRPC service names to report in grpc.health.v1.
    fn health_names(&self) -> Vec<String>;
    /// The service's gRPC routes.
    fn routes(&self) -> Routes;
    /// Runs once after binding, before health says SERVING (e.g. one denoising step).
    fn warm_up(&self) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Stops admitting new work; in-flight work continues.
    fn drain(&self);
    /// The services server reflection lists (see [`ServeOptions::public_services`]).
    fn public_services(&self) -> Vec<String>;
    /// What health follows after warm-up (see [`ServeOptions::readiness`]).
    fn readiness(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }
    /// The service's HTTP API and the address it should listen on, if it has one.
    fn http(&self) -> Option<(SocketAddr, axum::Router)> {
        None
    }
}

/// Binds the metrics endpoint (if enabled) and the gRPC address, prints the announcement line
/// on stdout, and serves `service` until `shutdown`, then drains.
pub async fn run_service<S: Service>(
    config: &crate::config::ServerConfig,
    service: S,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = match config.metrics_listen {
        Some(addr) => {
            let handle = crate::metrics::install()?;
            let (bound, serve_metrics) = crate::metrics::bind(addr, handle).await?;
            tokio::spawn(serve_metrics);
            Some(bound)
        }
        None => None,
    };
    let listener = bind_grpc(config.listen).await?;
    let http = HttpSide::of(&service).await?;
    let bound = Bound {
        grpc: listener.local_addr()?,
        metrics,
        http: http.as_ref().map(HttpSide::local_addr).transpose()?,
    };
    println!("{}", bound.announcement(&service.label()));
    serve_service(listener, service, config.clone(), shutdown, http).await
}

/// Serves `service` on an already bound `listener` (and its HTTP API on `http`, when given)
/// with `config`'s TLS and limits until `shutdown`, then drains for up to its grace period
/// (several services in one process: `vidcascade serve`).
pub async fn serve_service<S: Service>(
    listener: TcpListener,
    service: S,
    config: crate::config::ServerConfig,
    shutdown: impl Future<Output = ()>,
    http: Option<HttpSide>,
) -> anyhow::Result<()> {
    let options = ServeOptions {
        label: service.label(),
        health_names: service.health_names(),
        drain_grace: config.drain_grace,
        readiness: service.readiness(),
        public_services: service.public_services(),
        tls: config.tls,
        max_streams_per_connection: config.max_streams_per_connection,
    };
    serve(
        listener,
        service.routes(),
        options,
        service.warm_up(),
        shutdown,
        || service.drain(),
        http,
    )
    .await
}

/// The body of a service binary's `main`: builds the tokio runtime, installs telemetry for
/// `service`, runs `body`, and turns an error into one line on stderr and exit status 1.
pub fn run_main<F, Fut>(
    service: &str,
    config: &crate::config::ServerConfig,
    body: F,
) -> std::process::ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
        .and_then(|runtime| {
            runtime.block_on(async {
                let _telemetry = crate::telemetry::init(
                    service,
                    &config.log,
                    config.log_format,
                    config.otlp_endpoint.as_deref(),
                )?;
                // Before `body` loads the model: metric handles taken while loading (a stage's
                // gauges) would otherwise bind to the no-op recorder for good.
                if config.metrics_listen.is_some() {
                    crate::metrics::install()?;
                }
                body().await
            })
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {service}: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
