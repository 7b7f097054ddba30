//! Per-caller rate limits, in front of every service: a token bucket per bearer token (keyed by
//! the token's SHA-256, never the token), and one per client IP address for calls that carry no
//! token. A call over its caller's rate fails at once with RESOURCE_EXHAUSTED (reason
//! `RATE_LIMITED`, with a `RetryInfo` saying when to come back) before it reaches a handler or
//! the database, so one flooding client cannot starve the others of the server's concurrency
//! slots and database connections.
//!
//! Buckets live in process memory on purpose: a limit is protection, not correctness, and a
//! caller spread over N replicas gets N times the rate. The map is bounded: idle buckets (full
//! again) are dropped, and once it holds [`MAX_BUCKETS`] active keys, new keys share one
//! overflow bucket, so a client inventing a new token for every call is limited as one caller.
//! Streams count once, when they open. Health checks are never limited: a mesh's probes share
//! an address with its proxied traffic.
//!
//! A rate alone does not bound how many calls one caller has waiting: a client that fires its
//! 500 calls a second without waiting for answers keeps thousands in flight, more than the
//! server's whole concurrency limit, and everyone else queues behind them. So each caller may
//! also have only so many calls in flight (until their answer's headers), four times as many
//! for an address as for a token; past that a call is refused at once, like one over the rate.

use std::{
    collections::HashMap,
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tonic::{Code, Status, transport::server::TcpConnectInfo};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use crate::auth::TokenDigest;

/// Active keys kept before new callers share the overflow bucket.
const MAX_BUCKETS: usize = 100_000;
/// Map size at which idle buckets are first swept; doubles with what survives a sweep.
const SWEEP_AT: usize = 4096;
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// A sustained rate and the burst above it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    /// `None` when `per_second` is zero: no limit.
    pub fn new(per_second: u32, burst: u32) -> Option<Rate> {
        (per_second > 0).then(|| Rate {
            per_second: per_second as f64,
            burst: burst.max(1) as f64,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Key {
    Token(TokenDigest),
    Address(IpAddr),
    Overflow,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, rate: Rate, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate.per_second).min(rate.burst)
    }
}

struct Buckets {
    map: HashMap<Key, Bucket>,
    sweep_at: usize,
    /// At the cap a sweep may free nothing; sweeping then at most once a second keeps a flood
    /// of new keys from costing a full pass each.
    swept: Option<Instant>,
}

/// The limiter shared by every connection of one server.
pub struct RateLimiter {
    token: Option<Rate>,
    anonymous: Option<Rate>,
    buckets: Mutex<Buckets>,
    /// Calls one token may have in flight (an address: four times as many); 0: no cap.
    max_in_flight: u32,
    /// Calls in flight per caller; a caller leaves the map when its last call is answered.
    in_flight: Mutex<HashMap<Key, u32>>,
}

/// One admitted call, counted in flight until dropped.
struct InFlight {
    limiter: Arc<RateLimiter>,
    key: Key,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut in_flight = self
            .limiter
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = in_flight.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.key);
            }
        }
    }
}

impl RateLimiter {
    pub fn new(token: Option<Rate>, anonymous: Option<Rate>, max_in_flight: u32) -> Self {
        RateLimiter {
            token,
            anonymous,
            max_in_flight,
            in_flight: Mutex::new(HashMap::new()),
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                sweep_at: SWEEP_AT,
                swept: None,
            }),
        }
    }

    fn rate(&self, key: Key) -> Option<Rate> {
        match key {
            Key::Token(_) => self.token,
            Key::Address(_) | Key::Overflow => self.anonymous.or(self.token),
        }
    }

    /// Admits a call from `key`, or says why not.
    fn admit(self: &Arc<Self>, key: Key, now: Instant) -> Result<Option<InFlight>, Status> {
        self.take(key, now).map_err(limited)?;
        let cap = match key {
            _ if self.max_in_flight == 0 => return Ok(None),
            Key::Token(_) => self.max_in_flight,
            Key::Address(_) | Key::Overflow => self.max_in_flight.saturating_mul(4),
        };
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let count = in_flight.entry(key).or_insert(0);
        if *count >= cap {
            return Err(too_many_in_flight(cap));
        }
        *count += 1;
        Ok(Some(InFlight {
            limiter: self.clone(),
            key,
        }))
    }

    /// Takes one call from `key`'s bucket; `Err` says how long until the next call is allowed.
    fn take(&self, key: Key, now: Instant) -> Result<(), Duration> {
        let Some(rate) = self.rate(key) else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let len = buckets.map.len();
        if !buckets.map.contains_key(&key)
            && len >= buckets.sweep_at
            && (len < MAX_BUCKETS
                || buckets
                    .swept
                    .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1)))
        {
            self.sweep(&mut buckets, now);
        }
        let key = if buckets.map.contains_key(&key) || buckets.map.len() < MAX_BUCKETS {
            key
        } else {
            Key::Overflow
        };
        let rate = self.rate(key).unwrap_or(rate);
        let bucket = buckets.map.entry(key).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        let tokens = bucket.refilled(rate, now);
        if tokens >= 1.0 {
            *bucket = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            Ok(())
        } else {
            *bucket = Bucket { tokens, at: now };
            Err(Duration::from_secs_f64((1.0 - tokens) / rate.per_second))
        }
    }

    /// Drops the buckets that have filled up again: forgetting them changes nothing.
    fn sweep(&self, buckets: &mut Buckets, now: Instant) {
        buckets.map.retain(|key, bucket| match self.rate(*key) {
            Some(rate) => bucket.refilled(rate, now) < rate.burst,
            None => false,
        });
        buckets.sweep_at = (buckets.map.len() * 2).clamp(SWEEP_AT, MAX_BUCKETS);
        buckets.swept = Some(now);
    }

    /// Who is calling: the bearer token if there is one, else the peer's address.
    fn key_of<B>(request: &http::Request<B>) -> Option<Key> {
        if let Some(token) = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            return Some(Key::Token(TokenDigest::of(token)));
        }
        request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(|info| info.remote_addr())
            .map(|addr| Key::Address(addr.ip()))
    }
}

#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Arc<RateLimiter>,
}

impl RateLimitLayer {
    pub fn new(limiter: RateLimiter) -> Self {
        RateLimitLayer {
            limiter: Arc::new(limiter),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RateLimited<S> {
    inner: S,
    limiter: Arc<RateLimiter>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RateLimited<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let verdict = if request.uri().path().starts_with(HEALTH_PREFIX) {
            Ok(None)
        } else {
            match RateLimiter::key_of(&request) {
                Some(key) => self.limiter.admit(key, Instant::now()),
                None => Ok(None),
            }
        };
        match verdict {
            Ok(in_flight) => {
                let answer = self.inner.call(request);
                Box::pin(async move {
                    let _in_flight = in_flight;
                    answer.await
                })
            }
            Err(status) => {
                let response = status.into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

/// The answer to a call over its caller's rate.
fn limited(retry_after: Duration) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info("RATE_LIMITED", crate::error::ERROR_DOMAIN, HashMap::new());
    details.set_retry_info(Some(retry_after));
    Status::with_error_details(
        Code::ResourceExhausted,
        format!(
            "rate limit exceeded: retry in {} ms",
            retry_after.as_millis().max(1)
        ),
        details,
    )
}

/// The answer to a call past its caller's calls in flight.
fn too_many_in_flight(cap: u32) -> Status {
    let retry_after = Duration::from_millis(100);
    let mut details = ErrorDetails::new();
    details.set_error_info("RATE_LIMITED", crate::error::ERROR_DOMAIN, HashMap::new());
    details.set_retry_info(Some(retry_after));
    Status::with_error_details(
        Code::ResourceExhausted,
        format!("too many calls in flight: at most {cap} at once; wait for answers"),
        details,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(n: u32) -> Key {
        Key::Token(TokenDigest::of(&n.to_string()))
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(Rate::new(10, 5), None, 0);
        let start = Instant::now();
        for _ in 0..5 {
            assert!(limiter.take(token(1), start).is_ok());
        }
        let wait = limiter.take(token(1), start).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
        // Another caller is not affected.
        assert!(limiter.take(token(2), start).is_ok());
        // A tenth of a second later one more call is allowed, and only one.
        let later = start + Duration::from_millis(100);
        assert!(limiter.take(token(1), later).is_ok());
        assert!(limiter.take(token(1), later).is_err());
    }

    #[test]
    fn anonymous_callers_have_their_own_rate_and_zero_means_off() {
        let address = Key::Address("192.0.2.1".parse().unwrap());
        let limiter = RateLimiter::new(Rate::new(1, 1), Rate::new(3, 3), 0);
        let now = Instant::now();
        assert_eq!(
            (0..5)
                .filter(|_| limiter.take(address, now).is_ok())
                .count(),
            3
        );
        let off = RateLimiter::new(None, None, 0);
        assert!((0..10_000).all(|_| off.take(token(1), now).is_ok()));
    }

    #[test]
    fn idle_buckets_are_swept_and_new_keys_past_the_cap_share_one() {
        let limiter = RateLimiter::new(Rate::new(1, 2), None, 0);
        let start = Instant::now();
        for n in 0..SWEEP_AT as u32 {
            limiter.take(token(n), start).unwrap();
        }
        // Two seconds on, every bucket is full again and the next new key sweeps them all.
        limiter
            .take(token(u32::MAX), start + Duration::from_secs(2))
            .unwrap();
        assert_eq!(limiter.buckets.lock().unwrap().map.len(), 1);

        let mut buckets = limiter.buckets.lock().unwrap();
        for n in 0..MAX_BUCKETS as u32 {
            buckets.map.insert(
                token(n),
                Bucket {
                    tokens: 0.0,
                    at: start,
                },
            );
        }
        buckets.sweep_at = MAX_BUCKETS;
        buckets.swept = Some(start);
        drop(buckets);
        let fresh = |n: u32| limiter.take(token(n), start);
        // Past the cap, unseen keys draw on the one overflow bucket (anonymous rate, else the
        // token rate: a burst of 2 here), not on a fresh bucket each.
        assert!(fresh(MAX_BUCKETS as u32 + 1).is_ok());
        assert!(fresh(MAX_BUCKETS as u32 + 2).is_ok());
        assert!(fresh(MAX_BUCKETS as u32 + 3).is_err());
    }

    #[test]
    fn calls_in_flight_are_capped_per_caller_and_released_when_answered() {
        let limiter = Arc::new(RateLimiter::new(None, None, 2));
        let now = Instant::now();
        let first = limiter.admit(token(1), now).unwrap();
        let second = limiter.admit(token(1), now).unwrap();
        let refused = limiter.admit(token(1), now).err().unwrap();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        // Another token, and an address (four times the cap), are counted apart.
        assert!(limiter.admit(token(2), now).is_ok());
        let address = Key::Address("192.0.2.1".parse().unwrap());
        let held: Vec<_> = (0..8)
            .map(|_| limiter.admit(address, now).unwrap())
            .collect();
        assert!(limiter.admit(address, now).is_err());
        drop(first);
        let third = limiter.admit(token(1), now).unwrap();
        drop((second, third, held));
        assert!(limiter.in_flight.lock().unwrap().is_empty());
    }
}
