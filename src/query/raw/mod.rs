//! The post-filter on bytes: the same answers as [`super::filter`] (parse into
//! `serde_json::Value`, filter, trim, render) without building a JSON tree.
//!
//! [`Broad::parse`] reads an upstream Service[] once into an index: per service its span,
//! its top-level members (key and value spans) and the facts the filter decides on
//! (`customer_id` and `completed` presence, the `started`/`completed` timestamps, the
//! `service_type`, the four sections, nested task members inside state objects).
//! [`Broad::render`] then writes any query's variant by copying the untouched spans and
//! skipping the removed ones; extension filters look their keys up in the member list.
//! Values nobody inspects are skipped by an iterative tokenizer ([`scan`]) with no depth
//! limit, so attached data nested 10,000 deep passes.
//!
//! Output equals the oracle's (`filter::render(filter::filter_services(..))`) byte for
//! byte, with two intended differences: numbers keep their upstream spelling (the oracle
//! writes `1E5` as `1e+5`), and nesting deeper than 128 passes where the oracle fails.
//! Whitespace is dropped and strings are re-escaped the way serde_json writes them, but
//! only for services that need it: a compact upstream body with plain strings is copied.
//! A service with a duplicate key or an escaped key anywhere (both rare and ill-advised
//! JSON) goes through the oracle for that one service, since serde_json keeps the last
//! duplicate's value at the first one's position; if that service is also nested past
//! serde_json's limit it is written as upstream spelled it (every duplicate kept).
//!
//! Why a hand-written tokenizer ([`scan`]): candidates measured on the workload (list every
//! service's top-level members of the 2.3 KB bench answer and of a 40 KB answer of 50
//! services, values skipped), in instructions per answer (callgrind; the machine was too
//! loaded for stable wall-clock numbers):
//!
//! | scanner                          | 2.3 KB | 40 KB  | 10,000 deep | refuses `"\ud800"` |
//! |----------------------------------|--------|--------|-------------|--------------------|
//! | serde_json `Value` (the oracle)  | 239 k  | 4.84 M | no (128)    | yes                |
//! | serde_json `RawValue` members    | 59 k   | 1.02 M | yes         | yes                |
//! | jiter 0.10                       | 39 k   | 0.74 M | no (200)    | yes                |
//! | sonic-rs 0.5 lazy iterators      | 67 k   | 1.24 M | yes         | no                 |
//! | simd-json 0.15 tape (+ the copy) | 38 k   | 0.75 M | yes         | no                 |
//! | this tokenizer                   | 57 k   | 1.09 M | yes         | yes                |
//!
//! jiter and simd-json skip with fewer instructions, but jiter stops at depth 200, sonic-rs
//! and simd-json accept a lone surrogate the oracle refuses, and none of them says whether
//! a span holds whitespace or escapes to respell, or duplicate keys — a second pass over
//! every byte, which costs more than the difference. The tokenizer gets those facts in its
//! one pass (duplicate detection is ~8 % of it).
//!
//! Compact bodies without a backslash — what upstreams send — are read from a tape of
//! token positions instead ([`tape`]: SSE2 bit masks, then one step per token), and the
//! tokenizer reads everything else, and names every error. `Broad::parse`, instructions
//! per answer (callgrind): 2.2 KB 54.6 k → 39.7 k, 36 KB 818 k → 571 k.

mod index;
mod matcher;
mod render;
mod respell;
mod scan;
mod tape;
#[cfg(test)]
mod tests;

use bytes::Bytes;

use super::filter::InvalidBody;

pub use render::Rendered;

use index::ServiceIndex;

/// Why an upstream body cannot be indexed: the same cases, and for the shape errors the
/// same messages, as the oracle's [`InvalidBody`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("not JSON: {reason} at byte {offset}")]
    Syntax { offset: usize, reason: &'static str },
    #[error("expected a JSON array of services, got {kind}")]
    NotArray { kind: &'static str },
    #[error("element {index} of the service array is {kind}, not an object")]
    NotObject { index: usize, kind: &'static str },
    #[error("expected a JSON service object, got {kind}")]
    NotService { kind: &'static str },
    #[error("the body is larger than 4 GiB")]
    TooLarge,
}

impl From<ScanError> for InvalidBody {
    fn from(e: ScanError) -> InvalidBody {
        InvalidBody(e.to_string())
    }
}

/// An upstream Service[] answer and its index: what the cache stores, and what every
/// variant is rendered from.
#[derive(Debug, Clone)]
pub struct Broad {
    body: Bytes,
    services: Vec<ServiceIndex>,
    tables: index::Tables,
}

impl Broad {
    /// Validates `body` as a JSON array of objects and indexes it, in one pass.
    pub fn parse(body: Bytes) -> Result<Broad, ScanError> {
        index::parse(body)
    }

    /// The upstream body as received.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The same answer over a copy of its bytes, so that holding it does not pin a
    /// larger buffer the body may be a slice of (hyper's connection read buffer).
    pub fn with_own_body(mut self) -> Broad {
        self.body = Bytes::copy_from_slice(&self.body);
        self
    }

    /// How many services the answer holds.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Every `service_id` in the answer as the cache's invalidation index names it: a
    /// string's text, or any other value's compact JSON.
    pub fn service_ids(&self) -> Vec<String> {
        self.services
            .iter()
            .filter_map(|s| s.service_id)
            .map(|span| respell::id_text(span.of(&self.body)))
            .collect()
    }

    /// Bytes held: the body plus the index, for the cache's weigher.
    pub fn weight(&self) -> usize {
        use std::mem::size_of;
        self.body.len()
            + self.services.capacity() * size_of::<ServiceIndex>()
            + self.tables.weight()
            + size_of::<Broad>()
    }
}

/// Query Service by ID: trim one upstream Service object to `include` (the byte version
/// of [`super::filter::trim_service`] followed by serialisation).
pub fn trim_by_id(body: &[u8], include: super::Include) -> Result<Bytes, ScanError> {
    render::trim_by_id(body, include)
}
