//! The coherence oracle (issue 20): a model-based differential test of csgate's
//! read-your-writes promise.
//!
//! Random sequences of operations over the whole write API (service start, states and
//! tasks start/end/transition, associate, extensions replace/merge, expiry, end, delete)
//! and the reads (the six Query Services routes and Query Service by ID, with random
//! parameters) are sent through the gateway, cache on, with contact keys, customer ids,
//! tenants and path spellings drawn from a hostile corpus, over HTTP/1.1 and HTTP/2,
//! some steps concurrently. Every read that starts after a write's answer is compared
//! with the same read sent straight to the store. A failing case shrinks to a minimal
//! one, printed as curl commands.
//!
//! # Layout
//! - `deploy`: what runs ([`Deployment`]: gateway URLs + the store's URL) and how a fresh
//!   one is made ([`Deploy`]); replicas or a fault-injecting hop plug in here.
//! - `corpus`: contact keys, customers, tenants, legal percent-encoded spellings.
//! - `ops`: the operations and their proptest strategies.
//! - `request`: an operation made concrete (paths, headers, bodies; the store's
//!   canonical read; what it may touch).
//! - `http`: the clients (HTTP/1.1, title-case HTTP/1.1, h2c) and curl rendering.
//! - `run`: one case against a deployment, and the comparison rules.
//! - `search`: workers, budgets, shrinking, the report; `minimise`: the shrinking passes
//!   that follow proptest's.
#![allow(dead_code, unused_imports)]

pub mod corpus;
pub mod deploy;
pub mod http;
pub mod minimise;
pub mod ops;
pub mod request;
pub mod run;
pub mod search;

pub use deploy::{Deploy, Deployment, Fleet, SingleGateway};
pub use search::{explore, Report, Settings};
