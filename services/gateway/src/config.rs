//! Flags of `vidcascade-gateway` (each with a `VIDCASCADE_*` variable), validated before binding.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use vidcascade_runtime::ConfigError;
use vidcascade_runtime::config::model_setting_error;
use vidcascade_runtime::config::{ServerArgs, ServerConfig};
use vidcascade_spec::Manifest;

use tonic::transport::ClientTlsConfig;
use vidcascade_runtime::tls::ClientTlsArgs;

use crate::auth::ApiKeys;
use crate::discovery::Target;
use crate::health::OutlierPolicy;

/// `vidcascade-gateway`: the public API in front of the text encoder and stage services.
#[derive(Debug, Clone, Parser)]
#[command(version)]
pub struct GatewayCli {
    /// Model repository folder (the gateway reads its manifest to plan the cascade).
    #[arg(long, env = "VIDCASCADE_MODEL", default_value = "models/shapes")]
    pub model: PathBuf,
    /// Text encoder replicas: `host:port[,host:port...]`, `dns:host:port` (every address the
    /// name resolves to, re-resolved periodically; a headless Kubernetes Service), or
    /// `kube://service.namespace:port` (the Service's ready EndpointSlice endpoints, watched).
    #[arg(long, env = "VIDCASCADE_ENCODER")]
    pub encoder: String,
    /// Replicas of one diffusion stage, `NAME=TARGET` with TARGET as for --encoder; repeat for
    /// every stage of the manifest (environment: `;`-separated).
    #[arg(
        long = "stage",
        env = "VIDCASCADE_STAGES",
        value_delimiter = ';',
        required = true
    )]
    pub stages: Vec<String>,
    /// Requests generated at once; more wait in the gateway's queue.
    #[arg(long, env = "VIDCASCADE_MAX_CONCURRENT", default_value_t = 16)]
    pub max_concurrent: usize,
    /// Requests allowed to wait; beyond it RESOURCE_EXHAUSTED.
    #[arg(long, env = "VIDCASCADE_MAX_WAITING", default_value_t = 64)]
    pub max_waiting: usize,
    /// Attempts per stage call when replicas answer UNAVAILABLE before streaming.
    #[arg(long, env = "VIDCASCADE_STAGE_ATTEMPTS", default_value_t = 3)]
    pub stage_attempts: usize,
    /// Ask stages for a resumable checkpoint every this many denoising steps; when a replica
    /// dies mid-stream the stage resumes from the latest on another replica (0: no
    /// checkpoints; the stage then restarts from noise).
    #[arg(long, env = "VIDCASCADE_CHECKPOINT_EVERY", default_value_t = 2)]
    pub checkpoint_every: u32,
    /// Reruns of one stage call on another replica after its replica died mid-stream.
    #[arg(long, env = "VIDCASCADE_STAGE_FAILOVERS", default_value_t = 2)]
    pub stage_failovers: usize,
    /// Consecutive failed calls that eject a replica from rotation.
    #[arg(long, env = "VIDCASCADE_EJECT_AFTER", default_value_t = 3)]
    pub eject_after: u32,
    /// First ejection's length in seconds (doubling per repeat, at most 12x).
    #[arg(long, env = "VIDCASCADE_EJECTION_SECONDS", default_value_t = 5.0)]
    pub ejection_seconds: f64,
    /// How often every replica's grpc.health.v1 is probed, in seconds.
    #[arg(long, env = "VIDCASCADE_HEALTH_PROBE_SECONDS", default_value_t = 2.0)]
    pub health_probe_seconds: f64,
    /// How often DNS targets are re-resolved, in seconds.
    #[arg(long, env = "VIDCASCADE_DNS_REFRESH_SECONDS", default_value_t = 10.0)]
    pub dns_refresh_seconds: f64,
    /// Deadline applied to requests that carry none (seconds).
    #[arg(
        long,
        env = "VIDCASCADE_DEFAULT_TIMEOUT_SECONDS",
        default_value_t = 600.0
    )]
    pub default_timeout_seconds: f64,
    /// File of API keys, one per line (`#` comments); set (or VIDCASCADE_API_KEYS), every
    /// Gateway call needs `authorization: Bearer <key>`.
    #[arg(long, env = "VIDCASCADE_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// API keys, comma-separated (environment only: command lines are visible to every user).
    #[arg(skip = std::env::var("VIDCASCADE_API_KEYS").ok())]
    pub api_keys: Option<String>,
    /// Calls per minute per API key (per client IP without keys); 0 = unlimited.
    #[arg(long, env = "VIDCASCADE_RATE_LIMIT_PER_MINUTE", default_value_t = 0)]
    pub rate_limit_per_minute: u32,
    /// Address of the HTTP API (`POST /v1/generate` with server-sent events, `GET /v1/info`,
    /// `/healthz`, `/readyz`, the playground at `/`), or `off`. Plaintext: terminate TLS in
    /// front of it (an ingress); API keys and the rate limit apply as on gRPC.
    #[arg(
        long,
        env = "VIDCASCADE_HTTP_LISTEN",
        default_value = "127.0.0.1:50053"
    )]
    pub http_listen: String,
    /// TLS to the text encoder and stages.
    #[command(flatten)]
    pub upstream_tls: ClientTlsArgs,
    /// Server flags.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Validated configuration.
#[derive(Debug)]
pub struct GatewayConfig {
    /// The model's manifest (the gateway plans from it and loads no weights).
    pub manifest: Manifest,
    /// Where the text encoder runs.
    pub encoder: Target,
    /// Where each diffusion stage runs.
    pub stages: BTreeMap<String, Target>,
    /// Concurrent generations.
    pub max_concurrent: usize,
    /// Waiting generations.
    pub max_waiting: usize,
    /// Attempts per stage call.
    pub stage_attempts: usize,
    /// Checkpoint period in steps (0: none).
    pub checkpoint_every: u32,
    /// Reruns after a replica died mid-stream.
    pub stage_failovers: usize,
    /// Outlier ejection.
    pub outliers: OutlierPolicy,
    /// Active health probe period.
    pub health_probe: Duration,
    /// DNS refresh period.
    pub dns_refresh: Duration,
    /// Deadline for requests without one.
    pub default_timeout: Duration,
    /// API keys (none: open).
    pub api_keys: ApiKeys,
    /// Calls per minute per caller (0: unlimited).
    pub rate_limit_per_minute: u32,
    /// TLS to the upstream services.
    pub upstream_tls: Option<ClientTlsConfig>,
    /// HTTP API address, if enabled.
    pub http_listen: Option<SocketAddr>,
    /// Common server settings.
    pub server: ServerConfig,
}

fn seconds(
    setting: &str,
    value: f64,
    range: std::ops::RangeInclusive<f64>,
) -> Result<Duration, ConfigError> {
    if value.is_finite() && range.contains(&value) {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(ConfigError::new(
            setting,
            format!(
                "{value} is outside {}..={} seconds",
                range.start(),
                range.end()
            ),
        ))
    }
}

fn in_range(
    setting: &str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            setting,
            format!("{value} is outside {}..={}", range.start(), range.end()),
        ))
    }
}

impl GatewayCli {
    /// Checks every setting.
    pub fn validate(&self) -> Result<GatewayConfig, ConfigError> {
        let server = self.server.validate()?;
        let manifest = Manifest::load(&self.model).map_err(model_setting_error)?;
        let encoder = Target::parse(&self.encoder)
            .map_err(|reason| ConfigError::new("--encoder / VIDCASCADE_ENCODER", reason))?;
        let stages = self.stage_targets(&manifest)?;
        self.check_limits()?;
        let outliers = self.outlier_policy()?;
        let api_keys = ApiKeys::load(self.api_keys_file.as_deref(), self.api_keys.as_deref())
            .map_err(|reason| {
                ConfigError::new(
                    "--api-keys-file / VIDCASCADE_API_KEYS_FILE / VIDCASCADE_API_KEYS",
                    reason,
                )
            })?;
        Ok(GatewayConfig {
            http_listen: self.http_listen(&server)?,
            api_keys,
            rate_limit_per_minute: self.rate_limit_per_minute,
            upstream_tls: self.upstream_tls.validate()?,
            checkpoint_every: self.checkpoint_every,
            stage_failovers: self.stage_failovers,
            outliers,
            health_probe: seconds(
                "--health-probe-seconds / VIDCASCADE_HEALTH_PROBE_SECONDS",
                self.health_probe_seconds,
                0.05..=600.0,
            )?,
            manifest,
            encoder,
            stages,
            max_concurrent: self.max_concurrent,
            max_waiting: self.max_waiting,
            stage_attempts: self.stage_attempts,
            dns_refresh: seconds(
                "--dns-refresh-seconds / VIDCASCADE_DNS_REFRESH_SECONDS",
                self.dns_refresh_seconds,
                0.1..=3600.0,
            )?,
            default_timeout: seconds(
                "--default-timeout-seconds / VIDCASCADE_DEFAULT_TIMEOUT_SECONDS",
                self.default_timeout_seconds,
                1.0..=86_400.0,
            )?,
            server,
        })
    }

    /// The HTTP address (`off` or empty: none), on a port of its own.
    fn http_listen(&self, server: &ServerConfig) -> Result<Option<SocketAddr>, ConfigError> {
        let setting = "--http-listen / VIDCASCADE_HTTP_LISTEN";
        let addr = match self.http_listen.trim() {
            "off" | "" => return Ok(None),
            text => text.parse::<SocketAddr>().map_err(|err| {
                ConfigError::new(
                    setting,
                    format!("`{text}` is not an address like 0.0.0.0:50053 or `off` ({err})"),
                )
            })?,
        };
        let taken = [Some(server.listen), server.metrics_listen];
        if addr.port() != 0 && taken.contains(&Some(addr)) {
            return Err(ConfigError::new(
                setting,
                format!("{addr} is also the gRPC or metrics address; use another port"),
            ));
        }
        Ok(Some(addr))
    }

    /// Every `--stage NAME=TARGET`, each a diffusion stage of the model, none missing or twice.
    fn stage_targets(&self, manifest: &Manifest) -> Result<BTreeMap<String, Target>, ConfigError> {
        const SETTING: &str = "--stage / VIDCASCADE_STAGES";
        let wanted: Vec<String> = manifest
            .diffusion_stages()
            .map(|s| s.name.clone())
            .collect();
        let mut stages = BTreeMap::new();
        for entry in self.stages.iter().filter(|e| !e.trim().is_empty()) {
            let (name, target) = entry.split_once('=').ok_or_else(|| {
                ConfigError::new(SETTING, format!("`{entry}` is not NAME=TARGET"))
            })?;
            let name = name.trim();
            if !wanted.iter().any(|w| w == name) {
                return Err(ConfigError::new(
                    SETTING,
                    format!("`{name}` is not a diffusion stage of the model; it has {wanted:?}"),
                ));
            }
            let target = Target::parse(target)
                .map_err(|reason| ConfigError::new(SETTING, format!("{name}: {reason}")))?;
            if stages.insert(name.to_string(), target).is_some() {
                return Err(ConfigError::new(
                    SETTING,
                    format!("`{name}` is given twice"),
                ));
            }
        }
        if let Some(missing) = wanted.iter().find(|w| !stages.contains_key(*w)) {
            return Err(ConfigError::new(
                SETTING,
                format!("no replicas for stage `{missing}`; the model needs {wanted:?}"),
            ));
        }
        Ok(stages)
    }

    /// The integer limits, each in its range.
    fn check_limits(&self) -> Result<(), ConfigError> {
        in_range(
            "--max-concurrent / VIDCASCADE_MAX_CONCURRENT",
            self.max_concurrent as u64,
            1..=10_000,
        )?;
        in_range(
            "--max-waiting / VIDCASCADE_MAX_WAITING",
            self.max_waiting as u64,
            0..=100_000,
        )?;
        in_range(
            "--stage-attempts / VIDCASCADE_STAGE_ATTEMPTS",
            self.stage_attempts as u64,
            1..=10,
        )?;
        in_range(
            "--checkpoint-every / VIDCASCADE_CHECKPOINT_EVERY",
            self.checkpoint_every.into(),
            0..=1000,
        )?;
        in_range(
            "--stage-failovers / VIDCASCADE_STAGE_FAILOVERS",
            self.stage_failovers as u64,
            0..=10,
        )
    }

    fn outlier_policy(&self) -> Result<OutlierPolicy, ConfigError> {
        in_range(
            "--eject-after / VIDCASCADE_EJECT_AFTER",
            self.eject_after.into(),
            1..=100,
        )?;
        let base_ejection = seconds(
            "--ejection-seconds / VIDCASCADE_EJECTION_SECONDS",
            self.ejection_seconds,
            0.01..=3600.0,
        )?;
        Ok(OutlierPolicy {
            eject_after: self.eject_after,
            base_ejection,
            max_ejection: base_ejection * 12,
        })
    }
}
