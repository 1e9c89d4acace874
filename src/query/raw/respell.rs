//! Strings and values written back the way `serde_json` spells them, from spans the
//! tokenizer ([`super::scan`]) validated: what the byte post-filter copies for a span
//! that is not already compact, and how it reads a string's text.

/// Writes a validated value compactly, the way `serde_json` writes it back: whitespace
/// between tokens dropped, strings re-escaped (`\/` → `/`, `\u00e9` → `é`, control
/// characters as `\b \f \n \r \t` or `\u00xx`). Numbers keep their spelling.
pub(super) fn write_normalised(out: &mut Vec<u8>, value: &[u8]) {
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'"' => i = write_string(out, value, i),
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
}

/// Writes the validated string starting at `value[start]` and returns the index after it.
fn write_string(out: &mut Vec<u8>, value: &[u8], start: usize) -> usize {
    out.push(b'"');
    let mut i = start + 1;
    loop {
        let plain = value[i..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\')
            .map_or(value.len(), |n| i + n);
        out.extend_from_slice(&value[i..plain]);
        i = plain;
        if i >= value.len() || value[i] == b'"' {
            out.push(b'"');
            return i + 1;
        }
        let (c, len) = match value[i + 1] {
            b'"' => ('"', 2),
            b'\\' => ('\\', 2),
            b'/' => ('/', 2),
            b'b' => ('\u{8}', 2),
            b'f' => ('\u{c}', 2),
            b'n' => ('\n', 2),
            b'r' => ('\r', 2),
            b't' => ('\t', 2),
            _ => {
                let unit = hex_at(value, i + 2);
                if (0xD800..=0xDBFF).contains(&unit) {
                    let low = hex_at(value, i + 8);
                    let cp = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                    (char::from_u32(cp).unwrap_or('\u{FFFD}'), 12)
                } else {
                    (char::from_u32(unit).unwrap_or('\u{FFFD}'), 6)
                }
            }
        };
        write_char(out, c);
        i += len;
    }
}

fn hex_at(value: &[u8], at: usize) -> u32 {
    value[at..at + 4]
        .iter()
        .fold(0, |n, &d| n * 16 + (d as char).to_digit(16).unwrap_or(0))
}

/// One decoded character, escaped as serde_json escapes it.
pub(super) fn write_char(out: &mut Vec<u8>, c: char) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match c {
        '"' => out.extend_from_slice(b"\\\""),
        '\\' => out.extend_from_slice(b"\\\\"),
        '\u{8}' => out.extend_from_slice(b"\\b"),
        '\u{c}' => out.extend_from_slice(b"\\f"),
        '\n' => out.extend_from_slice(b"\\n"),
        '\r' => out.extend_from_slice(b"\\r"),
        '\t' => out.extend_from_slice(b"\\t"),
        c if (c as u32) < 0x20 => {
            let n = c as usize;
            out.extend_from_slice(b"\\u00");
            out.push(HEX[n >> 4]);
            out.push(HEX[n & 0xf]);
        }
        c => {
            let mut utf8 = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        }
    }
}

/// The text of a validated string span (quotes included), escapes decoded; borrowed when
/// it has none.
pub(super) fn decode_string(span: &[u8]) -> std::borrow::Cow<'_, str> {
    let inner = &span[1..span.len() - 1];
    if !inner.contains(&b'\\') {
        // Validated as UTF-8 by the scanner.
        return String::from_utf8_lossy(inner);
    }
    let mut quoted = Vec::with_capacity(span.len());
    write_string(&mut quoted, span, 0);
    // `quoted` is now serde's spelling; reading it back undoes the few escapes left.
    std::borrow::Cow::Owned(serde_json::from_slice::<String>(&quoted).unwrap_or_default())
}

/// A `service_id` as the cache's invalidation index names it: [`ServiceId::normalise`]
/// of its text, whether the JSON has it as a string or a number, so that the ids of a
/// write's path and of an answer compare equal.
///
/// [`ServiceId::normalise`]: crate::identity::ServiceId::normalise
pub(super) fn id_text(value: &[u8]) -> String {
    if value.first() == Some(&b'"') {
        return crate::identity::ServiceId::normalise(&decode_string(value)).into_string();
    }
    let mut out = Vec::with_capacity(value.len());
    write_normalised(&mut out, value);
    crate::identity::ServiceId::normalise(&String::from_utf8(out).unwrap_or_default()).into_string()
}
