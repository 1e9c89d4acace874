//! Property tests of the post-filter against a naive oracle.

use super::*;

// ---- properties -------------------------------------------------------------------

/// Upstream timestamps with the instant each stands for, in microseconds after
/// 2020-01-01T00:00:00Z (`None`: unreadable).
const STAMPS: [(&str, Option<i64>); 7] = [
    ("2020-01-01T00:00:00.000Z", Some(0)),
    ("2020-01-01T00:00:00.0005Z", Some(500)),
    ("2020-01-01T00:00:01", Some(1_000_000)),
    ("2020-01-01 00:00:02.5", Some(2_500_000)),
    ("2020-01-01T02:00:03+02:00", Some(3_000_000)),
    ("2019-12-31T23:00:04-0100", Some(4_000_000)),
    ("not a date", None),
];
const BOUNDS: [i64; 7] = [0, 500, 1_000, 1_000_000, 2_500_000, 3_000_001, 5_000_000];

fn micros(m: i64) -> DateTime<Utc> {
    at("2020-01-01T00:00:00Z") + chrono::Duration::microseconds(m)
}

/// An event: absent, null, without a timestamp, a numeric timestamp, or one of STAMPS.
fn event() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        Just(Some(json!({"session_id": "s"}))),
        Just(Some(json!({"timestamp": 1577836800000_i64}))),
        (0..STAMPS.len()).prop_map(|i| Some(json!({"timestamp": STAMPS[i].0, "x": 1}))),
    ]
}

fn pool(values: Vec<Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![Just(None), proptest::sample::select(values).prop_map(Some)]
}

fn service() -> impl Strategy<Value = Service> {
    (
        pool(vec![json!(null), json!("C1")]),
        pool(vec![
            json!(null),
            json!(8),
            json!("8"),
            json!("DeliveringService"),
            json!(5),
            json!("Offering"),
            json!("Other"),
            json!(8.0),
        ]),
        pool(vec![
            json!(null),
            json!(85),
            json!("85"),
            json!(85.0),
            json!("gold"),
            json!([1, 85]),
            json!(["gold"]),
            json!(9007199254740993_u64),
        ]),
        pool(vec![
            json!("gold"),
            json!(["gold", "x"]),
            json!(1),
            json!("1"),
        ]),
        (event(), event()),
        proptest::collection::vec(any::<bool>(), 4),
    )
        .prop_map(
            |(customer, kind, score, tier, (started, completed), sections)| {
                let mut s = Map::new();
                s.insert("first".into(), json!(0));
                let fields = (customer, kind, score, tier, started, completed);
                for (key, value) in crate::query::test_support::service_fields(fields) {
                    s.insert(key.into(), value);
                }
                for (i, present) in sections.into_iter().enumerate() {
                    if present {
                        s.insert(
                            SECTIONS[i].into(),
                            json!([{"id": i, "active_tasks": [], "completed_tasks": [1]}]),
                        );
                    }
                }
                s
            },
        )
}

fn window_strategy() -> impl Strategy<Value = Window> {
    let bound = proptest::option::of(proptest::sample::select(BOUNDS.to_vec()));
    (bound.clone(), bound).prop_map(|(from, to)| Window {
        from: from.map(micros),
        to: to.map(micros),
    })
}

fn query_strategy() -> impl Strategy<Value = ServiceQuery> {
    let types = crate::query::test_support::listed_types();
    let mut filters = crate::query::test_support::common_filters();
    filters.extend([
        filter("tier", json!("gold")),
        filter("tier", json!(1)),
        filter("score", json!(9007199254740993_u64)),
    ]);
    (
        proptest::sample::select(vec![
            Lifecycle::All,
            Lifecycle::Active,
            Lifecycle::Completed,
        ]),
        any::<bool>(),
        window_strategy(),
        window_strategy(),
        proptest::sample::subsequence(types, 0..=2),
        proptest::collection::vec(any::<bool>(), 4),
        proptest::sample::subsequence(filters, 0..=2),
    )
        .prop_map(crate::query::test_support::query_of)
}

fn type_map() -> impl Strategy<Value = TypeMap> {
    any::<bool>().prop_map(crate::query::test_support::type_map)
}

/// Independent oracle: `Some(true)` keep, `Some(false)` drop, `None` dropped for a bad
/// timestamp. Written against the generators' small value pools.
fn oracle(s: &Service, q: &ServiceQuery, types: &TypeMap) -> Option<bool> {
    let present = |key: &str| s.get(key).filter(|v| !v.is_null());
    if q.anonymous && present("customer_id").is_some() {
        return Some(false);
    }
    let done = present("completed").is_some();
    match q.lifecycle {
        Lifecycle::Active if done => return Some(false),
        Lifecycle::Completed if !done => return Some(false),
        _ => {}
    }
    if !done && (q.completed.from.is_some() || q.completed.to.is_some()) {
        return Some(false);
    }
    if !q.service_types.is_empty() {
        let spell = |id: i64| vec![json!(id), json!(id as f64), json!(id.to_string())];
        let mut accepted = Vec::new();
        for t in &q.service_types {
            match t {
                ServiceType::Id(id) => {
                    accepted.extend(spell(*id));
                    accepted.extend(types.name_of(*id).map(|n| json!(n)));
                }
                ServiceType::Name(n) => {
                    accepted.push(json!(n));
                    accepted.extend(types.id_of(n).into_iter().flat_map(spell));
                }
            }
        }
        if !s.get("service_type").is_some_and(|t| accepted.contains(t)) {
            return Some(false);
        }
    }
    let scalar = |want: &Value, have: &Value| match (want, have) {
        // The pools hold no negative numbers: u64 is exact for integers, f64 for the rest.
        (Value::Number(w), Value::Number(h)) => match (w.as_u64(), h.as_u64()) {
            (Some(w), Some(h)) => w == h,
            _ => w.as_f64() == h.as_f64(),
        },
        (Value::Number(w), Value::String(h)) => h.parse::<f64>().ok() == w.as_f64(),
        _ => want == have,
    };
    for f in &q.filters {
        let ok = match s.get(&f.key) {
            None => false,
            Some(Value::Array(items)) => items.iter().any(|i| scalar(&f.value, i)),
            Some(have) => scalar(&f.value, have),
        };
        if !ok {
            return Some(false);
        }
    }
    let instant = |event: Option<&Value>| {
        let text = event?.get("timestamp")?.as_str()?;
        STAMPS.iter().find(|(t, _)| *t == text)?.1.map(micros)
    };
    let mut bad = false;
    for (w, event) in [
        (&q.started, s.get("started")),
        (&q.completed, present("completed")),
    ] {
        if w.from.is_none() && w.to.is_none() {
            continue;
        }
        match instant(event) {
            None => bad = true,
            Some(t) => {
                if w.from.is_some_and(|f| t < f) || w.to.is_some_and(|to| t >= to) {
                    return Some(false);
                }
            }
        }
    }
    if bad {
        None
    } else {
        Some(true)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The output is exactly the services the oracle keeps, in input order, each trimmed,
    /// and the unparseable count is the oracle's.
    #[test]
    fn keeps_exactly_what_the_oracle_keeps(
        input in proptest::collection::vec(service(), 0..12),
        q in query_strategy(),
        types in type_map(),
    ) {
        let input: Vec<Service> = input
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| { s.insert("_i".into(), json!(i)); s })
            .collect();
        let out = filter_services(input.clone(), &q, &types);

        let verdicts: Vec<Option<bool>> = input.iter().map(|s| oracle(s, &q, &types)).collect();
        let expected: Vec<usize> = (0..input.len()).filter(|&i| verdicts[i] == Some(true)).collect();
        let got: Vec<usize> = out.services.iter()
            .map(|s| s["_i"].as_u64().expect("index survives") as usize)
            .collect();
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(out.unparseable_timestamps, verdicts.iter().filter(|v| v.is_none()).count());

        let flags = [q.include.active_states, q.include.completed_states,
            q.include.active_tasks, q.include.completed_tasks];
        for (s, &i) in out.services.iter().zip(&got) {
            for (section, wanted) in SECTIONS.iter().zip(flags) {
                prop_assert_eq!(s.contains_key(*section), wanted);
            }
            // Apart from the sections, the kept service is the input one, key order too.
            let strip = |m: &Service| {
                let mut m = m.clone();
                m.retain(|k, _| !SECTIONS.contains(&k.as_str()));
                text(&[m])
            };
            prop_assert_eq!(strip(s), strip(&input[i]));
            let verdict = matches(&input[i], &q, &types);
            prop_assert_eq!(verdict, Match::Keep);
        }
    }

    /// Filtering is idempotent: a filtered answer already satisfies its query.
    #[test]
    fn filtering_twice_is_filtering_once(
        input in proptest::collection::vec(service(), 0..12),
        q in query_strategy(),
        types in type_map(),
    ) {
        let once = filter_services(input, &q, &types);
        let expected = text(&once.services);
        let twice = filter_services(once.services, &q, &types);
        prop_assert_eq!(text(&twice.services), expected);
        prop_assert_eq!(twice.unparseable_timestamps, 0);
    }

    /// The cache path: filtering the broad answer equals filtering upstream's raw answer.
    #[test]
    fn broad_then_narrow_equals_narrow(
        input in proptest::collection::vec(service(), 0..12),
        q in query_strategy(),
        types in type_map(),
    ) {
        let direct = filter_services(input.clone(), &q, &types);
        let broad = filter_services(input, &q.broad(), &types);
        let narrowed = filter_services(broad.services, &q, &types);
        prop_assert_eq!(text(&narrowed.services), text(&direct.services));
    }
}
