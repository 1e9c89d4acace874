//! Stage `lookup`: anonymous routes ask the cache, whose fetch is this pipeline's own
//! `forward` of the broad query; the entry it returns goes through `post_filter`.
//! Customer routes, `no-store` requests and uncacheable keys go upstream with the
//! client's own query instead.

use std::sync::Arc;

use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderMap;
use http::request::Parts;
use http::{Method, Response};

use super::broad::BroadError;
use super::fleet::fleet_fill;
use super::forward::forward_detached;
use super::{post_filter, respond, respond_json, Exchange, Gateway, Validated};
use crate::cache::{self, Cache, CacheOutcome, CacheOwner, Fill, Found, NoEntry};
use crate::error::GatewayError;
use crate::identity::Tenant;
use crate::server::Body;
use crate::trace::{self, Kind, Span};
use crate::upstream::Fetched;

/// What the cache stage made of an anonymous request.
#[derive(Debug)]
pub enum Cached {
    /// The key is remembered as uncacheable: forward the client's own query.
    Uncacheable,
    /// The post-filtered answer; `age` is set when served from a stored entry.
    Answer { body: Bytes, age: Option<Duration> },
    /// The upstream answered the broad query non-2xx: passed through unchanged.
    Passed(Fetched),
}

impl Gateway {
    /// The answer to an anonymous request from the cache, or `None` when the request
    /// goes upstream with its own query.
    pub(super) async fn lookup(
        &self,
        parts: &Parts,
        validated: &Validated,
        tenant: &Tenant,
        exchange: &mut Exchange,
    ) -> Result<Option<Response<Body>>, GatewayError> {
        if !validated.is_anonymous() {
            return Ok(None);
        }
        let Some(cache) = &self.inner.cache else {
            // The contract puts Cache-Status on every anonymous answer.
            exchange.cache = Some(CacheOutcome::Bypass);
            return Ok(None);
        };
        let directives = cache::request_directives(&parts.headers);
        if directives.no_store {
            cache.note_bypass();
            exchange.cache = Some(CacheOutcome::Bypass);
            return Ok(None);
        }
        let raw_query = parts.uri.query().unwrap_or("");
        let cached = self
            .cached(
                cache,
                &parts.headers,
                validated,
                tenant,
                raw_query,
                directives.no_cache,
                exchange,
            )
            .await?;
        Ok(match cached {
            Cached::Uncacheable => None,
            Cached::Answer { body, age } => Some(respond_json(&parts.method, body, age)),
            Cached::Passed(fetched) => Some(respond::upstream_error(&parts.method, fetched)),
        })
    }

    /// The lookup stage alone, without HTTP around it (tests drive the cache this
    /// way): `headers` are the client's (its tenant headers must be ones `admit`
    /// accepts), `raw_query` its query string. Returns the cache outcome
    /// (`Cache-Status`) beside the result; `None` without a cache.
    pub async fn lookup_cached(
        &self,
        headers: &HeaderMap,
        validated: &Validated,
        raw_query: &str,
        no_cache: bool,
    ) -> Option<(Option<CacheOutcome>, Result<Cached, GatewayError>)> {
        let cache = self.inner.cache.as_ref()?;
        let mut exchange = Exchange::new(headers, Method::GET);
        let result = match Tenant::from_headers(headers, self.inner.settings.max_tenant_bytes) {
            Ok(tenant) => {
                exchange.ticket = Some(self.inner.limits.ticket(
                    &tenant,
                    headers.get(http::header::AUTHORIZATION),
                    None,
                ));
                self.cached(
                    cache,
                    headers,
                    validated,
                    &tenant,
                    raw_query,
                    no_cache,
                    &mut exchange,
                )
                .await
            }
            Err(e) => Err(GatewayError::InvalidHeader(e.to_string())),
        };
        Some((exchange.cache, result))
    }

    #[allow(clippy::too_many_arguments)]
    async fn cached(
        &self,
        cache: &Cache,
        headers: &HeaderMap,
        validated: &Validated,
        tenant: &Tenant,
        raw_query: &str,
        no_cache: bool,
        exchange: &mut Exchange,
    ) -> Result<Cached, GatewayError> {
        let query = &validated.query;
        let Some(contact_key) = validated.contact_key() else {
            // Only anonymous lookups are cached: a customer's goes upstream as asked.
            return Ok(Cached::Uncacheable);
        };
        let owner = CacheOwner::new(tenant.clone(), contact_key.clone());
        let key = cache.key(headers, owner, &query.extensions);
        let mut span = trace::child(exchange.span.as_ref(), "cache", Kind::Internal);
        // Runs only when the lookup fetches (a miss or a refresh): a hit clones nothing.
        let fetch = |key: &cache::Key| {
            // The fill's spans go under this request's cache span.
            let trace = span.as_ref().map(Span::parent);
            let shared = self.shared_tier().map(|tier| (tier, key.clone()));
            let path_and_query = format!(
                "{}?{}",
                validated.owner_path,
                query.broad().upstream_query()
            );
            // What the fill sends is fixed (`fill_headers`): its answer is served to
            // everyone who shares the key, so the client that happens to fill it
            // decides nothing else about it.
            let forward_headers = self.fill_headers(tenant, headers, exchange);
            // The fill reaches the backend for the tenant whose request started it:
            // it spends that tenant's rate and waits in that tenant's queue.
            let ticket = exchange.ticket.clone();
            let limits = self.inner.limits.clone();
            let upstreams = self.inner.upstreams.clone();
            let fill_trace = trace.clone();
            let upstream = broad_fill(async move {
                let _pass = match &ticket {
                    Some(ticket) => Some(limits.backend(ticket).await?),
                    None => None,
                };
                forward_detached(upstreams, path_and_query, forward_headers, fill_trace).await
            });
            let wait = self.inner.settings.fleet_wait;
            async move {
                match shared {
                    Some((tier, key)) => fleet_fill(Some(tier), key, wait, upstream, trace).await,
                    None => upstream.await,
                }
            }
        };
        let found = cache.get_or_fetch(key, no_cache, fetch).await;
        if let Some(span) = &mut span {
            let outcome = match &found {
                Ok(found) => found.outcome.label(),
                Err(NoEntry::Uncacheable) => "uncacheable",
                Err(NoEntry::Failed { outcome, .. }) => {
                    span.set_error("cache fill failed");
                    outcome.label()
                }
            };
            span.set_name(format!("cache {outcome}"));
            span.set("csgate.cache.result", outcome);
        }
        drop(span);
        let Found {
            entry,
            outcome,
            age,
        } = match found {
            Ok(found) => found,
            Err(NoEntry::Uncacheable) => {
                exchange.cache = Some(CacheOutcome::Bypass);
                return Ok(Cached::Uncacheable);
            }
            Err(NoEntry::Failed { error, outcome }) => {
                exchange.cache = Some(outcome);
                return match error {
                    BroadError::Answered(fetched) => {
                        exchange.upstream = Some(fetched.target.clone());
                        Ok(Cached::Passed(Arc::unwrap_or_clone(fetched)))
                    }
                    BroadError::Gateway(error) => Err(error),
                };
            }
        };
        let memoise = match outcome {
            CacheOutcome::Hit { .. } => true,
            CacheOutcome::Miss { stored, .. } | CacheOutcome::Revalidated { stored } => {
                exchange.upstream = Some(entry.source().clone());
                exchange.upstream_time = Some(entry.fetch_time());
                stored
            }
            CacheOutcome::Bypass => false,
        };
        exchange.cache = Some(outcome);
        let body = self
            .post_filter_entry(cache, &entry, query, raw_query, memoise, exchange)
            .await?;
        Ok(Cached::Answer { body, age })
    }
}

/// Turns the broad answer into what the cache stores: the bytes, the service ids for
/// its invalidation index, and whether the upstream allows storing it.
async fn broad_fill(
    fetching: impl std::future::Future<Output = Result<Fetched, GatewayError>>,
) -> Result<Fill, BroadError> {
    let fetched = fetching.await.map_err(BroadError::Gateway)?;
    if !fetched.status.is_success() {
        return Err(BroadError::Answered(Arc::new(fetched)));
    }
    let broad = post_filter::parse(fetched.body).map_err(BroadError::Gateway)?;
    Ok(Fill {
        service_ids: broad.service_ids(),
        storable: cache::may_store(&fetched.headers),
        broad,
        source: fetched.target,
        fetch_time: fetched.elapsed,
        age: Duration::ZERO,
    })
}
