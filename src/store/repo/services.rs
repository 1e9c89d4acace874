//! Services: start, complete, associate, expiration, delete, extensions, look-ups, purge.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::{check_end_time, items, owned_service, parse_object, write_end, Tenant};
use crate::query::Lifecycle;
use crate::store::body::{End, Expiry, ExtensionUpdate, Object, ServiceStart};
use crate::store::error::{ApiError, Entity};
use crate::store::model::{service_columns, to_text, Items, Kind, ServiceRow};

/// Whose services a Query Services route lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Services started with this contact key.
    ContactKey(String),
    Customer(String),
}

pub fn start(conn: &Connection, tenant: &Tenant, start: ServiceStart) -> Result<i64, ApiError> {
    let started_at = start.event.at.timestamp_millis();
    let auto_complete_at = start
        .auto_complete_after
        .map(|secs| started_at.saturating_add(secs.saturating_mul(1000)));
    let expires_at = start.expiry.map(|e| expires_at(e, started_at));
    conn.prepare_cached(
        "INSERT INTO services (contact_center_id, group_id, customer_id, contact_key,
             service_type, est_duration, started_at, started, disposition, disposition_desc,
             auto_complete_at, expires_at, extensions)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        tenant.contact_center_id,
        tenant.group_id,
        start.customer_id,
        start.contact_key,
        start.service_type.as_ref().map(to_text),
        start.est_duration,
        started_at,
        to_text(&Value::Object(start.event.fields)),
        start.outcome.disposition.as_ref().map(to_text),
        start.outcome.disposition_desc,
        auto_complete_at,
        expires_at,
        to_text(&Value::Object(start.extensions)),
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Unix milliseconds at which a service expires; `Ttl` counts from `from_ms`.
pub fn expires_at(expiry: Expiry, from_ms: i64) -> i64 {
    match expiry {
        Expiry::Ttl(secs) => from_ms.saturating_add(secs.saturating_mul(1000)),
        Expiry::At(at) => at.timestamp_millis(),
    }
}

pub fn complete(conn: &Connection, tenant: &Tenant, id: i64, end: End) -> Result<(), ApiError> {
    let head = owned_service(conn, tenant, id)?;
    if head.completed {
        return Err(ApiError::AlreadyCompleted {
            kind: Entity::Service,
            id,
        });
    }
    let completed_at = check_end_time(&end, head.started_at)?;
    let existing = load_extensions(conn, id)?;
    write_end(
        conn,
        "services",
        "service_id = ?6",
        &[id],
        completed_at,
        end,
        existing,
    )
}

/// Last association wins; the service stops being anonymous.
pub fn associate(
    conn: &Connection,
    tenant: &Tenant,
    id: i64,
    customer_id: &str,
) -> Result<(), ApiError> {
    owned_service(conn, tenant, id)?;
    conn.prepare_cached("UPDATE services SET customer_id = ?2 WHERE service_id = ?1")?
        .execute(params![id, customer_id])?;
    Ok(())
}

/// `ttl` counts from `now` (the update), `expiration_time` is absolute, `None` removes
/// the expiration.
pub fn set_expiry(
    conn: &Connection,
    tenant: &Tenant,
    id: i64,
    expiry: Option<Expiry>,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    owned_service(conn, tenant, id)?;
    let at = expiry.map(|e| expires_at(e, now.timestamp_millis()));
    conn.prepare_cached("UPDATE services SET expires_at = ?2 WHERE service_id = ?1")?
        .execute(params![id, at])?;
    Ok(())
}

/// Deletes the service with its states and tasks (foreign-key cascade).
pub fn delete(conn: &Connection, tenant: &Tenant, id: i64) -> Result<(), ApiError> {
    owned_service(conn, tenant, id)?;
    conn.prepare_cached("DELETE FROM services WHERE service_id = ?1")?
        .execute(params![id])?;
    Ok(())
}

/// Replaces (or with `merge`, shallow-merges into) one extension of the service.
pub fn set_extension(
    conn: &Connection,
    tenant: &Tenant,
    id: i64,
    update: ExtensionUpdate,
) -> Result<(), ApiError> {
    owned_service(conn, tenant, id)?;
    let mut extensions = load_extensions(conn, id)?;
    update.apply(&mut extensions)?;
    conn.prepare_cached("UPDATE services SET extensions = ?2 WHERE service_id = ?1")?
        .execute(params![id, to_text(&Value::Object(extensions))])?;
    Ok(())
}

fn load_extensions(conn: &Connection, id: i64) -> Result<Object, ApiError> {
    let text: String = conn
        .prepare_cached("SELECT extensions FROM services WHERE service_id = ?1")?
        .query_row(params![id], |row| row.get(0))?;
    parse_object(&text)
}

/// One service with its states and tasks.
pub fn get(conn: &Connection, tenant: &Tenant, id: i64) -> Result<(ServiceRow, Items), ApiError> {
    let sql = format!(
        "SELECT {} FROM services WHERE service_id = ?1 AND contact_center_id = ?2 AND group_id = ?3",
        service_columns()
    );
    let row = conn
        .prepare_cached(&sql)?
        .query_row(
            params![id, tenant.contact_center_id, tenant.group_id],
            |row| Ok(ServiceRow::from_row(row)),
        )
        .optional()?
        .ok_or_else(|| ApiError::not_found(Entity::Service, id))??;
    let items = load_items(conn, id)?;
    Ok((row, items))
}

pub fn load_items(conn: &Connection, id: i64) -> Result<Items, ApiError> {
    Ok(Items {
        states: items::list(conn, id, Kind::State)?,
        tasks: items::list(conn, id, Kind::Task)?,
    })
}

/// The services of `owner` in start order. `anonymous_only` keeps services without a
/// customer; `lifecycle` keeps active or completed ones.
pub fn list(
    conn: &Connection,
    tenant: &Tenant,
    owner: &Owner,
    lifecycle: Lifecycle,
    anonymous_only: bool,
) -> Result<Vec<ServiceRow>, ApiError> {
    let (column, value) = match owner {
        Owner::ContactKey(key) => ("contact_key", key),
        Owner::Customer(id) => ("customer_id", id),
    };
    let lifecycle = match lifecycle {
        Lifecycle::All => "",
        Lifecycle::Active => " AND completed_at IS NULL",
        Lifecycle::Completed => " AND completed_at IS NOT NULL",
    };
    let anonymous = if anonymous_only {
        " AND customer_id IS NULL"
    } else {
        ""
    };
    let sql = format!(
        "SELECT {} FROM services
         WHERE contact_center_id = ?1 AND group_id = ?2 AND {column} = ?3{lifecycle}{anonymous}
         ORDER BY service_id",
        service_columns()
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement.query_map(
        params![tenant.contact_center_id, tenant.group_id, value],
        |row| Ok(ServiceRow::from_row(row)),
    )?;
    let mut services = Vec::new();
    for row in rows {
        services.push(row??);
    }
    Ok(services)
}

/// Deletes the tenant's completed services (optionally only those completed before
/// `before`); returns how many.
pub fn purge(
    conn: &Connection,
    tenant: &Tenant,
    before: Option<DateTime<Utc>>,
) -> Result<usize, ApiError> {
    let deleted = conn
        .prepare_cached(
            "DELETE FROM services
             WHERE contact_center_id = ?1 AND group_id = ?2 AND completed_at IS NOT NULL
               AND (?3 IS NULL OR completed_at < ?3)",
        )?
        .execute(params![
            tenant.contact_center_id,
            tenant.group_id,
            before.map(|b| b.timestamp_millis())
        ])?;
    Ok(deleted)
}
