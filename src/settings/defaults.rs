//! Every default, each with the reason for its value, in one place: each owner's
//! `TryFrom<Raw…>` reads its section's values here. `config/csgate.toml` documents the
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
/// A client that cannot send a 1 MiB body in 10 s of our waiting is broken or hostile.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
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
/// `[server] max_tenant_bytes`: the longest `ContactCenterId` or `GroupId` value.
pub const MAX_TENANT_BYTES: usize = 256;
/// An idle keep-alive connection (HTTP/1 or h2) holds a descriptor and memory for
/// nothing; a minute keeps a client's burst on one connection, then lets it go.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// hyper's own HTTP/1 default; csgate enforces it itself to answer 431 in the CS shape.
pub const MAX_HEADERS: usize = 100;
/// A request a client sent on a keep-alive connection just before SIGTERM (it cannot
/// know) is still answered, with `Connection: close`, instead of meeting a closed
/// connection; a second covers a client's in-flight request. The drain ends sooner
/// when every connection is closed.
pub const DRAIN_DELAY: Duration = Duration::from_secs(1);
/// No peer is trusted to report the client's address: forwarding headers a client
/// sends are replaced unless the operator names the proxies in front of csgate.
pub const TRUSTED_PROXIES: &[&str] = &[];
/// RFC 9110 §7.6.3 asks a gateway to add `Via`; a pseudonym names csgate without its
/// host name or port.
pub const VIA: &str = "csgate";
/// Lowest hyper read buffer on the public listener: well above the gateway's own head
/// limits, so the gateway answers 414/431 itself (in the CS error shape) for all but
/// absurd heads; hyper refuses those with a bare 431.
pub const PUBLIC_MAX_BUF_FLOOR: usize = 256 * 1024;
/// hyper read buffer of the admin and store listeners: their clients are probes, tools
/// and this gateway, whose heads are small.
pub const INTERNAL_MAX_BUF_SIZE: usize = 64 * 1024;
/// Idle timeout of the admin and store listeners: longer than the gateway's upstream
/// pool idle timeout ([`POOL_IDLE_TIMEOUT`]), so on the embedded store's listener the
/// client end closes an idle connection first and never sends on one the server is
/// closing.
pub const INTERNAL_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Connections the admin listener accepts at once: probes and a scraper, never a crowd;
/// its own cap keeps it reachable when the public listener is saturated. Only the admin
/// listener has it: on the embedded store's, a cap of 16 would park the gateway's 17th
/// pooled upstream connection in the backlog.
pub const ADMIN_MAX_CONNECTIONS: usize = 16;

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
/// Ejection cool-down; after it one trial request at a time decides (half-open).
pub const EJECT_FOR: Duration = Duration::from_secs(10);
/// Outcomes that count toward ejection: transport failures and the gateway statuses
/// (Envoy's "gateway errors"), so an upstream that only answers 502/503/504 is rested.
pub const EJECT_ON: &[&str] = &["connect-failure", "reset", "timeout", "502", "503", "504"];
/// Outcomes that allow a retry: only when nothing was received (nginx and Envoy
/// defaults), so the client never gets a second upstream's answer in place of the first's.
pub const RETRY_ON: &[&str] = &["connect-failure", "reset", "timeout"];

/// The upstream is addressed by its own name, as an HTTP client would; backends that
/// route on the client's `Host` opt in.
pub const PRESERVE_HOST: bool = false;

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
/// Query Services answers are personal data: only csgate's own cache, which
/// partitions by tenant and credential and is invalidated by writes, may keep them.
/// `no-store` forbids every other cache, shared (a CDN, a proxy) or private; adding
/// `private` would change nothing (RFC 9111 §5.2.2.5: no-store overrides it), and
/// httplint warns that it is ignored.
pub const DOWNSTREAM_CACHE_CONTROL: &str = "no-store";
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
// `[log] redact_key_file` has no default: without it (and without CSGATE_REDACT_KEY) a
// random per-process key is made, so no key is ever shipped in a file everyone has.

/// Relative to the working directory; `data/` is git-ignored.
pub const STORE_DB: &str = "data/csgate-store.sqlite";
/// The store follows the current API unless asked to play an older backend.
pub const STORE_LEGACY: bool = false;
/// Expiry and auto-complete are minute-grained in practice; 1 s is plenty.
pub const STORE_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// The store's request body bound: the same 1 MiB the gateway allows, so a body the
/// gateway lets through is never refused by the store behind it.
pub const STORE_MAX_BODY_BYTES: usize = MAX_BODY_BYTES;
/// SQLite's own memory (page caches, schema, statements, query scratch): 16 MiB keeps
/// about SQLite's default page cache (2000 KiB for each of the five connections) but
/// makes it a bound. `bench/flood.sh` over a store of 200,000 services: the store and
/// runtime added 22.9 MiB to RSS at this value, 13.7 MiB at 2 MiB, so SQLite's share is
/// about 9 MiB of it (bench/results/flood-20261129T103626Z.md, -104137Z.md).
pub const STORE_MAX_MEMORY_BYTES: usize = 16 * 1024 * 1024;
/// Below this every query would evict the pages the next one needs.
pub const STORE_MIN_MEMORY_BYTES: usize = 1024 * 1024;
