//! TLS for every gRPC listener, and mutual TLS between the gateway and the internal services.
//!
//! A server given a certificate and key (PEM) serves TLS only (rustls); given a client CA as
//! well it also demands a client certificate signed by that CA (mTLS), which is how the stage
//! and text encoder services accept calls from the gateway alone. The gateway's side — the CA it
//! trusts for its upstreams and the client certificate it presents — is [`ClientTlsArgs`].
//! Files are read while the configuration is validated, so a missing or unreadable file fails
//! before any port is bound and names its flag.

use std::path::{Path, PathBuf};

use clap::Args;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::ConfigError;

/// Server TLS flags (every service).
#[derive(Debug, Clone, Default, Args)]
pub struct ServerTlsArgs {
    /// PEM certificate chain of this server; with --tls-key, the gRPC listener serves TLS only.
    #[arg(long, env = "VIDCASCADE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "VIDCASCADE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): callers must present a client certificate signed by one (mTLS).
    #[arg(long, env = "VIDCASCADE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
}

/// Reads a PEM file named by `setting`.
pub fn read_pem(setting: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = std::fs::read(path)
        .map_err(|err| ConfigError::new(setting, format!("reading {}: {err}", path.display())))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(ConfigError::new(
            setting,
            format!("{} is not a PEM file", path.display()),
        ));
    }
    Ok(pem)
}

impl ServerTlsArgs {
    /// The server's TLS configuration; `None` serves plaintext.
    pub fn validate(&self) -> Result<Option<ServerTlsConfig>, ConfigError> {
        const CERT: &str = "--tls-cert / VIDCASCADE_TLS_CERT";
        const KEY: &str = "--tls-key / VIDCASCADE_TLS_KEY";
        const CLIENT_CA: &str = "--tls-client-ca / VIDCASCADE_TLS_CLIENT_CA";
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (None, None) => {
                if self.tls_client_ca.is_some() {
                    return Err(ConfigError::new(
                        CLIENT_CA,
                        "client certificates need TLS: set --tls-cert and --tls-key too",
                    ));
                }
                return Ok(None);
            }
            (Some(cert), Some(key)) => (read_pem(CERT, cert)?, read_pem(KEY, key)?),
            (Some(_), None) => return Err(ConfigError::new(KEY, "--tls-cert needs --tls-key")),
            (None, Some(_)) => return Err(ConfigError::new(CERT, "--tls-key needs --tls-cert")),
        };
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = &self.tls_client_ca {
            config = config.client_ca_root(Certificate::from_pem(read_pem(CLIENT_CA, ca)?));
        }
        Ok(Some(config))
    }
}

/// How the gateway reaches the internal services over TLS.
#[derive(Debug, Clone, Default, Args)]
pub struct ClientTlsArgs {
    /// PEM CA certificate(s) that sign the text encoder's and stages' server certificates; set,
    /// the gateway calls them over TLS only.
    #[arg(long, env = "VIDCASCADE_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,
    /// PEM client certificate the gateway presents to them (mTLS); needs --upstream-key.
    #[arg(long, env = "VIDCASCADE_UPSTREAM_CERT")]
    pub upstream_cert: Option<PathBuf>,
    /// PEM private key of --upstream-cert.
    #[arg(long, env = "VIDCASCADE_UPSTREAM_KEY")]
    pub upstream_key: Option<PathBuf>,
    /// Name the upstream certificates are issued for, when it is not the host of the address
    /// (replicas found by DNS or IP share one certificate name).
    #[arg(long, env = "VIDCASCADE_UPSTREAM_SERVER_NAME")]
    pub upstream_server_name: Option<String>,
}

impl ClientTlsArgs {
    /// The client TLS configuration; `None` calls upstreams in plaintext.
    pub fn validate(&self) -> Result<Option<ClientTlsConfig>, ConfigError> {
        const CA: &str = "--upstream-ca / VIDCASCADE_UPSTREAM_CA";
        const CERT: &str = "--upstream-cert / VIDCASCADE_UPSTREAM_CERT";
        const KEY: &str = "--upstream-key / VIDCASCADE_UPSTREAM_KEY";
        let Some(ca) = &self.upstream_ca else {
            if self.upstream_cert.is_some() || self.upstream_key.is_some() {
                return Err(ConfigError::new(
                    CA,
                    "a client certificate needs TLS: set --upstream-ca too",
                ));
            }
            return Ok(None);
        };
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem(CA, ca)?));
        match (&self.upstream_cert, &self.upstream_key) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    read_pem(CERT, cert)?,
                    read_pem(KEY, key)?,
                ));
            }
            (Some(_), None) => {
                return Err(ConfigError::new(
                    KEY,
                    "--upstream-cert needs --upstream-key",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    CERT,
                    "--upstream-key needs --upstream-cert",
                ));
            }
        }
        if let Some(name) = &self.upstream_server_name {
            config = config.domain_name(name.clone());
        }
        Ok(Some(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_configured_tls_names_the_missing_flag() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let pem = dir.path().join("cert.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )?;
        let server = |cert: bool, key: bool, ca: bool| ServerTlsArgs {
            tls_cert: cert.then(|| pem.clone()),
            tls_key: key.then(|| pem.clone()),
            tls_client_ca: ca.then(|| pem.clone()),
        };
        let setting = |args: ServerTlsArgs| args.validate().err().map(|e| e.setting);
        assert_eq!(
            setting(server(true, false, false)).as_deref(),
            Some("--tls-key / VIDCASCADE_TLS_KEY")
        );
        assert_eq!(
            setting(server(false, true, false)).as_deref(),
            Some("--tls-cert / VIDCASCADE_TLS_CERT")
        );
        assert_eq!(
            setting(server(false, false, true)).as_deref(),
            Some("--tls-client-ca / VIDCASCADE_TLS_CLIENT_CA")
        );
        assert!(server(false, false, false).validate()?.is_none());
        assert!(server(true, true, true).validate()?.is_some());
        let missing = ServerTlsArgs {
            tls_cert: Some(dir.path().join("nope.pem")),
            tls_key: Some(pem.clone()),
            tls_client_ca: None,
        };
        let err = missing
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("--tls-cert") && err.contains("nope.pem"),
            "{err}"
        );
        let client = ClientTlsArgs {
            upstream_cert: Some(pem.clone()),
            ..ClientTlsArgs::default()
        };
        assert_eq!(
            client.validate().err().map(|e| e.setting).as_deref(),
            Some("--upstream-ca / VIDCASCADE_UPSTREAM_CA")
        );
        Ok(())
    }
}
