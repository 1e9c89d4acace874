//! The post-filter: makes an upstream Service[] satisfy a `ServiceQuery`.
