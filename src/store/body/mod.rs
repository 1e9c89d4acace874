//! Request bodies → typed commands.
//!
//! A start/end body mixes documented fields (api spec section 3) with attached data: every
//! top-level key that is not documented for that body is an extension. Documented fields
//! are type-checked and named in the error when wrong; `null` counts as absent.
//! Extension names that would collide with a field of the rendered object are refused,
//! so attached data can always sit at the top level of a Service, State or Task.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

mod fields;
#[cfg(test)]
mod tests;

use super::error::ApiError;
use crate::query::{TypeMap, SERVICE_FIELDS};
use fields::Fields;

pub type Object = Map<String, Value>;

/// The fields of rendered states and tasks beyond a Service's own.
const ITEM_FIELDS: [&str; 4] = ["state_id", "task_id", "state_type", "task_type"];

/// Names a client cannot use for attached data: the fields of rendered objects.
pub fn is_reserved(name: &str) -> bool {
    SERVICE_FIELDS.contains(&name) || ITEM_FIELDS.contains(&name)
}

/// Resolves business-attribute maps by attribute name; `None` when none is configured.
pub trait Attributes {
    fn map(&self, attribute: &str) -> Option<&TypeMap>;
}

/// A start or end event: `timestamp` (canonical, first) and the event fields given.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub at: DateTime<Utc>,
    pub fields: Object,
}

/// Fields every object kind carries at its top level.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub disposition: Option<Value>,
    pub disposition_desc: Option<String>,
}

/// When a service is deleted by the sweeper.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Expiry {
    /// Seconds after a reference instant (the start, or the update that set it).
    Ttl(i64),
    At(DateTime<Utc>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServiceStart {
    pub event: Event,
    pub customer_id: Option<String>,
    pub contact_key: Option<String>,
    pub service_type: Option<Value>,
    pub est_duration: Option<i64>,
    pub auto_complete_after: Option<i64>,
    pub expiry: Option<Expiry>,
    pub outcome: Outcome,
    pub extensions: Object,
}

/// Start of a state (`item_type` = `state_type`) or a task (`task_type`, `state_id`).
#[derive(Clone, Debug, PartialEq)]
pub struct ItemStart {
    pub event: Event,
    pub item_type: Option<Value>,
    pub state_id: Option<i64>,
    pub est_duration: Option<i64>,
    pub outcome: Outcome,
    pub extensions: Object,
}

#[derive(Clone, Debug, PartialEq)]
pub struct End {
    pub event: Event,
    pub outcome: Outcome,
    pub extensions: Object,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub from_state_id: i64,
    pub end: End,
    pub start: ItemStart,
}

/// Parses raw body bytes; an empty body is `{}`.
pub fn json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Object::new()));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))
}

/// Parses raw bytes that must hold a JSON value (extension bodies): empty is malformed.
pub fn json_value(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))
}

pub fn service_start(
    body: Value,
    attrs: &dyn Attributes,
    now: DateTime<Utc>,
) -> Result<ServiceStart, ApiError> {
    let mut f = Fields::new(body, "", attrs)?;
    let event = f.event(now)?;
    let customer_id = f.non_empty_string("customer_id")?;
    let contact_key = f.non_empty_string("contact_key")?;
    for (field, key) in [("customer_id", &customer_id), ("contact_key", &contact_key)] {
        if let Some(key) = key {
            lookup_key(field, key)?;
        }
    }
    if customer_id.is_none() && contact_key.is_none() {
        return Err(ApiError::invalid(
            "customer_id",
            "a service needs a customer_id or a contact_key",
        ));
    }
    let service_type = f.attribute("service_type")?;
    let est_duration = f.seconds("est_duration")?;
    let auto_complete_after = f.seconds("auto_complete_after")?;
    let expiry = f.expiry()?;
    let outcome = f.outcome()?;
    Ok(ServiceStart {
        event,
        customer_id,
        contact_key,
        service_type,
        est_duration,
        auto_complete_after,
        expiry,
        outcome,
        extensions: f.extensions()?,
    })
}

pub fn state_start(
    body: Value,
    attrs: &dyn Attributes,
    now: DateTime<Utc>,
) -> Result<ItemStart, ApiError> {
    item_start(Fields::new(body, "", attrs)?, "state_type", false, now)
}

pub fn task_start(
    body: Value,
    attrs: &dyn Attributes,
    now: DateTime<Utc>,
) -> Result<ItemStart, ApiError> {
    item_start(Fields::new(body, "", attrs)?, "task_type", true, now)
}

fn item_start(
    mut f: Fields<'_>,
    type_field: &str,
    with_state: bool,
    now: DateTime<Utc>,
) -> Result<ItemStart, ApiError> {
    let event = f.event(now)?;
    let item_type = f.attribute(type_field)?;
    let state_id = if with_state { f.id("state_id")? } else { None };
    let est_duration = f.seconds("est_duration")?;
    let outcome = f.outcome()?;
    Ok(ItemStart {
        event,
        item_type,
        state_id,
        est_duration,
        outcome,
        extensions: f.extensions()?,
    })
}

pub fn end(body: Value, attrs: &dyn Attributes, now: DateTime<Utc>) -> Result<End, ApiError> {
    end_fields(Fields::new(body, "", attrs)?, now)
}

fn end_fields(mut f: Fields<'_>, now: DateTime<Utc>) -> Result<End, ApiError> {
    let event = f.event(now)?;
    let outcome = f.outcome()?;
    Ok(End {
        event,
        outcome,
        extensions: f.extensions()?,
    })
}

/// `{"from": {"state_id", ...end fields}, "to": {"state_type", ...start fields}}`.
pub fn transition(
    body: Value,
    attrs: &dyn Attributes,
    now: DateTime<Utc>,
) -> Result<Transition, ApiError> {
    let mut outer = Fields::new(body, "", attrs)?;
    let from = outer.take("from").ok_or_else(|| missing("from"))?;
    let to = outer.take("to").ok_or_else(|| missing("to"))?;
    if let Some(extra) = outer.map.keys().next() {
        return Err(ApiError::invalid(
            extra.as_str(),
            "a transition body has only 'from' and 'to'",
        ));
    }
    let mut from = Fields::new(from, "from.", attrs)?;
    let from_state_id = from
        .id("state_id")?
        .ok_or_else(|| missing("from.state_id"))?;
    let end = end_fields(from, now)?;
    let start = item_start(Fields::new(to, "to.", attrs)?, "state_type", false, now)?;
    Ok(Transition {
        from_state_id,
        end,
        start,
    })
}

/// `PUT /services/{id}`: exactly one of `ttl` (seconds from now) or `expiration_time`;
/// `null` removes the expiration.
pub fn expiry_update(body: Value, attrs: &dyn Attributes) -> Result<Option<Expiry>, ApiError> {
    let mut f = Fields::new(body, "", attrs)?;
    let given = f.map.contains_key("ttl") || f.map.contains_key("expiration_time");
    if !given {
        return Err(ApiError::invalid(
            "ttl",
            "the body needs 'ttl' (seconds) or 'expiration_time'",
        ));
    }
    let expiry = f.expiry()?;
    if let Some(extra) = f.map.keys().next() {
        return Err(ApiError::invalid(
            extra.as_str(),
            "only 'ttl' or 'expiration_time' can be updated",
        ));
    }
    Ok(expiry)
}

/// `POST /maintenance/purge`: optional `{"before": timestamp}`.
pub fn purge_before(
    body: Value,
    attrs: &dyn Attributes,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    let mut f = Fields::new(body, "", attrs)?;
    let before = f.timestamp("before")?;
    if let Some(extra) = f.map.keys().next() {
        return Err(ApiError::invalid(
            extra.as_str(),
            "a purge body has only 'before'",
        ));
    }
    Ok(before)
}

/// An extension name (from a path) that attached data may use.
pub fn extension_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::invalid(
            "name",
            "an extension name cannot be empty",
        ));
    }
    if is_reserved(name) {
        return Err(ApiError::invalid(
            name,
            "is a documented field, not an extension",
        ));
    }
    Ok(())
}

/// `PUT .../extensions/{name}[/merge]`: replace one extension, or shallow-merge into it.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtensionUpdate {
    pub name: String,
    pub value: Value,
    pub merge: bool,
}

impl ExtensionUpdate {
    /// Applies the update to a map of extensions.
    pub fn apply(self, extensions: &mut Object) -> Result<(), ApiError> {
        let value = if self.merge {
            merge(&self.name, extensions.get(&self.name).cloned(), self.value)?
        } else {
            self.value
        };
        extensions.insert(self.name, value);
        Ok(())
    }
}

/// The merge of `patch` into `existing` for `.../extensions/{name}/merge`.
pub fn merge(name: &str, existing: Option<Value>, patch: Value) -> Result<Value, ApiError> {
    let Value::Object(patch) = patch else {
        return Err(ApiError::invalid(
            name,
            "a merge body must be a JSON object",
        ));
    };
    let mut merged = match existing {
        None | Some(Value::Null) => Object::new(),
        Some(Value::Object(object)) => object,
        Some(_) => {
            return Err(ApiError::invalid(
                name,
                "the existing value is not a JSON object and cannot be merged into",
            ))
        }
    };
    for (key, value) in patch {
        merged.insert(key, value);
    }
    Ok(Value::Object(merged))
}

/// A key the Query Services routes can look up again: what their path parameter accepts
/// (at most 256 bytes, no control characters). A service started with any other key
/// could never be found by it.
fn lookup_key(field: &str, key: &str) -> Result<(), ApiError> {
    let max = crate::query::params::Limits::default().max_key_bytes;
    if key.len() > max {
        return Err(ApiError::invalid(
            field,
            format!("is {} bytes; the limit is {max}", key.len()),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(ApiError::invalid(field, "contains a control character"));
    }
    Ok(())
}

fn missing(field: &str) -> ApiError {
    ApiError::invalid(field, "is required")
}
