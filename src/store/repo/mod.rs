//! The SQL behind every operation. Functions take a `&Connection` that is already inside
//! a transaction (see `db`), check tenancy first, and return `ApiError` so that a
//! client mistake (unknown id, completed object) rolls the transaction back.
//!
//! Tenancy: only `services` carries the (`ContactCenterId`, `GroupId`) pair; states and
//! tasks are reached through a service that [`owned_service`] has checked, so another
//! tenant's id behaves exactly like an unknown one.

pub mod items;
pub mod services;

use rusqlite::{params, Connection, OptionalExtension};

use super::error::{ApiError, Entity};

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
