//! The table of the API's paths after the prefix, and how a path's segments are
//! matched against one of its patterns.

use http::Method;

use crate::query::Lifecycle;

/// One segment of a [`TABLE`] pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seg {
    /// This word, exactly.
    Word(&'static str),
    /// A path parameter (a contact key, customer id, service id...).
    Param,
    /// Any number of further segments, none included.
    Rest,
}

/// What a [`TABLE`] entry makes of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A Query Services read: `GET`/`HEAD` only, other methods 405. `key` is the index
    /// of the owner's parameter, `None` for the route without one (an empty key).
    Query {
        anonymous: bool,
        lifecycle: Lifecycle,
        key: Option<usize>,
    },
    /// Query Service by ID (`GET` only; other methods try the entries after it).
    ById,
    /// `POST /services/start` (other methods try the entries after it).
    Start,
    /// A write to the service whose id is parameter `id` (any method but the reads;
    /// reads pass through).
    ServiceWrite { id: usize },
    /// A whole-tenant write (any method but the reads; reads pass through).
    TenantWrite,
    /// Passed through, changing nothing csgate caches.
    Pass,
}

impl Kind {
    /// Whether this entry is tried for `method`: the Query Services routes and
    /// pass-throughs for any (they answer other methods themselves), the others only
    /// for the methods they are about.
    pub(super) fn applies(&self, method: &Method) -> bool {
        match self {
            Kind::Query { .. } | Kind::Pass => true,
            Kind::ById => *method == Method::GET,
            Kind::Start => *method == Method::POST,
            Kind::ServiceWrite { .. } | Kind::TenantWrite => {
                !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
            }
        }
    }
}

use Seg::{Param, Rest, Word};

/// The API's paths, after [`PUBLIC_PREFIX`](super::PUBLIC_PREFIX), first match wins.
/// A path no entry matches is passed through as a read would be (it changes nothing
/// csgate caches).
pub(super) static TABLE: &[(&[Seg], Kind)] = &[
    (
        &[Word("services"), Word("anonymous")],
        query(true, Lifecycle::All, None),
    ),
    (
        &[Word("services"), Word("anonymous"), Param],
        query(true, Lifecycle::All, Some(0)),
    ),
    (
        &[Word("services"), Word("anonymous"), Param, Word("active")],
        query(true, Lifecycle::Active, Some(0)),
    ),
    (
        &[
            Word("services"),
            Word("anonymous"),
            Param,
            Word("completed"),
        ],
        query(true, Lifecycle::Completed, Some(0)),
    ),
    (&[Word("services"), Word("anonymous"), Rest], Kind::Pass),
    (
        &[Word("customers"), Param, Word("services")],
        query(false, Lifecycle::All, Some(0)),
    ),
    (
        &[Word("customers"), Param, Word("services"), Word("active")],
        query(false, Lifecycle::Active, Some(0)),
    ),
    (
        &[
            Word("customers"),
            Param,
            Word("services"),
            Word("completed"),
        ],
        query(false, Lifecycle::Completed, Some(0)),
    ),
    (&[Word("services"), Word("start")], Kind::Start),
    (&[Word("services"), Param], Kind::ById),
    (
        &[Word("services"), Param, Rest],
        Kind::ServiceWrite { id: 0 },
    ),
    (
        &[Word("customers"), Param, Word("services"), Param],
        Kind::ServiceWrite { id: 1 },
    ),
    (&[Word("maintenance"), Rest], Kind::TenantWrite),
];

const fn query(anonymous: bool, lifecycle: Lifecycle, key: Option<usize>) -> Kind {
    Kind::Query {
        anonymous,
        lifecycle,
        key,
    }
}

/// The most segments a [`TABLE`] pattern names before its `Rest`.
pub(super) const MAX_SEGMENTS: usize = 4;

/// How a path's segments meet a pattern.
pub(super) enum Match {
    /// Word for word; the parameters' positions in the path.
    Exact([usize; 2]),
    /// Only when words are compared without case: the path's segment and the word.
    CaseVariant(usize, &'static str),
    No,
}

pub(super) fn match_pattern(pattern: &[Seg], segments: &[&str], more: bool) -> Match {
    let rest = pattern.last() == Some(&Rest);
    let fixed = if rest {
        &pattern[..pattern.len() - 1]
    } else {
        pattern
    };
    let length_fits = if rest {
        segments.len() >= fixed.len()
    } else {
        segments.len() == fixed.len() && !more
    };
    if !length_fits {
        return Match::No;
    }
    let (mut params, mut count, mut variant) = ([0usize; 2], 0, None);
    for (i, (seg, segment)) in fixed.iter().zip(segments).enumerate() {
        match seg {
            Word(word) if word == segment => {}
            Word(word) if word.eq_ignore_ascii_case(segment) => {
                variant.get_or_insert((i, *word));
            }
            Word(_) => return Match::No,
            Param => {
                if let Some(slot) = params.get_mut(count) {
                    *slot = i;
                    count += 1;
                }
            }
            Rest => {}
        }
    }
    match variant {
        Some((i, word)) => Match::CaseVariant(i, word),
        None => Match::Exact(params),
    }
}

/// `path.split('/')` by hand: `split` searches for a `char` with `memchr`, whose set-up
/// outweighs the search on segments this short (~600 instructions per request in
/// `route`, callgrind).
pub(super) fn segments(path: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(path);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.bytes().position(|b| b == b'/') {
            Some(slash) => {
                rest = Some(&current[slash + 1..]);
                Some(&current[..slash])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// The first segments of a path (after the prefix, without a trailing '/'), as many
/// as a [`TABLE`] pattern names and one more to say "there is more". Patterns name at
/// most [`MAX_SEGMENTS`] segments before their `Rest`: a longer path can only match a
/// `Rest`, so nothing is allocated.
pub(super) struct Segments<'a> {
    slots: [&'a str; MAX_SEGMENTS + 1],
    count: usize,
}

impl<'a> Segments<'a> {
    /// `trimmed`'s segments after its leading '/'.
    pub(super) fn of(trimmed: &'a str) -> Segments<'a> {
        let mut slots = [""; MAX_SEGMENTS + 1];
        let mut count = 0;
        for segment in segments(trimmed).skip(1).take(slots.len()) {
            slots[count] = segment;
            count += 1;
        }
        Segments { slots, count }
    }

    /// The segments a pattern is compared with.
    pub(super) fn named(&self) -> &[&'a str] {
        &self.slots[..self.count.min(MAX_SEGMENTS)]
    }

    /// Whether the path has segments past [`MAX_SEGMENTS`].
    pub(super) fn more(&self) -> bool {
        self.count > MAX_SEGMENTS
    }
}
