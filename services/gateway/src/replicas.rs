//! Per-call balancing over a service's replicas, with retry of calls that never started.
//!
//! HTTP/2 multiplexes every call onto one connection, so a Kubernetes ClusterIP Service would
//! pin all of a gateway's traffic to one pod. Instead the gateway keeps a lazily connected
//! channel per replica address (from [`crate::discovery`]) and sends each call to the replica
//! with the fewest calls in flight (ties rotate).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic::Code;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::discovery::Discovery;
use crate::error::GatewayError;
use crate::health::{OutlierPolicy, ReplicaHealth};

/// One replica: its address, channel and health.
#[derive(Debug, Clone)]
pub struct Replica {
    /// `host:port`.
    pub address: String,
    /// The lazily connected channel.
    pub channel: Channel,
    /// Its outlier and probe state.
    pub health: Arc<ReplicaHealth>,
    in_flight: Arc<AtomicUsize>,
}

impl Replica {
    /// The replica failed a call (see [`is_replica_failure`]): counts towards its ejection.
    pub fn failed(&self, service: &str) {
        if let Some(length) = self.health.record_failure(Instant::now()) {
            tracing::warn!(%service, address = %self.address, ejected_s = length.as_secs_f64(), "replica ejected");
            metrics::counter!("vidcascade_gateway_replica_ejections_total", "stage" => service.to_string())
                .increment(1);
        }
    }
}

/// Counts a call against its replica until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a failed call says the replica (or the way to it) failed, rather than the request:
/// UNAVAILABLE (refused, draining, unreachable) and RESOURCE_EXHAUSTED (its queue is full) are
/// the server's own answers; a status tonic made from a broken connection (it carries the
/// transport error as its source: a replica killed mid-stream gives UNKNOWN, INTERNAL or
/// CANCELLED "h2 protocol error") is a failure too. Statuses the replica itself sent carry no
/// source. DEADLINE_EXCEEDED never is: another replica cannot give back the time.
pub fn is_replica_failure(status: &tonic::Status) -> bool {
    use std::error::Error;
    match status.code() {
        Code::Unavailable | Code::ResourceExhausted => true,
        Code::Unknown | Code::Internal | Code::Cancelled => status.source().is_some(),
        _ => false,
    }
}

/// How the gateway talks to every replica: ejection policy and TLS.
#[derive(Debug, Clone, Default)]
pub struct Upstream {
    /// When failing replicas leave rotation.
    pub policy: OutlierPolicy,
    /// TLS (with the gateway's client certificate for mTLS); `None` = plaintext.
    pub tls: Option<ClientTlsConfig>,
}

/// The replicas of one service.
pub struct ReplicaSet {
    name: String,
    health_service: String,
    upstream: Upstream,
    _discovery: Box<dyn Discovery>,
    addresses: watch::Receiver<Vec<String>>,
    replicas: Mutex<HashMap<String, Replica>>,
    rotation: AtomicUsize,
}

impl std::fmt::Debug for ReplicaSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaSet")
            .field("name", &self.name)
            .field("addresses", &*self.addresses.borrow())
            .finish_non_exhaustive()
    }
}

impl ReplicaSet {
    /// Replicas of service `name` (used in errors and metrics) as `discovery` finds them;
    /// probed as grpc.health.v1 service `health_service`, reached as `upstream` says.
    pub fn new(
        name: impl Into<String>,
        health_service: impl Into<String>,
        discovery: Box<dyn Discovery>,
        upstream: Upstream,
    ) -> Self {
        let addresses = discovery.watch();
        Self {
            name: name.into(),
            health_service: health_service.into(),
            upstream,
            _discovery: discovery,
            addresses,
            replicas: Mutex::new(HashMap::new()),
            rotation: AtomicUsize::new(0),
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The grpc.health.v1 service name its replicas are probed with.
    pub fn health_service(&self) -> &str {
        &self.health_service
    }

    /// Addresses currently known.
    pub fn addresses(&self) -> Vec<String> {
        self.addresses.borrow().clone()
    }

    /// The replicas of the addresses discovery knows now (new ones get a lazy channel, gone
    /// ones are forgotten).
    fn current(&self) -> Result<MutexGuard<'_, HashMap<String, Replica>>, GatewayError> {
        let addresses = self.addresses();
        let mut replicas = self
            .replicas
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        replicas.retain(|address, _| addresses.contains(address));
        for address in addresses {
            if let std::collections::hash_map::Entry::Vacant(entry) = replicas.entry(address) {
                let replica = self.connect(entry.key())?;
                entry.insert(replica);
            }
        }
        Ok(replicas)
    }

    fn connect(&self, address: &str) -> Result<Replica, GatewayError> {
        let bad = |err: tonic::transport::Error| GatewayError::BadAddress {
            service: self.name.clone(),
            address: address.to_string(),
            reason: err.to_string(),
        };
        let scheme = if self.upstream.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}")).map_err(bad)?;
        if let Some(tls) = &self.upstream.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(bad)?;
        }
        let channel = endpoint
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(Replica {
            address: address.to_string(),
            channel,
            health: Arc::new(ReplicaHealth::new(self.upstream.policy)),
            in_flight: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Every replica's channel and health, for the prober.
    pub fn probe_targets(&self) -> Vec<(Channel, Arc<ReplicaHealth>)> {
        match self.current() {
            Ok(replicas) => replicas
                .values()
                .map(|r| (r.channel.clone(), r.health.clone()))
                .collect(),
            Err(err) => {
                tracing::warn!(error = %err, "cannot probe replicas");
                Vec::new()
            }
        }
    }

    /// Whether some replica is live (its last probe said SERVING).
    pub fn has_live_replica(&self) -> bool {
        self.current()
            .is_ok_and(|replicas| replicas.values().any(|r| r.health.is_live()))
    }

    /// The replica with the fewest calls in flight among the eligible ones (not ejected, not
    /// failing probes) not in `tried`; when none is, among those not tried; when every replica
    /// was tried, any.
    pub fn pick(&self, tried: &[String]) -> Result<(Replica, InFlight), GatewayError> {
        let replicas = self.current()?;
        if replicas.is_empty() {
            return Err(GatewayError::NoReplicas {
                service: self.name.clone(),
            });
        }
        let now = Instant::now();
        let mut addresses: Vec<&String> = replicas.keys().collect();
        addresses.sort();
        let untried: Vec<&String> = addresses
            .iter()
            .copied()
            .filter(|a| !tried.contains(a))
            .collect();
        let eligible: Vec<&String> = untried
            .iter()
            .copied()
            .filter(|a| replicas[*a].health.is_eligible(now))
            .collect();
        let pool = [eligible, untried, addresses]
            .into_iter()
            .find(|pool| !pool.is_empty())
            .unwrap_or_default();
        let start = self.rotation.fetch_add(1, Ordering::Relaxed);
        let chosen = (0..pool.len())
            .map(|i| &replicas[pool[(start + i) % pool.len()]])
            .min_by_key(|replica| replica.in_flight.load(Ordering::Relaxed))
            .cloned()
            .ok_or_else(|| GatewayError::NoReplicas {
                service: self.name.clone(),
            })?;
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(chosen.in_flight.clone());
        Ok((chosen, guard))
    }

    /// Runs `call` once on a replica, without retry or health bookkeeping (start-up checks:
    /// replicas still starting are not failing).
    pub async fn ask<T, F, Fut>(&self, call: F) -> Result<T, GatewayError>
    where
        F: FnOnce(Replica) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let (replica, _in_flight) = self.pick(&[])?;
        let address = replica.address.clone();
        call(replica).await.map_err(|status| GatewayError::Stage {
            stage: self.name.clone(),
            address,
            status,
        })
    }

    /// Runs `call` on a replica; when it fails because of the replica ([`is_replica_failure`]:
    /// `call` must only fail so before anything was streamed), records the failure and tries
    /// another replica, up to `attempts` calls in all. Returns the value with the replica that
    /// gave it.
    pub async fn call<T, F, Fut>(
        &self,
        attempts: usize,
        mut call: F,
    ) -> Result<(T, Replica, InFlight), GatewayError>
    where
        F: FnMut(Replica) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let mut tried: Vec<String> = Vec::new();
        let mut last: Option<(String, tonic::Status)> = None;
        for attempt in 0..attempts.max(1) {
            let (replica, guard) = self.pick(&tried)?;
            if tried.contains(&replica.address) {
                // Every replica failed once: give the next try a moment.
                tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
            }
            let address = replica.address.clone();
            match call(replica.clone()).await {
                Ok(value) => return Ok((value, replica, guard)),
                Err(status) if is_replica_failure(&status) => {
                    tracing::info!(service = %self.name, %address, code = ?status.code(), "retrying on another replica");
                    metrics::counter!("vidcascade_gateway_stage_retries_total", "stage" => self.name.clone())
                        .increment(1);
                    // A full queue is the replica working as designed, not failing.
                    if status.code() != Code::ResourceExhausted {
                        replica.failed(&self.name);
                    }
                    tried.push(address.clone());
                    last = Some((address, status));
                }
                Err(status) => {
                    return Err(GatewayError::Stage {
                        stage: self.name.clone(),
                        address,
                        status,
                    });
                }
            }
        }
        match last {
            Some((address, status)) => Err(GatewayError::Stage {
                stage: self.name.clone(),
                address,
                status,
            }),
            None => Err(GatewayError::NoReplicas {
                service: self.name.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::StaticDiscovery;

    fn set(addresses: &[&str]) -> ReplicaSet {
        ReplicaSet::new(
            "base",
            "vidcascade.v1.VideoStage/base",
            Box::new(StaticDiscovery::new(
                addresses.iter().map(|a| a.to_string()).collect(),
            )),
            Upstream {
                policy: OutlierPolicy {
                    eject_after: 2,
                    ..OutlierPolicy::default()
                },
                tls: None,
            },
        )
    }

    #[tokio::test]
    async fn calls_go_to_the_least_busy_replica() -> Result<(), GatewayError> {
        let replicas = set(&["127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003"]);
        let (first, _a) = replicas.pick(&[])?;
        let (second, _b) = replicas.pick(&[])?;
        let (third, c) = replicas.pick(&[])?;
        let mut seen = vec![first.address, second.address, third.address.clone()];
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3, "three calls in flight use three replicas");
        drop(c);
        let (fourth, _d) = replicas.pick(&[])?;
        assert_eq!(fourth.address, third.address, "the idle replica is picked");
        Ok(())
    }

    #[tokio::test]
    async fn unavailable_is_retried_elsewhere_and_other_errors_are_not() -> Result<(), GatewayError>
    {
        let replicas = set(&["127.0.0.1:1001", "127.0.0.1:1002"]);
        let mut calls = Vec::new();
        let (answer, _replica, _guard) = replicas
            .call(3, |replica| {
                calls.push(replica.address.clone());
                let first = calls.len() == 1;
                async move {
                    if first {
                        Err(tonic::Status::unavailable("draining"))
                    } else {
                        Ok(replica.address)
                    }
                }
            })
            .await?;
        assert_eq!(calls.len(), 2);
        assert_ne!(calls[0], calls[1], "the retry went to the other replica");
        assert_eq!(answer, calls[1]);

        let mut count = 0;
        let result = replicas
            .call(3, |_| {
                count += 1;
                async { Err::<(), _>(tonic::Status::invalid_argument("bad")) }
            })
            .await;
        assert_eq!(count, 1);
        assert!(
            matches!(result, Err(GatewayError::Stage { ref status, .. }) if status.code() == Code::InvalidArgument)
        );
        Ok(())
    }

    #[tokio::test]
    async fn ejection_takes_a_replica_out_of_rotation() -> Result<(), GatewayError> {
        let replicas = set(&["127.0.0.1:1001", "127.0.0.1:1002"]);
        let (first, _a) = replicas.pick(&[])?;
        first.failed("base");
        first.failed("base");
        assert!(first.health.is_ejected(Instant::now()));
        for _ in 0..4 {
            let (next, _guard) = replicas.pick(&[])?;
            assert_ne!(
                next.address, first.address,
                "the ejected replica is skipped"
            );
        }
        let (other, _b) = replicas.pick(&[])?;
        let (fallback, _guard) = replicas.pick(std::slice::from_ref(&other.address))?;
        assert_eq!(
            fallback.address, first.address,
            "when every other replica was tried, an ejected one is still better than none"
        );
        Ok(())
    }

    #[test]
    fn transport_failures_count_and_answers_of_the_replica_do_not() {
        let broken = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset",
        )));
        assert_eq!(broken.code(), Code::Unknown);
        assert!(is_replica_failure(&broken), "{broken:?}");
        assert!(is_replica_failure(&tonic::Status::unavailable("draining")));
        assert!(!is_replica_failure(&tonic::Status::unknown(
            "sent by the replica"
        )));
        assert!(!is_replica_failure(&tonic::Status::internal("a bug")));
        assert!(!is_replica_failure(&tonic::Status::deadline_exceeded(
            "late"
        )));
        assert!(!is_replica_failure(&tonic::Status::invalid_argument("bad")));
    }

    #[test]
    fn no_replicas_is_unavailable() {
        let replicas = set(&[]);
        let status: tonic::Status = match replicas.pick(&[]) {
            Err(err) => err.into(),
            Ok(_) => tonic::Status::new(Code::Ok, ""),
        };
        assert_eq!(status.code(), Code::Unavailable);
    }
}
