//! Fair share: no tenant, credential or client can starve the others or
//! flood the backend.
//!
//! - [`config`]: `[limits]`, raw and validated, and its defaults.
//! - [`rate`]: token buckets (GCRA) in this process, per tenant and per credential.
//! - [`fleet`]: the same buckets fleet-wide in Redis when `[cluster]` is on, and this
//!   replica's share of them while Redis is unreachable.
//! - [`fair`]: the bound on requests in flight to the backend, with one queue per
//!   tenant served in turn.
//! - [`metrics`]: `csgate_limit_*`, `csgate_backend_*`.
//!
//! Where each applies (the pipeline calls [`Limits::backend`] on the way to the
//! upstream, the server counts connections and streams):
//! - rates: on every request that reaches the backend (a miss, a fill, a proxied
//!   request), or on every request with `count_hits = true`: `429` + `Retry-After`;
//! - backend slots: on every request that reaches the backend, fills included, in its
//!   tenant's queue: `503` + `Retry-After` past `queue_deadline` or `max_queue`;
//! - backend-bound streams per HTTP/2 connection ([`StreamBudget`]): `REFUSED_STREAM`;
//! - connections per client address: in `crate::server`.

pub mod config;
pub mod fair;
pub mod fleet;
pub mod metrics;
pub mod rate;

pub use config::{LimitsConfig, RawLimits};
pub use metrics::{LimitMetrics, Rejection};

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use self::config::Rate;
use self::fair::{FairShare, Slot};
use self::fleet::{Fleet, FleetDecision};
use self::rate::LocalBuckets;
use crate::cluster::ClusterConfig;
use crate::error::GatewayError;
use crate::identity::Tenant;

/// The backend-bound streams an HTTP/2 connection may still open; the server puts one
/// in each of the connection's requests. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StreamBudget(Arc<Semaphore>);

impl StreamBudget {
    pub fn new(streams: usize) -> StreamBudget {
        StreamBudget(Arc::new(Semaphore::new(streams)))
    }
}

/// Who a backend-bound request is, for the limits: computed once per request.
#[derive(Clone, Debug)]
pub struct Ticket {
    tenant: Tenant,
    /// The tenant's queue.
    flow: u64,
    credential: Option<HeaderValue>,
    streams: Option<StreamBudget>,
}

/// What a request holds while it is at the backend; dropping it frees the slot.
pub struct BackendPass {
    _slot: Slot,
    _stream: Option<OwnedSemaphorePermit>,
}

/// Every limit of one gateway. Cheap to clone.
#[derive(Clone)]
pub struct Limits {
    inner: Arc<Inner>,
}

struct Inner {
    config: LimitsConfig,
    local: LocalBuckets,
    fleet: Option<Fleet>,
    fair: FairShare,
    metrics: LimitMetrics,
    hasher: foldhash::fast::RandomState,
}

/// A bucket a request spends from.
struct Spend {
    rejection: Rejection,
    local: u64,
    id: Vec<u8>,
    rate: Rate,
}

impl Limits {
    /// The limits of `config` in front of `upstreams` targets (the backend bound is
    /// per target: the pool's is `max_concurrent` × targets, which round robin spreads
    /// evenly); fleet-wide when `cluster` has a Redis and a rate is set. Must run inside
    /// a runtime when `cluster` is on.
    pub fn new(
        config: &LimitsConfig,
        upstreams: usize,
        cluster: &ClusterConfig,
        metrics: LimitMetrics,
    ) -> Limits {
        let rates = [config.tenant, config.credential]
            .into_iter()
            .flatten()
            .chain(config.overrides.values().copied());
        let longest_refill = rates
            .map(|r| r.interval().saturating_mul(r.burst))
            .max()
            .unwrap_or(Duration::from_secs(1));
        let fleet = (config.has_rates() && cluster.enabled())
            .then(|| Fleet::start(cluster, metrics.clone()))
            .flatten();
        Limits {
            inner: Arc::new(Inner {
                config: config.clone(),
                local: LocalBuckets::new(longest_refill),
                fleet,
                fair: FairShare::new(
                    config::BackendLimits {
                        max_concurrent: config
                            .backend
                            .max_concurrent
                            .saturating_mul(upstreams.max(1)),
                        ..config.backend.clone()
                    },
                    metrics.clone(),
                ),
                metrics,
                hasher: foldhash::fast::RandomState::default(),
            }),
        }
    }

    pub fn count_hits(&self) -> bool {
        self.inner.config.count_hits
    }

    pub fn metrics(&self) -> &LimitMetrics {
        &self.inner.metrics
    }

    /// The backend gate, for tests and `/healthz`-style reporting.
    pub fn fair_share(&self) -> &FairShare {
        &self.inner.fair
    }

    /// The request's identity for the limits.
    pub fn ticket(
        &self,
        tenant: &Tenant,
        credential: Option<&HeaderValue>,
        streams: Option<StreamBudget>,
    ) -> Ticket {
        Ticket {
            tenant: tenant.clone(),
            flow: self.inner.hasher.hash_one(tenant),
            credential: credential.cloned(),
            streams,
        }
    }

    /// Everything a request needs before it goes to the backend, in the order that
    /// wastes least: a stream of its connection (refused at once), its rates (unless
    /// counted at admission already), then a backend slot in its tenant's turn.
    pub async fn backend(&self, ticket: &Ticket) -> Result<BackendPass, GatewayError> {
        let stream = match &ticket.streams {
            Some(budget) => match budget.0.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    self.inner.metrics.rejected(Rejection::H2Streams);
                    return Err(GatewayError::StreamRefused);
                }
            },
            None => None,
        };
        if !self.count_hits() {
            self.check_rates(ticket).await?;
        }
        match self.inner.fair.acquire(ticket.flow).await {
            Ok(slot) => Ok(BackendPass {
                _slot: slot,
                _stream: stream,
            }),
            Err(busy) => {
                self.inner.metrics.rejected(busy.rejection());
                Err(GatewayError::BackendBusy {
                    rejection: busy.rejection(),
                })
            }
        }
    }

    /// Spends a token of the request's tenant and credential buckets, or `429`.
    pub async fn check_rates(&self, ticket: &Ticket) -> Result<(), GatewayError> {
        let spends = self.spends(ticket);
        if spends.is_empty() {
            return Ok(());
        }
        let inner = &self.inner;
        let mut replicas = 1;
        if let Some(fleet) = &inner.fleet {
            let buckets: Vec<(String, Rate)> = spends
                .iter()
                .map(|s| (fleet.key(s.rejection.name(), &s.id), s.rate))
                .collect();
            match fleet.decide(&buckets).await {
                Some(FleetDecision::Allow) => {
                    inner.metrics.fleet_decision("redis");
                    return Ok(());
                }
                Some(FleetDecision::Deny(index, retry_after)) => {
                    inner.metrics.fleet_decision("redis");
                    let rejection = spends.get(index).map_or(Rejection::Tenant, |s| s.rejection);
                    return Err(self.refuse(rejection, retry_after));
                }
                None => {
                    inner.metrics.fleet_decision("local");
                    replicas = fleet.live_replicas();
                }
            }
        }
        let local: Vec<(u64, Rate)> = spends
            .iter()
            .map(|s| (s.local, s.rate.share(replicas)))
            .collect();
        inner
            .local
            .take_all(&local)
            .map_err(|(index, retry_after)| {
                let rejection = spends.get(index).map_or(Rejection::Tenant, |s| s.rejection);
                self.refuse(rejection, retry_after)
            })
    }

    fn refuse(&self, rejection: Rejection, retry_after: Duration) -> GatewayError {
        self.inner.metrics.rejected(rejection);
        GatewayError::RateLimited {
            rejection,
            retry_after,
        }
    }

    /// The buckets `ticket` spends from: its tenant's (when a tenant rate or override
    /// applies) and its credential's (when a credential rate is set and it has one).
    fn spends(&self, ticket: &Ticket) -> Vec<Spend> {
        let inner = &self.inner;
        let mut spends = Vec::with_capacity(2);
        let (center, group) = (ticket.tenant.center(), ticket.tenant.group());
        if let Some(rate) = inner.config.tenant_rate(center, group) {
            // Absent and present values never meet: 0xff is no visible ASCII.
            let mut id = Vec::new();
            for part in [center, group] {
                match part {
                    Some(value) => {
                        id.push(1);
                        id.extend_from_slice(value);
                    }
                    None => id.push(0),
                }
                id.push(0xff);
            }
            spends.push(Spend {
                rejection: Rejection::Tenant,
                local: self.local_key(0, &id),
                id,
                rate,
            });
        }
        if let (Some(rate), Some(credential)) = (inner.config.credential, &ticket.credential) {
            let id = credential.as_bytes().to_vec();
            spends.push(Spend {
                rejection: Rejection::Credential,
                local: self.local_key(1, &id),
                id,
                rate,
            });
        }
        spends
    }

    fn local_key(&self, scope: u8, id: &[u8]) -> u64 {
        self.inner.hasher.hash_one((scope, id))
    }
}
