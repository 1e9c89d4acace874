//! Writing a variant: kept services copied span by span, trimmed to the include flags.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::index::{self, Member, SectionState, ServiceIndex, Tables, SECTIONS};
use super::matcher::Matcher;
use super::respell::write_normalised;
use super::scan::Span;
use super::{Broad, ScanError};
use crate::query::filter::{self, Match};
use crate::query::{Include, ServiceQuery, TypeMap};

/// One variant of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The JSON array the client gets.
    pub body: Bytes,
    /// Services that passed every other criterion but were dropped because a timestamp a
    /// date window needed was missing or unreadable (logged once as an upstream data error).
    pub unparseable_timestamps: usize,
}

impl Broad {
    /// The services that satisfy `q`, in upstream order, each trimmed to `q.include`:
    /// what `filter::render(&filter::filter_services(..))` writes, without a JSON tree.
    pub fn render(&self, q: &ServiceQuery, types: &TypeMap) -> Rendered {
        let body = &self.body[..];
        let matcher = Matcher::new(q, types);
        let mut out = Vec::with_capacity(body.len());
        let mut unparseable_timestamps = 0;
        out.push(b'[');
        for service in &self.services {
            let verdict = match service.irregular {
                true => oracle_service(service.span.of(body), q, types, &mut out),
                false => None,
            };
            let verdict = verdict.unwrap_or_else(|| {
                let verdict = matcher.check(body, &self.tables, service);
                if verdict.is_keep() {
                    comma(&mut out);
                    write_service(&mut out, body, &self.tables, service, q.include);
                }
                verdict
            });
            if verdict == Match::DropBadTimestamp {
                unparseable_timestamps += 1;
            }
        }
        out.push(b']');
        // The buffer was sized for the whole broad answer and is not shrunk: a miss's
        // answer is written and dropped, and the memo keeps a copy of just the bytes
        // (`post_filter_entry`).
        Rendered {
            body: Bytes::from(out),
            unparseable_timestamps,
        }
    }
}

pub(super) fn trim_by_id(body: &[u8], include: Include) -> Result<Bytes, ScanError> {
    let mut tables = Tables::default();
    let service = index::parse_one(body, &mut tables)?;
    let mut out = Vec::with_capacity(body.len());
    if service.irregular {
        if let Ok(mut map) = serde_json::from_slice::<Map<String, Value>>(body) {
            filter::trim_service(&mut map, include);
            write_map(&mut out, &map);
            return Ok(Bytes::from(out));
        }
    }
    write_service(&mut out, body, &tables, &service, include);
    Ok(Bytes::from(out))
}

/// A service with duplicate or escaped keys, filtered and written by the oracle itself.
/// `None` when serde_json cannot read it (nesting past its limit).
fn oracle_service(
    span: &[u8],
    q: &ServiceQuery,
    types: &TypeMap,
    out: &mut Vec<u8>,
) -> Option<Match> {
    let mut map = serde_json::from_slice::<Map<String, Value>>(span).ok()?;
    let verdict = filter::matches(&map, q, types);
    if verdict.is_keep() {
        filter::trim_service(&mut map, q.include);
        comma(out);
        write_map(out, &map);
    }
    Some(verdict)
}

fn write_map(out: &mut Vec<u8>, map: &Map<String, Value>) {
    // Writing to a Vec cannot fail, and a map with string keys always serialises.
    let _ = serde_json::to_writer(out, map);
}

/// A separator before every service but the first (`out` starts with `[`).
fn comma(out: &mut Vec<u8>) {
    if out.len() > 1 {
        out.push(b',');
    }
}

fn flags(include: Include) -> [bool; 4] {
    [
        include.active_states,
        include.completed_states,
        include.active_tasks,
        include.completed_tasks,
    ]
}

fn write_service(
    out: &mut Vec<u8>,
    body: &[u8],
    tables: &Tables,
    service: &ServiceIndex,
    include: Include,
) {
    let wanted = flags(include);
    let copy = |out: &mut Vec<u8>, span: Span| {
        if service.clean {
            out.extend_from_slice(span.of(body));
        } else {
            write_normalised(out, span.of(body));
        }
    };
    let unchanged = service
        .sections
        .iter()
        .zip(wanted)
        .all(|(state, wanted)| match state {
            SectionState::Absent => !wanted,
            SectionState::Copy => wanted,
            SectionState::Null | SectionState::Rewrite { .. } => false,
        });
    if unchanged {
        copy(out, service.span);
        return;
    }
    out.push(b'{');
    let (from, to) = service.members;
    let mut first = true;
    // Members copied as they are, one after another in the body, are copied together.
    let mut run: Option<(u32, u32)> = None;
    for member in &tables.members[from as usize..to as usize] {
        let name = member.key.inner(body);
        let section = index::section_of(name);
        let state = match section {
            Some(i) if !wanted[i] => continue,
            Some(i) => service.sections[i],
            None => SectionState::Copy,
        };
        if service.clean && state == SectionState::Copy {
            // In a clean body the only byte between two members is their comma.
            run = match run {
                Some((start, end)) if end + 1 == member.key.start => {
                    Some((start, member.value.end))
                }
                _ => {
                    flush(out, body, &mut run, &mut first);
                    Some((member.key.start, member.value.end))
                }
            };
            continue;
        }
        flush(out, body, &mut run, &mut first);
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(member.key.of(body));
        out.push(b':');
        match state {
            SectionState::Null | SectionState::Absent => out.extend_from_slice(b"[]"),
            SectionState::Copy => copy(out, member.value),
            SectionState::Rewrite { elements } => {
                write_states(out, body, tables, elements, &copy);
            }
        }
    }
    flush(out, body, &mut run, &mut first);
    for (i, name) in SECTIONS.iter().enumerate() {
        if wanted[i] && service.sections[i] == SectionState::Absent {
            if !first {
                out.push(b',');
            }
            first = false;
            out.push(b'"');
            out.extend_from_slice(name);
            out.extend_from_slice(b"\":[]");
        }
    }
    out.push(b'}');
}

/// A states section whose state objects lose their nested task arrays.
fn write_states(
    out: &mut Vec<u8>,
    body: &[u8],
    tables: &Tables,
    elements: (u32, u32),
    copy: &impl Fn(&mut Vec<u8>, Span),
) {
    out.push(b'[');
    let elements = &tables.elements[elements.0 as usize..elements.1 as usize];
    for (i, element) in elements.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match element.members {
            None => copy(out, element.span),
            Some((from, to)) => {
                out.push(b'{');
                let kept = tables.state_members[from as usize..to as usize]
                    .iter()
                    .filter(|m| !matches!(m.key.inner(body), b"active_tasks" | b"completed_tasks"));
                for (j, m) in kept.enumerate() {
                    if j > 0 {
                        out.push(b',');
                    }
                    write_member(out, body, m, copy);
                }
                out.push(b'}');
            }
        }
    }
    out.push(b']');
}

/// Writes the run of whole members `run` (with the separator it needs) and empties it.
fn flush(out: &mut Vec<u8>, body: &[u8], run: &mut Option<(u32, u32)>, first: &mut bool) {
    if let Some((start, end)) = run.take() {
        if !*first {
            out.push(b',');
        }
        *first = false;
        out.extend_from_slice(&body[start as usize..end as usize]);
    }
}

fn write_member(out: &mut Vec<u8>, body: &[u8], m: &Member, copy: &impl Fn(&mut Vec<u8>, Span)) {
    out.extend_from_slice(m.key.of(body));
    out.push(b':');
    copy(out, m.value);
}
