//! Whose data a request touches, typed: the [`Tenant`] partition (`ContactCenterId`,
//! `GroupId`), a caller's [`ContactKey`] and a [`ServiceId`].
//!
//! Two rules must never meet, and the types keep them apart:
//! - a contact key is text, compared verbatim: `+14088327799`, `0612345678` and
//!   `14088327799` are three callers (E.164 and national numbers with a leading zero
//!   are the usual shape of a caller's number);
//! - a service id is read as the upstream reads it: a decimal integer by its value
//!   (`+7`, `007` and `7` are one service), anything else as written.
//!
//! The tenant is read once, in the pipeline's `admit` stage, from the request's
//! headers: an empty header is the same as an absent one (the forwarded request drops
//! it too), and a value the upstream could read differently from csgate (edge
//! whitespace, a control byte) or one longer than the configured bound is refused.

use bytes::Bytes;
use http::header::HeaderMap;
use serde_json::Value;

use crate::httputil::{CONTACT_CENTER_ID, GROUP_ID};

/// A caller's contact key, percent-decoded UTF-8, kept exactly as written.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContactKey(Box<str>);

impl ContactKey {
    /// A key already decoded (a path segment after the validate stage, a fleet message).
    pub fn new(decoded: &str) -> ContactKey {
        ContactKey(decoded.into())
    }

    /// The `contact_key` of a JSON body: a string as written, a number as its decimal
    /// text as JSON wrote it (never re-read as an integer). Anything else names none.
    pub fn from_json(value: &Value) -> Option<ContactKey> {
        match value {
            Value::String(text) => Some(ContactKey::new(text)),
            Value::Number(number) => Some(ContactKey::new(&number.to_string())),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for ContactKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A service id as the upstream reads it (see [`ServiceId::normalise`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceId(String);

impl ServiceId {
    /// A decimal integer by its value (`+7`, `007` and `7` are one service, `-07` is
    /// `-7`, `000` is `0`), anything else as written.
    pub fn normalise(id: &str) -> ServiceId {
        let (negative, digits) = match id.as_bytes().first() {
            Some(b'+') => (false, &id[1..]),
            Some(b'-') => (true, &id[1..]),
            _ => (false, id),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return ServiceId(id.to_owned());
        }
        let value = digits.trim_start_matches('0');
        ServiceId(match (value.is_empty(), negative) {
            (true, _) => "0".to_owned(),
            (false, true) => format!("-{value}"),
            (false, false) => value.to_owned(),
        })
    }

    /// A `service_id` of a JSON answer, whether a number or a string.
    pub fn from_json(value: &Value) -> ServiceId {
        match value {
            Value::String(text) => ServiceId::normalise(text),
            other => ServiceId::normalise(&other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// The tenant partition a request names: `ContactCenterId` and `GroupId`, each absent
/// when not sent or sent empty.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Tenant {
    center: Option<Bytes>,
    group: Option<Bytes>,
}

/// Why a request's tenant headers are refused; the message names the header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("header '{header}' is {len} bytes long; at most {max} are allowed")]
    TooLong {
        header: &'static str,
        len: usize,
        max: usize,
    },
    #[error(
        "header '{header}' starts or ends with whitespace; a tenant is sent without it \
         (RFC 9113 §8.2.1)"
    )]
    EdgeWhitespace { header: &'static str },
    #[error("header '{header}' contains a control character or a byte that is not visible ASCII")]
    NotVisible { header: &'static str },
}

impl Tenant {
    /// The partition of `center` and `group` as already checked (a fleet message, a
    /// test); empty values are absent.
    pub fn new(center: Option<Bytes>, group: Option<Bytes>) -> Tenant {
        let present = |v: Option<Bytes>| v.filter(|v| !v.is_empty());
        Tenant {
            center: present(center),
            group: present(group),
        }
    }

    /// The one reading of a request's tenant headers (the `admit` stage). Each may be
    /// given at most once (`admit` checks); a value of only whitespace is empty.
    pub fn from_headers(headers: &HeaderMap, max_bytes: usize) -> Result<Tenant, TenantError> {
        let read = |name, header: &'static str| -> Result<Option<Bytes>, TenantError> {
            let Some(value) = headers.get(name) else {
                return Ok(None);
            };
            let bytes = value.as_bytes();
            if bytes.trim_ascii().is_empty() {
                return Ok(None);
            }
            if bytes.len() > max_bytes {
                return Err(TenantError::TooLong {
                    header,
                    len: bytes.len(),
                    max: max_bytes,
                });
            }
            if bytes.first().is_some_and(u8::is_ascii_whitespace)
                || bytes.last().is_some_and(u8::is_ascii_whitespace)
            {
                return Err(TenantError::EdgeWhitespace { header });
            }
            if !bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
                return Err(TenantError::NotVisible { header });
            }
            Ok(Some(Bytes::copy_from_slice(bytes)))
        };
        Ok(Tenant {
            center: read(&CONTACT_CENTER_ID, "ContactCenterId")?,
            group: read(&GROUP_ID, "GroupId")?,
        })
    }

    /// `ContactCenterId`, when given.
    pub fn center(&self) -> Option<&Bytes> {
        self.center.as_ref()
    }

    /// `GroupId`, when given.
    pub fn group(&self) -> Option<&Bytes> {
        self.group.as_ref()
    }

    /// Heap bytes held, for byte bounds.
    pub fn bytes(&self) -> usize {
        self.center.as_ref().map_or(0, Bytes::len) + self.group.as_ref().map_or(0, Bytes::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn contact_keys_are_never_read_as_numbers() {
        for key in [
            "+14088327799",
            "0612345678",
            "000",
            "+0",
            "007",
            "4088327799",
        ] {
            assert_eq!(ContactKey::new(key).as_str(), key);
            assert_eq!(
                ContactKey::from_json(&Value::String(key.into())).map(|k| k.to_string()),
                Some(key.to_owned())
            );
        }
        assert_eq!(
            ContactKey::from_json(&serde_json::json!(4088327799_u64)),
            Some(ContactKey::new("4088327799"))
        );
        assert_eq!(ContactKey::from_json(&serde_json::json!(null)), None);
        assert_eq!(ContactKey::from_json(&serde_json::json!(["k"])), None);
    }

    #[test]
    fn service_ids_are_read_by_value() {
        for (id, expected) in [
            ("7", "7"),
            ("+7", "7"),
            ("007", "7"),
            ("000", "0"),
            ("-07", "-7"),
            ("+", "+"),
            ("7a", "7a"),
            ("383-f9a6", "383-f9a6"),
            ("", ""),
        ] {
            assert_eq!(ServiceId::normalise(id).as_str(), expected, "{id:?}");
        }
        assert_eq!(ServiceId::from_json(&serde_json::json!(7)).as_str(), "7");
        assert_eq!(
            ServiceId::from_json(&serde_json::json!("007")).as_str(),
            "7"
        );
    }

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                http::header::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_bytes(value).expect("value"),
            );
        }
        map
    }

    #[test]
    fn a_tenant_is_read_once_and_bounded() {
        let t = Tenant::from_headers(&headers(&[("ContactCenterId", b"CC")]), 256).expect("ok");
        assert_eq!(t.center().map(|b| &b[..]), Some(&b"CC"[..]));
        assert_eq!(t.group(), None);
        for empty in [&b""[..], b"  ", b"\t"] {
            let t = Tenant::from_headers(&headers(&[("contactcenterid", empty)]), 256);
            assert_eq!(t, Ok(Tenant::default()), "{empty:?}");
        }
        let refused = [
            (&b"CC "[..], "starts or ends with whitespace"),
            (b" CC", "starts or ends with whitespace"),
            (b"C\tC", "control character"),
            (b"C\xc3\xa9", "not visible ASCII"),
        ];
        for (value, problem) in refused {
            let error = Tenant::from_headers(&headers(&[("groupid", value)]), 256)
                .expect_err("refused")
                .to_string();
            assert!(
                error.starts_with("header 'GroupId'") && error.contains(problem),
                "{error}"
            );
        }
        let long = vec![b'a'; 257];
        assert_eq!(
            Tenant::from_headers(&headers(&[("contactcenterid", &long)]), 256),
            Err(TenantError::TooLong {
                header: "ContactCenterId",
                len: 257,
                max: 256
            })
        );
        assert!(Tenant::from_headers(&headers(&[("contactcenterid", &long[..256])]), 256).is_ok());
        assert_eq!(
            Tenant::new(Some(Bytes::new()), Some(Bytes::from_static(b"g"))),
            Tenant::from_headers(&headers(&[("GroupId", b"g")]), 256).expect("ok")
        );
    }
}
