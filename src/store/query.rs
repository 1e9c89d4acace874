//! Read paths: Query Services (through the shared `query::params` parser and
//! `query::filter` post-filter, so the store and the gateway agree on what a query
//! means), query by id, and the state/task list parameters.

use serde_json::Value;
use url::form_urlencoded;

use super::error::ApiError;
use super::model::{keep_extensions, ItemRow, Items, Kind, ServiceRow, Shape};
use super::repo::items;
use super::repo::services::{self, Owner};
use super::repo::Tenant;
use super::routes::OwnerSegment;
use super::Store;
use crate::query::filter::filter_services;
use crate::query::params::{decode_path_param, parse_include_flags, parse_service_query, Limits};
use crate::query::{Extensions, Include, Lifecycle, ServiceType, TypeMap};

/// The six Query Services routes.
pub async fn services(
    store: &Store,
    tenant: Tenant,
    owner: OwnerSegment,
    lifecycle: Lifecycle,
    raw_query: Option<&str>,
) -> Result<Value, ApiError> {
    let limits = Limits::default();
    let (owner, anonymous) = match owner {
        OwnerSegment::Anonymous(raw) => (Owner::ContactKey(path_param("contact_key", &raw)?), true),
        OwnerSegment::Customer(raw) => (Owner::Customer(path_param("customer_id", &raw)?), false),
    };
    if store.legacy() {
        // Older backends: no parameter is looked at, and an anonymous lookup returns every
        // service started with the key, associated or not.
        let rendered = store
            .db()
            .read(move |conn| {
                let rows = services::list(conn, &tenant, &owner, lifecycle, false)?;
                render(conn, rows, &Shape::legacy())
            })
            .await?;
        return Ok(Value::Array(
            rendered.into_iter().map(Value::Object).collect(),
        ));
    }
    let types = store.attribute_or_empty("service_type");
    let query = parse_service_query(raw_query, lifecycle, anonymous, types, &limits)
        .map_err(|e| ApiError::InvalidParameter(e.to_string()))?;
    // Render with every extension so that extension filters can see them; what the
    // client did not name is removed after filtering.
    let shape = Shape {
        include: query.include,
        extensions: Extensions::All,
        nest_tasks: false,
    };
    let rendered = store
        .db()
        .read(move |conn| {
            let rows = services::list(conn, &tenant, &owner, lifecycle, anonymous)?;
            render(conn, rows, &shape)
        })
        .await?;
    let mut filtered = filter_services(rendered, &query, types);
    for service in &mut filtered.services {
        keep_extensions(service, &query.extensions);
    }
    Ok(Value::Array(
        filtered.services.into_iter().map(Value::Object).collect(),
    ))
}

fn render(
    conn: &rusqlite::Connection,
    rows: Vec<ServiceRow>,
    shape: &Shape,
) -> Result<Vec<serde_json::Map<String, Value>>, ApiError> {
    let needs_items = shape.include != Include::default();
    rows.into_iter()
        .map(|row| {
            let items = if needs_items {
                services::load_items(conn, row.record.id)?
            } else {
                Items::default()
            };
            Ok(row.render(&items, shape))
        })
        .collect()
}

/// `GET /services/{id}`: the four include flags and `extensions`; legacy mode returns
/// everything.
pub async fn service_by_id(
    store: &Store,
    tenant: Tenant,
    id: i64,
    raw_query: Option<&str>,
) -> Result<Value, ApiError> {
    let shape = if store.legacy() {
        Shape::legacy()
    } else {
        let (include, _) = parse_include_flags(raw_query)
            .map_err(|e| ApiError::InvalidParameter(e.to_string()))?;
        Shape {
            include,
            extensions: extensions_param(raw_query)?,
            nest_tasks: false,
        }
    };
    let (row, items) = store
        .db()
        .read(move |conn| services::get(conn, &tenant, id))
        .await?;
    Ok(Value::Object(row.render(&items, &shape)))
}

/// `GET /services/{id}/states[/active|/completed]` and the task equivalent.
pub async fn items(
    store: &Store,
    tenant: Tenant,
    service_id: i64,
    kind: Kind,
    lifecycle: Lifecycle,
    raw_query: Option<&str>,
) -> Result<Value, ApiError> {
    let params = ItemParams::parse(raw_query, kind)?;
    let types = store.attribute(kind.type_column()).cloned();
    let nests_tasks = kind == Kind::State && params.nests_tasks();
    let (list, tasks) = store
        .db()
        .read(move |conn| {
            let list = items::list_owned(conn, &tenant, service_id, kind)?;
            let tasks = if nests_tasks {
                items::list(conn, service_id, Kind::Task)?
            } else {
                Vec::new()
            };
            Ok::<_, ApiError>((list, tasks))
        })
        .await?;
    let kept = list.iter().filter(|item| {
        let lifecycle_ok = match lifecycle {
            Lifecycle::All => true,
            Lifecycle::Active => !item.record.is_completed(),
            Lifecycle::Completed => item.record.is_completed(),
        };
        lifecycle_ok
            && params.state_id.is_none_or(|id| item.state_id == Some(id))
            && type_matches(
                item.record.type_value.as_ref(),
                &params.types,
                types.as_ref(),
            )
    });
    Ok(Value::Array(
        kept.map(|item| item.render(params.nested(&tasks)))
            .collect(),
    ))
}

/// `GET /services/{id}/states/{state_id}` (with `active_tasks`/`completed_tasks`) and
/// `GET /services/{id}/tasks/{task_id}`.
pub async fn item_by_id(
    store: &Store,
    tenant: Tenant,
    service_id: i64,
    kind: Kind,
    item_id: i64,
    raw_query: Option<&str>,
) -> Result<Value, ApiError> {
    let params = ItemParams::parse(raw_query, kind)?;
    let nests_tasks = kind == Kind::State && params.nests_tasks();
    let (item, tasks) = store
        .db()
        .read(move |conn| {
            let item = items::get(conn, &tenant, service_id, kind, item_id)?;
            let tasks = if nests_tasks {
                items::list(conn, service_id, Kind::Task)?
            } else {
                Vec::new()
            };
            Ok::<_, ApiError>((item, tasks))
        })
        .await?;
    Ok(item.render(params.nested(&tasks)))
}

/// A path parameter, decoded with the gateway's rules.
pub fn path_param(name: &str, raw: &str) -> Result<String, ApiError> {
    decode_path_param(name, raw, Limits::default().max_key_bytes)
        .map_err(|e| ApiError::InvalidParameter(e.to_string()))
}

/// `extensions=a,b` or `*` (repeatable); absent means no attached data.
fn extensions_param(raw_query: Option<&str>) -> Result<Extensions, ApiError> {
    let mut names: Vec<String> = Vec::new();
    for (key, value) in form_urlencoded::parse(raw_query.unwrap_or("").as_bytes()) {
        if key != "extensions" {
            continue;
        }
        for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item == "*" {
                return Ok(Extensions::All);
            }
            names.push(item.to_owned());
        }
    }
    names.sort();
    names.dedup();
    Ok(if names.is_empty() {
        Extensions::None
    } else {
        Extensions::Names(names)
    })
}

/// Parameters of the state and task lists. Unknown parameters are ignored, as GMS does.
#[derive(Clone, Debug, Default, PartialEq)]
struct ItemParams {
    /// `state_types` / `task_types`.
    types: Vec<ServiceType>,
    /// `state_id` (tasks only).
    state_id: Option<i64>,
    /// `active_tasks` / `completed_tasks` (states only): tasks nested in each state.
    include: Include,
}

impl ItemParams {
    fn parse(raw_query: Option<&str>, kind: Kind) -> Result<ItemParams, ApiError> {
        let types_name = match kind {
            Kind::State => "state_types",
            Kind::Task => "task_types",
        };
        let mut params = ItemParams::default();
        for piece in raw_query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            // `?active_tasks` (a bare key) means true; `?active_tasks=` is no value at
            // all, refused as the gateway refuses it on the Query Services routes.
            let bare = !piece.contains('=');
            let Some((key, value)) = form_urlencoded::parse(piece.as_bytes()).next() else {
                continue;
            };
            let invalid = |what: &str| {
                ApiError::InvalidParameter(format!("parameter '{key}': '{value}' {what}"))
            };
            match (kind, key.as_ref()) {
                (_, k) if k == types_name => {
                    for item in value.split(',') {
                        let item = item.trim();
                        if item.is_empty() {
                            return Err(invalid("has an empty item"));
                        }
                        params.types.push(match item.parse::<i64>() {
                            Ok(id) => ServiceType::Id(id),
                            Err(_) => ServiceType::Name(item.to_owned()),
                        });
                    }
                }
                (Kind::Task, "state_id") => {
                    let id = value
                        .parse::<i64>()
                        .map_err(|_| invalid("is not an integer"))?;
                    params.state_id = Some(id);
                }
                (Kind::State, "active_tasks") => {
                    params.include.active_tasks =
                        flag(&value, bare).ok_or_else(|| invalid("is not a boolean"))?;
                }
                (Kind::State, "completed_tasks") => {
                    params.include.completed_tasks =
                        flag(&value, bare).ok_or_else(|| invalid("is not a boolean"))?;
                }
                _ => {}
            }
        }
        Ok(params)
    }

    fn nests_tasks(&self) -> bool {
        self.include.active_tasks || self.include.completed_tasks
    }

    fn nested<'a>(&self, tasks: &'a [ItemRow]) -> Option<(&'a [ItemRow], Include)> {
        self.nests_tasks().then_some((tasks, self.include))
    }
}

/// `true`/`false` in any case, `1`/`0`, or a bare key for true.
fn flag(value: &str, bare: bool) -> Option<bool> {
    match value {
        "" if bare => Some(true),
        "1" => Some(true),
        "0" => Some(false),
        v if v.eq_ignore_ascii_case("true") => Some(true),
        v if v.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// Does a stored type value match one of `wanted` (IDs and names compared through the
/// attribute's map when one is configured)? No wanted types matches everything.
fn type_matches(stored: Option<&Value>, wanted: &[ServiceType], map: Option<&TypeMap>) -> bool {
    if wanted.is_empty() {
        return true;
    }
    let stored = match stored {
        Some(Value::Number(n)) => n.as_i64().map(ServiceType::Id),
        Some(Value::String(s)) => Some(match s.parse::<i64>() {
            Ok(id) => ServiceType::Id(id),
            Err(_) => ServiceType::Name(s.clone()),
        }),
        _ => None,
    };
    let Some(stored) = stored else {
        return false;
    };
    let as_id = |t: &ServiceType| match t {
        ServiceType::Id(id) => Some(*id),
        ServiceType::Name(name) => map.and_then(|m| m.id_of(name)),
    };
    wanted
        .iter()
        .any(|w| *w == stored || (as_id(w).is_some() && as_id(w) == as_id(&stored)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn item_params_parse_each_kind() {
        let p = ItemParams::parse(
            Some("state_types=8,Waiting&active_tasks&completed_tasks=FALSE&x=1"),
            Kind::State,
        )
        .expect("valid");
        assert_eq!(
            p.types,
            vec![ServiceType::Id(8), ServiceType::Name("Waiting".into())]
        );
        assert!(p.include.active_tasks && !p.include.completed_tasks);
        let p = ItemParams::parse(Some("state_id=3&task_types=2"), Kind::Task).expect("valid");
        assert_eq!((p.state_id, p.types), (Some(3), vec![ServiceType::Id(2)]));
        let bad = [
            (
                Kind::State,
                "active_tasks=yes",
                "parameter 'active_tasks': 'yes' is not a boolean",
            ),
            (
                Kind::State,
                "completed_tasks=",
                "parameter 'completed_tasks': '' is not a boolean",
            ),
            (
                Kind::State,
                "state_types=1,,2",
                "parameter 'state_types': '1,,2' has an empty item",
            ),
            (
                Kind::Task,
                "state_id=x",
                "parameter 'state_id': 'x' is not an integer",
            ),
        ];
        for (kind, query, message) in bad {
            let got = ItemParams::parse(Some(query), kind).map_err(|e| e.to_string());
            assert_eq!(got, Err(message.to_owned()), "{query}");
        }
    }

    #[test]
    fn types_match_through_the_map() {
        let map = TypeMap::new([("Delivering".to_owned(), 8)]);
        let wanted = [ServiceType::Name("Delivering".into())];
        assert!(type_matches(Some(&json!(8)), &wanted, Some(&map)));
        assert!(type_matches(Some(&json!("Delivering")), &wanted, None));
        assert!(!type_matches(Some(&json!(8)), &wanted, None));
        assert!(type_matches(Some(&json!("8")), &[ServiceType::Id(8)], None));
        assert!(!type_matches(None, &[ServiceType::Id(8)], None));
        assert!(type_matches(None, &[], None));
    }

    #[test]
    fn extensions_param_reads_lists_and_star() {
        assert_eq!(extensions_param(None).ok(), Some(Extensions::None));
        assert_eq!(
            extensions_param(Some("extensions=b,a&extensions=a")).ok(),
            Some(Extensions::Names(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            extensions_param(Some("extensions=*")).ok(),
            Some(Extensions::All)
        );
    }
}
