//! A throwaway PKI for TLS tests: one CA, a server certificate for 127.0.0.1/localhost and a
//! client certificate, written as PEM files.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// PEM files of the test PKI.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    /// A new CA and its two leaf certificates, in `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let leaf = |names: Vec<String>, purpose: ExtendedKeyUsagePurpose| -> anyhow::Result<_> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(names)?;
            params.extended_key_usages = vec![purpose];
            let cert = params.signed_by(&key, &ca)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) =
            leaf(vec!["gateway".into()], ExtendedKeyUsagePurpose::ClientAuth)?;
        let write = |name: &str, pem: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, pem)?;
            Ok(path)
        };
        Ok(Self {
            ca: write("ca.pem", &ca.as_ref().pem())?,
            server_cert: write("server.pem", &server_cert)?,
            server_key: write("server.key", &server_key)?,
            client_cert: write("client.pem", &client_cert)?,
            client_key: write("client.key", &client_key)?,
        })
    }

    /// Flags of a server that serves TLS and, with `client_ca`, demands client certificates.
    pub fn server_flags(&self, client_ca: bool) -> Vec<String> {
        let mut flags = vec![
            "--tls-cert".to_string(),
            self.server_cert.display().to_string(),
            "--tls-key".into(),
            self.server_key.display().to_string(),
        ];
        if client_ca {
            flags.extend(["--tls-client-ca".into(), self.ca.display().to_string()]);
        }
        flags
    }

    /// A client trusting the CA; with `identity`, presenting the client certificate.
    pub fn client(&self, identity: bool) -> anyhow::Result<ClientTlsConfig> {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(&self.ca)?));
        if identity {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(&self.client_cert)?,
                std::fs::read(&self.client_key)?,
            ));
        }
        Ok(tls)
    }
}
