//! Kubernetes discovery: `kube://<service>.<namespace>:<port>` follows the Service's
//! EndpointSlices (discovery.k8s.io/v1) with a kube-rs watcher, so the replica set changes the
//! moment a pod becomes ready or starts terminating — no DNS TTL, no polling.
//!
//! Only endpoints that are ready and not terminating are offered new calls. An endpoint that
//! leaves the set takes no new calls; calls already on it keep their connection and finish
//! (the pod drains on SIGTERM). The watcher relists after a lost watch and backs off when the
//! API server is unreachable, keeping the last good replica set meanwhile. In a pod the client
//! uses the service account (the chart's Role allows get/list/watch on endpointslices);
//! elsewhere `KUBECONFIG`.

use std::collections::{BTreeSet, HashMap};

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::discovery::Discovery;

/// Where the pod's namespace is written in a Kubernetes pod.
const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// A `kube://` target: the Service, its namespace, and its port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeService {
    /// The Service's name.
    pub name: String,
    /// Its namespace (`None`: the gateway's own).
    pub namespace: Option<String>,
    /// The Service port (the endpoint port named `grpc`, or numbered so, is dialled).
    pub port: u16,
}

impl KubeService {
    /// Parses `kube://name[.namespace]:port` (without the scheme).
    pub fn parse(rest: &str) -> Result<Self, String> {
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("`kube://{rest}` is not kube://service.namespace:port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`kube://{rest}`: port `{port}` is not in 1..=65535"))?;
        let (name, namespace) = match host.split_once('.') {
            Some((name, namespace)) => (name, Some(namespace.to_string())),
            None => (host, None),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !valid(name) || !namespace.as_deref().is_none_or(valid) {
            return Err(format!(
                "`kube://{rest}`: the service and namespace must be DNS labels (lowercase letters, digits, -)"
            ));
        }
        Ok(Self {
            name: name.to_string(),
            namespace,
            port,
        })
    }
}

/// The ready, non-terminating `host:port` addresses of one EndpointSlice.
fn slice_addresses(slice: &EndpointSlice, service_port: u16) -> Vec<String> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("grpc"))
        .or_else(|| {
            ports
                .iter()
                .find(|p| p.port == Some(i32::from(service_port)))
        })
        .or(ports.first())
        .and_then(|p| p.port)
        .unwrap_or(i32::from(service_port));
    let ipv6 = slice.address_type == "IPv6";
    slice
        .endpoints
        .iter()
        .filter(|endpoint| {
            let conditions = endpoint.conditions.as_ref();
            // Kubernetes: a missing `ready` means ready; `terminating` means going away.
            conditions.and_then(|c| c.ready).unwrap_or(true)
                && !conditions.and_then(|c| c.terminating).unwrap_or(false)
        })
        .flat_map(|endpoint| endpoint.addresses.iter())
        .map(|ip| match ipv6 {
            true => format!("[{ip}]:{port}"),
            false => format!("{ip}:{port}"),
        })
        .collect()
}

/// The replica set of a Service from its EndpointSlices, kept by slice name.
#[derive(Debug, Default)]
struct Slices {
    live: HashMap<String, Vec<String>>,
    /// Slices listed since the watcher's last (re)start, swapped in when the list is done.
    listing: Option<HashMap<String, Vec<String>>>,
}

impl Slices {
    /// Applies one watcher event; true when the live set may have changed.
    fn apply(&mut self, event: Event<EndpointSlice>, port: u16) -> bool {
        let key = |slice: &EndpointSlice| slice.metadata.name.clone().unwrap_or_default();
        match event {
            Event::Apply(slice) => {
                self.live.insert(key(&slice), slice_addresses(&slice, port));
                true
            }
            Event::Delete(slice) => self.live.remove(&key(&slice)).is_some(),
            Event::Init => {
                self.listing = Some(HashMap::new());
                false
            }
            Event::InitApply(slice) => {
                let listing = self.listing.get_or_insert_with(HashMap::new);
                listing.insert(key(&slice), slice_addresses(&slice, port));
                false
            }
            Event::InitDone => {
                self.live = self.listing.take().unwrap_or_default();
                true
            }
        }
    }

    /// Every live address, sorted, once.
    fn addresses(&self) -> Vec<String> {
        let all: BTreeSet<&String> = self.live.values().flatten().collect();
        all.into_iter().cloned().collect()
    }
}

/// Follows one Service's EndpointSlices.
#[derive(Debug)]
pub struct KubeDiscovery {
    addresses: watch::Sender<Vec<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl KubeDiscovery {
    /// Starts watching `service` with the in-cluster (or `KUBECONFIG`) client. Call inside a
    /// tokio runtime.
    pub fn start(service: KubeService) -> Self {
        Self::spawn(service, None)
    }

    /// Starts watching `service` through `client` (tests point it at a fake API server).
    pub fn with_client(service: KubeService, client: Client) -> Self {
        Self::spawn(service, Some(client))
    }

    fn spawn(service: KubeService, client: Option<Client>) -> Self {
        let addresses = watch::Sender::new(Vec::new());
        let publisher = addresses.clone();
        let task = tokio::spawn(async move {
            let client = match client {
                Some(client) => client,
                None => match Client::try_default().await {
                    Ok(client) => client,
                    Err(err) => {
                        tracing::error!(service = %service.name, %err, "no Kubernetes client (in-cluster service account or KUBECONFIG); this service has no replicas");
                        return;
                    }
                },
            };
            follow(client, service, publisher).await;
        });
        Self { addresses, task }
    }
}

/// Watches the slices of `service` and publishes its replica set until dropped.
async fn follow(client: Client, service: KubeService, publisher: watch::Sender<Vec<String>>) {
    let namespace = service
        .namespace
        .clone()
        .or_else(|| std::fs::read_to_string(NAMESPACE_FILE).ok())
        .map(|n| n.trim().to_string())
        .unwrap_or_else(|| client.default_namespace().to_string());
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let selector = format!("kubernetes.io/service-name={}", service.name);
    let mut events = watcher::watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    let mut slices = Slices::default();
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                if slices.apply(event, service.port) {
                    publish(&publisher, &service, slices.addresses());
                }
            }
            Err(err) => {
                tracing::warn!(service = %service.name, %namespace, %err, "EndpointSlice watch failed; keeping the last replica set and retrying")
            }
        }
    }
}

fn publish(publisher: &watch::Sender<Vec<String>>, service: &KubeService, found: Vec<String>) {
    publisher.send_if_modified(|current| {
        let changed = *current != found;
        if changed {
            tracing::info!(service = %service.name, replicas = ?found, "replicas changed");
            *current = found;
        }
        changed
    });
}

impl Drop for KubeDiscovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Discovery for KubeDiscovery {
    fn watch(&self) -> watch::Receiver<Vec<String>> {
        self.addresses.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_targets_parse_and_errors_explain() {
        assert_eq!(
            KubeService::parse("vc-stage-base.video:50051"),
            Ok(KubeService {
                name: "vc-stage-base".into(),
                namespace: Some("video".into()),
                port: 50051
            })
        );
        assert_eq!(
            KubeService::parse("encoder:7").map(|s| s.namespace),
            Ok(None)
        );
        for bad in [
            "", "svc", "svc:0", "Svc.ns:1", ".ns:1", "svc.:1", "svc.ns:x",
        ] {
            assert!(KubeService::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
