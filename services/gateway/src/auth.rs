//! Who may call the public gateway, and how often: API keys and a per-caller rate limit.
//!
//! Clients send `authorization: Bearer <key>` metadata. Keys come from a file (one per line,
//! `#` comments) and/or `VIDCASCADE_API_KEYS` (comma-separated); each presented key is compared
//! with every configured key in constant time (`subtle`), so timing reveals neither which key
//! nor how much of one matched. A missing or unknown key is UNAUTHENTICATED. With no keys
//! configured the gateway is open (for development; it logs a warning at start).
//!
//! The rate limit is a token bucket per key (per client IP when the gateway is open): a burst of
//! up to a minute's allowance, refilled continuously. A call over it is RESOURCE_EXHAUSTED with
//! a `google.rpc.RetryInfo` detail (and the delay in the message) saying when to retry.
//! Health checks and reflection are not behind the keys: Kubernetes probes carry none.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The configured API keys.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the keys themselves.
        f.debug_struct("ApiKeys")
            .field("count", &self.keys.len())
            .finish()
    }
}

impl ApiKeys {
    /// Keys from `file` (one per line, blank lines and `#` comments skipped) and from `list`
    /// (comma-separated). Errors name the file.
    pub fn load(file: Option<&Path>, list: Option<&str>) -> Result<Self, String> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        if let Some(file) = file {
            let text = std::fs::read_to_string(file)
                .map_err(|err| format!("reading {}: {err}", file.display()))?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty() && !line.starts_with('#'))
                    .map(|key| key.as_bytes().to_vec()),
            );
        }
        if let Some(list) = list {
            keys.extend(
                list.split(',')
                    .map(str::trim)
                    .filter(|key| !key.is_empty())
                    .map(|key| key.as_bytes().to_vec()),
            );
        }
        if let Some(short) = keys.iter().find(|key| key.len() < 16) {
            return Err(format!(
                "an API key of {} characters is too short to be secret; use at least 16",
                short.len()
            ));
        }
        Ok(Self { keys })
    }

    /// Whether any key is configured (the gateway then requires one).
    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The index of the key `presented` matches, comparing with every key in constant time.
    fn find(&self, presented: &[u8]) -> Option<usize> {
        let mut found = None;
        for (index, key) in self.keys.iter().enumerate() {
            if bool::from(key.as_slice().ct_eq(presented)) {
                found = Some(index);
            }
        }
        found
    }
}

/// Who a call is charged to for rate limiting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Caller {
    Key(usize),
    Address(Option<IpAddr>),
}

/// A token bucket per caller: `per_minute` calls a minute, bursts up to that many.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<Caller, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limit of `per_minute` calls per caller per minute (0: no limit).
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `caller`'s bucket at `now`, or says how long until one is there.
    fn take(&self, caller: Caller, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        // Bound the table: forget callers whose buckets have refilled completely.
        if buckets.len() > 100_000 {
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_second < capacity
            });
        }
        let (tokens, at) = buckets.entry(caller).or_insert((capacity, now));
        let refilled = (*tokens + now.duration_since(*at).as_secs_f64() * per_second).min(capacity);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            Err(Duration::from_secs_f64((1.0 - refilled) / per_second))
        }
    }
}

/// The gateway's interceptor: API key check, then the rate limit.
#[derive(Debug, Clone)]
pub struct Guard {
    keys: ApiKeys,
    limiter: Arc<RateLimiter>,
}

impl Guard {
    /// Checks calls against `keys` and `limiter`.
    pub fn new(keys: ApiKeys, limiter: RateLimiter) -> Self {
        Self {
            keys,
            limiter: Arc::new(limiter),
        }
    }

    fn caller(&self, metadata: &MetadataMap, peer: Option<IpAddr>) -> Result<Caller, Status> {
        if !self.keys.is_enabled() {
            return Ok(Caller::Address(peer));
        }
        let presented = metadata
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "this gateway requires an API key: send `authorization: Bearer <key>` metadata",
                )
            })?;
        self.keys
            .find(presented.trim().as_bytes())
            .map(Caller::Key)
            .ok_or_else(|| Status::unauthenticated("the API key is not valid"))
    }

    /// Lets a call from `peer` with `metadata` through, or says why not: UNAUTHENTICATED, or
    /// RESOURCE_EXHAUSTED with a `RetryInfo` detail. gRPC calls pass here through the
    /// interceptor, HTTP calls from the HTTP handlers.
    pub fn check(&self, metadata: &MetadataMap, peer: Option<IpAddr>) -> Result<(), Status> {
        let caller = self.caller(metadata, peer)?;
        let Err(wait) = self.limiter.take(caller, Instant::now()) else {
            return Ok(());
        };
        metrics::counter!("vidcascade_gateway_rate_limited_total").increment(1);
        let message = format!(
            "rate limit of {} calls per minute exceeded; retry in {:.1} s",
            self.limiter.per_minute,
            wait.as_secs_f64()
        );
        let details = ErrorDetails::with_retry_info(Some(wait));
        Err(Status::with_error_details(
            tonic::Code::ResourceExhausted,
            message,
            details,
        ))
    }
}

impl tonic::service::Interceptor for Guard {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(request.metadata(), request.remote_addr().map(|a| a.ip()))?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor;

    use super::*;

    const KEY: &str = "k3y-0123456789abcdef";

    fn with_key(key: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(key) = key
            && let Ok(value) = format!("Bearer {key}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    #[test]
    fn only_a_configured_key_gets_in() -> Result<(), String> {
        let mut guard = Guard::new(ApiKeys::load(None, Some(KEY))?, RateLimiter::new(0));
        assert!(guard.call(with_key(Some(KEY))).is_ok());
        for bad in [None, Some("k3y-0123456789abcdeX"), Some("k3y")] {
            let status = guard.call(with_key(bad)).err();
            assert_eq!(status.map(|s| s.code()), Some(tonic::Code::Unauthenticated));
        }
        let mut open = Guard::new(ApiKeys::default(), RateLimiter::new(0));
        assert!(
            open.call(with_key(None)).is_ok(),
            "no keys configured: open"
        );
        Ok(())
    }

    #[test]
    fn short_keys_are_refused_at_start() {
        assert!(ApiKeys::load(None, Some("short")).is_err());
    }

    #[test]
    fn a_caller_over_its_rate_waits_for_the_refill() {
        let limiter = RateLimiter::new(60);
        let t0 = Instant::now();
        for _ in 0..60 {
            assert!(
                limiter.take(Caller::Key(0), t0).is_ok(),
                "a burst of a minute's calls"
            );
        }
        let wait = limiter.take(Caller::Key(0), t0).err();
        assert!(
            wait.is_some_and(|w| (w.as_secs_f64() - 1.0).abs() < 1e-6),
            "{wait:?}"
        );
        assert!(
            limiter.take(Caller::Key(1), t0).is_ok(),
            "other keys are not charged"
        );
        assert!(
            limiter
                .take(Caller::Key(0), t0 + Duration::from_secs(1))
                .is_ok()
        );
    }

    #[test]
    fn a_rate_limited_call_says_when_to_retry() -> Result<(), String> {
        let mut guard = Guard::new(ApiKeys::load(None, Some(KEY))?, RateLimiter::new(1));
        assert!(guard.call(with_key(Some(KEY))).is_ok());
        let status = guard.call(with_key(Some(KEY))).err().ok_or("not limited")?;
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("retry in 60.0 s"),
            "{}",
            status.message()
        );
        let retry = status.get_details_retry_info().and_then(|r| r.retry_delay);
        assert!(
            retry.is_some_and(|r| r > Duration::from_secs(59) && r <= Duration::from_secs(60)),
            "{retry:?}"
        );
        Ok(())
    }
}
