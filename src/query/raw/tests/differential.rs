//! The byte filter against the oracle on generated bodies and queries.

use super::generators::*;
use super::*;

/// The byte filter writes what the oracle writes (exponents aside) for `q` and for the
/// same answer with every service kept (so that every case compares spelling, whatever
/// the query drops), and counts the same unparseable timestamps.
fn agrees_with_the_oracle(
    body: &str,
    q: &ServiceQuery,
    types: &TypeMap,
) -> Result<(), TestCaseError> {
    let keep_all = ServiceQuery {
        include: q.include,
        ..query()
    };
    for q in [q, &keep_all] {
        let ours = bytes_filter(body.as_bytes(), q, types);
        match oracle(body.as_bytes(), q, types) {
            Ok(expected) => {
                let (text, bad) = ours.map_err(|e| TestCaseError::fail(format!("{e}: {body}")))?;
                prop_assert_eq!((oracle_exponents(&text), bad), expected, "{}", body);
            }
            // Only nesting past serde_json's limit may make the two disagree.
            Err(e) => {
                prop_assert!(e.0.contains("recursion limit"), "{}", e);
                prop_assert!(ours.is_ok());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Whatever the spelling of the upstream answer, the byte filter writes what the oracle
    /// writes (exponents aside) and counts the same unparseable timestamps.
    #[test]
    fn writes_what_the_oracle_writes(
        services in proptest::collection::vec(service(), 0..8),
        q in query_strategy(),
        types in type_map(),
        seed in 1..u64::MAX,
    ) {
        let mut rng = seed;
        let mut body = String::new();
        write(&J::Arr(services), &mut rng, &mut body);
        agrees_with_the_oracle(&body, &q, &types)?;
    }

    /// Compact bodies (what upstreams send) take the tape: it reads every one without a
    /// backslash, finds the index the scanner finds, and the answers are the oracle's.
    #[test]
    fn the_tape_reads_what_the_scanner_reads(
        services in proptest::collection::vec(service(), 0..8),
        q in query_strategy(),
        types in type_map(),
    ) {
        let mut body = String::new();
        write_compact(&J::Arr(services), &mut body);
        let (fast, slow) = crate::query::raw::index::both_readers(body.as_bytes());
        if !body.contains('\\') {
            prop_assert!(fast.is_some(), "the tape gave up on {}", body);
        }
        if let Some(fast) = fast {
            prop_assert_eq!(Ok(fast), slow, "{}", body);
        }
        agrees_with_the_oracle(&body, &q, &types)?;
    }

    /// Whatever the tape accepts of a damaged compact body, the scanner accepts and
    /// indexes the same way: the tape never decides an error, and never passes one.
    #[test]
    fn the_tape_accepts_nothing_the_scanner_refuses(
        services in proptest::collection::vec(service(), 1..3),
        seed in 1..u64::MAX,
        cut in any::<prop::sample::Index>(),
        byte in proptest::sample::select(b"{}[]\",:\\ 0e.-nu\xff\x01\xc3".to_vec()),
    ) {
        let mut body = String::new();
        write_compact(&J::Arr(services), &mut body);
        let mut body = body.into_bytes();
        let at = cut.index(body.len());
        if seed % 2 == 0 { body.truncate(at) } else { body[at] = byte }
        let (fast, slow) = crate::query::raw::index::both_readers(&body);
        if let Some(fast) = fast {
            prop_assert_eq!(Ok(fast), slow, "{}", String::from_utf8_lossy(&body));
        }
    }

    /// A damaged body is refused by both, or read the same by both.
    #[test]
    fn damaged_bodies_fail_like_the_oracle(
        services in proptest::collection::vec(service(), 1..3),
        seed in 1..u64::MAX,
        cut in any::<prop::sample::Index>(),
        byte in proptest::sample::select(b"{}[]\",:\\ 0e.-nu\xff\x01".to_vec()),
    ) {
        let mut rng = seed;
        let mut body = String::new();
        write(&J::Arr(services), &mut rng, &mut body);
        let mut body = body.into_bytes();
        let at = cut.index(body.len());
        if seed % 2 == 0 { body.truncate(at) } else { body[at] = byte }
        let q = ServiceQuery { include: Include::ALL, ..query() };
        let types = TypeMap::default();
        match (oracle(&body, &q, &types), bytes_filter(&body, &q, &types)) {
            (Ok(expected), Ok((text, bad))) => {
                prop_assert_eq!((oracle_exponents(&text), bad), expected);
            }
            (Err(_), Err(_)) => {}
            (Err(e), Ok(_)) => prop_assert!(e.0.contains("recursion limit"), "{}", e),
            (Ok(_), Err(e)) => prop_assert!(false, "oracle reads it, we fail: {e}"),
        }
    }
}
proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// The word-at-a-time string scan stops exactly where a byte-at-a-time one does,
    /// whatever bytes follow (quotes, backslashes, controls and non-ASCII at every offset).
    #[test]
    fn the_word_scan_stops_where_the_byte_scan_does(
        bytes in proptest::collection::vec(
            prop_oneof![4 => 0x20u8..0x7f, 1 => any::<u8>(), 1 => Just(b'"'), 1 => Just(b'\\')],
            0..40,
        )
    ) {
        let naive = bytes
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b))
            .unwrap_or(bytes.len());
        prop_assert_eq!(crate::query::raw::scan::plain_ascii_run(&bytes), naive);
    }
}
