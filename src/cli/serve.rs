//! `vidcascade serve`: the text encoder, one replica of every diffusion stage and the gateway in
//! this process, for development. The same service code, configs and validation as the separate
//! binaries (a bad setting exits 64 naming it); each service gets its own port (free ports on
//! 127.0.0.1 for the internal ones), and Ctrl-C drains them all.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use vidcascade_gateway::{GatewayCli, GatewayServer};
use vidcascade_models::ModelRepository;
use vidcascade_runtime::config::{ServerConfig, exit_config};
use vidcascade_runtime::{
    ConfigError, HttpSide, ServerArgs, bind_grpc, serve_service, shutdown_signal,
};
use vidcascade_stage::{StageConfig, StageServer};
use vidcascade_text_encoder::config::TextEngineArgs;
use vidcascade_text_encoder::{EncoderConfig, EncoderServer};

use super::ServeArgs;

/// Drain grace period of every service.
const GRACE: Duration = Duration::from_secs(30);

/// Settings of a service behind the gateway: a free port on 127.0.0.1, metrics on the shared
/// endpoint.
fn internal_server(gateway: &ServerConfig) -> ServerConfig {
    ServerConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        metrics_listen: None,
        ..gateway.clone()
    }
}

/// Everything `serve` starts, validated before any port is bound.
struct Plan {
    server: ServerConfig,
    /// The gateway's `--http-listen`, validated with its other flags.
    http_listen: String,
    encoder: EncoderConfig,
    stages: Vec<StageConfig>,
    repository: ModelRepository,
}

fn validate(args: &ServeArgs) -> Result<Plan, ConfigError> {
    let server = ServerArgs {
        listen: args.listen,
        metrics_listen: args.metrics_listen.clone(),
        otlp_endpoint: None,
        drain_grace_seconds: GRACE.as_secs_f64(),
        log: args.log.clone(),
        log_format: Default::default(),
        max_streams_per_connection: 128,
        tls: Default::default(),
    }
    .validate()?;
    let engine = args.engine.validate()?;
    let text = TextEngineArgs {
        max_batch_size: 16,
        max_queue: 64,
    }
    .validate()?;
    let repository = ModelRepository::open(&args.model.model)
        .map_err(vidcascade_runtime::config::model_setting_error)?;
    let stages = repository
        .manifest()
        .diffusion_stages()
        .map(|stage| {
            StageConfig::new(
                repository.clone(),
                &stage.name,
                engine,
                internal_server(&server),
            )
            .map(|config| config.on(args.compute))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Plan {
        encoder: EncoderConfig {
            repository: repository.clone(),
            engine: text,
            device: args.compute.device,
            server: internal_server(&server),
        },
        stages,
        server,
        http_listen: args.http_listen.clone(),
        repository,
    })
}

/// The gateway's config through its own flag parsing and validation, pointed at the services.
fn gateway_config(
    plan: &Plan,
    encoder: &str,
    stages: &[(String, String)],
) -> Result<vidcascade_gateway::GatewayConfig, ConfigError> {
    let mut argv = vec![
        "vidcascade-gateway".to_string(),
        "--model".into(),
        plan.repository.root().display().to_string(),
        "--encoder".into(),
        encoder.to_string(),
        "--metrics-listen".into(),
        "off".into(),
        "--http-listen".into(),
        plan.http_listen.clone(),
    ];
    for (name, address) in stages {
        argv.extend(["--stage".to_string(), format!("{name}={address}")]);
    }
    let cli = GatewayCli::try_parse_from(argv)
        .map_err(|err| ConfigError::new("gateway flags", err.to_string()))?;
    let mut config = cli.validate()?;
    config.server = plan.server.clone();
    Ok(config)
}

async fn bind_internal() -> anyhow::Result<(TcpListener, String)> {
    let listener = bind_grpc(([127, 0, 0, 1], 0).into()).await?;
    let address = listener.local_addr()?.to_string();
    Ok((listener, address))
}

/// Runs `serve`.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let plan = validate(&args).unwrap_or_else(|err| exit_config(&err));
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(plan))
}

/// A stop signal for a group of services.
fn stop_signal() -> (watch::Sender<bool>, impl Fn() -> Stopped) {
    let (tx, rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = rx.clone();
        Box::pin(async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }) as Stopped
    };
    (tx, stopped)
}

type Stopped = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

async fn serve(plan: Plan) -> anyhow::Result<()> {
    let _telemetry = vidcascade_runtime::telemetry::init(
        "vidcascade-serve",
        &plan.server.log,
        plan.server.log_format,
        None,
    )?;
    // Two groups, stopped in dependency order: the gateway first, the services behind it after
    // its in-flight generations have gone through every stage.
    let (stop_backends, backends_stopped) = stop_signal();
    let (stop_gateway, gateway_stopped) = stop_signal();
    let mut backends = JoinSet::new();
    if let Some(addr) = plan.server.metrics_listen {
        let handle = vidcascade_runtime::metrics::install()?;
        let (bound, serve) = vidcascade_runtime::metrics::bind(addr, handle).await?;
        tokio::spawn(serve);
        println!("metrics  http://{bound}/metrics");
    }

    let encoder = EncoderServer::load(&plan.encoder)?;
    let (listener, encoder_addr) = bind_internal().await?;
    println!("text-encoder  {encoder_addr}");
    backends.spawn(serve_service(
        listener,
        encoder,
        plan.encoder.server.clone(),
        backends_stopped(),
        None,
    ));

    let mut stages = Vec::new();
    for config in &plan.stages {
        let stage_server = StageServer::load(config)?;
        let (listener, addr) = bind_internal().await?;
        println!("{:<13} {addr}", config.stage);
        stages.push((config.stage.clone(), addr));
        backends.spawn(serve_service(
            listener,
            stage_server,
            config.server.clone(),
            backends_stopped(),
            None,
        ));
    }

    let gateway_config =
        gateway_config(&plan, &encoder_addr, &stages).unwrap_or_else(|err| exit_config(&err));
    let gateway = GatewayServer::new(&gateway_config);
    let listener = bind_grpc(plan.server.listen).await?;
    let gateway_addr = listener.local_addr()?;
    let http = HttpSide::of(&gateway).await?;
    let http_addr = http.as_ref().map(HttpSide::local_addr).transpose()?;
    let gateway = tokio::spawn(serve_service(
        listener,
        gateway,
        plan.server.clone(),
        gateway_stopped(),
        http,
    ));
    println!("gateway  http://{gateway_addr}");
    if let Some(http_addr) = http_addr {
        println!(
            "playground  http://{http_addr}/  (HTTP API: POST http://{http_addr}/v1/generate)"
        );
    }
    println!(
        "try: vidcascade client \"a red circle moving left on a black background\" --addr http://{gateway_addr}"
    );
    let services = Services {
        gateway,
        backends,
        stop_gateway,
        stop_backends,
    };
    services.wait_and_drain().await
}

/// The running services and their stop signals.
struct Services {
    gateway: tokio::task::JoinHandle<anyhow::Result<()>>,
    backends: JoinSet<anyhow::Result<()>>,
    stop_gateway: watch::Sender<bool>,
    stop_backends: watch::Sender<bool>,
}

impl Services {
    /// Runs until Ctrl-C (or a service stops), then drains in dependency order: the gateway
    /// stops admitting and its in-flight generations finish through every stage; only then do
    /// the stages and the text encoder drain.
    async fn wait_and_drain(mut self) -> anyhow::Result<()> {
        tokio::select! {
            () = shutdown_signal() => {}
            result = &mut self.gateway => {
                self.stop();
                result.context("the gateway task failed")??;
                anyhow::bail!("the gateway stopped unexpectedly");
            }
            Some(result) = self.backends.join_next() => {
                self.stop();
                result.context("a service task failed")??;
                anyhow::bail!("a service stopped unexpectedly");
            }
        }
        eprintln!("stopping: draining in-flight requests (Ctrl-C again to force)");
        let drain = async {
            let _ = self.stop_gateway.send(true);
            (&mut self.gateway)
                .await
                .context("the gateway task failed")??;
            let _ = self.stop_backends.send(true);
            while let Some(result) = self.backends.join_next().await {
                result.context("a service task failed")??;
            }
            Ok::<(), anyhow::Error>(())
        };
        tokio::select! {
            result = drain => result?,
            () = shutdown_signal() => eprintln!("forced stop"),
        }
        eprintln!("stopped");
        Ok(())
    }

    fn stop(&self) {
        let _ = self.stop_gateway.send(true);
        let _ = self.stop_backends.send(true);
    }
}
