//! Per-call balancing over a service's replicas, with retry of calls that never started.
//!
//! HTTP/2 multiplexes every call onto one connection, so a Kubernetes ClusterIP Service would
//! pin all of a gateway's traffic to one pod. Instead the gateway keeps a lazily connected
//! channel per replica address (from [`crate::discovery`]) and sends each call to the replica
//! with the fewest calls in flight (ties rotate).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::discovery::Discovery;
use crate::error::GatewayError;

/// One replica: its address and channel.
#[derive(Debug, Clone)]
pub struct Replica {
    /// `host:port`.
    pub address: String,
    /// The lazily connected channel.
    pub channel: Channel,
    in_flight: Arc<AtomicUsize>,
}

/// Counts a call against its replica until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The replicas of one service.
pub struct ReplicaSet {
    name: String,
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
    /// Replicas of service `name` (used in errors and metrics) as `discovery` finds them.
    pub fn new(name: impl Into<String>, discovery: Box<dyn Discovery>) -> Self {
        let addresses = discovery.watch();
        Self {
            name: name.into(),
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

    /// Addresses currently known.
    pub fn addresses(&self) -> Vec<String> {
        self.addresses.borrow().clone()
    }

    /// The replica with the fewest calls in flight, preferring ones not in `tried` (when every
    /// replica was tried, any may be picked again).
    pub fn pick(&self, tried: &[String]) -> Result<(Replica, InFlight), GatewayError> {
        let addresses = self.addresses();
        if addresses.is_empty() {
            return Err(GatewayError::NoReplicas {
                service: self.name.clone(),
            });
        }
        let mut replicas = self.replicas.lock().map_err(|_| GatewayError::NoReplicas {
            service: self.name.clone(),
        })?;
        replicas.retain(|address, _| addresses.contains(address));
        for address in &addresses {
            if !replicas.contains_key(address) {
                let channel = Endpoint::from_shared(format!("http://{address}"))
                    .map_err(|err| GatewayError::BadAddress {
                        service: self.name.clone(),
                        address: address.clone(),
                        reason: err.to_string(),
                    })?
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_while_idle(true)
                    .connect_lazy();
                replicas.insert(
                    address.clone(),
                    Replica {
                        address: address.clone(),
                        channel,
                        in_flight: Arc::new(AtomicUsize::new(0)),
                    },
                );
            }
        }
        let untried: Vec<&String> = addresses.iter().filter(|a| !tried.contains(a)).collect();
        let pool: Vec<&String> = if untried.is_empty() {
            addresses.iter().collect()
        } else {
            untried
        };
        let start = self.rotation.fetch_add(1, Ordering::Relaxed);
        let chosen = (0..pool.len())
            .map(|i| pool[(start + i) % pool.len()])
            .filter_map(|address| replicas.get(address))
            .min_by_key(|replica| replica.in_flight.load(Ordering::Relaxed))
            .cloned()
            .ok_or_else(|| GatewayError::NoReplicas {
                service: self.name.clone(),
            })?;
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(chosen.in_flight.clone());
        Ok((chosen, guard))
    }

    /// Runs `call` on a replica; when it fails with UNAVAILABLE, RESOURCE_EXHAUSTED or CANCELLED
    /// (the call never started: `call` must only fail that way before anything was streamed), tries
    /// another replica, up to `attempts` calls in all.
    pub async fn call<T, F, Fut>(
        &self,
        attempts: usize,
        mut call: F,
    ) -> Result<(T, InFlight), GatewayError>
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
            match call(replica).await {
                Ok(value) => return Ok((value, guard)),
                // CANCELLED before the first event is a draining replica refusing the stream
                // (HTTP/2 GOAWAY / REFUSED_STREAM): the gateway itself never cancels a call
                // it is still waiting on.
                Err(status)
                    if matches!(
                        status.code(),
                        Code::Unavailable | Code::ResourceExhausted | Code::Cancelled
                    ) =>
                {
                    tracing::info!(service = %self.name, %address, code = ?status.code(), "retrying on another replica");
                    metrics::counter!("vidcascade_gateway_stage_retries_total", "stage" => self.name.clone())
                        .increment(1);
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
            Box::new(StaticDiscovery::new(
                addresses.iter().map(|a| a.to_string()).collect(),
            )),
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
        let (answer, _guard) = replicas
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
