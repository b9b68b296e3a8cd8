//! Common configuration of every service: flags with `VIDCASCADE_*` environment fallbacks.
//!
//! Everything is checked before a port is bound, so a typo fails fast with a message naming the
//! setting instead of producing a half-started pod. Invalid configuration exits with status 64
//! (`EX_USAGE`), the convention linkerd and the BSD tools use.

use std::fmt::Display;
use std::net::SocketAddr;
use std::process::exit;
use std::time::Duration;

use clap::{Args, Parser};
use tonic::transport::ServerTlsConfig;

use crate::telemetry::LogFormat;
use crate::tls::ServerTlsArgs;

/// Exit status for invalid configuration (`EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// A configuration setting that is not acceptable.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {reason}")]
pub struct ConfigError {
    /// The flag and its environment variable, e.g. `--listen / VIDCASCADE_LISTEN`.
    pub setting: String,
    /// What is wrong and what is accepted.
    pub reason: String,
}

impl ConfigError {
    /// An error for `setting` (spell it as `--flag / VIDCASCADE_VAR`).
    pub fn new(setting: impl Into<String>, reason: impl Display) -> Self {
        Self {
            setting: setting.into(),
            reason: reason.to_string(),
        }
    }
}

/// Flags every service has.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address the gRPC server listens on (port 0 picks a free port; the chosen address is
    /// printed on stdout). Loopback unless told otherwise: in a container, set 0.0.0.0:PORT.
    #[arg(long, env = "VIDCASCADE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Address of the Prometheus `/metrics` endpoint, or `off` (the default port sits beside
    /// gRPC's, away from Prometheus's own 9090 and the exporters' 9100-9999).
    #[arg(
        long,
        env = "VIDCASCADE_METRICS_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    pub metrics_listen: String,

    /// Most concurrent gRPC streams one client connection may open (HTTP/2
    /// SETTINGS_MAX_CONCURRENT_STREAMS); more wait for the client's own transport.
    #[arg(
        long,
        env = "VIDCASCADE_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 128
    )]
    pub max_streams_per_connection: u32,

    /// TLS of the gRPC listener.
    #[command(flatten)]
    pub tls: ServerTlsArgs,

    /// OTLP/gRPC endpoint for traces (e.g. `http://otel-collector:4317`); unset = no export.
    #[arg(long, env = "VIDCASCADE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "VIDCASCADE_DRAIN_GRACE_SECONDS", default_value_t = 30.0)]
    pub drain_grace_seconds: f64,

    /// Log filter (`tracing` `EnvFilter` syntax, e.g. `info,vidcascade_gateway_service=debug`).
    #[arg(long, env = "VIDCASCADE_LOG", default_value = "info")]
    pub log: String,

    /// Log line format on stderr.
    #[arg(long, env = "VIDCASCADE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// [`ServerArgs`] after validation.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// gRPC address.
    pub listen: SocketAddr,
    /// Metrics address, if enabled.
    pub metrics_listen: Option<SocketAddr>,
    /// OTLP endpoint, if configured.
    pub otlp_endpoint: Option<String>,
    /// Drain grace period.
    pub drain_grace: Duration,
    /// Log filter directive.
    pub log: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// Per-connection stream limit.
    pub max_streams_per_connection: u32,
    /// TLS (and client-certificate) settings; `None` = plaintext.
    pub tls: Option<ServerTlsConfig>,
}

impl ServerArgs {
    /// Checks every setting; the result is what the server runs with.
    pub fn validate(&self) -> Result<ServerConfig, ConfigError> {
        let metrics_listen = match self.metrics_listen.trim() {
            "off" | "" => None,
            text => Some(text.parse::<SocketAddr>().map_err(|err| {
                ConfigError::new(
                    "--metrics-listen / VIDCASCADE_METRICS_LISTEN",
                    format!("`{text}` is not an address like 0.0.0.0:50052 or `off` ({err})"),
                )
            })?),
        };
        if let Some(metrics) = metrics_listen
            && metrics.port() != 0
            && metrics == self.listen
        {
            return Err(ConfigError::new(
                "--metrics-listen / VIDCASCADE_METRICS_LISTEN",
                format!("{metrics} is also the gRPC address (--listen); use another port"),
            ));
        }
        if !(self.drain_grace_seconds.is_finite()
            && (0.0..=3600.0).contains(&self.drain_grace_seconds))
        {
            return Err(ConfigError::new(
                "--drain-grace-seconds / VIDCASCADE_DRAIN_GRACE_SECONDS",
                format!("{} is outside 0..=3600 seconds", self.drain_grace_seconds),
            ));
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(ConfigError::new(
                "--otlp-endpoint / VIDCASCADE_OTLP_ENDPOINT",
                format!("`{endpoint}` must be an http:// or https:// URL"),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log).map_err(|err| {
            ConfigError::new("--log / VIDCASCADE_LOG", format!("`{}`: {err}", self.log))
        })?;
        if !(1..=100_000).contains(&self.max_streams_per_connection) {
            return Err(ConfigError::new(
                "--max-streams-per-connection / VIDCASCADE_MAX_STREAMS_PER_CONNECTION",
                format!("{} is outside 1..=100000", self.max_streams_per_connection),
            ));
        }
        Ok(ServerConfig {
            max_streams_per_connection: self.max_streams_per_connection,
            tls: self.tls.validate()?,
            listen: self.listen,
            metrics_listen,
            otlp_endpoint: self.otlp_endpoint.clone(),
            drain_grace: Duration::from_secs_f64(self.drain_grace_seconds),
            log: self.log.clone(),
            log_format: self.log_format,
        })
    }
}

/// Parses the command line; on invalid flags or environment prints clap's message and exits 64
/// (help and `--version` exit 0 as usual).
pub fn parse_or_exit<T: Parser>() -> T {
    match T::try_parse() {
        Ok(args) => args,
        Err(err) if err.use_stderr() => {
            let _ = err.print();
            exit(EXIT_CONFIG);
        }
        Err(err) => {
            let _ = err.print();
            exit(0);
        }
    }
}

/// The `--model / VIDCASCADE_MODEL` error for a repository that does not open.
pub fn model_setting_error(err: impl Display) -> ConfigError {
    ConfigError::new(
        "--model / VIDCASCADE_MODEL",
        format!("{err} (point it at a model repository such as models/shapes)"),
    )
}

/// Prints a configuration error and exits 64.
pub fn exit_config(err: &ConfigError) -> ! {
    eprintln!("error: {err}");
    exit(EXIT_CONFIG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        server: ServerArgs,
    }

    fn parse(args: &[&str]) -> Result<ServerConfig, ConfigError> {
        let mut argv = vec!["service"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .map_err(|e| ConfigError::new("clap", e))?
            .server
            .validate()
    }

    #[test]
    fn defaults_are_valid() -> Result<(), ConfigError> {
        let config = parse(&[])?;
        assert_eq!(config.drain_grace, Duration::from_secs(30));
        assert!(
            config.listen.ip().is_loopback(),
            "binds loopback unless told otherwise"
        );
        assert!(config.metrics_listen.is_some_and(|m| m.ip().is_loopback()));
        assert!(config.metrics_listen.is_some());
        Ok(())
    }

    #[test]
    fn errors_name_the_setting() {
        for (args, setting) in [
            (
                &["--metrics-listen", "nowhere"][..],
                "--metrics-listen / VIDCASCADE_METRICS_LISTEN",
            ),
            (
                &[
                    "--listen",
                    "127.0.0.1:7000",
                    "--metrics-listen",
                    "127.0.0.1:7000",
                ][..],
                "--metrics-listen / VIDCASCADE_METRICS_LISTEN",
            ),
            (
                &["--drain-grace-seconds", "4000"][..],
                "--drain-grace-seconds / VIDCASCADE_DRAIN_GRACE_SECONDS",
            ),
            (
                &["--otlp-endpoint", "collector:4317"][..],
                "--otlp-endpoint / VIDCASCADE_OTLP_ENDPOINT",
            ),
            (&["--log", "info,=="][..], "--log / VIDCASCADE_LOG"),
        ] {
            match parse(args) {
                Err(err) => assert_eq!(err.setting, setting, "{args:?}: {err}"),
                Ok(config) => panic!("{args:?} was accepted: {config:?}"),
            }
        }
    }

    #[test]
    fn metrics_can_be_turned_off() -> Result<(), ConfigError> {
        assert!(
            parse(&["--metrics-listen", "off"])?
                .metrics_listen
                .is_none()
        );
        Ok(())
    }
}
