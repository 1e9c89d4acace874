//! The gray-failure harness of issue 21: three `csgate` processes, one reference store,
//! one `redis-server`, a fault-injecting hop between each replica and Redis, and
//! probes that measure what clients saw (stale answers, errors), what `/healthz`
//! said, how many upstream requests a stampede made, and whether invalidation survives
//! a full Redis. `tests/chaos.rs` runs a bounded subset and (ignored) the full matrix.

pub mod fleet;
pub mod http;
pub mod memory;
pub mod probe;
pub mod stampede;
