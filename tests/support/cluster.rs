//! Starts the real service binaries on 127.0.0.1 with free ports, for end-to-end tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tonic::transport::{Channel, ClientTlsConfig};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A running service process; killed when dropped.
pub struct Service {
    pub name: String,
    pub child: Child,
    pub grpc: SocketAddr,
    pub metrics: Option<SocketAddr>,
    /// The HTTP API (gateways only).
    pub http: Option<SocketAddr>,
    /// How to reach a TLS listener (the CA to trust, a client certificate); `None`: plaintext.
    pub client_tls: Option<ClientTlsConfig>,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    /// Starts `binary` with `args` plus free gRPC and metrics ports, and waits for its
    /// announcement line.
    pub fn start(binary: &str, name: &str, args: &[String]) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--drain-grace-seconds", "20", "--log", "warn"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let field = |key: &str| -> Option<SocketAddr> {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(key))
                .and_then(|addr| addr.parse().ok())
        };
        let Some(grpc) = field("grpc=") else {
            let status = child.wait()?;
            bail!("{name} did not announce its address (got {line:?}, exit {status})");
        };
        Ok(Self {
            name: name.to_string(),
            grpc,
            metrics: field("metrics="),
            http: field("http="),
            child,
            client_tls: None,
        })
    }

    pub fn url(&self) -> String {
        match self.client_tls {
            Some(_) => format!("https://{}", self.grpc),
            None => format!("http://{}", self.grpc),
        }
    }

    pub async fn channel(&self) -> anyhow::Result<Channel> {
        let mut endpoint = Channel::from_shared(self.url())?;
        if let Some(tls) = &self.client_tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        Ok(endpoint.connect().await?)
    }

    /// Waits until grpc.health.v1 says SERVING for the whole server.
    pub async fn wait_serving(&self, timeout: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + timeout;
        loop {
            if let Ok(channel) = self.channel().await {
                let status = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                if let Ok(response) = status
                    && response.get_ref().status == ServingStatus::Serving as i32
                {
                    return Ok(());
                }
            }
            if Instant::now() > until {
                bail!("{} was not SERVING within {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The Prometheus text of the service.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        let addr = self.metrics.context("metrics are off")?;
        let output = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(addr)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(
                stream,
                "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            )?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        })
        .await??;
        Ok(output)
    }

    /// The value of the first sample of `metric` whose labels contain every `labels` pair; a
    /// counter not exported yet counts as 0.
    pub async fn metric(&self, metric: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        Ok(self.gauge(metric, labels).await?.unwrap_or(0.0))
    }

    /// Like [`Self::metric`], but `None` when the service does not export the sample (for a
    /// gauge that must be present).
    pub async fn gauge(
        &self,
        metric: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<Option<f64>> {
        let text = self.metrics_text().await?;
        Ok(metric_value(&text, metric, labels))
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        Ok(())
    }
}

/// Reads one sample from Prometheus text.
pub fn metric_value(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

pub use vidcascade_test_support::tiny_model;

pub const ENCODER_BIN: &str = env!("CARGO_BIN_EXE_vidcascade-text-encoder");
pub const STAGE_BIN: &str = env!("CARGO_BIN_EXE_vidcascade-stage");
pub const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_vidcascade-gateway");

/// Flags of a gateway over `encoder` and `stages`, with the stages named in `targets` pointed
/// at the given target instead.
fn gateway_flags(
    model: &Path,
    encoder: &Service,
    stages: &[Service],
    targets: &[(&str, String)],
) -> Vec<String> {
    let mut args = vec![
        "--model".to_string(),
        model.display().to_string(),
        "--encoder".into(),
        encoder.grpc.to_string(),
        "--http-listen".into(),
        "127.0.0.1:0".into(),
    ];
    for stage in stages {
        let target = targets
            .iter()
            .find(|(name, _)| *name == stage.name)
            .map_or_else(|| stage.grpc.to_string(), |(_, target)| target.clone());
        args.push("--stage".into());
        args.push(format!("{}={target}", stage.name));
    }
    args
}

/// Extra flags per role and the TLS a test client uses to reach them.
#[derive(Default)]
pub struct Extra {
    pub encoder: Vec<String>,
    pub stages: Vec<String>,
    pub gateway: Vec<String>,
    /// How tests reach the encoder and stages.
    pub backend_tls: Option<ClientTlsConfig>,
    /// How tests reach the gateway.
    pub gateway_tls: Option<ClientTlsConfig>,
}

/// Encoder, one replica per diffusion stage, and a gateway over them.
pub struct Cluster {
    pub model: PathBuf,
    pub encoder: Service,
    pub stages: Vec<Service>,
    pub gateway: Service,
}

impl Cluster {
    /// Starts everything for `model` (stage names from its manifest); `stage_args` are extra
    /// flags for every stage; waits until the gateway is SERVING.
    pub async fn start(model: &Path, stage_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(model, stage_args, &[]).await
    }

    /// As [`Cluster::start`], with extra flags for the gateway too.
    pub async fn start_with(
        model: &Path,
        stage_args: &[&str],
        extra_gateway_args: &[&str],
    ) -> anyhow::Result<Self> {
        let owned = |args: &[&str]| args.iter().map(|a| a.to_string()).collect();
        let extra = Extra {
            stages: owned(stage_args),
            gateway: owned(extra_gateway_args),
            ..Extra::default()
        };
        Self::launch(model, extra).await
    }

    /// Starts everything for `model` with `extra` flags and client TLS per role; waits until
    /// the gateway is SERVING.
    pub async fn launch(model: &Path, extra: Extra) -> anyhow::Result<Self> {
        let repository = vidcascade_models::ModelRepository::open(model)?;
        let model_arg = model.display().to_string();
        let mut encoder_args = vec!["--model".to_string(), model_arg.clone()];
        encoder_args.extend(extra.encoder.iter().cloned());
        let mut encoder = Service::start(ENCODER_BIN, "text-encoder", &encoder_args)?;
        encoder.client_tls = extra.backend_tls.clone();
        let mut stages = Vec::new();
        for stage in repository.manifest().diffusion_stages() {
            let mut args = vec![
                "--model".to_string(),
                model_arg.clone(),
                "--stage".into(),
                stage.name.clone(),
            ];
            args.extend(extra.stages.iter().cloned());
            let mut service = Service::start(STAGE_BIN, &stage.name, &args)?;
            service.client_tls = extra.backend_tls.clone();
            stages.push(service);
        }
        let mut gateway_args = gateway_flags(model, &encoder, &stages, &[]);
        gateway_args.extend(extra.gateway.iter().cloned());
        let mut gateway = Service::start(GATEWAY_BIN, "gateway", &gateway_args)?;
        gateway.client_tls = extra.gateway_tls;
        gateway.wait_serving(Duration::from_secs(60)).await?;
        Ok(Self {
            model: model.to_path_buf(),
            encoder,
            stages,
            gateway,
        })
    }

    /// Flags for another gateway over this cluster's encoder and stages, with the replicas of
    /// the stages named in `targets` replaced by the given target (`host:port[,host:port]`).
    pub fn gateway_args(&self, targets: &[(&str, String)]) -> Vec<String> {
        gateway_flags(&self.model, &self.encoder, &self.stages, targets)
    }

    pub fn stage(&self, name: &str) -> &Service {
        self.stages
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no stage {name}"))
    }
}
