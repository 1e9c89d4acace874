//! The SQL behind every operation. Functions take a `&Connection` that is already inside
//! a transaction (see `db`), check tenancy first, and return `ApiError` so that a
//! client mistake (unknown id, completed object) rolls the transaction back.
//!
//! `services` calls into `items` (a service's states and tasks), never the other way;
//! what both need lives here.
//!
//! Tenancy: only `services` carries the (`ContactCenterId`, `GroupId`) pair; states and
//! tasks are reached through a service that [`owned_service`] has checked, so another
//! tenant's id behaves exactly like an unknown one.

pub mod items;
pub mod services;

use rusqlite::{params, Connection, OptionalExtension, ToSql};
use serde_json::Value;

use super::body::{End, Object};
use super::error::{ApiError, Entity, StoreError};
use super::model::to_text;

/// The tenant of a request: `ContactCenterId` and `GroupId` headers, "" when absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tenant {
    pub contact_center_id: String,
    pub group_id: String,
}

/// What the write paths need to know about a service before touching it.
#[derive(Clone, Copy, Debug)]
pub struct ServiceHead {
    pub id: i64,
    pub started_at: i64,
    pub completed: bool,
}

/// The service `id` when it exists for `tenant`; NotFound otherwise.
pub fn owned_service(conn: &Connection, tenant: &Tenant, id: i64) -> Result<ServiceHead, ApiError> {
    conn.prepare_cached(
        "SELECT started_at, completed_at IS NOT NULL FROM services
         WHERE service_id = ?1 AND contact_center_id = ?2 AND group_id = ?3",
    )?
    .query_row(
        params![id, tenant.contact_center_id, tenant.group_id],
        |row| {
            Ok(ServiceHead {
                id,
                started_at: row.get(0)?,
                completed: row.get(1)?,
            })
        },
    )
    .optional()?
    .ok_or_else(|| ApiError::not_found(Entity::Service, id))
}

/// Extensions given later replace earlier ones of the same name (keeping their place).
pub fn merged_extensions(mut existing: Object, newer: Object) -> Object {
    for (name, value) in newer {
        existing.insert(name, value);
    }
    existing
}

/// The completion instant in Unix ms; an end before the start is refused.
pub fn check_end_time(end: &End, started_at: i64) -> Result<i64, ApiError> {
    let completed_at = end.event.at.timestamp_millis();
    if completed_at < started_at {
        return Err(ApiError::invalid(
            "timestamp",
            "the completion is earlier than the start",
        ));
    }
    Ok(completed_at)
}

/// Writes an end onto one row of `table`: its time, event, outcome (a missing disposition
/// keeps the row's) and its extensions merged over the row's `existing` ones. `row` picks the row with `?6` (and `?7`),
/// bound to `keys` in order.
pub fn write_end(
    conn: &Connection,
    table: &str,
    row: &str,
    keys: &[i64],
    completed_at: i64,
    end: End,
    existing: Object,
) -> Result<(), ApiError> {
    let sql = format!(
        "UPDATE {table} SET completed_at = ?1, completed = ?2,
             disposition = coalesce(?3, disposition),
             disposition_desc = coalesce(?4, disposition_desc),
             extensions = ?5
         WHERE {row}"
    );
    let event = to_text(&Value::Object(end.event.fields));
    let disposition = end.outcome.disposition.as_ref().map(to_text);
    let extensions = to_text(&Value::Object(merged_extensions(existing, end.extensions)));
    let mut values: Vec<&dyn ToSql> = vec![
        &completed_at,
        &event,
        &disposition,
        &end.outcome.disposition_desc,
        &extensions,
    ];
    values.extend(keys.iter().map(|key| key as &dyn ToSql));
    conn.prepare_cached(&sql)?.execute(&values[..])?;
    Ok(())
}

/// An extensions column read back: a JSON object, or the database is corrupt.
pub fn parse_object(text: &str) -> Result<Object, ApiError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) | Err(_) => {
            Err(StoreError::Corrupt("an extensions column is not a JSON object".into()).into())
        }
    }
}
