//! Property tests of the parser: idempotent normal form, and parse against a model.

use super::*;

// ---- properties ----

fn lifecycle() -> impl Strategy<Value = Lifecycle> {
    prop_oneof![Just(ALL), Just(ACTIVE), Just(COMPLETED)]
}

fn types() -> impl Strategy<Value = TypeMap> {
    prop_oneof![Just(TypeMap::default()), Just(type_map())]
}

/// Query-shaped text: mostly plausible pairs for each kind of key, some garbage
/// (odd keys, bad escapes, impossible dates) so refusals are exercised too.
fn query_text() -> impl Strategy<Value = String> {
    let date_key = prop_oneof![
        Just("started_from"),
        Just("started_to"),
        Just("completed_from"),
        Just("completed_to"),
    ];
    let date = "20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,4})?(Z|%2B0[0-9]:[0-5][0-9]|-0[0-9]:30)?";
    let flag_key = prop_oneof![
        Just("active_states"),
        Just("completed_states"),
        Just("active_tasks"),
        Just("completed_tasks"),
    ];
    let flag_value = prop_oneof![
        Just("=true"),
        Just("=FALSE"),
        Just("=1"),
        Just("=0"),
        Just(""),
        Just("=yes"),
    ];
    let any_key = prop_oneof![
        Just("service_id".to_owned()),
        Just("extensions".to_owned()),
        Just("started_from".to_owned()),
        "[a-c%2C*+,]{0,4}",
    ];
    let piece = prop_oneof![
        3 => (date_key, date).prop_map(|(k, v)| format!("{k}={v}")),
        3 => "[0-9a-c +,-]{1,6}|Billing,Sales,2|%2B5,007|Billing%2CSales"
            .prop_map(|v| format!("service_types={v}")),
        3 => (flag_key, flag_value).prop_map(|(k, v)| format!("{k}{v}")),
        2 => "[a-c*,+]{0,5}|a%2Cb".prop_map(|v| format!("extensions={v}")),
        3 => ("[a-c%2C*+,]{1,4}", "[0-9a-c,%+* \"-]{0,8}")
            .prop_map(|(k, v)| format!("{k}={v}")),
        1 => (any_key, proptest::option::of("[0-9a-c,%+* \"-]{0,8}|(%[0-9A-Fa-f]{2}){1,3}"))
            .prop_map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k,
            }),
    ];
    proptest::collection::vec(piece, 0..7).prop_map(|pieces| pieces.join("&"))
}

fn check_idempotent(
    query: &str,
    lifecycle: Lifecycle,
    types: &TypeMap,
) -> Result<(), TestCaseError> {
    let limits = Limits::default();
    match parse_service_query(Some(query), lifecycle, true, types, &limits) {
        Ok(first) => {
            let upstream = first.upstream_query();
            let second = parse_service_query(Some(&upstream), lifecycle, true, types, &limits);
            prop_assert_eq!(second.as_ref(), Ok(&first), "upstream {}", upstream);
            prop_assert_eq!(second.map(|q| q.upstream_query()), Ok(upstream));
        }
        Err(e) => {
            // At most three quoted client texts of 200 characters each (escaped).
            prop_assert!(e.to_string().chars().count() < 3 * 4 * 201 + 200);
        }
    }
    if let Ok((include, upstream)) = parse_include_flags(Some(query)) {
        prop_assert_eq!(
            parse_include_flags(Some(&upstream)),
            Ok((include, upstream))
        );
    }
    Ok(())
}

/// An optional instant: milliseconds since the epoch and the offset it is written with.
type Bound = Option<(i64, i32)>;

/// Model of a valid query, written in one of many equivalent spellings.
#[derive(Debug, Clone)]
struct Model {
    lifecycle: Lifecycle,
    started: (Bound, Bound),
    completed: (Bound, Bound),
    ids: Vec<i64>,
    names: Vec<String>,
    types_repeated: bool,
    flags: [Option<(bool, usize)>; 4],
    extensions: Vec<String>,
    star: bool,
    filters: Vec<(String, FilterValue)>,
    reverse: bool,
}

#[derive(Debug, Clone)]
enum FilterValue {
    Int(i64),
    Quoted(String),
    Word(String),
}

/// Milliseconds since the epoch up to 2096, and an offset in minutes.
fn instant() -> impl Strategy<Value = (i64, i32)> {
    (0i64..4_000_000_000_000, -(14 * 60)..=(14 * 60))
}

fn bounds() -> impl Strategy<Value = (Bound, Bound)> {
    (
        proptest::option::of(instant()),
        proptest::option::of(instant()),
    )
        .prop_map(|(a, b)| match (a, b) {
            (Some(a), Some(b)) if a.0 > b.0 => (Some(b), Some(a)),
            other => other,
        })
}

fn model() -> impl Strategy<Value = Model> {
    let filter_value = prop_oneof![
        any::<i64>().prop_map(FilterValue::Int),
        "[a-z ]{0,5}".prop_map(FilterValue::Quoted),
        "w[a-z]{0,4}".prop_map(FilterValue::Word),
    ];
    let flag = proptest::option::of((any::<bool>(), 0usize..4));
    let window = (lifecycle(), bounds(), bounds());
    let types = (
        proptest::collection::vec(any::<i64>(), 0..4),
        proptest::collection::vec("[A-Za-z]([A-Za-z _+]{0,5}[A-Za-z])?", 0..4),
        any::<bool>(),
    );
    let include = (
        [flag.clone(), flag.clone(), flag.clone(), flag],
        proptest::collection::vec("[a-z][a-z0-9_ ]{0,5}", 0..3),
        proptest::bool::weighted(0.2),
    );
    let rest = (
        proptest::collection::vec(("x[a-z0-9_]{0,5}", filter_value), 0..4),
        any::<bool>(),
    );
    (window, types, include, rest).prop_map(|(window, types, include, rest)| {
        let (lifecycle, started, completed) = window;
        Model {
            // An active query has no completion window.
            completed: if lifecycle == ACTIVE {
                (None, None)
            } else {
                completed
            },
            lifecycle,
            started,
            ids: types.0,
            names: types.1,
            types_repeated: types.2,
            flags: include.0,
            extensions: include.1,
            star: include.2,
            filters: rest.0,
            reverse: rest.1,
        }
    })
}

fn date_text((millis, offset_min): (i64, i32)) -> String {
    let t = Utc.timestamp_millis_opt(millis).single().expect("in range");
    let local = t.naive_utc() + Duration::minutes(i64::from(offset_min));
    let offset = if offset_min == 0 {
        "Z".to_owned()
    } else {
        let sign = if offset_min < 0 { "-" } else { "%2B" };
        format!(
            "{sign}{:02}:{:02}",
            offset_min.abs() / 60,
            offset_min.abs() % 60
        )
    };
    format!("{}{offset}", local.format("%Y-%m-%dT%H:%M:%S%.3f"))
}

impl Model {
    fn query(&self) -> String {
        let mut pieces: Vec<String> = Vec::new();
        let dates = [
            self.started.0,
            self.started.1,
            self.completed.0,
            self.completed.1,
        ];
        for (name, bound) in DATE_PARAMS.iter().zip(dates) {
            if let Some(b) = bound {
                pieces.push(format!("{name}={}", date_text(b)));
            }
        }
        let items: Vec<String> = self
            .ids
            .iter()
            .map(|id| format!("+{id}"))
            .chain(self.names.iter().map(|n| encode(n)))
            .collect();
        if !items.is_empty() {
            if self.types_repeated {
                pieces.extend(items.iter().map(|i| format!("service_types={i}")));
            } else {
                pieces.push(format!("service_types={}", items.join("%2C")));
            }
        }
        const TRUE: [&str; 4] = ["true", "TRUE", "1", ""];
        const FALSE: [&str; 4] = ["false", "False", "0", "FALSE"];
        for (name, flag) in FLAG_PARAMS.iter().zip(self.flags) {
            match flag {
                Some((true, 3)) => pieces.push((*name).to_owned()),
                Some((true, i)) => pieces.push(format!("{name}={}", TRUE[i])),
                Some((false, i)) => pieces.push(format!("{name}={}", FALSE[i])),
                None => {}
            }
        }
        let mut names: Vec<String> = self.extensions.iter().map(|n| encode(n)).collect();
        if self.star {
            names.push("*".to_owned());
        }
        if !names.is_empty() {
            pieces.push(format!("extensions=,{}", names.join(",")));
        }
        if self.reverse {
            pieces.reverse();
        }
        for (key, value) in &self.filters {
            let raw = match value {
                FilterValue::Int(n) => n.to_string(),
                FilterValue::Quoted(s) => format!("%22{}%22", s.replace(' ', "+")),
                FilterValue::Word(w) => w.clone(),
            };
            pieces.push(format!("{key}={raw}"));
        }
        pieces.join("&")
    }

    fn expected(&self) -> ServiceQuery {
        let at = |b: Option<(i64, i32)>| {
            b.map(|(ms, _)| Utc.timestamp_millis_opt(ms).single().expect("in range"))
        };
        let mut types: BTreeSet<ServiceType> =
            self.ids.iter().map(|id| ServiceType::Id(*id)).collect();
        types.extend(self.names.iter().map(|n| ServiceType::Name(n.clone())));
        let flag = |i: usize| matches!(self.flags[i], Some((true, _)));
        let mut names: BTreeSet<String> = self.extensions.iter().cloned().collect();
        names.extend(self.filters.iter().map(|(k, _)| k.clone()));
        let extensions = if self.star {
            Extensions::All
        } else if names.is_empty() {
            Extensions::None
        } else {
            Extensions::Names(names.into_iter().collect())
        };
        ServiceQuery {
            lifecycle: self.lifecycle,
            anonymous: false,
            started: Window {
                from: at(self.started.0),
                to: at(self.started.1),
            },
            completed: Window {
                from: at(self.completed.0),
                to: at(self.completed.1),
            },
            service_types: types.into_iter().collect(),
            include: Include {
                active_states: flag(0),
                completed_states: flag(1),
                active_tasks: flag(2),
                completed_tasks: flag(3),
            },
            extensions,
            filters: self
                .filters
                .iter()
                .map(|(key, value)| {
                    let (value, raw) = match value {
                        FilterValue::Int(n) => (json!(n), n.to_string()),
                        FilterValue::Quoted(s) => (json!(s), format!("\"{s}\"")),
                        FilterValue::Word(w) => (json!(w), w.clone()),
                    };
                    ExtensionFilter {
                        key: key.clone(),
                        value,
                        raw,
                    }
                })
                .collect(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary text never panics any entry point.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,80}|[%&=+,a-f0-9]{0,40}", lc in lifecycle()) {
        let _ = parse_service_query(Some(&text), lc, false, &type_map(), &Limits::default());
        let _ = parse_include_flags(Some(&text));
        let _ = decode_path_param("contact_key", &text, 16);
        let _ = encode_path_param(&text);
    }

    /// Whatever is accepted normalises to a fixed point.
    #[test]
    fn normalisation_is_idempotent(query in query_text(), lc in lifecycle(), types in types()) {
        check_idempotent(&query, lc, &types)?;
    }

    /// The same for completely arbitrary text (mostly filters and refusals).
    #[test]
    fn normalisation_of_arbitrary_text_is_idempotent(query in "\\PC{0,60}", lc in lifecycle()) {
        check_idempotent(&query, lc, &TypeMap::default())?;
    }

    /// A valid query, however it is spelled, parses to what it means and round-trips.
    #[test]
    fn generated_valid_query_round_trips(m in model()) {
        let query = m.query();
        let expected = m.expected();
        let parsed = parse(&query, m.lifecycle);
        prop_assert_eq!(parsed.as_ref(), Ok(&expected), "query {}", query);
        let upstream = expected.upstream_query();
        prop_assert_eq!(parse(&upstream, m.lifecycle), Ok(expected), "upstream {}", upstream);
    }

    /// Path parameters: encode then decode is the identity for every acceptable value.
    #[test]
    fn path_parameter_round_trips(value in "\\PC{1,40}") {
        prop_assume!(!value.chars().any(char::is_control));
        let encoded = encode_path_param(&value);
        prop_assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)));
        prop_assert_eq!(decode_path_param("contact_key", &encoded, 1024), Ok(value));
    }
}
