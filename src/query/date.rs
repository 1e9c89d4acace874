//! ISO 8601 date-times: the strict grammar for query parameters, the lenient reader
//! for timestamps found in upstream answers, and the canonical output form.
//!
//! Parameters accept `YYYY-MM-DDTHH:mm:ss[.f{1,9}][Z|±hh:mm]`; a value with no offset
//! is UTC. The canonical form sent upstream is `YYYY-MM-DDTHH:mm:ss.SSSZ` in UTC, with
//! the fraction truncated to milliseconds; filtering uses that same truncated instant so
//! the gateway and the upstream agree on every boundary.
//!
//! Upstream timestamps are read leniently (real backends write `2009-05-07T12:05:20.157`
//! with no `Z`, or a space instead of `T`), so a non-canonical timestamp still compares
//! correctly.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, NaiveTime, SubsecRound, Utc};

/// Why a date-time parameter was refused. The caller names the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    #[error("expected YYYY-MM-DDTHH:mm:ss[.fff][Z|±hh:mm]")]
    Syntax,
    #[error("no such date or time")]
    Impossible,
    #[error("out of the supported range (years 0000-9999 in UTC)")]
    OutOfRange,
}

/// Parses a query-parameter date-time and truncates it to milliseconds.
pub fn parse_param(text: &str) -> Result<DateTime<Utc>, DateError> {
    parse(text.as_bytes(), Grammar::Strict)
}

/// Reads a timestamp from an upstream answer; `None` when it cannot be understood.
/// Sub-millisecond digits are kept, since only parameters are truncated.
pub fn parse_lenient(text: &str) -> Option<DateTime<Utc>> {
    parse(text.trim().as_bytes(), Grammar::Lenient).ok()
}

/// `YYYY-MM-DDTHH:mm:ss.SSSZ`.
pub fn format_canonical(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Grammar {
    Strict,
    Lenient,
}

fn parse(b: &[u8], grammar: Grammar) -> Result<DateTime<Utc>, DateError> {
    // Fixed part: YYYY-MM-DDTHH:mm:ss (19 bytes).
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return Err(DateError::Syntax);
    }
    let separator_ok = match grammar {
        Grammar::Strict => matches!(b[10], b'T' | b't'),
        Grammar::Lenient => matches!(b[10], b'T' | b't' | b' '),
    };
    if !separator_ok {
        return Err(DateError::Syntax);
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;

    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if let Some((&b'.', fraction)) = rest.split_first() {
        let len = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 || len > 9 {
            return Err(DateError::Syntax);
        }
        let value = digits(&fraction[..len])?;
        nanos = value * 10u32.pow(9 - len as u32);
        rest = &fraction[len..];
    }

    let offset_seconds = parse_offset(rest, grammar)?;

    let date = NaiveDate::from_ymd_opt(year as i32, month, day).ok_or(DateError::Impossible)?;
    let time =
        NaiveTime::from_hms_nano_opt(hour, minute, second, nanos).ok_or(DateError::Impossible)?;
    // `from_hms_nano_opt` accepts second 59 with nanos >= 1e9 (leap) only; second 60 fails.
    if second > 59 {
        return Err(DateError::Impossible);
    }
    let local = NaiveDateTime::new(date, time);
    let utc = local
        .checked_sub_signed(Duration::seconds(i64::from(offset_seconds)))
        .ok_or(DateError::OutOfRange)?;
    let utc = DateTime::<Utc>::from_naive_utc_and_offset(utc, Utc);
    if !(0..=9999).contains(&chrono::Datelike::year(&utc)) {
        return Err(DateError::OutOfRange);
    }
    Ok(match grammar {
        Grammar::Strict => utc.trunc_subsecs(3),
        Grammar::Lenient => utc,
    })
}

/// `""` (UTC), `Z`, `±hh:mm`; leniently also `±hhmm` and `±hh`. Returns seconds east.
fn parse_offset(rest: &[u8], grammar: Grammar) -> Result<i32, DateError> {
    let (sign, tail) = match rest {
        [] => return Ok(0),
        [b'Z' | b'z'] => return Ok(0),
        [b'+', tail @ ..] => (1, tail),
        [b'-', tail @ ..] => (-1, tail),
        _ => return Err(DateError::Syntax),
    };
    let (hours, minutes) = match (tail, grammar) {
        ([h1, h2, b':', m1, m2], _) => (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?),
        ([h1, h2, m1, m2], Grammar::Lenient) => (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?),
        ([h1, h2], Grammar::Lenient) => (digits(&[*h1, *h2])?, 0),
        _ => return Err(DateError::Syntax),
    };
    if hours > 23 || minutes > 59 {
        return Err(DateError::Impossible);
    }
    Ok(sign * (hours as i32 * 3600 + minutes as i32 * 60))
}

fn digits(b: &[u8]) -> Result<u32, DateError> {
    b.iter().try_fold(0u32, |acc, c| {
        if c.is_ascii_digit() {
            Ok(acc * 10 + u32::from(c - b'0'))
        } else {
            Err(DateError::Syntax)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon(text: &str) -> Result<String, DateError> {
        parse_param(text).map(format_canonical)
    }

    #[test]
    fn accepted_forms_normalise_to_utc_millis() {
        let cases = [
            ("2009-05-07T12:05:20.157Z", "2009-05-07T12:05:20.157Z"),
            ("2009-05-07T12:05:20Z", "2009-05-07T12:05:20.000Z"),
            ("2009-05-07T12:05:20", "2009-05-07T12:05:20.000Z"),
            ("2009-05-07t12:05:20z", "2009-05-07T12:05:20.000Z"),
            ("2009-05-07T12:05:20.1Z", "2009-05-07T12:05:20.100Z"),
            ("2009-05-07T12:05:20.123456789Z", "2009-05-07T12:05:20.123Z"),
            ("2009-05-07T12:05:20.9999+00:00", "2009-05-07T12:05:20.999Z"),
            ("2009-05-07T14:05:20+02:00", "2009-05-07T12:05:20.000Z"),
            ("2009-05-07T00:30:00-05:30", "2009-05-07T06:00:00.000Z"),
            ("2009-12-31T23:30:00-01:00", "2010-01-01T00:30:00.000Z"),
            ("2024-02-29T00:00:00Z", "2024-02-29T00:00:00.000Z"),
        ];
        for (input, expected) in cases {
            assert_eq!(canon(input).as_deref(), Ok(expected), "input {input}");
        }
    }

    #[test]
    fn refused_forms_say_why() {
        let cases = [
            ("", DateError::Syntax),
            ("2009-05-07", DateError::Syntax),
            ("2009-05-07T12:05", DateError::Syntax),
            ("2009-05-07 12:05:20Z", DateError::Syntax),
            ("2009-05-07T12:05:20.Z", DateError::Syntax),
            ("2009-05-07T12:05:20.1234567890Z", DateError::Syntax),
            ("2009-05-07T12:05:20+0200", DateError::Syntax),
            ("2009-05-07T12:05:20+02", DateError::Syntax),
            ("2009-05-07T12:05:20ZZ", DateError::Syntax),
            ("yesterday", DateError::Syntax),
            ("2009-5-07T12:05:20Z", DateError::Syntax),
            ("+2009-05-07T12:05:20Z", DateError::Syntax),
            ("2023-02-30T00:00:00Z", DateError::Impossible),
            ("2023-02-29T00:00:00Z", DateError::Impossible),
            ("2023-13-01T00:00:00Z", DateError::Impossible),
            ("2023-01-01T24:00:00Z", DateError::Impossible),
            ("2023-01-01T23:60:00Z", DateError::Impossible),
            ("2023-01-01T23:59:60Z", DateError::Impossible),
            ("2023-01-01T00:00:00+24:00", DateError::Impossible),
            ("0000-01-01T00:00:00+01:00", DateError::OutOfRange),
            ("9999-12-31T23:00:00-01:00", DateError::OutOfRange),
        ];
        for (input, expected) in cases {
            assert_eq!(canon(input), Err(expected), "input {input:?}");
        }
    }

    #[test]
    fn lenient_reader_takes_what_real_backends_write() {
        let cases = [
            ("2009-05-07T12:05:20.157", "2009-05-07T12:05:20.157Z"),
            ("2009-05-07 12:05:20", "2009-05-07T12:05:20.000Z"),
            ("2009-05-07T14:05:20+0200", "2009-05-07T12:05:20.000Z"),
            ("2009-05-07T14:05:20+02", "2009-05-07T12:05:20.000Z"),
            (" 2009-05-07T12:05:20Z ", "2009-05-07T12:05:20.000Z"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse_lenient(input).map(format_canonical).as_deref(),
                Some(expected),
                "input {input:?}"
            );
        }
        assert_eq!(parse_lenient("not a date"), None);
        // Sub-millisecond digits of upstream data are kept for comparisons.
        let a = parse_lenient("2009-05-07T12:05:20.1571Z").expect("valid");
        let b = parse_param("2009-05-07T12:05:20.157Z").expect("valid");
        assert!(a > b);
    }

    proptest! {
        /// Any instant, written with any offset and precision, normalises to the same
        /// canonical text as the instant itself truncated to milliseconds.
        #[test]
        fn any_offset_and_precision_normalises_to_the_same_instant(
            secs in 0i64..253_402_300_799, // 0000..=9999 is wider; keep to 1970..9999
            nanos in 0u32..1_000_000_000,
            offset_min in -(23i32 * 60 + 59)..=(23 * 60 + 59),
            digits in 0usize..=9,
        ) {
            let instant = DateTime::<Utc>::from_timestamp(secs, nanos).expect("in range");
            let truncated_input = instant.trunc_subsecs(digits as u16);
            let local = truncated_input.naive_utc() + Duration::minutes(i64::from(offset_min));
            prop_assume!((0..=9999).contains(&chrono::Datelike::year(&local)));
            let sign = if offset_min < 0 { '-' } else { '+' };
            let abs = offset_min.abs();
            let mut text = local.format("%Y-%m-%dT%H:%M:%S").to_string();
            if digits > 0 {
                let frac = format!("{:09}", local.and_utc().timestamp_subsec_nanos());
                text.push('.');
                text.push_str(&frac[..digits]);
            }
            text.push_str(&format!("{sign}{:02}:{:02}", abs / 60, abs % 60));

            let parsed = parse_param(&text).expect("generated text is valid");
            prop_assert_eq!(parsed, truncated_input.trunc_subsecs(3));
            // The canonical form is a fixed point.
            let canonical = format_canonical(parsed);
            prop_assert_eq!(canon(&canonical), Ok(canonical.clone()));
        }

        /// Arbitrary text never panics the parser.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,40}") {
            let _ = parse_param(&text);
            let _ = parse_lenient(&text);
        }
    }
}
