//! The field reader: consumes documented keys of a body object with type checks,
//! leaving attached data behind.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{is_reserved, Attributes, Event, Expiry, Object, Outcome};
use crate::query::date;
use crate::query::json_kind;
use crate::store::error::ApiError;

/// The keys of one body object, consumed field by field; what remains is attached data.
pub(super) struct Fields<'a> {
    pub(super) map: Object,
    /// Prepended to field names in errors (`from.`, `to.` inside a transition).
    prefix: &'static str,
    attrs: &'a dyn Attributes,
}

impl<'a> Fields<'a> {
    pub(super) fn new(
        body: Value,
        prefix: &'static str,
        attrs: &'a dyn Attributes,
    ) -> Result<Self, ApiError> {
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
                    format!("must be a JSON object, not {}", json_kind(&other)),
                ))
            }
        }
    }

    pub(super) fn name(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    pub(super) fn wrong_type(&self, field: &str, expected: &str, got: &Value) -> ApiError {
        ApiError::invalid(
            self.name(field),
            format!("must be {expected}, not {}", json_kind(got)),
        )
    }

    /// Removes a key, keeping the order of the others; `null` is absent.
    pub(super) fn take(&mut self, field: &str) -> Option<Value> {
        self.map.shift_remove(field).filter(|v| !v.is_null())
    }

    pub(super) fn string(
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

    pub(super) fn non_empty_string(&mut self, field: &str) -> Result<Option<String>, ApiError> {
        match self.string(field, None)? {
            Some(s) if s.is_empty() => Err(ApiError::invalid(self.name(field), "is empty")),
            other => Ok(other),
        }
    }

    /// A string or an integer, kept as given (`application_id`, `resource_id`).
    pub(super) fn identifier(&mut self, field: &str) -> Result<Option<Value>, ApiError> {
        match self.take(field) {
            None => Ok(None),
            Some(v @ Value::String(_)) => Ok(Some(v)),
            Some(v @ Value::Number(_)) if v.is_i64() || v.is_u64() => Ok(Some(v)),
            Some(other) => Err(self.wrong_type(field, "a string or an integer", &other)),
        }
    }

    /// A business-attribute value: a DB ID (integer) or a name. A name must be known to
    /// the attribute's configured map, when there is one.
    pub(super) fn attribute(&mut self, field: &str) -> Result<Option<Value>, ApiError> {
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
    pub(super) fn seconds(&mut self, field: &str) -> Result<Option<i64>, ApiError> {
        match self.take(field) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(n) if n >= 0 => Ok(Some(n)),
                _ => Err(self.wrong_type(field, "a non-negative integer", &v)),
            },
        }
    }

    /// A state id: a positive integer.
    pub(super) fn id(&mut self, field: &str) -> Result<Option<i64>, ApiError> {
        match self.take(field) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(n) if n > 0 => Ok(Some(n)),
                _ => Err(self.wrong_type(field, "a positive integer", &v)),
            },
        }
    }

    pub(super) fn timestamp(&mut self, field: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
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

    pub(super) fn event(&mut self, now: DateTime<Utc>) -> Result<Event, ApiError> {
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

    pub(super) fn outcome(&mut self) -> Result<Outcome, ApiError> {
        Ok(Outcome {
            disposition: self.attribute("disposition")?,
            disposition_desc: self.string("disposition_desc", Some(64))?,
        })
    }

    pub(super) fn expiry(&mut self) -> Result<Option<Expiry>, ApiError> {
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
    pub(super) fn extensions(self) -> Result<Object, ApiError> {
        if let Some(name) = self.map.keys().find(|k| is_reserved(k)) {
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
