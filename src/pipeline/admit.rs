//! Stage `admit`: the request-size limits (head bytes, header count, query length), the
//! headers that must be given once, a `Connection` header that would strip one of
//! them, and the request's [`Tenant`], read here once and carried with the request,
//! checked before anything else looks at the request. (Load shedding, the in-flight
//! bound, is a permit taken in `handle`.)

use http::header::{self, HeaderName};
use http::request::Parts;
use http::Version;

use super::Gateway;
use crate::error::GatewayError;
use crate::httputil;
use crate::identity::Tenant;

impl Gateway {
    /// Admits a request, or says what is wrong with it; returns its tenant.
    pub(super) fn admit(&self, parts: &Parts) -> Result<Tenant, GatewayError> {
        let s = &self.inner.settings;
        let header_bytes = httputil::header_bytes(&parts.headers);
        if header_bytes > s.max_header_bytes {
            return Err(GatewayError::HeadersTooLarge {
                len: header_bytes,
                max: s.max_header_bytes,
            });
        }
        if parts.headers.len() > s.max_headers {
            return Err(GatewayError::TooManyHeaders {
                count: parts.headers.len(),
                max: s.max_headers,
            });
        }
        let query_len = parts.uri.query().map_or(0, str::len);
        if query_len > s.max_query_bytes {
            return Err(GatewayError::QueryTooLong {
                len: query_len,
                max: s.max_query_bytes,
            });
        }
        single_headers(parts)?;
        Tenant::from_headers(&parts.headers, s.max_tenant_bytes)
            .map_err(|e| GatewayError::InvalidHeader(e.to_string()))
    }
}

/// Headers that decide whose data a request reads (and its cache key): given twice, the
/// cache and the upstream could each believe a different one.
static SINGLE: [(&HeaderName, &str); 3] = [
    (&httputil::CONTACT_CENTER_ID, "ContactCenterId"),
    (&httputil::GROUP_ID, "GroupId"),
    (&header::AUTHORIZATION, "Authorization"),
];

/// Tenant and credential headers at most once; on HTTP/1.1 exactly one `Host`, a valid
/// authority (RFC 9112 §3.2), since it is forwarded as `X-Forwarded-Host`.
fn single_headers(parts: &Parts) -> Result<(), GatewayError> {
    // One pass over the head rather than a lookup per name: four `get_all` and a `get`
    // cost ~650 instructions per request (callgrind), the pass a fraction of that.
    let mut counts = [0usize; SINGLE.len()];
    let (mut hosts, mut host) = (0usize, None);
    for (name, value) in &parts.headers {
        if name == header::HOST {
            hosts += 1;
            host.get_or_insert(value);
            continue;
        }
        if name == header::CONNECTION {
            connection_names_no_single(value)?;
            continue;
        }
        for (count, (single, _)) in counts.iter_mut().zip(SINGLE) {
            if name == single {
                *count += 1;
            }
        }
    }
    for (n, (_, shown)) in counts.into_iter().zip(SINGLE) {
        if n > 1 {
            return Err(GatewayError::InvalidHeader(format!(
                "header '{shown}' is given {n} times; it must be given at most once"
            )));
        }
    }
    match hosts {
        0 if parts.version == Version::HTTP_11 => Err(GatewayError::InvalidHeader(
            "header 'Host' is missing; HTTP/1.1 requires it".into(),
        )),
        0 | 1 => match host {
            Some(host) if http::uri::Authority::try_from(host.as_bytes()).is_err() => {
                Err(GatewayError::InvalidHeader(format!(
                    "header 'Host': '{}' is not a host name with an optional port",
                    crate::query::params::shown(&String::from_utf8_lossy(host.as_bytes()))
                )))
            }
            _ => Ok(()),
        },
        n => Err(GatewayError::InvalidHeader(format!(
            "header 'Host' is given {n} times; it must be given once"
        ))),
    }
}

/// A `Connection` header lists hop-by-hop headers, which are removed before the request
/// is forwarded (RFC 9110 §7.6.1). Naming a tenant, credential or `Host` header there
/// would make the upstream read another tenant (or none) than csgate keyed and
/// invalidated: refused.
fn connection_names_no_single(value: &http::HeaderValue) -> Result<(), GatewayError> {
    let names = value.as_bytes().split(|&b| b == b',');
    for name in names.map(<[u8]>::trim_ascii) {
        let named = SINGLE
            .iter()
            .map(|(single, shown)| (single.as_str(), *shown))
            .chain([("host", "Host")])
            .find(|(single, _)| single.as_bytes().eq_ignore_ascii_case(name));
        if let Some((_, shown)) = named {
            return Err(GatewayError::InvalidHeader(format!(
                "header 'Connection' names '{shown}', which must reach the upstream; \
                 remove it from 'Connection'"
            )));
        }
    }
    Ok(())
}
