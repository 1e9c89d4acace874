//! Comma-separated list headers (RFC 9110 §5.3), and the `Via` entries csgate appends
//! to them.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Joins every value of `name` into one comma-separated list (RFC 9110 §5.3), or `None`.
pub fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for value in headers.get_all(name) {
        let list = out.get_or_insert_with(Vec::new);
        if !list.is_empty() {
            list.extend_from_slice(b", ");
        }
        list.extend_from_slice(value.as_bytes());
    }
    out
}

/// `name` with `item` appended to whatever list it already holds, as one field.
pub fn append_to_list(headers: &mut HeaderMap, name: &HeaderName, item: &str) {
    append_joined(headers, name, item.as_bytes());
}

/// [`append_to_list`] with an item built once: when the list is absent (the common
/// case) the value is shared as it is, with no copy and no validation.
pub fn append_value_to_list(headers: &mut HeaderMap, name: &HeaderName, item: &HeaderValue) {
    if headers.contains_key(name) {
        append_joined(headers, name, item.as_bytes());
    } else {
        headers.insert(name.clone(), item.clone());
    }
}

/// [`append_to_list`] with an item the caller built for it: when the list is absent
/// (the common case) the header value takes the bytes over, with no copy.
pub fn append_owned_to_list(headers: &mut HeaderMap, name: &HeaderName, item: Vec<u8>) {
    if headers.contains_key(name) {
        append_joined(headers, name, &item);
    } else if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(item)) {
        headers.insert(name.clone(), value);
    }
}

fn append_joined(headers: &mut HeaderMap, name: &HeaderName, item: &[u8]) {
    let mut list = joined(headers, name).unwrap_or_default();
    if !list.is_empty() {
        list.extend_from_slice(b", ");
    }
    list.extend_from_slice(item);
    if let Ok(value) = HeaderValue::from_bytes(&list) {
        headers.insert(name.clone(), value);
    }
}

/// The protocol name of `version` in a `Via` entry.
fn via_protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The `Via` entry for a message received over `version` (RFC 9110 §7.6.3).
pub fn via_entry(version: http::Version, pseudonym: &str) -> String {
    format!("{} {pseudonym}", via_protocol(version))
}

/// The `Via` entries of one pseudonym, one per protocol version, built once: every
/// answer through csgate carries one.
#[derive(Clone, Debug)]
pub struct ViaEntries {
    http09: HeaderValue,
    http10: HeaderValue,
    http11: HeaderValue,
    http2: HeaderValue,
    http3: HeaderValue,
}

impl ViaEntries {
    /// `None` when the pseudonym cannot be a header value (then no `Via` is sent, as
    /// [`append_to_list`] would send none).
    pub fn new(pseudonym: &str) -> Option<ViaEntries> {
        let entry = |version| HeaderValue::from_str(&via_entry(version, pseudonym)).ok();
        Some(ViaEntries {
            http09: entry(http::Version::HTTP_09)?,
            http10: entry(http::Version::HTTP_10)?,
            http11: entry(http::Version::HTTP_11)?,
            http2: entry(http::Version::HTTP_2)?,
            http3: entry(http::Version::HTTP_3)?,
        })
    }

    /// The entry for a message received over `version` ([`via_entry`]).
    pub fn get(&self, version: http::Version) -> &HeaderValue {
        match version {
            http::Version::HTTP_09 => &self.http09,
            http::Version::HTTP_10 => &self.http10,
            http::Version::HTTP_2 => &self.http2,
            http::Version::HTTP_3 => &self.http3,
            _ => &self.http11,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn prebuilt_via_entries_equal_the_formatted_ones() {
        use http::Version;
        let entries = ViaEntries::new("csgate").expect("a token is a header value");
        for version in [
            Version::HTTP_09,
            Version::HTTP_10,
            Version::HTTP_11,
            Version::HTTP_2,
            Version::HTTP_3,
        ] {
            assert_eq!(entries.get(version), via_entry(version, "csgate").as_str());
            for existing in [None, Some("1.1 edge"), Some("")] {
                let mut by_text = HeaderMap::new();
                if let Some(v) = existing {
                    by_text.insert(header::VIA, HeaderValue::from_static(v));
                }
                let mut by_value = by_text.clone();
                let mut by_owned = by_text.clone();
                let entry = via_entry(version, "csgate");
                append_to_list(&mut by_text, &header::VIA, &entry);
                append_value_to_list(&mut by_value, &header::VIA, entries.get(version));
                append_owned_to_list(&mut by_owned, &header::VIA, entry.into_bytes());
                assert_eq!(by_text, by_value, "{version:?} {existing:?}");
                assert_eq!(by_text, by_owned, "{version:?} {existing:?}");
            }
        }
        assert!(ViaEntries::new("bad\x01name").is_none());
    }
}
