//! `vidcascade serve`: the text encoder, one replica of every diffusion stage and the gateway in
//! this process, for development. The same service code as the separate binaries; each service
//! gets its own port (free ports on 127.0.0.1 for the internal ones), and Ctrl-C drains them all.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use vidcascade_core::engine::EngineConfig;
use vidcascade_encoder_service::{EncoderConfig, EncoderServer};
use vidcascade_gateway_service::discovery::Target;
use vidcascade_gateway_service::{GatewayConfig, GatewayServer};
use vidcascade_runtime::ServerArgs;
use vidcascade_runtime::config::ServerConfig;
use vidcascade_runtime::{bind_grpc, serve_service, shutdown_signal};
use vidcascade_stage_service::config::{MAX_BATCH_LIMIT, MAX_QUEUE_LIMIT};
use vidcascade_stage_service::{StageConfig, StageServer};

use super::{ServeArgs, open_repository};

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

/// Runs `serve`.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    // The same validation as the service binaries' flags.
    let server = ServerArgs {
        listen: args.listen,
        metrics_listen: args.metrics_listen.clone(),
        otlp_endpoint: None,
        drain_grace_seconds: GRACE.as_secs_f64(),
        log: args.log.clone(),
    }
    .validate()?;
    if !(1..=MAX_BATCH_LIMIT).contains(&args.max_batch_size) {
        anyhow::bail!(
            "--max-batch-size must be in 1..={MAX_BATCH_LIMIT}, got {}",
            args.max_batch_size
        );
    }
    if !(1..=MAX_QUEUE_LIMIT).contains(&args.max_queue) {
        anyhow::bail!(
            "--max-queue must be in 1..={MAX_QUEUE_LIMIT}, got {}",
            args.max_queue
        );
    }
    let repository = open_repository(&args.model.model)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let _telemetry =
                vidcascade_runtime::telemetry::init("vidcascade-serve", &server.log, None)?;
            let (stop_tx, stop_rx) = watch::channel(false);
            let stopped = move || {
                let mut rx = stop_rx.clone();
                async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                }
            };
            let mut tasks = tokio::task::JoinSet::new();
            if let Some(addr) = server.metrics_listen {
                let handle = vidcascade_runtime::metrics::install()?;
                let (bound, serve) = vidcascade_runtime::metrics::bind(addr, handle).await?;
                tokio::spawn(serve);
                println!("metrics  http://{bound}/metrics");
            }

            let encoder = EncoderServer::load(&EncoderConfig {
                repository: repository.clone(),
                max_batch_size: 16,
                max_queue: 64,
                server: internal_server(&server),
            })?;
            let listener = bind_grpc(([127, 0, 0, 1], 0).into()).await?;
            let encoder_addr = listener.local_addr()?;
            println!("text-encoder  {encoder_addr}");
            tasks.spawn(serve_service(listener, encoder, GRACE, stopped()));

            let mut stages = BTreeMap::new();
            for stage in repository.manifest().diffusion_stages() {
                let stage_server = StageServer::load(&StageConfig {
                    repository: repository.clone(),
                    stage: stage.name.clone(),
                    engine: EngineConfig {
                        max_batch_size: args.max_batch_size,
                        max_queue: args.max_queue,
                        ..EngineConfig::default()
                    },
                    server: internal_server(&server),
                })?;
                let listener = bind_grpc(([127, 0, 0, 1], 0).into()).await?;
                let addr = listener.local_addr()?;
                println!("{:<13} {addr}", stage.name);
                stages.insert(stage.name.clone(), Target::Static(vec![addr.to_string()]));
                tasks.spawn(serve_service(listener, stage_server, GRACE, stopped()));
            }

            let gateway = GatewayServer::new(&GatewayConfig {
                repository: repository.clone(),
                encoder: Target::Static(vec![encoder_addr.to_string()]),
                stages,
                max_concurrent: 16,
                max_waiting: 64,
                stage_attempts: 3,
                dns_refresh: Duration::from_secs(10),
                default_timeout: Duration::from_secs(600),
                server: internal_server(&server),
            });
            let listener = bind_grpc(server.listen).await?;
            let gateway_addr = listener.local_addr()?;
            tasks.spawn(serve_service(listener, gateway, GRACE, stopped()));
            println!("gateway  http://{gateway_addr}");
            println!(
                "try: vidcascade client \"a red circle moving left on a black background\" --addr http://{gateway_addr}"
            );

            tokio::select! {
                () = shutdown_signal() => {}
                Some(result) = tasks.join_next() => {
                    let _ = stop_tx.send(true);
                    result.context("a service task failed")??;
                    anyhow::bail!("a service stopped unexpectedly");
                }
            }
            eprintln!("stopping: draining in-flight requests (Ctrl-C again to force)");
            let _ = stop_tx.send(true);
            let drain = async {
                while let Some(result) = tasks.join_next().await {
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
        })
}
