//! Stage `admit`: the request-size limits, checked before anything else looks at the
//! request. (Load shedding, the in-flight bound, is a permit taken in `handle`.)

use http::request::Parts;

use super::Gateway;
use crate::error::GatewayError;
use crate::httputil;

impl Gateway {
    pub(super) fn admit(&self, parts: &Parts) -> Result<(), GatewayError> {
        let s = &self.inner.settings;
        let header_bytes = httputil::header_bytes(&parts.headers);
        if header_bytes > s.max_header_bytes {
            return Err(GatewayError::HeadersTooLarge {
                len: header_bytes,
                max: s.max_header_bytes,
            });
        }
        let query_len = parts.uri.query().map_or(0, str::len);
        if query_len > s.max_query_bytes {
            return Err(GatewayError::QueryTooLong {
                len: query_len,
                max: s.max_query_bytes,
            });
        }
        Ok(())
    }
}
