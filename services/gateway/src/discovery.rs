//! Where a service's replicas are: a static list, a DNS name re-resolved periodically, or a
//! Kubernetes Service's EndpointSlices followed live ([`crate::kubernetes`]).
//!
//! Discovery publishes the current address list on a `watch` channel; [`crate::replicas`]
//! keeps one lazily connected channel per address and balances calls across them. Behind a
//! Kubernetes *headless* Service, DNS returns every ready pod, so per-call balancing works
//! with `dns:` too; `kube://` sees a pod go (terminating) or come (ready) at once.

use std::time::Duration;

use tokio::sync::watch;

use crate::kubernetes::{KubeDiscovery, KubeService};

/// How to find a service's replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Fixed `host:port` addresses.
    Static(Vec<String>),
    /// Every address `host` resolves to, on `port`.
    Dns {
        /// Host name.
        host: String,
        /// Port.
        port: u16,
    },
    /// The ready endpoints of a Kubernetes Service.
    Kube(KubeService),
}

impl Target {
    /// Parses `host:port[,host:port...]`, `dns:host:port` or `kube://service.namespace:port`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("kube://") {
            return KubeService::parse(rest).map(Self::Kube);
        }
        if let Some(rest) = text.strip_prefix("dns:") {
            let rest = rest.trim_start_matches("//");
            let (host, port) = split_host_port(rest)?;
            return Ok(Self::Dns { host, port });
        }
        let addresses = text
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| split_host_port(a).map(|(h, p)| format!("{h}:{p}")))
            .collect::<Result<Vec<_>, _>>()?;
        if addresses.is_empty() {
            return Err(format!(
                "`{text}` names no replica; expected host:port[,host:port...], dns:host:port or kube://service.namespace:port"
            ));
        }
        Ok(Self::Static(addresses))
    }
}

fn split_host_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("`{text}` is not host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{text}`: port `{port}` is not a number in 0..=65535"))?;
    if host.is_empty() || port == 0 {
        return Err(format!("`{text}` needs a host and a non-zero port"));
    }
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// A source of replica addresses (`host:port`).
pub trait Discovery: Send + Sync + 'static {
    /// The current addresses; the receiver sees every change.
    fn watch(&self) -> watch::Receiver<Vec<String>>;
}

/// A fixed list.
#[derive(Debug)]
pub struct StaticDiscovery {
    addresses: watch::Sender<Vec<String>>,
}

impl StaticDiscovery {
    /// Always `addresses`.
    pub fn new(addresses: Vec<String>) -> Self {
        Self {
            addresses: watch::Sender::new(addresses),
        }
    }
}

impl Discovery for StaticDiscovery {
    fn watch(&self) -> watch::Receiver<Vec<String>> {
        self.addresses.subscribe()
    }
}

/// A DNS name resolved now and every `refresh` (keeps the last good answer on failure).
#[derive(Debug)]
pub struct DnsDiscovery {
    addresses: watch::Sender<Vec<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl DnsDiscovery {
    /// Starts resolving `host:port` in the background. Call inside a tokio runtime.
    pub fn start(host: String, port: u16, refresh: Duration) -> Self {
        let addresses = watch::Sender::new(Vec::new());
        let publisher = addresses.clone();
        let task = tokio::spawn(async move {
            loop {
                match tokio::net::lookup_host((host.as_str(), port)).await {
                    Ok(found) => {
                        let mut found: Vec<String> = found.map(|a| a.to_string()).collect();
                        found.sort();
                        found.dedup();
                        publisher.send_if_modified(|current| {
                            let changed = *current != found;
                            if changed {
                                tracing::info!(%host, replicas = ?found, "replicas changed");
                                *current = found;
                            }
                            changed
                        });
                    }
                    Err(err) => {
                        tracing::warn!(%host, %err, "DNS lookup failed; keeping the last answer")
                    }
                }
                tokio::time::sleep(refresh).await;
            }
        });
        Self { addresses, task }
    }
}

impl Drop for DnsDiscovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Discovery for DnsDiscovery {
    fn watch(&self) -> watch::Receiver<Vec<String>> {
        self.addresses.subscribe()
    }
}

/// Starts discovery for `target`.
pub fn discover(target: &Target, refresh: Duration) -> Box<dyn Discovery> {
    match target {
        Target::Static(addresses) => Box::new(StaticDiscovery::new(addresses.clone())),
        Target::Dns { host, port } => Box::new(DnsDiscovery::start(host.clone(), *port, refresh)),
        Target::Kube(service) => Box::new(KubeDiscovery::start(service.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_errors_explain() {
        assert_eq!(
            Target::parse("10.0.0.1:5000, base-1:5000"),
            Ok(Target::Static(vec![
                "10.0.0.1:5000".into(),
                "base-1:5000".into()
            ]))
        );
        assert_eq!(
            Target::parse("dns:base.default.svc.cluster.local:50051"),
            Ok(Target::Dns {
                host: "base.default.svc.cluster.local".into(),
                port: 50051
            })
        );
        for bad in ["", "host", "host:x", "host:0", ":80", "dns:host"] {
            assert!(Target::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[tokio::test]
    async fn dns_discovery_resolves_localhost() {
        let discovery = DnsDiscovery::start("localhost".into(), 7000, Duration::from_secs(60));
        let mut watch = discovery.watch();
        let found = tokio::time::timeout(Duration::from_secs(5), watch.wait_for(|a| !a.is_empty()))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|a| a.clone())
            .unwrap_or_default();
        assert!(
            found.iter().any(|a| a.ends_with(":7000")),
            "localhost resolved to {found:?}"
        );
    }
}
