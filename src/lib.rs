//! csgate: a caching, validating gateway for the Genesys Context Services API.
//!
//! # Layout
//! - [`app`]: the one start-up path: embedded store, reload, listeners, shutdown order.
//! - [`config`]: the loader: reads the TOML file, applies the command line and
//!   environment over it (precedence), and builds each section by its owner's `TryFrom`
//!   (each owner keeps its section's `Raw…` and typed config in its own `config` module).
//! - [`settings`]: what every section owner validates with: `ConfigError`, the duration
//!   and byte-size parsers, `Cidr`, and every default.
//! - [`server`]: the accept loop every listener uses (HTTP/1.1 + h2, connection limits and
//!   timeouts, graceful shutdown and drain).
//! - [`routes`]: which route a request is (six Query Services routes, by-id, proxy).
//! - [`query`]: Query Services parameters (`params`, `date`) and the post-filter: `raw` on
//!   the upstream bytes (served), `filter` on a JSON tree (its oracle).
//! - [`pipeline`]: the public request pipeline, one module per stage: `admit` → `route`
//!   ([`routes`]) → `validate` → `lookup` → `forward` → `post_filter` → `respond` → `log`;
//!   `proxy` (transparent proxying); `fleet` (the shared tier around the cache's fetch,
//!   publishing invalidations). `forward` alone talks to [`upstream`].
//! - [`upstream`]: pooled client, health, retries, deadlines.
//! - [`cache`]: the anonymous-lookup cache, a single-flight store on moka (`get_or_fetch`
//!   runs the pipeline's fetch): keys, freshness, invalidation, the variant memo store.
//! - [`cluster`]: a fleet on one Redis: invalidation bus, heartbeats and the degraded
//!   state (`liveness`), shared tier, fleet lock.
//! - [`limits`]: fair share: rate limits (local and fleet-wide), the backend's bound
//!   with per-tenant queues, the connection and stream limits' settings.
//! - [`admin`]: health, readiness, metrics, cache administration on the admin listener.
//! - [`metrics`]: the Prometheus metrics core (registry, formats, the request and
//!   upstream families); [`telemetry`]: the gateway's whole metric set.
//! - [`error`]: gateway-made errors and the one place they become responses.
//! - [`logging`]: tracing set-up and redaction of personal data.
//! - [`trace`]: OpenTelemetry spans of the pipeline, exported over OTLP/HTTP.
//! - [`httputil`]: the response body type and its constructors, list and hop-by-hop
//!   headers, request ids.
//! - [`identity`]: the typed tenant, contact key and service id.
//! - [`tls`]: rustls on the public listener.
//! - [`store`]: the reference Context Services store on SQLite (embedded by default).
//!
//! The entry point is [`app::run`]; `src/main.rs` only parses the command line, sets up
//! logging, binds the listeners and wires signals to it.
#![forbid(unsafe_code)]
// Pedantic lints chosen for being cheap to satisfy and worth a reader's time; the rest
// of the group is left off. Not `redundant_closure_for_method_calls`: it mostly asks for
// `PoisonError::into_inner` in place of `|p| p.into_inner()`, longer for no gain.
#![warn(
    clippy::cloned_instead_of_copied,
    clippy::explicit_iter_loop,
    clippy::implicit_clone,
    clippy::inefficient_to_string,
    clippy::manual_let_else,
    clippy::semicolon_if_nothing_returned,
    clippy::uninlined_format_args
)]

pub mod admin;
pub mod app;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod error;
pub mod httputil;
pub mod identity;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod query;
pub mod routes;
pub mod server;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod upstream;
