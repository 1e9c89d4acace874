//! Unit and property tests of query-parameter parsing.

use super::*;
use chrono::{Duration, TimeZone};
use proptest::prelude::*;
use serde_json::json;

mod fields;
mod properties;

const ALL: Lifecycle = Lifecycle::All;
const ACTIVE: Lifecycle = Lifecycle::Active;
const COMPLETED: Lifecycle = Lifecycle::Completed;

fn type_map() -> TypeMap {
    TypeMap::new([("Billing".to_owned(), 1), ("Sales".to_owned(), 2)])
}

fn parse_with(
    query: &str,
    lifecycle: Lifecycle,
    types: &TypeMap,
    limits: &Limits,
) -> Result<ServiceQuery, ParamError> {
    parse_service_query(Some(query), lifecycle, false, types, limits)
}

fn parse(query: &str, lifecycle: Lifecycle) -> Result<ServiceQuery, ParamError> {
    parse_with(query, lifecycle, &TypeMap::default(), &Limits::default())
}

fn normalised(query: &str, lifecycle: Lifecycle) -> Result<String, String> {
    parse(query, lifecycle)
        .map(|q| q.upstream_query())
        .map_err(|e| e.to_string())
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("test date is RFC 3339")
        .with_timezone(&Utc)
}

#[test]
fn accepted_queries_normalise_exactly() {
    let cases: &[(&str, Lifecycle, &str)] = &[
        // Nothing, or only empty pieces.
        ("", ALL, ""),
        ("&&&", ACTIVE, ""),
        // Dates: canonical UTC millis, ':' percent-encoded like every reserved byte.
        (
            "started_from=2009-05-07T14:05:20%2B02:00",
            ALL,
            "started_from=2009-05-07T12:05:20.000Z",
        ),
        (
            "started_to=2009-05-07T12:05:20.1234567Z",
            ACTIVE,
            "started_to=2009-05-07T12:05:20.123Z",
        ),
        (
            "started_to=2009-05-07T12:05:20&started_from=2009-05-07T12:05:19",
            ALL,
            "started_from=2009-05-07T12:05:19.000Z&started_to=2009-05-07T12:05:20.000Z",
        ),
        // from == to is an empty window, not an error.
        (
            "started_from=2023-01-01T00:00:00Z&started_to=2023-01-01T00:00:00Z",
            ALL,
            "started_from=2023-01-01T00:00:00.000Z&started_to=2023-01-01T00:00:00.000Z",
        ),
        // Compared after truncation to millis: equal, so accepted.
        (
            "started_from=2023-01-01T00:00:00.0009Z&started_to=2023-01-01T00:00:00.0001Z",
            ALL,
            "started_from=2023-01-01T00:00:00.000Z&started_to=2023-01-01T00:00:00.000Z",
        ),
        // Same instant written with different offsets.
        (
            "completed_from=2023-01-01T01:00:00%2B01:00&completed_to=2023-01-01T00:00:00Z",
            ALL,
            "completed_from=2023-01-01T00:00:00.000Z&completed_to=2023-01-01T00:00:00.000Z",
        ),
        (
            "completed_to=2023-01-01T00:00:00Z",
            COMPLETED,
            "completed_to=2023-01-01T00:00:00.000Z",
        ),
        // service_types: merged, trimmed, integers canonical, deduplicated, sorted.
        (
            "service_types=3,1,%20Billing%20,1&service_types=007,-2",
            ALL,
            "service_types=-2,1,3,7,Billing",
        ),
        ("service_types=+2+,-0", ALL, "service_types=0,2"),
        ("service_types=1%2C2", ALL, "service_types=1,2"),
        ("service_types=b,a,b,%09a", ALL, "service_types=a,b"),
        ("service_types=a%20b,%2B5", ALL, "service_types=%2B5,a%20b"),
        // Too big for i64: a name (accepted as such when no map is configured).
        (
            "service_types=99999999999999999999",
            ALL,
            "service_types=99999999999999999999",
        ),
        // Include flags.
        ("active_states", ALL, "active_states=true"),
        (
            "active_states=TRUE&completed_states=1&active_tasks=False&completed_tasks=0",
            ALL,
            "active_states=true&completed_states=true",
        ),
        (
            "completed_tasks=tRuE&active_tasks",
            ALL,
            "active_tasks=true&completed_tasks=true",
        ),
        ("active_states=false", ALL, ""),
        // extensions: merged, empty items ignored, sorted, deduplicated.
        ("extensions=b,a,,b", ALL, "extensions=a,b"),
        ("extensions=a&extensions=c,b", ALL, "extensions=a,b,c"),
        ("extensions=a,*", ALL, "extensions=*"),
        ("extensions=&extensions", ALL, ""),
        ("extensions=,,", ALL, ""),
        ("extensions=a%20b", ALL, "extensions=a%20b"),
        // Filters widen extensions, unless `*`.
        ("score=85", ALL, "extensions=score&score=85"),
        ("extensions=a&z=1&b=2", ALL, "extensions=a,b,z&z=1&b=2"),
        ("extensions=*&score=85", ALL, "extensions=*&score=85"),
        ("k=1&k=2", ALL, "extensions=k&k=1&k=2"),
        ("name=%22Bob%22", ALL, "extensions=name&name=%22Bob%22"),
        (
            "note=hello+world",
            ALL,
            "extensions=note&note=hello%20world",
        ),
        ("flag", ALL, "extensions=flag&flag="),
        ("list=1,2", ALL, "extensions=list&list=1%2C2"),
        // A key is widened as the upstream reads an `extensions` list.
        ("a%2Cb=1", ALL, "extensions=a,b&a%2Cb=1"),
        ("*=1", ALL, "extensions=*&%2A=1"),
        (",=1", ALL, "%2C=1"),
        // Keys are case-sensitive: these are filters, not parameters.
        (
            "Service_ID=5&Active_States=true",
            ALL,
            "extensions=Active_States,Service_ID&Service_ID=5&Active_States=true",
        ),
        // Everything at once, given in reverse order.
        (
            "z=%7B%22a%22%3A1%7D&extensions=x&completed_tasks&active_tasks=1\
             &completed_states=true&active_states=1&service_types=2,1\
             &completed_to=2023-01-02T00:00:00Z&completed_from=2023-01-01T00:00:00Z\
             &started_to=2022-01-02T00:00:00Z&started_from=2022-01-01T00:00:00Z",
            ALL,
            "started_from=2022-01-01T00:00:00.000Z&started_to=2022-01-02T00:00:00.000Z\
             &completed_from=2023-01-01T00:00:00.000Z&completed_to=2023-01-02T00:00:00.000Z\
             &service_types=1,2&active_states=true&completed_states=true&active_tasks=true\
             &completed_tasks=true&extensions=x,z&z=%7B%22a%22%3A1%7D",
        ),
    ];
    for (query, lifecycle, expected) in cases {
        assert_eq!(
            normalised(query, *lifecycle).as_deref(),
            Ok(*expected),
            "query {query:?} on {lifecycle:?}"
        );
    }
}

#[test]
fn refused_queries_say_exactly_why() {
    let long = "x".repeat(300);
    let long_query = format!("active_states={long}");
    let long_message = format!(
        "parameter 'active_states': '{}…' is not a boolean (true, false, 1 or 0)",
        "x".repeat(200)
    );
    let cases: &[(&str, Lifecycle, &str)] = &[
        // Dates.
        (
            "started_from=2023-02-30T00:00:00Z",
            ALL,
            "parameter 'started_from': '2023-02-30T00:00:00Z' is not a valid date-time: no such date or time",
        ),
        (
            "started_to=yesterday",
            ALL,
            "parameter 'started_to': 'yesterday' is not a valid date-time: expected YYYY-MM-DDTHH:mm:ss[.fff][Z|±hh:mm]",
        ),
        (
            "started_from",
            ALL,
            "parameter 'started_from': '' is not a valid date-time: expected YYYY-MM-DDTHH:mm:ss[.fff][Z|±hh:mm]",
        ),
        (
            "completed_to=",
            COMPLETED,
            "parameter 'completed_to': '' is not a valid date-time: expected YYYY-MM-DDTHH:mm:ss[.fff][Z|±hh:mm]",
        ),
        // A literal '+' is a space in a query string.
        (
            "started_from=2009-05-07T14:05:20+02:00",
            ALL,
            "parameter 'started_from': '2009-05-07T14:05:20 02:00' is not a valid date-time: expected YYYY-MM-DDTHH:mm:ss[.fff][Z|±hh:mm]",
        ),
        (
            "started_from=9999-12-31T23:00:00-01:00",
            ALL,
            "parameter 'started_from': '9999-12-31T23:00:00-01:00' is not a valid date-time: out of the supported range (years 0000-9999 in UTC)",
        ),
        (
            "started_from=2023-01-01T00:00:00Z&started_from=2023-01-01T00:00:00Z",
            ALL,
            "parameter 'started_from' is given more than once",
        ),
        (
            "completed_to=2023-01-01T00:00:00Z&completed_to=x",
            ALL,
            "parameter 'completed_to' is given more than once",
        ),
        (
            "started_from=2023-02-01T00:00:00Z&started_to=2023-01-01T00:00:00Z",
            ALL,
            "parameter 'started_from': '2023-02-01T00:00:00Z' is later than parameter 'started_to': '2023-01-01T00:00:00Z'",
        ),
        (
            "started_to=2023-01-01T01:00:00%2B01:00&started_from=2023-01-01T00:00:00.001Z",
            ALL,
            "parameter 'started_from': '2023-01-01T00:00:00.001Z' is later than parameter 'started_to': '2023-01-01T01:00:00+01:00'",
        ),
        (
            "completed_from=2023-01-02T00:00:00Z&completed_to=2023-01-01T00:00:00Z",
            COMPLETED,
            "parameter 'completed_from': '2023-01-02T00:00:00Z' is later than parameter 'completed_to': '2023-01-01T00:00:00Z'",
        ),
        // History-only parameters on /active, whatever their value.
        (
            "completed_from=2023-01-01T00:00:00Z",
            ACTIVE,
            "parameter 'completed_from' only applies to service history and is not accepted on an /active route",
        ),
        (
            "completed_to=garbage",
            ACTIVE,
            "parameter 'completed_to' only applies to service history and is not accepted on an /active route",
        ),
        // service_types.
        ("service_types=1,,2", ALL, "parameter 'service_types': '1,,2' has an empty item"),
        ("service_types=", ALL, "parameter 'service_types': '' has an empty item"),
        ("service_types", ALL, "parameter 'service_types': '' has an empty item"),
        ("service_types=1,", ALL, "parameter 'service_types': '1,' has an empty item"),
        ("service_types=1,+", ALL, "parameter 'service_types': '1, ' has an empty item"),
        (
            "service_types=1&service_types=",
            ALL,
            "parameter 'service_types': '' has an empty item",
        ),
        // Include flags.
        (
            "active_states=",
            ALL,
            "parameter 'active_states': '' is not a boolean (true, false, 1 or 0)",
        ),
        (
            "completed_states=yes",
            ALL,
            "parameter 'completed_states': 'yes' is not a boolean (true, false, 1 or 0)",
        ),
        (
            "active_tasks=2",
            ALL,
            "parameter 'active_tasks': '2' is not a boolean (true, false, 1 or 0)",
        ),
        (
            "completed_tasks=+true",
            ALL,
            "parameter 'completed_tasks': ' true' is not a boolean (true, false, 1 or 0)",
        ),
        (
            "active_states&active_states=false",
            ALL,
            "parameter 'active_states' is given more than once",
        ),
        // Control characters are escaped, long values cut.
        (
            "active_states=%0A",
            ALL,
            "parameter 'active_states': '\\n' is not a boolean (true, false, 1 or 0)",
        ),
        (&long_query, ALL, &long_message),
        // Filters.
        (
            "service_id=5",
            ALL,
            "parameter 'service_id': '5' cannot be used as an extension filter: 'service_id' is a Service field",
        ),
        (
            "disposition_desc",
            ALL,
            "parameter 'disposition_desc': '' cannot be used as an extension filter: 'disposition_desc' is a Service field",
        ),
        (
            "=x",
            ALL,
            "parameter '': an empty parameter name is not allowed (value 'x')",
        ),
        ("=", ALL, "parameter '': an empty parameter name is not allowed (value '')"),
        // Encoding, of keys and of values.
        ("a%G1=1", ALL, "parameter name 'a%G1' has a malformed percent escape"),
        ("%FF=1", ALL, "parameter name '%FF' is not UTF-8 once percent-decoded"),
        ("k=%4", ALL, "parameter 'k': '%4' has a malformed percent escape"),
        ("k=%", ALL, "parameter 'k': '%' has a malformed percent escape"),
        ("k=%C3%28", ALL, "parameter 'k': '%C3%28' is not UTF-8 once percent-decoded"),
        (
            "started_from=2023%",
            ALL,
            "parameter 'started_from': '2023%' has a malformed percent escape",
        ),
        // The first problem in query order wins.
        (
            "active_states=yes&started_from=bad",
            ALL,
            "parameter 'active_states': 'yes' is not a boolean (true, false, 1 or 0)",
        ),
    ];
    for (query, lifecycle, expected) in cases {
        assert_eq!(
            normalised(query, *lifecycle),
            Err(expected.to_string()),
            "query {query:?} on {lifecycle:?}"
        );
    }
}
