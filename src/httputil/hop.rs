//! Hop-by-hop headers (never forwarded, in either direction), and removing a set of
//! names cheaply.

use http::header::{self, HeaderMap, HeaderName};

/// The hop-by-hop headers of RFC 9110 §7.6.1, plus those listed in `Connection`.
/// These describe one connection and are never forwarded, in either direction.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names settles that without
    // hashing, where nine `remove`s hash nine names (~3k instructions per proxied
    // request, callgrind). `Connection` is one of them, so what it lists is seen too.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    for name in connection_listed(headers) {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// One of the fixed hop-by-hop names [`strip_hop_by_hop`] removes.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
        || name == header::PROXY_AUTHENTICATE
        || name == "keep-alive"
        || name == "proxy-connection"
}

/// Removes every `names` present in `headers`, after one pass over the map's names
/// that finds which are (most often none), so absent ones cost no hash each. More than
/// 64 names are simply removed one by one.
pub fn remove_present(headers: &mut HeaderMap, names: &[&HeaderName]) {
    if names.len() > 64 {
        for name in names {
            headers.remove(*name);
        }
        return;
    }
    let mut present = 0u64;
    for key in headers.keys() {
        if let Some(i) = names.iter().position(|name| *name == key) {
            present |= 1 << i;
        }
    }
    for (i, name) in names.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
}

/// The header names `Connection` lists (RFC 9110 §7.6.1); names that are not valid
/// header names are skipped.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::httputil::X_FORWARDED_FOR;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_headers_and_connection_listed_ones_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("contactcenterid", HeaderValue::from_static("t1"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic eA=="),
        );
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["contactcenterid", "authorization"]);
    }

    /// Whatever a message carries, the fast paths leave exactly what removing each
    /// name in turn leaves.
    #[test]
    fn stripping_equals_removing_each_name() {
        use proptest::prelude::*;
        let names = [
            "connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "proxy-authenticate",
            "keep-alive",
            "proxy-connection",
            "x-private",
            "via",
            "host",
            "x-forwarded-for",
            "accept",
            "contactcenterid",
        ];
        let header = (
            0..names.len(),
            prop::sample::select(vec!["1", "x-private", "te, via"]),
        );
        proptest!(|(set in prop::collection::vec(header, 0..12))| {
            let mut map = HeaderMap::new();
            for (name, value) in &set {
                map.append(names[*name], HeaderValue::from_static(value));
            }
            let mut fast = map.clone();
            strip_hop_by_hop(&mut fast);
            let mut slow = map.clone();
            for name in connection_listed(&slow) {
                slow.remove(name);
            }
            for name in &names[..9] {
                slow.remove(*name);
            }
            prop_assert_eq!(&fast, &slow);

            let some = [&header::VIA, &header::HOST, &X_FORWARDED_FOR, &header::TE];
            let mut fast = map.clone();
            remove_present(&mut fast, &some);
            let mut slow = map;
            for name in some {
                slow.remove(name);
            }
            prop_assert_eq!(fast, slow);
        });
    }

    #[test]
    fn remove_present_takes_any_number_of_names() {
        let custom: Vec<HeaderName> = (0..70)
            .map(|i| HeaderName::from_bytes(format!("x-h-{i}").as_bytes()).expect("a name"))
            .collect();
        for count in [1, 64, 65, 70] {
            let mut map = HeaderMap::new();
            for name in &custom {
                map.insert(name.clone(), HeaderValue::from_static("v"));
            }
            let names: Vec<&HeaderName> = custom.iter().take(count).collect();
            remove_present(&mut map, &names);
            assert_eq!(map.len(), 70 - count, "{count} names");
            assert!(names.iter().all(|name| !map.contains_key(*name)));
        }
    }
}
