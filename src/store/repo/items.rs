//! States and tasks: the two kinds of item inside a service share one layout, so one
//! set of functions serves both, parameterised by [`Kind`].

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::{check_end_time, owned_service, parse_object, write_end, ServiceHead, Tenant};
use crate::store::body::{self, End, ExtensionUpdate, ItemStart};
use crate::store::error::{ApiError, Entity};
use crate::store::model::{item_columns, to_text, ItemRow, Kind};

/// Starts a state or task in an active service; returns its id (unique per service).
pub fn start(
    conn: &Connection,
    tenant: &Tenant,
    service_id: i64,
    kind: Kind,
    start: ItemStart,
) -> Result<i64, ApiError> {
    let head = owned_service(conn, tenant, service_id)?;
    start_in(conn, head, kind, start)
}

fn start_in(
    conn: &Connection,
    head: ServiceHead,
    kind: Kind,
    start: ItemStart,
) -> Result<i64, ApiError> {
    if head.completed {
        return Err(ApiError::AlreadyCompleted {
            kind: Entity::Service,
            id: head.id,
        });
    }
    if let Some(state_id) = start.state_id {
        if !exists(conn, head.id, Kind::State, state_id)? {
            return Err(ApiError::not_found(Entity::State, state_id));
        }
    }
    // The writer connection serialises transactions, so read-then-bump cannot race.
    let counter = kind.counter_column();
    let id: i64 = conn
        .prepare_cached(&format!(
            "UPDATE services SET {counter} = {counter} + 1 WHERE service_id = ?1
             RETURNING {counter} - 1"
        ))?
        .query_row(params![head.id], |row| row.get(0))?;
    let state_column = match kind {
        Kind::State => "",
        Kind::Task => ", state_id",
    };
    let state_value = match kind {
        Kind::State => "",
        Kind::Task => ", ?10",
    };
    let sql = format!(
        "INSERT INTO {table} (service_id, {id_col}, {type_col}, est_duration, started_at,
             started, disposition, disposition_desc, extensions{state_column})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9{state_value})",
        table = kind.table(),
        id_col = kind.id_column(),
        type_col = kind.type_column(),
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let started = to_text(&Value::Object(start.event.fields));
    let extensions = to_text(&Value::Object(start.extensions));
    let item_type = start.item_type.as_ref().map(to_text);
    let disposition = start.outcome.disposition.as_ref().map(to_text);
    let values = params![
        head.id,
        id,
        item_type,
        start.est_duration,
        start.event.at.timestamp_millis(),
        started,
        disposition,
        start.outcome.disposition_desc,
        extensions,
        start.state_id,
    ];
    match kind {
        Kind::State => statement.execute(&values[..9])?,
        Kind::Task => statement.execute(values)?,
    };
    Ok(id)
}

/// Completes an active state or task.
pub fn end(
    conn: &Connection,
    tenant: &Tenant,
    service_id: i64,
    kind: Kind,
    item_id: i64,
    end: End,
) -> Result<(), ApiError> {
    owned_service(conn, tenant, service_id)?;
    end_in(conn, service_id, kind, item_id, end)
}

fn end_in(
    conn: &Connection,
    service_id: i64,
    kind: Kind,
    item_id: i64,
    end: End,
) -> Result<(), ApiError> {
    let item = get_in(conn, service_id, kind, item_id)?;
    if item.record.is_completed() {
        return Err(ApiError::AlreadyCompleted {
            kind: kind.entity(),
            id: item_id,
        });
    }
    let completed_at = check_end_time(&end, item.record.started_at)?;
    write_end(
        conn,
        kind.table(),
        &format!("service_id = ?6 AND {} = ?7", kind.id_column()),
        &[service_id, item_id],
        completed_at,
        end,
        item.record.extensions,
    )
}

/// Ends `from_state_id` and starts a new state, atomically (one transaction).
pub fn transition(
    conn: &Connection,
    tenant: &Tenant,
    service_id: i64,
    transition: body::Transition,
) -> Result<i64, ApiError> {
    let head = owned_service(conn, tenant, service_id)?;
    end_in(
        conn,
        service_id,
        Kind::State,
        transition.from_state_id,
        transition.end,
    )?;
    start_in(conn, head, Kind::State, transition.start)
}

pub fn set_extension(
    conn: &Connection,
    tenant: &Tenant,
    service_id: i64,
    kind: Kind,
    item_id: i64,
    update: ExtensionUpdate,
) -> Result<(), ApiError> {
    owned_service(conn, tenant, service_id)?;
    let sql = format!(
        "SELECT extensions FROM {} WHERE service_id = ?1 AND {} = ?2",
        kind.table(),
        kind.id_column()
    );
    let text: String = conn
        .prepare_cached(&sql)?
        .query_row(params![service_id, item_id], |row| row.get(0))
        .optional()?
        .ok_or_else(|| ApiError::not_found(kind.entity(), item_id))?;
    let mut extensions = parse_object(&text)?;
    update.apply(&mut extensions)?;
    let sql = format!(
        "UPDATE {} SET extensions = ?3 WHERE service_id = ?1 AND {} = ?2",
        kind.table(),
        kind.id_column()
    );
    conn.prepare_cached(&sql)?.execute(params![
        service_id,
        item_id,
        to_text(&Value::Object(extensions))
    ])?;
    Ok(())
}

/// One state or task of a tenant's service.
pub fn get(
    conn: &Connection,
    tenant: &Tenant,
    service_id: i64,
    kind: Kind,
    item_id: i64,
) -> Result<ItemRow, ApiError> {
    owned_service(conn, tenant, service_id)?;
    get_in(conn, service_id, kind, item_id)
}

fn get_in(
    conn: &Connection,
    service_id: i64,
    kind: Kind,
    item_id: i64,
) -> Result<ItemRow, ApiError> {
    let sql = format!(
        "SELECT {} FROM {} WHERE service_id = ?1 AND {} = ?2",
        item_columns(kind),
        kind.table(),
        kind.id_column()
    );
    conn.prepare_cached(&sql)?
        .query_row(params![service_id, item_id], |row| {
            Ok(ItemRow::from_row(kind, row))
        })
        .optional()?
        .ok_or_else(|| ApiError::not_found(kind.entity(), item_id))?
        .map_err(ApiError::from)
}

fn exists(conn: &Connection, service_id: i64, kind: Kind, item_id: i64) -> Result<bool, ApiError> {
    let sql = format!(
        "SELECT 1 FROM {} WHERE service_id = ?1 AND {} = ?2",
        kind.table(),
        kind.id_column()
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params![service_id, item_id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Every state or task of a service (no tenancy check: callers hold an owned service).
pub fn list(conn: &Connection, service_id: i64, kind: Kind) -> Result<Vec<ItemRow>, ApiError> {
    let sql = format!(
        "SELECT {} FROM {} WHERE service_id = ?1 ORDER BY {}",
        item_columns(kind),
        kind.table(),
        kind.id_column()
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement.query_map(params![service_id], |row| Ok(ItemRow::from_row(kind, row)))?;
    let mut items = Vec::new();
    for row in rows {
        items.push(row??);
    }
    Ok(items)
}

/// Every state or task of a tenant's service.
pub fn list_owned(
    conn: &Connection,
    tenant: &Tenant,
    service_id: i64,
    kind: Kind,
) -> Result<Vec<ItemRow>, ApiError> {
    owned_service(conn, tenant, service_id)?;
    list(conn, service_id, kind)
}
