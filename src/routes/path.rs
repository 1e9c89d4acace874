//! Which spellings of a path csgate accepts, and the one canonical form it classifies
//! and forwards.

use std::borrow::Cow;

use crate::error::GatewayError;

/// Checks a path (no query) and returns what csgate classifies and forwards: its
/// canonical form ([`canonical_path`]). Refused paths are `400 InvalidParameter`
/// naming the path and the problem (see [`check_path`]).
pub fn canonicalise(path: &str) -> Result<Cow<'_, str>, GatewayError> {
    // Nearly every path is clean and needs no re-encoding: one pass each says so
    // (every request runs this, hits included).
    if is_clean(path.as_bytes()) {
        return Ok(canonical_path(path));
    }
    check_path(path)?;
    // A '%' that starts no escape has no canonical form (decoding the escapes after it
    // could make it start one): such a path is left as it is, and `route` refuses it
    // unless the '%' is in a Query Services parameter, which the validate stage refuses
    // naming the parameter.
    if has_stray_percent(path) {
        return Ok(Cow::Borrowed(path));
    }
    Ok(canonical_path(path))
}

/// Does `path` hold a '%' not followed by two hex digits?
pub(super) fn has_stray_percent(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'%' && bytes.get(i + 1..i + 3).and_then(hex_pair).is_none())
}

/// Refuses a path that could escape the prefix or mean something else to the upstream
/// (`400 InvalidParameter` naming the path and the problem).
pub fn check_path(path: &str) -> Result<(), GatewayError> {
    // This runs on every request, hits included: one pass decides that the path is
    // clean (nearly every one is); `first_problem`, the reference, names what is wrong
    // with the others. Splitting by segment and searching each for three bytes cost
    // ~2k instructions per request (callgrind).
    if is_clean(path.as_bytes()) {
        return Ok(());
    }
    match first_problem(path) {
        None => Ok(()),
        Some(problem) => Err(GatewayError::InvalidParameter(format!(
            "path '{}' is refused: {problem}",
            crate::query::params::shown(path)
        ))),
    }
}

/// True when [`first_problem`] finds nothing; false on anything it might refuse (a
/// backslash, `;`, NUL, an escape of one of them or of `/`, a dot-segment, an empty
/// segment, a `%` that starts no escape).
pub(super) fn is_clean(path: &[u8]) -> bool {
    let (mut dots, mut other) = (0usize, false);
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        match b {
            b'/' => {
                if !other && (dots == 1 || dots == 2) {
                    return false;
                }
                if i > 0 && path[i - 1] == b'/' {
                    return false;
                }
                (dots, other) = (0, false);
            }
            b'.' => dots += 1,
            b'\\' | b';' | b'\0' => return false,
            b'%' => match path.get(i + 1..i + 3).and_then(hex_pair) {
                Some(b'/' | b'\\' | 0) => return false,
                Some(b'.') => {
                    dots += 1;
                    i += 3;
                    continue;
                }
                Some(_) => {
                    other = true;
                    i += 3;
                    continue;
                }
                // A literal '%': `first_problem` says what it makes of it.
                None => return false,
            },
            _ => other = true,
        }
        i += 1;
    }
    other || !(dots == 1 || dots == 2)
}

/// Two hex digits as a byte (no sign, unlike `u8::from_str_radix`).
fn hex_pair(hex: &[u8]) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    Some((digit(*hex.first()?)? * 16 + digit(*hex.get(1)?)?) as u8)
}

/// What [`check_path`] refuses a path for: the first offending segment's problem.
pub(super) fn first_problem(path: &str) -> Option<&'static str> {
    let last = path.split('/').count() - 1;
    for (n, segment) in path.split('/').enumerate() {
        // The empty segment before a leading '/' and after a trailing one are the
        // path's ends, not segments.
        if segment.is_empty() && n != 0 && n != last {
            return Some("it contains an empty segment ('//')");
        }
        if segment.contains('\\') {
            return Some("it contains a backslash");
        }
        if segment.contains(';') {
            return Some("it contains a ';' parameter");
        }
        if segment.contains('\0') {
            return Some("it contains NUL");
        }
        // A dot-segment however spelled: only dots, raw or encoded, one or two of them.
        let (mut dots, mut other) = (0usize, false);
        let bytes = segment.as_bytes();
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            if b != b'%' {
                if b == b'.' {
                    dots += 1;
                } else {
                    other = true;
                }
                i += 1;
                continue;
            }
            let escape = bytes.get(i + 1..i + 3).and_then(hex_pair);
            match escape {
                // Not an escape: in a Query Services parameter the validate stage refuses
                // it naming the parameter; anywhere else `route` refuses it.
                None => {
                    other = true;
                    i += 1;
                    continue;
                }
                Some(b'/') => return Some("it contains an encoded '/' (%2F)"),
                Some(b'\\') => return Some("it contains an encoded '\\' (%5C)"),
                Some(0) => return Some("it contains an encoded NUL (%00)"),
                Some(b'.') => dots += 1,
                Some(_) => other = true,
            }
            i += 3;
        }
        if !other && (dots == 1 || dots == 2) {
            return Some("it contains a dot-segment ('.' or '..')");
        }
    }
    None
}

/// The bytes a path may carry literally (RFC 3986 `pchar` and `/`, less `%` and `;`):
/// unreserved characters and the sub-delimiters csgate keeps as they are.
pub(super) static LITERAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'/'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b'='
                    | b':'
                    | b'@'
            );
        b += 1;
    }
    table
};

/// The path csgate forwards for a path that passed [`check_path`]: escapes of
/// unreserved characters decoded, other escapes in upper case, and any byte a path may
/// not carry literally encoded (RFC 3986 §6.2.2). Segments are never joined, split or
/// removed, so the result stays under the prefix it is appended to.
pub fn canonical_path(path: &str) -> Cow<'_, str> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    let literal = |b: u8| LITERAL[usize::from(b)];
    let bytes = path.as_bytes();
    // The usual path needs no change: one pass over a table says so (the closures'
    // `contains` per byte cost ~900 instructions per request, callgrind).
    if bytes.iter().all(|&b| literal(b)) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let push_encoded = |out: &mut String, b: u8| {
        out.push('%');
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    };
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = (b == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(hex_pair);
        match escaped {
            Some(decoded) if unreserved(decoded) => out.push(char::from(decoded)),
            Some(decoded) => push_encoded(&mut out, decoded),
            None if literal(b) => out.push(char::from(b)),
            None => push_encoded(&mut out, b),
        }
        i += if escaped.is_some() { 3 } else { 1 };
    }
    Cow::Owned(out)
}
