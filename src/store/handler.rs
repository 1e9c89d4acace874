//! The HTTP edge of the store: tenant headers, body reading, and one function per
//! operation, each turning a parsed request into repository calls and a response.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CACHE_CONTROL, LOCATION};
use hyper::{Request, Response, StatusCode};
use rusqlite::Connection;
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
///
/// Every answer but a Query Services list says `Cache-Control: no-store`: it is personal
/// data or an error. A Query Services list says nothing, so that a gateway in front may
/// cache it (csgate does, and sets its own `Cache-Control` for its clients).
pub async fn handle(store: Store, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = match dispatch(&store, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    let query_services = response.status().is_success()
        && matches!(
            routes::resolve(&method, &path),
            Ok(Route::QueryServices { .. })
        );
    if !query_services {
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    tracing::debug!(%method, %path, status = response.status().as_u16(), "store request");
    response
}

async fn dispatch(store: &Store, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (parts, incoming) = request.into_parts();
    let route = routes::resolve(&parts.method, parts.uri.path())?;
    let tenant = tenant(&parts.headers)?;
    let raw_query = parts.uri.query();
    let bytes = read_body(incoming, store.max_body_bytes()).await?;
    let call = Call {
        store,
        tenant,
        bytes,
        now: super::now(),
    };
    match route {
        Route::StartService => start_service(call).await,
        Route::QueryServices { owner, lifecycle } => {
            ok(query::services(store, call.tenant, owner, lifecycle, raw_query).await?)
        }
        Route::Associate {
            customer_id,
            service,
        } => associate(call, &customer_id, &service).await,
        Route::CompleteService { service } => complete_service(call, &service).await,
        Route::GetService { service } => {
            let id = service_id(&service)?;
            ok(query::service_by_id(store, call.tenant, id, raw_query).await?)
        }
        Route::UpdateService { service } => update_service(call, &service).await,
        Route::DeleteService { service } => {
            let id = service_id(&service)?;
            call.write(move |conn, tenant| services::delete(conn, tenant, id))
                .await?;
            Ok(empty_response(StatusCode::OK))
        }
        Route::ServiceExtension {
            service,
            name,
            merge,
        } => service_extension(call, &service, &name, merge).await,
        Route::StartItem { service, kind } => start_item(call, &service, kind).await,
        Route::Transition { service } => transition(call, &service).await,
        Route::EndItem {
            service,
            kind,
            item,
        } => end_item(call, &service, kind, &item).await,
        Route::ListItems {
            service,
            kind,
            lifecycle,
        } => {
            let id = service_id(&service)?;
            ok(query::items(store, call.tenant, id, kind, lifecycle, raw_query).await?)
        }
        Route::GetItem {
            service,
            kind,
            item,
        } => {
            let id = service_id(&service)?;
            let item = item_id(kind, &item)?;
            ok(query::item_by_id(store, call.tenant, id, kind, item, raw_query).await?)
        }
        Route::ItemExtension {
            service,
            kind,
            item,
            name,
            merge,
        } => item_extension(call, &service, kind, &item, &name, merge).await,
        Route::BusinessAttributes { name } => business_attributes(store, name.as_deref()),
        Route::Purge => purge(call).await,
    }
}

/// One request as its operation sees it.
struct Call<'a> {
    store: &'a Store,
    tenant: Tenant,
    bytes: Bytes,
    now: DateTime<Utc>,
}

impl Call<'_> {
    /// The body as a JSON object (empty for a blank body).
    fn json(&self) -> Result<Value, ApiError> {
        body::json(&self.bytes)
    }

    /// Runs `f` on the writer connection for the caller's tenant.
    async fn write<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Tenant) -> Result<T, ApiError> + Send + 'static,
    {
        let tenant = self.tenant.clone();
        self.store.db().write(move |conn| f(conn, &tenant)).await
    }
}

/// `200` with a JSON answer.
fn ok(answer: Value) -> Result<Response<Body>, ApiError> {
    Ok(json_response(StatusCode::OK, &answer))
}

fn no_content() -> Result<Response<Body>, ApiError> {
    Ok(empty_response(StatusCode::NO_CONTENT))
}

async fn start_service(call: Call<'_>) -> Result<Response<Body>, ApiError> {
    let start = body::service_start(call.json()?, call.store, call.now)?;
    let id = call
        .write(move |conn, tenant| services::start(conn, tenant, start))
        .await?;
    Ok(created(
        json!({ "service_id": id }),
        format!("/services/{id}"),
    ))
}

async fn associate(
    call: Call<'_>,
    customer_id: &str,
    service: &str,
) -> Result<Response<Body>, ApiError> {
    let customer_id = query::path_param("customer_id", customer_id)?;
    let id = service_id(service)?;
    call.write(move |conn, tenant| services::associate(conn, tenant, id, &customer_id))
        .await?;
    no_content()
}

async fn complete_service(call: Call<'_>, service: &str) -> Result<Response<Body>, ApiError> {
    let id = service_id(service)?;
    let end = body::end(call.json()?, call.store, call.now)?;
    call.write(move |conn, tenant| services::complete(conn, tenant, id, end))
        .await?;
    no_content()
}

async fn update_service(call: Call<'_>, service: &str) -> Result<Response<Body>, ApiError> {
    let id = service_id(service)?;
    let expiry = body::expiry_update(call.json()?, call.store)?;
    let now = call.now;
    call.write(move |conn, tenant| services::set_expiry(conn, tenant, id, expiry, now))
        .await?;
    no_content()
}

async fn service_extension(
    call: Call<'_>,
    service: &str,
    name: &str,
    merge: bool,
) -> Result<Response<Body>, ApiError> {
    let id = service_id(service)?;
    let update = extension_update(name, &call.bytes, merge)?;
    call.write(move |conn, tenant| services::set_extension(conn, tenant, id, update))
        .await?;
    no_content()
}

async fn start_item(call: Call<'_>, service: &str, kind: Kind) -> Result<Response<Body>, ApiError> {
    let id = service_id(service)?;
    let json = call.json()?;
    let start = match kind {
        Kind::State => body::state_start(json, call.store, call.now)?,
        Kind::Task => body::task_start(json, call.store, call.now)?,
    };
    let item = call
        .write(move |conn, tenant| items::start(conn, tenant, id, kind, start))
        .await?;
    Ok(created(
        json!({ kind.id_column(): item }),
        format!("/services/{id}/{}/{item}", kind.plural()),
    ))
}

async fn transition(call: Call<'_>, service: &str) -> Result<Response<Body>, ApiError> {
    let id = service_id(service)?;
    let transition = body::transition(call.json()?, call.store, call.now)?;
    let state = call
        .write(move |conn, tenant| items::transition(conn, tenant, id, transition))
        .await?;
    Ok(created(
        json!({ "state_id": state }),
        format!("/services/{id}/states/{state}"),
    ))
}

async fn end_item(
    call: Call<'_>,
    service: &str,
    kind: Kind,
    item: &str,
) -> Result<Response<Body>, ApiError> {
    let id = service_id(service)?;
    let item = item_id(kind, item)?;
    let end = body::end(call.json()?, call.store, call.now)?;
    call.write(move |conn, tenant| items::end(conn, tenant, id, kind, item, end))
        .await?;
    no_content()
}

async fn item_extension(
    call: Call<'_>,
    service: &str,
    kind: Kind,
    item: &str,
    name: &str,
    merge: bool,
) -> Result<Response<Body>, ApiError> {
    let id = service_id(service)?;
    let item = item_id(kind, item)?;
    let update = extension_update(name, &call.bytes, merge)?;
    call.write(move |conn, tenant| items::set_extension(conn, tenant, id, kind, item, update))
        .await?;
    no_content()
}

/// Every business attribute, or the one `name` names.
fn business_attributes(store: &Store, name: Option<&str>) -> Result<Response<Body>, ApiError> {
    let Some(raw) = name else {
        let all = store
            .attributes()
            .iter()
            .map(|(name, map)| attribute_json(name, map))
            .collect();
        return ok(Value::Array(all));
    };
    let name = query::path_param("name", raw)?;
    let map = store
        .attributes()
        .get(&name)
        .ok_or_else(|| ApiError::not_found(Entity::BusinessAttribute, &name))?;
    ok(attribute_json(&name, map))
}

async fn purge(call: Call<'_>) -> Result<Response<Body>, ApiError> {
    let before = body::purge_before(call.json()?, call.store)?;
    let purged = call
        .write(move |conn, tenant| services::purge(conn, tenant, before))
        .await?;
    ok(json!({ "purged": purged }))
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

/// `201` with the new id, and its URI in `Location` (RFC 9110 §15.3.2).
fn created(value: Value, path: String) -> Response<Body> {
    let mut response = json_response(StatusCode::CREATED, &value);
    if let Ok(location) = HeaderValue::from_str(&format!("{}{path}", routes::PREFIX)) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
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
