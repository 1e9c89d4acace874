//! A fleet of replicas sharing one Redis (the fleet contract:
//! `shared/spec/fleet.md`): the invalidation bus, the shared cache tier and the fleet
//! lock. Optional: without `[cluster] redis_url` nothing here runs.
//!
//! - [`config`]: `[cluster]`, raw and validated, and `CSGATE_REDIS_URL`.
//! - [`keys`]: names in Redis and the hashes of cache keys.
//! - [`message`]: the versioned invalidation message.
//! - [`conn`]: the command connection, every operation bounded by `op_timeout`.
//! - [`apply`]: the bus's events applied to the local cache; the hit-path gate.
//! - [`bus`]: publishing, and the subscriber with degraded mode and flush signals.
//! - [`ack`]: apply acknowledgements, so a writer answers once the fleet has applied.
//! - [`liveness`]: heartbeats, and whether this replica can prove it hears every
//!   invalidation (degraded when not).
//! - [`outbox`]: this replica's messages and heartbeats on their way out, held and
//!   retried while Redis does not take them.
//! - [`shared`]: the shared tier (generations, markers).
//! - [`lock`]: the fleet lock and cold-miss coalescing across replicas.
//! - [`member`]: a replica's membership ([`Cluster`]): starting it, `/healthz`.
//! - [`purge`]: the admin purges, fleet-wide.
//! - [`metrics`]: Prometheus metrics, `csgate_cluster_*`.
//!
//! How the cache uses it (the hit path never touches Redis):
//! - local miss → [`SharedTier::coalesce`] (lookup; fleet lock; wait or fetch; the
//!   fetch closure calls [`SharedTier::store`] with the generation it was given);
//! - local hit → serve only if [`Bus::may_serve`] (an atomic load and a clock read);
//! - write's 2xx → [`Bus::announce`] (the message queued: no shared refill here until
//!   it is delivered), the local invalidation, then [`Bus::delivered`] (the shared
//!   step and the publish in one script; at most `op_timeout`, then the other
//!   replicas' apply acknowledgements, at most `op_timeout`; held and retried if
//!   Redis fails), then answer;
//! - [`BusEvent::Invalidate`] → apply like a local write, then
//!   [`ClusterMetrics::applied`] with [`Message::delay`], then an acknowledgement;
//!   [`BusEvent::Flush`] → drop every local entry;
//! - admin purge → [`Cluster::purge_all`] / [`Cluster::purge_contact`] (shared tier,
//!   then the bus), then the local purge.

pub mod ack;
pub mod apply;
pub mod beat;
pub mod bus;
pub mod config;
pub mod conn;
pub mod keys;
pub mod liveness;
pub mod lock;
pub mod member;
pub mod message;
pub mod metrics;
pub mod outbox;
pub mod purge;
pub mod shared;

pub use ack::{applied_channel, AppliedReceiver, AppliedSender};
pub use apply::apply_to;
pub use bus::{Announced, Bus, BusEvent, BusState, EventSink, FlushReason, PublishError};
pub use config::{ClusterConfig, RawCluster};
pub use conn::{Conn, OpError};
pub use liveness::{Liveness, LivenessReport, Timing};
pub use lock::{Coalesced, FleetLock, LockAttempt};
pub use member::Cluster;
pub use message::{Message, Partition, ReplicaId, Scope};
pub use metrics::ClusterMetrics;
pub use purge::FleetPurge;
pub use shared::{Generation, SharedEntry, SharedLookup, SharedPolicy, SharedTier};
