//! csgate: a caching, validating gateway for the Genesys Context Services API.
#![forbid(unsafe_code)]

pub mod query;
pub mod server;
