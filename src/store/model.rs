//! Rows as read from SQLite, and their JSON rendering (Service, State, Task objects).
//!
//! Key order of a rendered object: identity, type, owner (services), durations, events,
//! outcome, then the requested sections, then attached data at the top level.

use rusqlite::Row;
use serde_json::{Map, Value};

use super::body::{is_reserved, Object};
use super::error::StoreError;
use crate::query::{Extensions, Include};

/// States or tasks: the two kinds of item inside a service. They share a table layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    State,
    Task,
}

impl Kind {
    pub fn table(self) -> &'static str {
        match self {
            Kind::State => "states",
            Kind::Task => "tasks",
        }
    }

    pub fn id_column(self) -> &'static str {
        match self {
            Kind::State => "state_id",
            Kind::Task => "task_id",
        }
    }

    /// The path segment of this kind's collection (`/services/{id}/states`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::State => "states",
            Kind::Task => "tasks",
        }
    }

    pub fn type_column(self) -> &'static str {
        match self {
            Kind::State => "state_type",
            Kind::Task => "task_type",
        }
    }

    /// The per-service counter that hands out this kind's ids.
    pub fn counter_column(self) -> &'static str {
        match self {
            Kind::State => "next_state_id",
            Kind::Task => "next_task_id",
        }
    }

    pub fn entity(self) -> super::error::Entity {
        match self {
            Kind::State => super::error::Entity::State,
            Kind::Task => super::error::Entity::Task,
        }
    }
}

/// What services, states and tasks have in common.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub id: i64,
    pub type_value: Option<Value>,
    pub est_duration: Option<i64>,
    pub started_at: i64,
    pub started: Object,
    pub completed_at: Option<i64>,
    pub completed: Option<Object>,
    pub disposition: Option<Value>,
    pub disposition_desc: Option<String>,
    pub extensions: Object,
}

/// The columns [`Record::from_row`] reads, in order, after the id and type columns.
pub const RECORD_COLUMNS: &str = "est_duration, started_at, started, completed_at, completed, \
     disposition, disposition_desc, extensions";

impl Record {
    /// Reads `id, type, RECORD_COLUMNS` starting at column `at`.
    pub fn from_row(row: &Row<'_>, at: usize) -> Result<Record, StoreError> {
        Ok(Record {
            id: row.get(at)?,
            type_value: json_column(row, at + 1)?,
            est_duration: row.get(at + 2)?,
            started_at: row.get(at + 3)?,
            started: object_column(row, at + 4)?.unwrap_or_default(),
            completed_at: row.get(at + 5)?,
            completed: object_column(row, at + 6)?,
            disposition: json_column(row, at + 7)?,
            disposition_desc: row.get(at + 8)?,
            extensions: object_column(row, at + 9)?.unwrap_or_default(),
        })
    }

    pub fn is_completed(&self) -> bool {
        self.completed_at.is_some()
    }

    /// est_duration, duration, started, completed, disposition, disposition_desc.
    fn render_lifecycle(&self, out: &mut Object) {
        if let Some(est) = self.est_duration {
            out.insert("est_duration".into(), est.into());
        }
        if let Some(done) = self.completed_at {
            out.insert("duration".into(), (done - self.started_at).into());
        }
        out.insert("started".into(), Value::Object(self.started.clone()));
        if let Some(completed) = &self.completed {
            out.insert("completed".into(), Value::Object(completed.clone()));
        }
        if let Some(d) = &self.disposition {
            out.insert("disposition".into(), d.clone());
        }
        if let Some(d) = &self.disposition_desc {
            out.insert("disposition_desc".into(), Value::String(d.clone()));
        }
    }

    fn render_extensions(&self, out: &mut Object, which: &Extensions) {
        for (name, value) in &self.extensions {
            let wanted = match which {
                Extensions::None => false,
                Extensions::All => true,
                Extensions::Names(names) => names.iter().any(|n| n == name),
            };
            if wanted && !out.contains_key(name) {
                out.insert(name.clone(), value.clone());
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServiceRow {
    pub record: Record,
    pub customer_id: Option<String>,
    pub contact_key: Option<String>,
}

/// The columns [`ServiceRow::from_row`] reads.
pub fn service_columns() -> String {
    format!("service_id, service_type, {RECORD_COLUMNS}, customer_id, contact_key")
}

impl ServiceRow {
    pub fn from_row(row: &Row<'_>) -> Result<ServiceRow, StoreError> {
        Ok(ServiceRow {
            record: Record::from_row(row, 0)?,
            customer_id: row.get(10)?,
            contact_key: row.get(11)?,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ItemRow {
    pub kind: Kind,
    pub record: Record,
    /// Tasks only: the state the task belongs to.
    pub state_id: Option<i64>,
}

/// The columns [`ItemRow::from_row`] reads for `kind`.
pub fn item_columns(kind: Kind) -> String {
    let state = match kind {
        Kind::State => "NULL",
        Kind::Task => "state_id",
    };
    format!(
        "{}, {}, {RECORD_COLUMNS}, {state}",
        kind.id_column(),
        kind.type_column()
    )
}

impl ItemRow {
    pub fn from_row(kind: Kind, row: &Row<'_>) -> Result<ItemRow, StoreError> {
        Ok(ItemRow {
            kind,
            record: Record::from_row(row, 0)?,
            state_id: row.get(10)?,
        })
    }

    /// A State or Task object; `nested` adds a state's tasks (legacy shape, or the
    /// `active_tasks`/`completed_tasks` flags of state queries).
    pub fn render(&self, nested: Option<(&[ItemRow], Include)>) -> Value {
        let r = &self.record;
        let mut out = Object::new();
        out.insert(self.kind.id_column().into(), r.id.into());
        if let Some(t) = &r.type_value {
            out.insert(self.kind.type_column().into(), t.clone());
        }
        if let Some(state_id) = self.state_id {
            out.insert("state_id".into(), state_id.into());
        }
        r.render_lifecycle(&mut out);
        if let Some((tasks, include)) = nested {
            let mine = || tasks.iter().filter(|t| t.state_id == Some(r.id));
            if include.active_tasks {
                let active = mine().filter(|t| !t.record.is_completed());
                out.insert("active_tasks".into(), render_all(active, None));
            }
            if include.completed_tasks {
                let done = mine().filter(|t| t.record.is_completed());
                out.insert("completed_tasks".into(), render_all(done, None));
            }
        }
        r.render_extensions(&mut out, &Extensions::All);
        Value::Object(out)
    }
}

/// A service's states and tasks, in id order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Items {
    pub states: Vec<ItemRow>,
    pub tasks: Vec<ItemRow>,
}

/// How a Service object is rendered.
#[derive(Clone, Debug)]
pub struct Shape {
    pub include: Include,
    /// Which attached data of the service is returned.
    pub extensions: Extensions,
    /// Tasks nested inside each state object (legacy backends).
    pub nest_tasks: bool,
}

impl Shape {
    /// Everything, the way legacy backends answer.
    pub fn legacy() -> Shape {
        Shape {
            include: Include::ALL,
            extensions: Extensions::All,
            nest_tasks: true,
        }
    }
}

impl ServiceRow {
    pub fn render(&self, items: &Items, shape: &Shape) -> Map<String, Value> {
        let r = &self.record;
        let mut out = Object::new();
        out.insert("service_id".into(), r.id.into());
        if let Some(t) = &r.type_value {
            out.insert("service_type".into(), t.clone());
        }
        if let Some(c) = &self.customer_id {
            out.insert("customer_id".into(), Value::String(c.clone()));
        }
        if let Some(k) = &self.contact_key {
            out.insert("contact_key".into(), Value::String(k.clone()));
        }
        r.render_lifecycle(&mut out);
        let include = shape.include;
        let nested = shape
            .nest_tasks
            .then_some((items.tasks.as_slice(), Include::ALL));
        let states = |completed: bool| {
            let chosen = items
                .states
                .iter()
                .filter(move |s| s.record.is_completed() == completed);
            Value::Array(chosen.map(|s| s.render(nested)).collect())
        };
        let tasks = |completed: bool| {
            let chosen = items
                .tasks
                .iter()
                .filter(move |t| t.record.is_completed() == completed);
            render_all(chosen, None)
        };
        if include.active_states {
            out.insert("active_states".into(), states(false));
        }
        if include.completed_states {
            out.insert("completed_states".into(), states(true));
        }
        if include.active_tasks {
            out.insert("active_tasks".into(), tasks(false));
        }
        if include.completed_tasks {
            out.insert("completed_tasks".into(), tasks(true));
        }
        r.render_extensions(&mut out, &shape.extensions);
        out
    }
}

fn render_all<'a>(
    items: impl Iterator<Item = &'a ItemRow>,
    nested: Option<(&[ItemRow], Include)>,
) -> Value {
    Value::Array(items.map(|item| item.render(nested)).collect())
}

/// Removes the attached data a query did not ask for. Attached data is every key that is
/// not a documented field (extension names can never be documented field names).
pub fn keep_extensions(service: &mut Object, which: &Extensions) {
    match which {
        Extensions::All => {}
        Extensions::None => service.retain(|key, _| is_reserved(key)),
        Extensions::Names(names) => {
            service.retain(|key, _| is_reserved(key) || names.iter().any(|n| n == key));
        }
    }
}

/// A JSON text column (`NULL` stays `None`).
fn json_column(row: &Row<'_>, index: usize) -> Result<Option<Value>, StoreError> {
    let text: Option<String> = row.get(index)?;
    text.map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("column {index}: {e}")))
}

fn object_column(row: &Row<'_>, index: usize) -> Result<Option<Object>, StoreError> {
    match json_column(row, index)? {
        None => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(StoreError::Corrupt(format!(
            "column {index}: expected a JSON object"
        ))),
    }
}

/// JSON text for a column.
pub fn to_text(value: &Value) -> String {
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(id: i64, completed: bool) -> Record {
        Record {
            id,
            type_value: Some(json!(8)),
            est_duration: None,
            started_at: 1_000,
            started: json!({"timestamp": "1970-01-01T00:00:01.000Z"})
                .as_object()
                .cloned()
                .expect("object"),
            completed_at: completed.then_some(3_500),
            completed: completed.then(|| {
                json!({"timestamp": "1970-01-01T00:00:03.500Z"})
                    .as_object()
                    .cloned()
                    .expect("object")
            }),
            disposition: None,
            disposition_desc: None,
            extensions: json!({"seg": "gold", "n": 1})
                .as_object()
                .cloned()
                .expect("object"),
        }
    }

    fn items() -> Items {
        Items {
            states: vec![
                ItemRow {
                    kind: Kind::State,
                    record: record(1, true),
                    state_id: None,
                },
                ItemRow {
                    kind: Kind::State,
                    record: record(2, false),
                    state_id: None,
                },
            ],
            tasks: vec![ItemRow {
                kind: Kind::Task,
                record: record(1, false),
                state_id: Some(2),
            }],
        }
    }

    fn service() -> ServiceRow {
        ServiceRow {
            record: record(77, true),
            customer_id: None,
            contact_key: Some("k".into()),
        }
    }

    #[test]
    fn service_renders_requested_sections_and_extensions_last() {
        let shape = Shape {
            include: Include {
                active_states: true,
                ..Include::default()
            },
            extensions: Extensions::Names(vec!["seg".into()]),
            nest_tasks: false,
        };
        let rendered = Value::Object(service().render(&items(), &shape));
        assert_eq!(
            rendered,
            json!({
                "service_id": 77, "service_type": 8, "contact_key": "k", "duration": 2500,
                "started": {"timestamp": "1970-01-01T00:00:01.000Z"},
                "completed": {"timestamp": "1970-01-01T00:00:03.500Z"},
                "active_states": [{
                    "state_id": 2, "state_type": 8,
                    "started": {"timestamp": "1970-01-01T00:00:01.000Z"},
                    "seg": "gold", "n": 1
                }],
                "seg": "gold"
            })
        );
        let keys: Vec<&String> = rendered.as_object().expect("object").keys().collect();
        assert_eq!(keys.last().map(|k| k.as_str()), Some("seg"));
    }

    #[test]
    fn legacy_shape_nests_tasks_in_states() {
        let rendered = service().render(&items(), &Shape::legacy());
        let active = &rendered["active_states"][0];
        assert_eq!(active["active_tasks"][0]["task_id"], 1);
        assert_eq!(active["completed_tasks"], json!([]));
        assert_eq!(
            rendered["completed_states"][0].get("active_tasks"),
            Some(&json!([]))
        );
        assert_eq!(rendered["active_tasks"][0]["state_id"], 2);
        assert_eq!(rendered["n"], 1);
    }

    #[test]
    fn keep_extensions_drops_only_attached_data() {
        let mut rendered = service().render(&items(), &Shape::legacy());
        keep_extensions(&mut rendered, &Extensions::None);
        assert!(rendered.get("seg").is_none() && rendered.get("n").is_none());
        assert!(rendered.contains_key("active_states"));
        assert!(rendered.contains_key("service_id"));
    }
}
