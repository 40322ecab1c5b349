//! The endpoint set and the request path: choosing an endpoint, health checks, circuit breakers,
//! the retry budget, failover and leader-aware writes.
//!
//! Every unary call goes through [`Client::call`], which states the request's [`Kind`]. Reads and
//! idempotent operations are retried on another endpoint when one fails; writes are retried
//! only when the failure proves they were not sent or refused before being applied, and are
//! otherwise reported as [`Error::OutcomeUnknown`].

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chorus_proto::etcdserverpb as pb;
use pb::kv_client::KvClient;
use pb::maintenance_client::MaintenanceClient;
use tonic::transport::{Channel, Endpoint};

use crate::balance::{Candidate, Policy, PolicyKind, stable_hash};
use crate::breaker::{BreakerConfig, CircuitBreaker, RetryBudget};
use crate::error::{Error, Failure, Result, classify};

/// How a [`Client`] connects, balances and retries.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Which endpoint takes reads (and writes when the leader is unknown).
    pub policy: PolicyKind,
    /// Weights for weighted round robin, in endpoint order; missing entries count as 1.
    pub weights: Vec<u32>,
    /// Time allowed to open a TCP connection.
    pub connect_timeout: Duration,
    /// Time allowed for one unary attempt.
    pub request_timeout: Duration,
    /// Period of the background health checks; `None` disables them.
    pub health_interval: Option<Duration>,
    /// Time allowed for one health probe.
    pub health_timeout: Duration,
    /// Circuit breaker thresholds, per endpoint.
    pub breaker: BreakerConfig,
    /// Size of the retry budget's token bucket.
    pub retry_tokens_max: u32,
    /// Tokens each success adds back.
    pub retry_refill_per_success: f64,
    /// Attempts per request, the first included.
    pub attempts_max: usize,
    /// Send writes to the leader when it is known (learned from Maintenance.Status).
    pub leader_aware_writes: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            policy: PolicyKind::RoundRobin,
            weights: Vec::new(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            health_interval: Some(Duration::from_secs(1)),
            health_timeout: Duration::from_secs(1),
            breaker: BreakerConfig::default(),
            retry_tokens_max: 10,
            retry_refill_per_success: 0.1,
            attempts_max: 3,
            leader_aware_writes: true,
        }
    }
}

/// What a request may do on failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Changes nothing: retried on another endpoint.
    Read,
    /// Changes state, but applying it twice equals applying it once (declared by the caller):
    /// retried like a read.
    Idempotent,
    /// Changes state: retried only when it provably was not applied.
    Write,
}

/// One endpoint and what the client knows about it.
#[derive(Debug)]
pub(crate) struct EndpointState {
    pub(crate) url: String,
    id: u64,
    weight: u32,
    pub(crate) channel: Channel,
    outstanding: AtomicUsize,
    healthy: AtomicBool,
    breaker: Mutex<CircuitBreaker>,
    /// The member ID this endpoint reported in its last status (0 before the first).
    member_id: AtomicU64,
}

impl EndpointState {
    pub(crate) fn on_success(&self) {
        self.healthy.store(true, Ordering::Relaxed);
        self.breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .on_success();
    }

    pub(crate) fn on_failure(&self) {
        let mut breaker = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        breaker.on_failure(Instant::now());
    }
}

#[derive(Debug)]
struct Inner {
    endpoints: Vec<EndpointState>,
    policy: Box<dyn Policy>,
    budget: Mutex<RetryBudget>,
    /// The leader's member ID as last reported by any endpoint (0: unknown).
    leader: AtomicU64,
    options: ClientOptions,
}

/// A client of an etcd v3 cluster (Chorus or etcd). Cheap to clone; clones share connections,
/// health state and the retry budget. Background tasks stop when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// An endpoint's health as seen by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    /// The URL.
    pub url: String,
    /// Whether the last probe or request succeeded.
    pub healthy: bool,
    /// Whether its circuit currently lets requests through.
    pub circuit_closed: bool,
    /// The member ID it reported (0 if never).
    pub member_id: u64,
    /// Whether it is the leader, as far as the client knows.
    pub is_leader: bool,
}

impl Client {
    /// Connects to `endpoints` (URLs like `http://127.0.0.1:2379`). Connections are opened
    /// lazily; one round of health probes runs before returning so that dead endpoints and the
    /// leader are known. Fails only when no endpoint answers at all.
    pub async fn connect<I, S>(endpoints: I, options: ClientOptions) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let client = Client::connect_lazy(endpoints, options)?;
        client.probe_all().await;
        if !client
            .inner
            .endpoints
            .iter()
            .any(|e| e.healthy.load(Ordering::Relaxed))
        {
            return Err(Error::Unavailable {
                message: "no endpoint answered the first health probe".to_string(),
            });
        }
        Ok(client)
    }

    /// Like [`connect`](Self::connect) but without the first probe: every endpoint is presumed
    /// healthy until a request or probe says otherwise. Must be called inside a Tokio runtime
    /// when health checks are enabled.
    pub fn connect_lazy<I, S>(endpoints: I, options: ClientOptions) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut states = Vec::new();
        for (i, url) in endpoints.into_iter().enumerate() {
            let url = url.as_ref().to_string();
            let channel = Endpoint::from_shared(url.clone())
                .map_err(|e| Error::InvalidArgument(format!("endpoint {url}: {e}")))?
                .connect_timeout(options.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(2))
                .keep_alive_timeout(Duration::from_secs(2))
                .keep_alive_while_idle(true)
                .connect_lazy();
            states.push(EndpointState {
                id: stable_hash(url.as_bytes()),
                weight: options.weights.get(i).copied().unwrap_or(1).max(1),
                url,
                channel,
                outstanding: AtomicUsize::new(0),
                healthy: AtomicBool::new(true),
                breaker: Mutex::new(CircuitBreaker::new(options.breaker)),
                member_id: AtomicU64::new(0),
            });
        }
        if states.is_empty() {
            return Err(Error::InvalidArgument("no endpoints given".to_string()));
        }
        let inner = Arc::new(Inner {
            endpoints: states,
            policy: options.policy.build(),
            budget: Mutex::new(RetryBudget::new(
                options.retry_tokens_max,
                options.retry_refill_per_success,
            )),
            leader: AtomicU64::new(0),
            options,
        });
        if let Some(period) = inner.options.health_interval {
            tokio::spawn(health_loop(Arc::downgrade(&inner), period));
        }
        Ok(Client { inner })
    }

    /// The client's view of each endpoint.
    pub fn endpoints(&self) -> Vec<EndpointInfo> {
        let now = Instant::now();
        let leader = self.inner.leader.load(Ordering::Relaxed);
        self.inner
            .endpoints
            .iter()
            .map(|e| {
                let member_id = e.member_id.load(Ordering::Relaxed);
                EndpointInfo {
                    url: e.url.clone(),
                    healthy: e.healthy.load(Ordering::Relaxed),
                    circuit_closed: lock(&e.breaker).would_allow(now),
                    member_id,
                    is_leader: leader != 0 && member_id == leader,
                }
            })
            .collect()
    }

    /// Runs one health probe of every endpoint now (the background task does this
    /// periodically).
    pub async fn probe_all(&self) {
        probe_all(&self.inner).await;
    }

    /// Sends a unary request built by `f` on a chosen channel, with failover and retries as
    /// allowed by `kind`. `key` routes consistent hashing.
    pub async fn call<T, F, Fut>(&self, kind: Kind, key: Option<&[u8]>, mut f: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let options = &self.inner.options;
        let mut tried: Vec<usize> = Vec::new();
        let mut last: Option<String> = None;
        for attempt in 0..options.attempts_max.max(1) {
            if attempt > 0 && !lock(&self.inner.budget).try_withdraw() {
                return Err(Error::RetryBudgetExhausted {
                    last: last.unwrap_or_default(),
                });
            }
            let Some(index) = self.select(kind, key, &tried) else {
                break;
            };
            tried.push(index);
            let endpoint = &self.inner.endpoints[index];
            endpoint.outstanding.fetch_add(1, Ordering::Relaxed);
            let outcome =
                tokio::time::timeout(options.request_timeout, f(endpoint.channel.clone())).await;
            endpoint.outstanding.fetch_sub(1, Ordering::Relaxed);
            let status = match outcome {
                Ok(Ok(response)) => {
                    endpoint.on_success();
                    lock(&self.inner.budget).deposit();
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => status,
                Err(_) => tonic::Status::deadline_exceeded("request timed out in the client"),
            };
            let failure = classify(&status);
            tracing::debug!(endpoint = %endpoint.url, ?failure, %status, "request failed");
            match failure {
                Failure::Definite => {
                    endpoint.on_success();
                    return Err(Error::from_status(&status));
                }
                Failure::Ambiguous if kind == Kind::Write => {
                    endpoint.on_failure();
                    return Err(Error::OutcomeUnknown {
                        message: format!("{}: {}", endpoint.url, status.message()),
                    });
                }
                Failure::NotSent | Failure::Refused | Failure::Ambiguous => {
                    endpoint.on_failure();
                    if failure == Failure::NotSent {
                        endpoint.healthy.store(false, Ordering::Relaxed);
                    }
                    last = Some(format!("{}: {}", endpoint.url, status.message()));
                }
            }
        }
        Err(Error::Unavailable {
            message: last.unwrap_or_else(|| "every endpoint is unhealthy or open".to_string()),
        })
    }

    /// Chooses an endpoint not yet `tried`: healthy ones with a closed circuit first, then any
    /// whose circuit lets a request through (health may be stale). Writes go to the leader when
    /// it is among them.
    fn select(&self, kind: Kind, key: Option<&[u8]>, tried: &[usize]) -> Option<usize> {
        let now = Instant::now();
        let endpoints = &self.inner.endpoints;
        let open: Vec<usize> = (0..endpoints.len())
            .filter(|i| !tried.contains(i) && lock(&endpoints[*i].breaker).would_allow(now))
            .collect();
        let healthy: Vec<usize> = open
            .iter()
            .copied()
            .filter(|i| endpoints[*i].healthy.load(Ordering::Relaxed))
            .collect();
        let tier = if healthy.is_empty() { open } else { healthy };
        let leader = self.inner.leader.load(Ordering::Relaxed);
        let to_leader = kind != Kind::Read && self.inner.options.leader_aware_writes && leader != 0;
        let chosen = to_leader
            .then(|| {
                tier.iter()
                    .copied()
                    .find(|i| endpoints[*i].member_id.load(Ordering::Relaxed) == leader)
            })
            .flatten()
            .or_else(|| {
                let candidates: Vec<Candidate> = tier
                    .iter()
                    .map(|i| Candidate {
                        index: *i,
                        id: endpoints[*i].id,
                        weight: endpoints[*i].weight,
                        outstanding: endpoints[*i].outstanding.load(Ordering::Relaxed),
                    })
                    .collect();
                self.inner.policy.pick(&candidates, key)
            })?;
        lock(&endpoints[chosen].breaker).allow(now);
        Some(chosen)
    }

    /// An endpoint for a long-lived stream (watch, keep-alive), avoiding `avoid` when another is
    /// usable.
    pub(crate) fn stream_endpoint(&self, avoid: Option<usize>) -> Option<(usize, Channel)> {
        let tried: Vec<usize> = avoid.into_iter().collect();
        let index = self
            .select(Kind::Read, None, &tried)
            .or_else(|| self.select(Kind::Read, None, &[]))?;
        Some((index, self.inner.endpoints[index].channel.clone()))
    }

    /// Reports a stream's health.
    pub(crate) fn report(&self, index: usize, ok: bool) {
        if let Some(endpoint) = self.inner.endpoints.get(index) {
            if ok {
                endpoint.on_success();
            } else {
                endpoint.on_failure();
            }
        }
    }

    /// The options the client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// Maintenance.Status of one endpoint (by URL, as given to `connect`).
    pub async fn status(&self, url: &str) -> Result<pb::StatusResponse> {
        let endpoint = self
            .inner
            .endpoints
            .iter()
            .find(|e| e.url == url)
            .ok_or_else(|| Error::InvalidArgument(format!("unknown endpoint {url}")))?;
        let mut client = MaintenanceClient::new(endpoint.channel.clone());
        match tokio::time::timeout(
            self.inner.options.request_timeout,
            client.status(pb::StatusRequest {}),
        )
        .await
        {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(Error::from_status(&status)),
            Err(_) => Err(Error::Unavailable {
                message: format!("{url}: status timed out"),
            }),
        }
    }

    /// Cluster.MemberList.
    pub async fn member_list(&self) -> Result<pb::MemberListResponse> {
        self.call(Kind::Read, None, |channel| async move {
            pb::cluster_client::ClusterClient::new(channel)
                .member_list(pb::MemberListRequest {
                    linearizable: false,
                })
                .await
        })
        .await
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

async fn health_loop(inner: Weak<Inner>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        probe_all(&inner).await;
    }
}

async fn probe_all(inner: &Inner) {
    let probes = inner
        .endpoints
        .iter()
        .map(|e| probe(e, inner.options.health_timeout));
    let results = futures_join_all(probes).await;
    for (endpoint, result) in inner.endpoints.iter().zip(results) {
        match result {
            Some((member_id, leader)) => {
                endpoint.healthy.store(true, Ordering::Relaxed);
                if member_id != 0 {
                    endpoint.member_id.store(member_id, Ordering::Relaxed);
                }
                if leader != 0 {
                    inner.leader.store(leader, Ordering::Relaxed);
                }
            }
            None => {
                if endpoint.healthy.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint = %endpoint.url, "endpoint unhealthy");
                }
                if endpoint.member_id.load(Ordering::Relaxed)
                    == inner.leader.load(Ordering::Relaxed)
                {
                    // The leader we knew is unreachable: forget it until a probe names one.
                    inner.leader.store(0, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Maintenance.Status with a timeout; servers without it get a serializable one-key range.
/// Returns (member ID, leader ID) on success.
async fn probe(endpoint: &EndpointState, timeout: Duration) -> Option<(u64, u64)> {
    let mut maintenance = MaintenanceClient::new(endpoint.channel.clone());
    match tokio::time::timeout(timeout, maintenance.status(pb::StatusRequest {})).await {
        Ok(Ok(status)) => {
            let status = status.into_inner();
            let member_id = status.header.map(|h| h.member_id).unwrap_or(0);
            Some((member_id, status.leader))
        }
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
            let request = pb::RangeRequest {
                key: "\0".into(),
                serializable: true,
                keys_only: true,
                limit: 1,
                ..Default::default()
            };
            let mut kv = KvClient::new(endpoint.channel.clone());
            match tokio::time::timeout(timeout, kv.range(request)).await {
                Ok(Ok(_)) => Some((0, 0)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Runs futures concurrently and returns their outputs in order.
async fn futures_join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for future in futures {
        set.push(Box::pin(future));
    }
    let mut outputs = Vec::with_capacity(set.len());
    // The probes are bounded by their own timeouts, so awaiting each after all have started
    // costs the slowest one, not the sum.
    let mut started: Vec<_> = set.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = (0..started.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, result) in started.iter_mut().zip(results.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(output) => {
                        *result = Some(output);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.extend(results.into_iter().flatten());
    outputs
}
