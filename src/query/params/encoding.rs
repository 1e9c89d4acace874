//! Percent-encoding as the API reads and writes it: strict decoding of path and query
//! text, the canonical encoding written upstream, and client text quoted in messages.

use std::borrow::Cow;
use std::fmt;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::ParamError;

/// How much of a client's text an error message echoes back.
const MAX_ECHO_CHARS: usize = 200;

/// RFC 3986 unreserved characters: the only bytes written literally upstream.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What is wrong with percent-encoded text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingProblem {
    /// `%` not followed by two hex digits.
    BadEscape,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
}

impl fmt::Display for EncodingProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EncodingProblem::BadEscape => "has a malformed percent escape",
            EncodingProblem::NotUtf8 => "is not UTF-8 once percent-decoded",
        })
    }
}

/// A path parameter (`contact_key`, `customer_id`): percent-decode the raw segment to UTF-8.
/// `name` is used in the message. Reject: empty, over max_bytes (decoded bytes), any control
/// character (Unicode Cc), invalid UTF-8, malformed percent escapes (e.g. `%G1`, `%4`).
/// Note '+' in a path is a literal plus, not a space. Messages quote the raw segment.
pub fn decode_path_param(
    name: &str,
    raw_segment: &str,
    max_bytes: usize,
) -> Result<String, ParamError> {
    if raw_segment.is_empty() {
        return Err(ParamError::EmptyPath {
            name: name.to_owned(),
        });
    }
    let value = decode(raw_segment, false).map_err(|problem| ParamError::Encoding {
        name: name.to_owned(),
        value: shown(raw_segment),
        problem,
    })?;
    if value.len() > max_bytes {
        return Err(ParamError::TooLong {
            name: name.to_owned(),
            value: shown(raw_segment),
            len: value.len(),
            max: max_bytes,
        });
    }
    if value.chars().any(char::is_control) {
        return Err(ParamError::ControlChar {
            name: name.to_owned(),
            value: shown(raw_segment),
        });
    }
    Ok(value.into_owned())
}

/// Canonical percent-encoding of a path parameter: every byte except ALPHA / DIGIT / - . _ ~ is %XX (uppercase hex).
pub fn encode_path_param(value: &str) -> String {
    encode(value)
}

/// [`encode_path_param`], appended to `out`.
pub fn push_encoded_path_param(out: &mut String, value: &str) {
    out.extend(utf8_percent_encode(value, UNRESERVED));
}

/// The raw `(key, value)` pairs of a query string; `None` is a bare key.
pub(super) fn pairs(query: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    query
        .split('&')
        .filter(|piece| !piece.is_empty())
        .map(split_pair)
}

pub(super) fn split_pair(piece: &str) -> (&str, Option<&str>) {
    match piece.split_once('=') {
        Some((key, value)) => (key, Some(value)),
        None => (piece, None),
    }
}

/// Strict percent-decoding: `%` must start a two-hex-digit escape, and the result must be
/// UTF-8. With `plus_is_space` (query strings, form encoding) `+` is a space.
pub(super) fn decode(raw: &str, plus_is_space: bool) -> Result<Cow<'_, str>, EncodingProblem> {
    let bytes = raw.as_bytes();
    // Most keys and values have nothing to decode: borrowed as they are (already
    // UTF-8), which spares two allocations per pair on every request.
    if !bytes
        .iter()
        .any(|&b| b == b'%' || (plus_is_space && b == b'+'))
    {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|c| hex_value(*c));
                let lo = bytes.get(i + 2).and_then(|c| hex_value(*c));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(EncodingProblem::BadEscape),
                }
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| EncodingProblem::NotUtf8)
}

pub(super) fn hex_value(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

pub(super) fn encode(text: &str) -> String {
    // `collect`, not `to_string`: no formatting machinery for what is a copy.
    utf8_percent_encode(text, UNRESERVED).collect()
}

/// Client text as an error message quotes it: at most `MAX_ECHO_CHARS` characters, then
/// `…`; control characters escaped so the message stays one printable line.
pub(crate) fn shown(text: &str) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == MAX_ECHO_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}
