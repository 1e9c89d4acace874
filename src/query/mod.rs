//! Query Services: the validated, normalised form of a query (`ServiceQuery`),
//! the parameter parser that builds it (`params`), the date grammar (`date`) and the
//! post-filter that makes any upstream answer satisfy it: `raw` on the upstream bytes
//! (what the gateway serves), `filter` on a JSON tree (its test oracle, and the
//! reference store's filter).
//!
//! These types are shared by the gateway pipeline, the cache (which computes every
//! variant from one broad answer) and the reference store (which answers the same
//! queries from SQLite), so the three can never disagree about what a query means.

pub mod config;
pub mod date;
pub mod filter;
pub mod params;
pub mod raw;
mod rules;
#[cfg(test)]
mod test_support;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// The top-level fields of a Service. Every other top-level key is attached data
/// (an extension), so none of these can be an extension filter or an extension name.
pub const SERVICE_FIELDS: [&str; 14] = [
    "service_id",
    "service_type",
    "customer_id",
    "contact_key",
    "started",
    "completed",
    "est_duration",
    "duration",
    "disposition",
    "disposition_desc",
    "active_states",
    "completed_states",
    "active_tasks",
    "completed_tasks",
];

/// A JSON value's kind, as an error message names it ("an object", "a number").
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Which services a Query Services route selects by lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lifecycle {
    /// `/services/anonymous/{key}`, `/customers/{id}/services`.
    All,
    /// `.../active`: services without a `completed` event.
    Active,
    /// `.../completed`: services with a `completed` event.
    Completed,
}

/// The four optional sections of a Service, each with an include flag of its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Section {
    ActiveStates,
    CompletedStates,
    ActiveTasks,
    CompletedTasks,
}

impl Section {
    /// In the order the flags are written upstream.
    pub const ALL: [Section; 4] = [
        Section::ActiveStates,
        Section::CompletedStates,
        Section::ActiveTasks,
        Section::CompletedTasks,
    ];

    /// The section's key in a Service, and its flag's parameter name.
    pub const fn name(self) -> &'static str {
        match self {
            Section::ActiveStates => "active_states",
            Section::CompletedStates => "completed_states",
            Section::ActiveTasks => "active_tasks",
            Section::CompletedTasks => "completed_tasks",
        }
    }

    pub fn from_name(name: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Sections whose elements are state objects (which carry no nested task arrays).
    pub const fn holds_states(self) -> bool {
        matches!(self, Section::ActiveStates | Section::CompletedStates)
    }

    /// Tasks sections: what a state object nested inside must lose.
    pub const fn holds_tasks(self) -> bool {
        !self.holds_states()
    }
}

/// The four include flags. Each section is present in a returned Service exactly
/// when its flag is true.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Include {
    pub active_states: bool,
    pub completed_states: bool,
    pub active_tasks: bool,
    pub completed_tasks: bool,
}

impl Include {
    /// The flag of one section.
    pub fn get(&self, section: Section) -> bool {
        match section {
            Section::ActiveStates => self.active_states,
            Section::CompletedStates => self.completed_states,
            Section::ActiveTasks => self.active_tasks,
            Section::CompletedTasks => self.completed_tasks,
        }
    }

    pub fn set(&mut self, section: Section, on: bool) {
        let slot = match section {
            Section::ActiveStates => &mut self.active_states,
            Section::CompletedStates => &mut self.completed_states,
            Section::ActiveTasks => &mut self.active_tasks,
            Section::CompletedTasks => &mut self.completed_tasks,
        };
        *slot = on;
    }

    /// Every section: what the cache asks the upstream for.
    pub const ALL: Include = Include {
        active_states: true,
        completed_states: true,
        active_tasks: true,
        completed_tasks: true,
    };
}

/// A half-open time window `from <= t < to`; either bound may be absent.
/// Bounds are already truncated to milliseconds, i.e. exactly what was sent upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Window {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

impl Window {
    pub fn is_unbounded(&self) -> bool {
        self.from.is_none() && self.to.is_none()
    }

    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.from.is_none_or(|from| from <= t) && self.to.is_none_or(|to| t < to)
    }
}

/// One item of `service_types`: a business-attribute DB ID or its name.
/// The derived order (IDs ascending, then names) is the normalised order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceType {
    Id(i64),
    Name(String),
}

/// The attached-data names the upstream is asked to return.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Extensions {
    /// No `extensions` parameter and no extension filter.
    #[default]
    None,
    /// `extensions=*`.
    All,
    /// Client names ∪ extension-filter keys, sorted and deduplicated.
    Names(Vec<String>),
}

/// `key=value` matched against a Service's top-level attached data.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtensionFilter {
    pub key: String,
    /// The value parsed as JSON when it is a JSON literal, else the string.
    pub value: Value,
    /// The decoded value as the client wrote it; forwarded upstream.
    pub raw: String,
}

/// A validated Query Services request. Built only by [`params::parse_service_query`].
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceQuery {
    pub lifecycle: Lifecycle,
    /// Anonymous routes drop services that carry a `customer_id`.
    pub anonymous: bool,
    pub started: Window,
    pub completed: Window,
    /// Deduplicated and sorted; empty means "any type".
    pub service_types: Vec<ServiceType>,
    pub include: Include,
    /// The widened extension set (section 2.1 of the gateway contract).
    pub extensions: Extensions,
    /// In the order given; all must match.
    pub filters: Vec<ExtensionFilter>,
}

impl ServiceQuery {
    /// The broad query the cache stores for a key: the "all" route, every include
    /// flag, this query's extension set, nothing else.
    pub fn broad(&self) -> ServiceQuery {
        ServiceQuery {
            lifecycle: Lifecycle::All,
            anonymous: self.anonymous,
            started: Window::default(),
            completed: Window::default(),
            service_types: Vec::new(),
            include: Include::ALL,
            extensions: self.extensions.clone(),
            filters: Vec::new(),
        }
    }
}

#[cfg(test)]
impl ServiceQuery {
    /// The query without criteria or sections, for tests to adjust.
    pub(crate) fn plain() -> ServiceQuery {
        ServiceQuery {
            lifecycle: Lifecycle::All,
            anonymous: false,
            started: Window::default(),
            completed: Window::default(),
            service_types: Vec::new(),
            include: Include::default(),
            extensions: Extensions::None,
            filters: Vec::new(),
        }
    }
}

#[cfg(test)]
impl Include {
    /// The four flags in [`Section::ALL`] order.
    pub(crate) fn from_flags(flags: &[bool]) -> Include {
        Include {
            active_states: flags[0],
            completed_states: flags[1],
            active_tasks: flags[2],
            completed_tasks: flags[3],
        }
    }
}

/// Business-attribute names ↔ DB IDs for one attribute (e.g. `service_type`),
/// from `[business_attributes.service_type]` in the config. Names are case-sensitive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeMap {
    by_name: HashMap<String, i64>,
    by_id: HashMap<i64, String>,
}

impl TypeMap {
    pub fn new(pairs: impl IntoIterator<Item = (String, i64)>) -> TypeMap {
        let mut map = TypeMap::default();
        for (name, id) in pairs {
            map.by_id.insert(id, name.clone());
            map.by_name.insert(name, id);
        }
        map
    }

    /// True when no map is configured: any name is then accepted as is.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn id_of(&self, name: &str) -> Option<i64> {
        self.by_name.get(name).copied()
    }

    pub fn name_of(&self, id: i64) -> Option<&str> {
        self.by_id.get(&id).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        self.by_name.iter().map(|(name, id)| (name.as_str(), *id))
    }
}
