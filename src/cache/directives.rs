//! The request `Cache-Control` (and `Pragma`) directives that steer the cache.

use http::header::{HeaderMap, CACHE_CONTROL};

/// Request `Cache-Control` directives that steer the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheDirectives {
    /// `no-cache` (or `Pragma: no-cache`): revalidate, then store.
    pub no_cache: bool,
    /// `no-store`: bypass the cache entirely.
    pub no_store: bool,
}

/// Reads the request directives that steer the cache.
pub fn request_directives(headers: &HeaderMap) -> CacheDirectives {
    let mut directives = CacheDirectives::default();
    for directive in headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        match directive.trim().to_ascii_lowercase().as_str() {
            "no-cache" => directives.no_cache = true,
            "no-store" => directives.no_store = true,
            _ => {}
        }
    }
    if headers
        .get(http::header::PRAGMA)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"))
    {
        directives.no_cache = true;
    }
    directives
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn request_directives_are_read() {
        let mut h = HeaderMap::new();
        let d = |no_cache, no_store| CacheDirectives { no_cache, no_store };
        assert_eq!(request_directives(&h), d(false, false));
        h.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("max-age=0, No-Cache"),
        );
        assert_eq!(request_directives(&h), d(true, false));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert_eq!(request_directives(&h), d(false, true));
        h.insert(http::header::PRAGMA, HeaderValue::from_static("no-cache"));
        assert_eq!(request_directives(&h), d(true, true));
    }
}
