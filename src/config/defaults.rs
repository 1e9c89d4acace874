//! Every default, each with the reason for its value. `config/csgate.toml` documents the
//! same values; `config::tests` proves the two agree.

use std::time::Duration;

/// Loopback only: exposing the gateway is an explicit decision.
pub const LISTEN: &str = "127.0.0.1:8080";
/// Admin endpoints (purge, metrics) must never share the public port.
pub const ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Longer than any sane request, shorter than a Kubernetes 30 s termination grace.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
/// A client that cannot send its headers in 10 s is broken or hostile (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Far above what one core serves at the target latency; past it, shed fast.
pub const MAX_INFLIGHT: usize = 4096;
/// Contract: a query string over 8 KiB is answered 414.
pub const MAX_QUERY_BYTES: usize = 8 * 1024;
/// Contract: request headers over 16 KiB are answered 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Start/end bodies carry attached data; 1 MiB is generous and bounds memory.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Contract: contact keys and customer ids are 1..=256 bytes by default.
pub const MAX_KEY_BYTES: usize = 256;
/// Contract: at most 32 extension filters.
pub const MAX_FILTERS: usize = 32;
/// Lowest hyper read buffer on the public listener: well above the gateway's own head
/// limits, so the gateway answers 414/431 itself (in the CS error shape) for all but
/// absurd heads; hyper refuses those with a bare 431.
pub const PUBLIC_MAX_BUF_FLOOR: usize = 256 * 1024;
/// hyper read buffer of the admin and store listeners: their clients are probes, tools
/// and this gateway, whose heads are small.
pub const INTERNAL_MAX_BUF_SIZE: usize = 64 * 1024;

/// GMS serves Context Services under this prefix.
pub const PATH_PREFIX: &str = "/genesys/1/cs";
/// Loopback/LAN connects take milliseconds; 2 s means the upstream is gone.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One upstream attempt; Context Services queries are indexed look-ups.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// All attempts of one request together, retries included.
pub const DEADLINE: Duration = Duration::from_secs(15);
/// A Service[] answer larger than this is not a sane answer for one key.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Keep-alive connections idle longer than this are closed.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Enough idle connections per upstream to absorb a burst without reconnecting.
pub const POOL_MAX_IDLE_PER_HOST: usize = 256;
/// Retries may add at most 20% to upstream load (Envoy/Finagle retry budgets).
pub const RETRY_BUDGET: f64 = 0.2;
/// At most this many extra attempts per request.
pub const MAX_RETRIES: u32 = 2;
/// Consecutive failures before an upstream is ejected.
pub const EJECT_AFTER: u32 = 5;
/// Ejection cool-down before an active probe may bring it back.
pub const EJECT_FOR: Duration = Duration::from_secs(10);

/// Caching anonymous look-ups is the gateway's reason to exist.
pub const CACHE_ENABLED: bool = true;
/// Contract default: 30 s bounds staleness for writes that bypass the gateway.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// A stale entry may be served for this long while one refresh runs.
pub const CACHE_STALE_WHILE_REVALIDATE: Duration = Duration::from_secs(30);
/// A stale entry may stand in for a failing upstream for this long.
pub const CACHE_STALE_IF_ERROR: Duration = Duration::from_secs(300);
/// Bounded in bytes, not entries: answers vary from 100 B to megabytes.
pub const CACHE_MAX_BYTES: usize = 256 * 1024 * 1024;
/// One runaway key must not evict thousands of normal ones.
pub const CACHE_MAX_ENTRY_BYTES: usize = 1024 * 1024;
/// Sharing answers between credentials leaks tenants unless every credential may see
/// everything: opt in, never by default.
pub const CACHE_SHARE_ACROSS_CREDENTIALS: bool = false;
/// How much longer than the upstream deadline a request waits for another request's
/// fetch of the same key: the fetch ends by its deadline, and 1 s covers scheduling and
/// storing, so a waiter never outlives a fetch that is still legitimately running.
pub const CACHE_WAIT_SLACK: Duration = Duration::from_secs(1);

/// Humans read logs at a terminal first; shippers opt in to JSON.
pub const LOG_FORMAT: &str = "text";
/// One line per request and every lifecycle event, without debug noise.
pub const LOG_LEVEL: &str = "info";
/// Contact keys and customer ids are personal data: hashed unless told otherwise.
pub const LOG_REDACT: bool = true;

/// Relative to the working directory; `data/` is git-ignored.
pub const STORE_DB: &str = "data/csgate-store.sqlite";
/// The store follows the current API unless asked to play an older backend.
pub const STORE_LEGACY: bool = false;
/// Expiry and auto-complete are minute-grained in practice; 1 s is plenty.
pub const STORE_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// The store's request body bound: the same 1 MiB the gateway allows, so a body the
/// gateway lets through is never refused by the store behind it.
pub const STORE_MAX_BODY_BYTES: usize = MAX_BODY_BYTES;
