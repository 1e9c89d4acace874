//! The HTTP edge of the store: tenant headers, body reading, and one function per
//! operation, each turning a parsed request into repository calls and a response.

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use super::body::{self, ExtensionUpdate};
use super::error::{empty_response, json_response, ApiError, Entity};
use super::model::Kind;
use super::query;
use super::repo::{items, services, Tenant};
use super::routes::{self, Route};
use super::Store;
use crate::query::TypeMap;
use crate::server::Body;

/// Answers one request; never fails (errors become CS-shaped responses).
pub async fn handle(store: Store, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = match dispatch(&store, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    tracing::debug!(%method, %path, status = response.status().as_u16(), "store request");
    response
}

async fn dispatch(store: &Store, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (parts, incoming) = request.into_parts();
    let route = routes::resolve(&parts.method, parts.uri.path())?;
    let tenant = tenant(&parts.headers)?;
    let raw_query = parts.uri.query();
    let bytes = read_body(incoming, store.max_body_bytes()).await?;
    let now = super::now();
    match route {
        Route::StartService => {
            let start = body::service_start(body::json(&bytes)?, store, now)?;
            let id = store
                .db()
                .write(move |conn| services::start(conn, &tenant, start))
                .await?;
            Ok(created(json!({ "service_id": id })))
        }
        Route::QueryServices { owner, lifecycle } => {
            let answer = query::services(store, tenant, owner, lifecycle, raw_query).await?;
            Ok(json_response(StatusCode::OK, &answer))
        }
        Route::Associate {
            customer_id,
            service,
        } => {
            let customer_id = query::path_param("customer_id", &customer_id)?;
            let id = service_id(&service)?;
            store
                .db()
                .write(move |conn| services::associate(conn, &tenant, id, &customer_id))
                .await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Route::CompleteService { service } => {
            let id = service_id(&service)?;
            let end = body::end(body::json(&bytes)?, store, now)?;
            store
                .db()
                .write(move |conn| services::complete(conn, &tenant, id, end))
                .await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Route::GetService { service } => {
            let id = service_id(&service)?;
            let answer = query::service_by_id(store, tenant, id, raw_query).await?;
            Ok(json_response(StatusCode::OK, &answer))
        }
        Route::UpdateService { service } => {
            let id = service_id(&service)?;
            let expiry = body::expiry_update(body::json(&bytes)?, store)?;
            store
                .db()
                .write(move |conn| services::set_expiry(conn, &tenant, id, expiry, now))
                .await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Route::DeleteService { service } => {
            let id = service_id(&service)?;
            store
                .db()
                .write(move |conn| services::delete(conn, &tenant, id))
                .await?;
            Ok(empty_response(StatusCode::OK))
        }
        Route::ServiceExtension {
            service,
            name,
            merge,
        } => {
            let id = service_id(&service)?;
            let update = extension_update(&name, &bytes, merge)?;
            store
                .db()
                .write(move |conn| services::set_extension(conn, &tenant, id, update))
                .await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Route::StartItem { service, kind } => {
            let id = service_id(&service)?;
            let json = body::json(&bytes)?;
            let start = match kind {
                Kind::State => body::state_start(json, store, now)?,
                Kind::Task => body::task_start(json, store, now)?,
            };
            let item = store
                .db()
                .write(move |conn| items::start(conn, &tenant, id, kind, start))
                .await?;
            Ok(created(json!({ kind.id_column(): item })))
        }
        Route::Transition { service } => {
            let id = service_id(&service)?;
            let transition = body::transition(body::json(&bytes)?, store, now)?;
            let state = store
                .db()
                .write(move |conn| items::transition(conn, &tenant, id, transition))
                .await?;
            Ok(created(json!({ "state_id": state })))
        }
        Route::EndItem {
            service,
            kind,
            item,
        } => {
            let id = service_id(&service)?;
            let item = item_id(kind, &item)?;
            let end = body::end(body::json(&bytes)?, store, now)?;
            store
                .db()
                .write(move |conn| items::end(conn, &tenant, id, kind, item, end))
                .await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Route::ListItems {
            service,
            kind,
            lifecycle,
        } => {
            let id = service_id(&service)?;
            let answer = query::items(store, tenant, id, kind, lifecycle, raw_query).await?;
            Ok(json_response(StatusCode::OK, &answer))
        }
        Route::GetItem {
            service,
            kind,
            item,
        } => {
            let id = service_id(&service)?;
            let item = item_id(kind, &item)?;
            let answer = query::item_by_id(store, tenant, id, kind, item, raw_query).await?;
            Ok(json_response(StatusCode::OK, &answer))
        }
        Route::ItemExtension {
            service,
            kind,
            item,
            name,
            merge,
        } => {
            let id = service_id(&service)?;
            let item = item_id(kind, &item)?;
            let update = extension_update(&name, &bytes, merge)?;
            store
                .db()
                .write(move |conn| items::set_extension(conn, &tenant, id, kind, item, update))
                .await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Route::BusinessAttributes { name: None } => {
            let all = store
                .attributes()
                .iter()
                .map(|(name, map)| attribute_json(name, map))
                .collect();
            Ok(json_response(StatusCode::OK, &Value::Array(all)))
        }
        Route::BusinessAttributes { name: Some(raw) } => {
            let name = query::path_param("name", &raw)?;
            let map = store
                .attributes()
                .get(&name)
                .ok_or_else(|| ApiError::not_found(Entity::BusinessAttribute, &name))?;
            Ok(json_response(StatusCode::OK, &attribute_json(&name, map)))
        }
        Route::Purge => {
            let before = body::purge_before(body::json(&bytes)?, store)?;
            let purged = store
                .db()
                .write(move |conn| services::purge(conn, &tenant, before))
                .await?;
            Ok(json_response(StatusCode::OK, &json!({ "purged": purged })))
        }
    }
}

/// `ContactCenterId` and `GroupId`; absent is "" (single tenant). A value that is not
/// text cannot name a tenant.
fn tenant(headers: &HeaderMap) -> Result<Tenant, ApiError> {
    let read = |name: &str| -> Result<String, ApiError> {
        match headers.get(name) {
            None => Ok(String::new()),
            Some(value) => value
                .to_str()
                .map(|s| s.trim().to_owned())
                .map_err(|_| ApiError::InvalidTenant),
        }
    };
    Ok(Tenant {
        contact_center_id: read("ContactCenterId")?,
        group_id: read("GroupId")?,
    })
}

async fn read_body(incoming: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(incoming, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::TooLarge(limit))
        }
        Err(_) => Err(ApiError::BodyRead),
    }
}

/// Service ids are integers; anything else cannot name a service.
fn service_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .map_err(|_| ApiError::not_found(Entity::Service, raw))
}

fn item_id(kind: Kind, raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .map_err(|_| ApiError::not_found(kind.entity(), raw))
}

fn extension_update(
    raw_name: &str,
    bytes: &[u8],
    merge: bool,
) -> Result<ExtensionUpdate, ApiError> {
    let name = query::path_param("name", raw_name)?;
    body::extension_name(&name)?;
    Ok(ExtensionUpdate {
        name,
        value: body::json_value(bytes)?,
        merge,
    })
}

fn created(value: Value) -> Response<Body> {
    json_response(StatusCode::CREATED, &value)
}

/// `{"name": "media_type", "values": [{"id": 1001, "name": "voice"}, ...]}`, by id.
fn attribute_json(name: &str, map: &TypeMap) -> Value {
    let mut values: Vec<(&str, i64)> = map.iter().collect();
    values.sort_by_key(|(value_name, id)| (*id, *value_name));
    let values = values
        .into_iter()
        .map(|(value_name, id)| json!({ "id": id, "name": value_name }))
        .collect();
    json!({ "name": name, "values": Value::Array(values) })
}
