//! csgate: a caching, validating gateway for the Genesys Context Services API.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod httputil;
pub mod logging;
pub mod query;
pub mod routes;
pub mod server;
pub mod store;
pub mod upstream;
