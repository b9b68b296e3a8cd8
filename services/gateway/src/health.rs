//! Replica health: passive outlier ejection from call outcomes, active grpc.health.v1 probes,
//! and the gateway's own readiness.
//!
//! Every replica carries a [`ReplicaHealth`]. Calls report their outcome: a replica that fails
//! `eject_after` calls in a row (it refused, its connection broke, it died mid-stream) is
//! ejected — skipped by the balancer — for a back-off that doubles with each ejection up to a
//! cap (Envoy's outlier detection). When the back-off ends the replica takes traffic again, so
//! real calls re-probe it: one more failure ejects it again for longer, a success clears it.
//! Independently, [`probe_forever`] asks every replica's grpc.health.v1 `Check` every few
//! seconds; a replica that does not answer SERVING is not live. The gateway is ready (its own
//! health SERVING) while every service of the cascade has at least one live replica; ejection
//! only steers calls.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::backend::ReplicaBackend;

/// When a failing replica is taken out of rotation, and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierPolicy {
    /// Consecutive failed calls that eject a replica.
    pub eject_after: u32,
    /// The first ejection's length; each further one doubles it.
    pub base_ejection: Duration,
    /// The longest ejection.
    pub max_ejection: Duration,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        Self {
            eject_after: 3,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(60),
        }
    }
}

/// What the last active probe of a replica said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// Not probed yet.
    Unknown,
    /// Answered SERVING.
    Serving,
    /// Answered anything else, or did not answer in time.
    Failing,
}

#[derive(Debug)]
struct State {
    consecutive_failures: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
    probe: Probe,
}

impl State {
    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }
}

/// One replica's health, shared by the balancer, the calls and the prober.
#[derive(Debug)]
pub struct ReplicaHealth {
    policy: OutlierPolicy,
    state: Mutex<State>,
}

impl ReplicaHealth {
    /// A replica not yet called nor probed.
    pub fn new(policy: OutlierPolicy) -> Self {
        Self {
            policy,
            state: Mutex::new(State {
                consecutive_failures: 0,
                ejections: 0,
                ejected_until: None,
                probe: Probe::Unknown,
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-update of plain counters.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        f(&mut state)
    }

    /// A call finished well: the replica is healthy again.
    pub fn record_success(&self) {
        self.with(|s| {
            s.consecutive_failures = 0;
            s.ejections = 0;
            s.ejected_until = None;
        });
    }

    /// A call failed because of the replica; returns the ejection's length when this failure
    /// ejects it.
    pub fn record_failure(&self, now: Instant) -> Option<Duration> {
        let policy = self.policy;
        self.with(|s| {
            s.consecutive_failures += 1;
            if s.consecutive_failures < policy.eject_after {
                return None;
            }
            let doubling = 2u32.saturating_pow(s.ejections.min(16));
            let length = policy
                .base_ejection
                .saturating_mul(doubling)
                .min(policy.max_ejection);
            s.ejections += 1;
            s.ejected_until = Some(now + length);
            Some(length)
        })
    }

    /// Whether the replica is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.with(|s| s.is_ejected(now))
    }

    /// Records an active probe's answer.
    pub fn set_probe(&self, serving: bool) {
        self.with(|s| {
            s.probe = if serving {
                Probe::Serving
            } else {
                Probe::Failing
            }
        });
    }

    /// Worth sending calls to: not ejected and not failing its probe (an unprobed replica is
    /// given the benefit of the doubt).
    pub fn is_eligible(&self, now: Instant) -> bool {
        self.with(|s| !s.is_ejected(now) && s.probe != Probe::Failing)
    }

    /// Known up: its last probe said SERVING. (An ejected replica may still be live: ejection
    /// steers calls away from it, liveness is what the gateway's own health reports.)
    pub fn is_live(&self) -> bool {
        self.with(|s| s.probe == Probe::Serving)
    }
}

/// Asks one replica's grpc.health.v1 whether `service` is SERVING, within `timeout`.
pub async fn probe(channel: Channel, service: &str, timeout: Duration) -> bool {
    let mut client = HealthClient::new(channel);
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_string(),
    });
    request.set_timeout(timeout);
    let answer = tokio::time::timeout(timeout, client.check(request)).await;
    matches!(answer, Ok(Ok(response)) if response.get_ref().status() == ServingStatus::Serving)
}

/// Probes every replica of every service every `interval` and publishes the gateway's
/// readiness (every service has a live replica) on `ready`, until every receiver is gone.
pub async fn probe_forever(
    backend: Arc<ReplicaBackend>,
    interval: Duration,
    ready: watch::Sender<bool>,
) {
    let timeout = interval.min(Duration::from_secs(2));
    loop {
        let mut probes = tokio::task::JoinSet::new();
        for set in backend.sets() {
            for (channel, health) in set.probe_targets() {
                let service = set.health_service().to_string();
                probes.spawn(async move {
                    health.set_probe(probe(channel, &service, timeout).await);
                });
            }
        }
        probes.join_all().await;
        let unready: Vec<&str> = backend
            .sets()
            .filter(|set| !set.has_live_replica())
            .map(|set| set.name())
            .collect();
        let is_ready = unready.is_empty();
        if *ready.borrow() != is_ready {
            tracing::info!(ready = is_ready, without_live_replica = ?unready, "gateway readiness changed");
        }
        if ready.send(is_ready).is_err() {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            eject_after: 2,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(12),
        }
    }

    #[test]
    fn consecutive_failures_eject_with_a_doubling_capped_back_off() {
        let health = ReplicaHealth::new(policy());
        let t0 = Instant::now();
        assert_eq!(health.record_failure(t0), None, "one failure is not enough");
        assert!(health.is_eligible(t0));
        assert_eq!(health.record_failure(t0), Some(Duration::from_secs(5)));
        assert!(health.is_ejected(t0 + Duration::from_secs(4)));
        assert!(!health.is_eligible(t0 + Duration::from_secs(4)));
        let t1 = t0 + Duration::from_secs(6);
        assert!(health.is_eligible(t1), "re-probed once the back-off ends");
        assert_eq!(health.record_failure(t1), Some(Duration::from_secs(10)));
        assert_eq!(
            health.record_failure(t1),
            Some(Duration::from_secs(12)),
            "capped"
        );
        health.record_success();
        assert!(health.is_eligible(t1));
        assert_eq!(
            health.record_failure(t1),
            None,
            "a success resets the count"
        );
    }

    #[test]
    fn only_a_serving_probe_makes_a_replica_live() {
        let health = ReplicaHealth::new(policy());
        let now = Instant::now();
        assert!(!health.is_live(), "not probed yet");
        assert!(health.is_eligible(now), "but worth a try");
        health.set_probe(true);
        assert!(health.is_live());
        health.set_probe(false);
        assert!(!health.is_live());
        assert!(!health.is_eligible(now));
    }
}
