//! Request bodies → typed commands.
//!
//! A start/end body mixes documented fields (api spec section 3) with attached data: every
//! top-level key that is not documented for that body is an extension. Documented fields
//! are type-checked and named in the error when wrong; `null` counts as absent.
//! Extension names that would collide with a field of the rendered object are refused,
//! so attached data can always sit at the top level of a Service, State or Task.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::query::{date, TypeMap};

pub type Object = Map<String, Value>;

/// Names a client cannot use for attached data: the fields of rendered objects.
pub const RESERVED: &[&str] = &[
    "service_id",
    "state_id",
    "task_id",
    "service_type",
    "state_type",
    "task_type",
    "customer_id",
    "contact_key",
    "est_duration",
    "duration",
    "started",
    "completed",
    "disposition",
    "disposition_desc",
    "active_states",
    "completed_states",
    "active_tasks",
    "completed_tasks",
];

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
    if RESERVED.contains(&name) {
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

fn missing(field: &str) -> ApiError {
    ApiError::invalid(field, "is required")
}

/// The keys of one body object, consumed field by field; what remains is attached data.
struct Fields<'a> {
    map: Object,
    /// Prepended to field names in errors (`from.`, `to.` inside a transition).
    prefix: &'static str,
    attrs: &'a dyn Attributes,
}

impl<'a> Fields<'a> {
    fn new(body: Value, prefix: &'static str, attrs: &'a dyn Attributes) -> Result<Self, ApiError> {
        match body {
            Value::Object(map) => Ok(Fields { map, prefix, attrs }),
            other => {
                let field = if prefix.is_empty() {
                    "body".to_owned()
                } else {
                    prefix.trim_end_matches('.').to_owned()
                };
                Err(ApiError::invalid(
                    field,
                    format!("must be a JSON object, not {}", kind(&other)),
                ))
            }
        }
    }

    fn name(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    fn wrong_type(&self, field: &str, expected: &str, got: &Value) -> ApiError {
        ApiError::invalid(
            self.name(field),
            format!("must be {expected}, not {}", kind(got)),
        )
    }

    /// Removes a key, keeping the order of the others; `null` is absent.
    fn take(&mut self, field: &str) -> Option<Value> {
        self.map.shift_remove(field).filter(|v| !v.is_null())
    }

    fn string(
        &mut self,
        field: &str,
        max_chars: Option<usize>,
    ) -> Result<Option<String>, ApiError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::String(s)) => match max_chars {
                Some(max) if s.chars().count() > max => Err(ApiError::invalid(
                    self.name(field),
                    format!("is longer than {max} characters"),
                )),
                _ => Ok(Some(s)),
            },
            Some(other) => Err(self.wrong_type(field, "a string", &other)),
        }
    }

    fn non_empty_string(&mut self, field: &str) -> Result<Option<String>, ApiError> {
        match self.string(field, None)? {
            Some(s) if s.is_empty() => Err(ApiError::invalid(self.name(field), "is empty")),
            other => Ok(other),
        }
    }

    /// A string or an integer, kept as given (`application_id`, `resource_id`).
    fn identifier(&mut self, field: &str) -> Result<Option<Value>, ApiError> {
        match self.take(field) {
            None => Ok(None),
            Some(v @ Value::String(_)) => Ok(Some(v)),
            Some(v @ Value::Number(_)) if v.is_i64() || v.is_u64() => Ok(Some(v)),
            Some(other) => Err(self.wrong_type(field, "a string or an integer", &other)),
        }
    }

    /// A business-attribute value: a DB ID (integer) or a name. A name must be known to
    /// the attribute's configured map, when there is one.
    fn attribute(&mut self, field: &str) -> Result<Option<Value>, ApiError> {
        let value = self.identifier(field)?;
        if let (Some(Value::String(name)), Some(map)) = (&value, self.attrs.map(field)) {
            if map.id_of(name).is_none() {
                return Err(ApiError::invalid(
                    self.name(field),
                    format!("'{name}' is not a configured {field} name"),
                ));
            }
        }
        Ok(value)
    }

    /// A non-negative whole number of seconds.
    fn seconds(&mut self, field: &str) -> Result<Option<i64>, ApiError> {
        match self.take(field) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(n) if n >= 0 => Ok(Some(n)),
                _ => Err(self.wrong_type(field, "a non-negative integer", &v)),
            },
        }
    }

    /// A state id: a positive integer.
    fn id(&mut self, field: &str) -> Result<Option<i64>, ApiError> {
        match self.take(field) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(n) if n > 0 => Ok(Some(n)),
                _ => Err(self.wrong_type(field, "a positive integer", &v)),
            },
        }
    }

    fn timestamp(&mut self, field: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::String(text)) => date::parse_param(&text).map(Some).map_err(|e| {
                ApiError::invalid(
                    self.name(field),
                    format!("'{text}' is not a valid date-time: {e}"),
                )
            }),
            Some(other) => Err(self.wrong_type(field, "an ISO 8601 date-time string", &other)),
        }
    }

    fn event(&mut self, now: DateTime<Utc>) -> Result<Event, ApiError> {
        let at = self.timestamp("timestamp")?.unwrap_or(now);
        let mut fields = Object::new();
        fields.insert(
            "timestamp".into(),
            Value::String(date::format_canonical(at)),
        );
        let strings = [("session_id", 32), ("interaction_id", 50)];
        for (field, max) in strings {
            if let Some(s) = self.string(field, Some(max))? {
                fields.insert(field.into(), Value::String(s));
            }
        }
        for field in ["application_type", "resource_type", "media_type"] {
            if let Some(v) = self.attribute(field)? {
                fields.insert(field.into(), v);
            }
        }
        for field in ["application_id", "resource_id"] {
            if let Some(v) = self.identifier(field)? {
                fields.insert(field.into(), v);
            }
        }
        // Keep the documented order whatever order the client used.
        let order = [
            "timestamp",
            "session_id",
            "interaction_id",
            "application_type",
            "application_id",
            "resource_type",
            "resource_id",
            "media_type",
        ];
        let mut ordered = Object::new();
        for key in order {
            if let Some(v) = fields.shift_remove(key) {
                ordered.insert(key.into(), v);
            }
        }
        Ok(Event {
            at,
            fields: ordered,
        })
    }

    fn outcome(&mut self) -> Result<Outcome, ApiError> {
        Ok(Outcome {
            disposition: self.attribute("disposition")?,
            disposition_desc: self.string("disposition_desc", Some(64))?,
        })
    }

    fn expiry(&mut self) -> Result<Option<Expiry>, ApiError> {
        let ttl = self.seconds("ttl")?;
        let at = self.timestamp("expiration_time")?;
        match (ttl, at) {
            (Some(_), Some(_)) => Err(ApiError::invalid(
                self.name("ttl"),
                "give either 'ttl' or 'expiration_time', not both",
            )),
            (Some(ttl), None) => Ok(Some(Expiry::Ttl(ttl))),
            (None, Some(at)) => Ok(Some(Expiry::At(at))),
            (None, None) => Ok(None),
        }
    }

    /// What is left: attached data.
    fn extensions(self) -> Result<Object, ApiError> {
        if let Some(name) = self.map.keys().find(|k| RESERVED.contains(&k.as_str())) {
            return Err(ApiError::invalid(
                format!("{}{name}", self.prefix),
                "cannot be set in this request",
            ));
        }
        if self.map.contains_key("") {
            return Err(ApiError::invalid("", "an extension name cannot be empty"));
        }
        Ok(self.map)
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct NoMaps;
    impl Attributes for NoMaps {
        fn map(&self, _: &str) -> Option<&TypeMap> {
            None
        }
    }

    struct ServiceTypes(TypeMap);
    impl Attributes for ServiceTypes {
        fn map(&self, attribute: &str) -> Option<&TypeMap> {
            (attribute == "service_type").then_some(&self.0)
        }
    }

    fn now() -> DateTime<Utc> {
        date::parse_param("2024-01-02T03:04:05.678Z").expect("valid")
    }

    fn message(error: ApiError) -> String {
        error.to_string()
    }

    #[test]
    fn service_start_splits_documented_fields_from_extensions() {
        let body = json!({
            "zeta": 1,
            "contact_key": "408-832-7799",
            "service_type": 8,
            "session_id": "s1",
            "timestamp": "2024-01-02T04:04:05+01:00",
            "media_type": "voice",
            "est_duration": 600,
            "ttl": 3600,
            "alpha": {"nested": true},
        });
        let start = service_start(body, &NoMaps, now()).expect("valid");
        assert_eq!(start.contact_key.as_deref(), Some("408-832-7799"));
        assert_eq!(start.customer_id, None);
        assert_eq!(start.service_type, Some(json!(8)));
        assert_eq!(start.est_duration, Some(600));
        assert_eq!(start.expiry, Some(Expiry::Ttl(3600)));
        assert_eq!(
            Value::Object(start.event.fields),
            json!({"timestamp": "2024-01-02T03:04:05.000Z", "session_id": "s1", "media_type": "voice"})
        );
        let keys: Vec<&str> = start.extensions.keys().map(String::as_str).collect();
        assert_eq!(keys, ["zeta", "alpha"]);
    }

    #[test]
    fn timestamp_defaults_to_now() {
        let start = service_start(json!({"customer_id": "c"}), &NoMaps, now()).expect("valid");
        assert_eq!(start.event.at, now());
        assert_eq!(start.event.fields["timestamp"], "2024-01-02T03:04:05.678Z");
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (json!({}), "field 'customer_id': a service needs a customer_id or a contact_key"),
            (json!([1]), "field 'body': must be a JSON object, not an array"),
            (json!({"customer_id": 5}), "field 'customer_id': must be a string, not a number"),
            (json!({"customer_id": ""}), "field 'customer_id': is empty"),
            (
                json!({"customer_id": "c", "timestamp": "2023-02-30T00:00:00Z"}),
                "field 'timestamp': '2023-02-30T00:00:00Z' is not a valid date-time: no such date or time",
            ),
            (
                json!({"customer_id": "c", "session_id": "x".repeat(33)}),
                "field 'session_id': is longer than 32 characters",
            ),
            (
                json!({"customer_id": "c", "interaction_id": "x".repeat(51)}),
                "field 'interaction_id': is longer than 50 characters",
            ),
            (
                json!({"customer_id": "c", "disposition_desc": "x".repeat(65)}),
                "field 'disposition_desc': is longer than 64 characters",
            ),
            (
                json!({"customer_id": "c", "est_duration": -1}),
                "field 'est_duration': must be a non-negative integer, not a number",
            ),
            (
                json!({"customer_id": "c", "ttl": "10"}),
                "field 'ttl': must be a non-negative integer, not a string",
            ),
            (
                json!({"customer_id": "c", "ttl": 1, "expiration_time": "2030-01-01T00:00:00Z"}),
                "field 'ttl': give either 'ttl' or 'expiration_time', not both",
            ),
            (
                json!({"customer_id": "c", "service_type": true}),
                "field 'service_type': must be a string or an integer, not a boolean",
            ),
            (
                json!({"customer_id": "c", "duration": 5}),
                "field 'duration': cannot be set in this request",
            ),
        ];
        for (body, expected) in cases {
            let got = service_start(body.clone(), &NoMaps, now())
                .map(|_| ())
                .map_err(message);
            assert_eq!(got, Err(expected.to_owned()), "body {body}");
        }
    }

    #[test]
    fn configured_maps_refuse_unknown_names_only() {
        let attrs = ServiceTypes(TypeMap::new([("DeliveringService".to_owned(), 8)]));
        let ok = service_start(
            json!({"customer_id": "c", "service_type": "DeliveringService"}),
            &attrs,
            now(),
        );
        assert!(ok.is_ok());
        let ok = service_start(
            json!({"customer_id": "c", "service_type": 99}),
            &attrs,
            now(),
        );
        assert!(ok.is_ok());
        let err = service_start(
            json!({"customer_id": "c", "service_type": "Nope"}),
            &attrs,
            now(),
        )
        .map(|_| ())
        .map_err(message);
        assert_eq!(
            err,
            Err("field 'service_type': 'Nope' is not a configured service_type name".to_owned())
        );
        // No map for media_type: any name goes.
        assert!(service_start(
            json!({"customer_id": "c", "media_type": "pigeon"}),
            &attrs,
            now()
        )
        .is_ok());
    }

    #[test]
    fn transition_names_nested_fields() {
        let t = transition(
            json!({"from": {"state_id": 2, "disposition": "done", "x": 1}, "to": {"state_type": 8, "y": 2}}),
            &NoMaps,
            now(),
        )
        .expect("valid");
        assert_eq!(t.from_state_id, 2);
        assert_eq!(t.end.outcome.disposition, Some(json!("done")));
        assert_eq!(
            t.end.extensions,
            json!({"x": 1}).as_object().cloned().expect("object")
        );
        assert_eq!(t.start.item_type, Some(json!(8)));
        let cases = [
            (json!({"to": {}}), "field 'from': is required"),
            (
                json!({"from": {}, "to": {}}),
                "field 'from.state_id': is required",
            ),
            (
                json!({"from": {"state_id": "1"}, "to": {}}),
                "field 'from.state_id': must be a positive integer, not a string",
            ),
            (
                json!({"from": {"state_id": 1}, "to": 3}),
                "field 'to': must be a JSON object, not a number",
            ),
            (
                json!({"from": {"state_id": 1}, "to": {"timestamp": 3}}),
                "field 'to.timestamp': must be an ISO 8601 date-time string, not a number",
            ),
        ];
        for (body, expected) in cases {
            let got = transition(body.clone(), &NoMaps, now())
                .map(|_| ())
                .map_err(message);
            assert_eq!(got, Err(expected.to_owned()), "body {body}");
        }
    }

    #[test]
    fn expiry_update_needs_exactly_one_field() {
        assert_eq!(
            expiry_update(json!({"ttl": 5}), &NoMaps).ok(),
            Some(Some(Expiry::Ttl(5)))
        );
        assert_eq!(
            expiry_update(json!({"ttl": null}), &NoMaps).ok(),
            Some(None)
        );
        assert!(expiry_update(json!({}), &NoMaps).is_err());
        assert!(expiry_update(json!({"ttl": 5, "other": 1}), &NoMaps).is_err());
    }

    #[test]
    fn merge_is_shallow_and_needs_objects() {
        let merged = merge(
            "x",
            Some(json!({"a": 1, "b": {"c": 1}})),
            json!({"b": {"d": 2}, "e": 3}),
        );
        assert_eq!(merged.ok(), Some(json!({"a": 1, "b": {"d": 2}, "e": 3})));
        assert_eq!(
            merge("x", None, json!({"a": 1})).ok(),
            Some(json!({"a": 1}))
        );
        assert!(merge("x", Some(json!([1])), json!({"a": 1})).is_err());
        assert!(merge("x", Some(json!({})), json!(5)).is_err());
    }

    #[test]
    fn empty_body_is_an_empty_object() {
        assert_eq!(json(b"").ok(), Some(json!({})));
        assert_eq!(json(b" \n").ok(), Some(json!({})));
        assert!(json(b"{").is_err());
        assert!(json_value(b"").is_err());
    }
}
