//! Building a [`Broad`]: one pass over the upstream array that validates everything and
//! records, per service, the spans and facts the filter and the trim read.

use bytes::Bytes;

use super::scan::{has_duplicate, Scanner, Span};
use super::tape::{Reader, Tape};
use super::{Broad, ScanError};

/// One member of an object: `"key"` (quotes included) and its value.
#[derive(Clone, Copy, Debug)]
pub(super) struct Member {
    pub key: Span,
    pub value: Span,
}

/// One element of a state section; `members` is set (a range of [`Tables::state_members`]) when
/// the element is an object carrying nested task arrays, which the trim removes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Element {
    pub span: Span,
    pub members: Option<(u32, u32)>,
}

/// The spans a service's render needs besides its own [`ServiceIndex`].
#[derive(Clone, Debug, Default)]
pub(super) struct Tables {
    /// Top-level members of every service.
    pub members: Vec<Member>,
    /// Members of state objects that carry nested task arrays.
    pub state_members: Vec<Member>,
    /// Elements of state sections that hold such objects.
    pub elements: Vec<Element>,
}

impl Tables {
    pub fn weight(&self) -> usize {
        use std::mem::size_of;
        (self.members.capacity() + self.state_members.capacity()) * size_of::<Member>()
            + self.elements.capacity() * size_of::<Element>()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum SectionState {
    #[default]
    Absent,
    /// Present as `null`: the oracle treats it as absent, but replaces it in place.
    Null,
    /// Present; copied as is when wanted.
    Copy,
    /// A state array whose elements `elements` (a range of [`Tables::elements`]) are rewritten.
    Rewrite { elements: (u32, u32) },
}

/// The four sections, in the order of the include flags.
pub(super) const SECTIONS: [&[u8]; 4] = [
    b"active_states",
    b"completed_states",
    b"active_tasks",
    b"completed_tasks",
];
/// The position of `name` (a key without quotes) in [`SECTIONS`]: their lengths differ,
/// so one byte comparison at most.
pub(super) fn section_of(name: &[u8]) -> Option<usize> {
    let i = match name.len() {
        13 => 0,
        16 => 1,
        12 => 2,
        15 => 3,
        _ => return None,
    };
    (SECTIONS[i] == name).then_some(i)
}

const NESTED_TASKS: [&[u8]; 2] = [b"active_tasks", b"completed_tasks"];

#[derive(Clone, Debug)]
pub(super) struct ServiceIndex {
    pub span: Span,
    /// Range of [`Tables::members`].
    pub members: (u32, u32),
    pub service_id: Option<Span>,
    pub service_type: Option<Span>,
    /// `customer_id` present and not null.
    pub customer: bool,
    /// `completed` present and not null.
    pub completed: bool,
    /// `started.timestamp` / `completed.timestamp` when it is a string.
    pub started_at: Option<Span>,
    pub completed_at: Option<Span>,
    pub sections: [SectionState; 4],
    /// No whitespace and no respelt escape inside: spans are copied as they are.
    pub clean: bool,
    /// A duplicate or escaped key inside: the oracle renders this service.
    pub irregular: bool,
}

/// What both readers of a body offer [`index_service`]: [`Scanner`] reads any body and
/// names its errors; [`Reader`] reads the tape of a compact one ([`Tape`]) several times
/// faster and gives up on anything else.
pub(super) trait Tokens<'a> {
    fn buf(&self) -> &'a [u8];
    fn pos(&self) -> usize;
    fn ws(&mut self);
    fn peek(&self) -> Result<u8, ScanError>;
    fn at_end(&self) -> bool;
    fn enter(&mut self);
    fn next_key(&mut self, first: &mut bool) -> Result<Option<Span>, ScanError>;
    fn next_element(&mut self, first: &mut bool) -> Result<bool, ScanError>;
    fn skip_value(&mut self) -> Result<Span, ScanError>;
    fn error(&self, reason: &'static str) -> ScanError;
    /// Clears `dirty` and `irregular` at the start of a service.
    fn reset_flags(&mut self);
    fn dirty(&self) -> bool;
    fn irregular(&self) -> bool;
    fn mark_irregular(&mut self, irregular: bool);
}

impl<'a> Tokens<'a> for Scanner<'a> {
    fn buf(&self) -> &'a [u8] {
        self.buf
    }
    fn pos(&self) -> usize {
        self.pos
    }
    fn ws(&mut self) {
        Scanner::ws(self);
    }
    fn peek(&self) -> Result<u8, ScanError> {
        Scanner::peek(self)
    }
    fn at_end(&self) -> bool {
        Scanner::at_end(self)
    }
    fn enter(&mut self) {
        Scanner::enter(self);
    }
    fn next_key(&mut self, first: &mut bool) -> Result<Option<Span>, ScanError> {
        Scanner::next_key(self, first)
    }
    fn next_element(&mut self, first: &mut bool) -> Result<bool, ScanError> {
        Scanner::next_element(self, first)
    }
    fn skip_value(&mut self) -> Result<Span, ScanError> {
        Scanner::skip_value(self)
    }
    fn error(&self, reason: &'static str) -> ScanError {
        Scanner::error(self, reason)
    }
    fn reset_flags(&mut self) {
        self.dirty = false;
        self.irregular = false;
    }
    fn dirty(&self) -> bool {
        self.dirty
    }
    fn irregular(&self) -> bool {
        self.irregular
    }
    fn mark_irregular(&mut self, irregular: bool) {
        self.irregular |= irregular;
    }
}

/// A compact body has no whitespace and no escape to respell: never `dirty`.
impl<'a> Tokens<'a> for Reader<'a> {
    fn buf(&self) -> &'a [u8] {
        self.buf
    }
    fn pos(&self) -> usize {
        self.pos
    }
    fn ws(&mut self) {}
    fn peek(&self) -> Result<u8, ScanError> {
        Reader::peek(self)
    }
    fn at_end(&self) -> bool {
        Reader::at_end(self)
    }
    fn enter(&mut self) {
        Reader::enter(self);
    }
    fn next_key(&mut self, first: &mut bool) -> Result<Option<Span>, ScanError> {
        Reader::next_key(self, first)
    }
    fn next_element(&mut self, first: &mut bool) -> Result<bool, ScanError> {
        Reader::next_element(self, first)
    }
    fn skip_value(&mut self) -> Result<Span, ScanError> {
        Reader::skip_value(self)
    }
    fn error(&self, _reason: &'static str) -> ScanError {
        super::tape::refused()
    }
    fn reset_flags(&mut self) {
        self.irregular = false;
    }
    fn dirty(&self) -> bool {
        false
    }
    fn irregular(&self) -> bool {
        self.irregular
    }
    fn mark_irregular(&mut self, irregular: bool) {
        self.irregular |= irregular;
    }
}

pub(super) fn parse(body: Bytes) -> Result<Broad, ScanError> {
    if u32::try_from(body.len()).is_err() {
        return Err(ScanError::TooLarge);
    }
    // The tape's reader gives up rather than name an error: the scanner reads the body
    // again when it does, and decides.
    let fast = Tape::build(&body).and_then(|tape| index_array(&mut tape.reader(&body)).ok());
    let (services, tables) = match fast {
        Some(indexed) => indexed,
        None => index_array(&mut Scanner::new(&body))?,
    };
    Ok(Broad {
        body,
        services,
        tables,
    })
}

/// Reads a Service[] (the whole body) into its index.
fn index_array<'a>(s: &mut impl Tokens<'a>) -> Result<(Vec<ServiceIndex>, Tables), ScanError> {
    let mut services = Vec::new();
    let mut tables = Tables::default();
    s.ws();
    if s.peek()? != b'[' {
        let kind = kind_of(s.peek()?);
        s.skip_value()?;
        end(s)?;
        return Err(ScanError::NotArray { kind });
    }
    s.enter();
    let mut first = true;
    let mut not_object = None;
    let mut index = 0;
    let mut keys = Vec::new();
    while s.next_element(&mut first)? {
        s.ws();
        let b = s.peek()?;
        if b == b'{' && not_object.is_none() {
            let service = index_service(s, &mut tables, &mut keys)?;
            services.push(service);
        } else {
            if b != b'{' {
                not_object.get_or_insert((index, kind_of(b)));
            }
            s.skip_value()?;
        }
        index += 1;
    }
    end(s)?;
    if let Some((index, kind)) = not_object {
        return Err(ScanError::NotObject { index, kind });
    }
    Ok((services, tables))
}

/// The index of `body` as the tape's reader finds it (`None` when it gives up) and as the
/// scanner finds it, for the tests that hold them to each other.
#[cfg(test)]
pub(super) fn both_readers(body: &[u8]) -> (Option<String>, Result<String, ScanError>) {
    let show = |index: (Vec<ServiceIndex>, Tables)| format!("{index:?}");
    let fast = Tape::build(body)
        .and_then(|tape| index_array(&mut tape.reader(body)).ok())
        .map(show);
    (fast, index_array(&mut Scanner::new(body)).map(show))
}

/// Indexes one object for Query Service by ID.
pub(super) fn parse_one(body: &[u8], tables: &mut Tables) -> Result<ServiceIndex, ScanError> {
    if u32::try_from(body.len()).is_err() {
        return Err(ScanError::TooLarge);
    }
    if let Some(tape) = Tape::build(body) {
        let mut fast = Tables::default();
        if let Ok(service) = index_one(&mut tape.reader(body), &mut fast) {
            *tables = fast;
            return Ok(service);
        }
    }
    index_one(&mut Scanner::new(body), tables)
}

fn index_one<'a>(s: &mut impl Tokens<'a>, tables: &mut Tables) -> Result<ServiceIndex, ScanError> {
    s.ws();
    let b = s.peek()?;
    if b != b'{' {
        s.skip_value()?;
        end(s)?;
        return Err(ScanError::NotService { kind: kind_of(b) });
    }
    let service = index_service(s, tables, &mut Vec::new())?;
    end(s)?;
    Ok(service)
}

fn end<'a>(s: &mut impl Tokens<'a>) -> Result<(), ScanError> {
    s.ws();
    if s.at_end() {
        Ok(())
    } else {
        Err(s.error("trailing characters"))
    }
}

/// The kind of the value starting with `b`, as `json_kind` names it.
fn kind_of(b: u8) -> &'static str {
    match b {
        b'n' => "null",
        b't' | b'f' => "a boolean",
        b'"' => "a string",
        b'[' => "an array",
        b'{' => "an object",
        _ => "a number",
    }
}

fn index_service<'a>(
    s: &mut impl Tokens<'a>,
    broad: &mut Tables,
    keys: &mut Vec<Span>,
) -> Result<ServiceIndex, ScanError> {
    s.reset_flags();
    let start = s.pos();
    let members_start = broad.members.len();
    let mut service = ServiceIndex {
        span: Span::default(),
        members: (0, 0),
        service_id: None,
        service_type: None,
        customer: false,
        completed: false,
        started_at: None,
        completed_at: None,
        sections: [SectionState::Absent; 4],
        clean: true,
        irregular: false,
    };
    s.enter();
    let mut first = true;
    while let Some(key) = s.next_key(&mut first)? {
        let name = key.inner(s.buf());
        let is_null = s.peek()? == b'n';
        let section = section_of(name);
        let value = match name {
            b"started" => {
                let (value, at) = event(s, keys)?;
                service.started_at = at;
                value
            }
            b"completed" => {
                let (value, at) = event(s, keys)?;
                service.completed = !is_null;
                service.completed_at = at;
                value
            }
            b"active_states" | b"completed_states" if s.peek()? == b'[' => {
                let (value, state) = states(s, broad, keys)?;
                service.sections[section.unwrap_or_default()] = state;
                value
            }
            _ => {
                let value = s.skip_value()?;
                match name {
                    b"customer_id" => service.customer = !is_null,
                    b"service_id" => service.service_id = Some(value),
                    b"service_type" => service.service_type = Some(value),
                    _ => {}
                }
                if let Some(i) = section {
                    service.sections[i] = if is_null {
                        SectionState::Null
                    } else {
                        SectionState::Copy
                    };
                }
                value
            }
        };
        broad.members.push(Member { key, value });
    }
    service.span = Span {
        start: start as u32,
        end: s.pos() as u32,
    };
    let members = &mut keys_of(&broad.members[members_start..], keys);
    let duplicate = has_duplicate(s.buf(), members);
    s.mark_irregular(duplicate);
    service.members = (members_start as u32, broad.members.len() as u32);
    service.clean = !s.dirty();
    service.irregular = s.irregular();
    Ok(service)
}

fn keys_of<'k>(members: &[Member], keys: &'k mut Vec<Span>) -> &'k mut [Span] {
    keys.clear();
    keys.extend(members.iter().map(|m| m.key));
    keys
}

/// `started` or `completed`: the span of its value and of `timestamp` when that is a string.
fn event<'a>(
    s: &mut impl Tokens<'a>,
    keys: &mut Vec<Span>,
) -> Result<(Span, Option<Span>), ScanError> {
    if s.peek()? != b'{' {
        return Ok((s.skip_value()?, None));
    }
    let start = s.pos();
    s.enter();
    keys.clear();
    let mut first = true;
    let mut at = None;
    while let Some(key) = s.next_key(&mut first)? {
        keys.push(key);
        let is_string = s.peek()? == b'"';
        let value = s.skip_value()?;
        if key.inner(s.buf()) == b"timestamp" {
            at = is_string.then_some(value);
        }
    }
    let duplicate = has_duplicate(s.buf(), keys);
    s.mark_irregular(duplicate);
    let span = Span {
        start: start as u32,
        end: s.pos() as u32,
    };
    Ok((span, at))
}

/// A state section that is an array: records its elements when one of them carries nested
/// task arrays (the trim removes those), otherwise nothing.
fn states<'a>(
    s: &mut impl Tokens<'a>,
    broad: &mut Tables,
    keys: &mut Vec<Span>,
) -> Result<(Span, SectionState), ScanError> {
    let start = s.pos();
    let elements_start = broad.elements.len();
    let mut rewrite = false;
    s.enter();
    let mut first = true;
    while s.next_element(&mut first)? {
        s.ws();
        let element_start = s.pos();
        if s.peek()? != b'{' {
            let span = s.skip_value()?;
            broad.elements.push(Element {
                span,
                members: None,
            });
            continue;
        }
        let members_start = broad.state_members.len();
        let mut nested = false;
        s.enter();
        let mut first_key = true;
        while let Some(key) = s.next_key(&mut first_key)? {
            let value = s.skip_value()?;
            nested |= NESTED_TASKS.contains(&key.inner(s.buf()));
            broad.state_members.push(Member { key, value });
        }
        let duplicate = has_duplicate(
            s.buf(),
            keys_of(&broad.state_members[members_start..], keys),
        );
        s.mark_irregular(duplicate);
        let span = Span {
            start: element_start as u32,
            end: s.pos() as u32,
        };
        let members = if nested {
            rewrite = true;
            Some((members_start as u32, broad.state_members.len() as u32))
        } else {
            broad.state_members.truncate(members_start);
            None
        };
        broad.elements.push(Element { span, members });
    }
    let span = Span {
        start: start as u32,
        end: s.pos() as u32,
    };
    if rewrite {
        let elements = (elements_start as u32, broad.elements.len() as u32);
        Ok((span, SectionState::Rewrite { elements }))
    } else {
        broad.elements.truncate(elements_start);
        Ok((span, SectionState::Copy))
    }
}
