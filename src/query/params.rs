//! Query-string and path-parameter validation and normalisation (section 2.1 of the
//! gateway contract).
//!
//! [`parse_service_query`] turns the raw query string of a Query Services route into a
//! [`ServiceQuery`]; [`ServiceQuery::upstream_query`] writes it back in one canonical
//! form, so equal queries are sent (and cached) identically. Parsing the canonical form
//! gives the same `ServiceQuery` again.
//!
//! Every refusal is a [`ParamError`] whose `Display` is the client-facing message.

use std::borrow::Cow;
use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::Value;

mod encoding;

pub(crate) use encoding::shown;
use encoding::{decode, encode, pairs, split_pair};
pub use encoding::{
    decode_path_param, encode_path_param, push_encoded_path_param, EncodingProblem,
};

use super::date::{self, DateError};
use super::{
    ExtensionFilter, Extensions, Include, Lifecycle, Section, ServiceQuery, ServiceType, TypeMap,
    Window,
};

const STARTED_FROM: &str = "started_from";
const STARTED_TO: &str = "started_to";
const COMPLETED_FROM: &str = "completed_from";
const COMPLETED_TO: &str = "completed_to";
/// In the order they are written upstream.
const DATE_PARAMS: [&str; 4] = [STARTED_FROM, STARTED_TO, COMPLETED_FROM, COMPLETED_TO];
/// The flag names, in `Section::ALL` order (for the tests' tables).
#[cfg(test)]
const FLAG_PARAMS: [&str; 4] = [
    Section::ActiveStates.name(),
    Section::CompletedStates.name(),
    Section::ActiveTasks.name(),
    Section::CompletedTasks.name(),
];
const SERVICE_TYPES: &str = "service_types";
const EXTENSIONS: &str = "extensions";

/// Top-level Service fields: filtering on them is not an attached-data filter. The four
/// include flags are parsed as flags before this list is consulted.
const RESERVED_FIELDS: [&str; 14] = super::SERVICE_FIELDS;

/// Why a parameter was refused. Display is the whole client-facing message: it names the
/// parameter and quotes the bad value, e.g.
///   parameter 'started_from': '2023-02-30T00:00:00Z' is not a valid date-time: no such date or time
///
/// Quoted client text is cut to 200 characters (then `…`) and control characters in it
/// are escaped, so a message is always short and printable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// A parameter name that is not valid percent-encoded UTF-8 (quoted as written).
    #[error("parameter name '{key}' {problem}")]
    KeyEncoding {
        key: String,
        problem: EncodingProblem,
    },
    /// A value (query or path) that is not valid percent-encoded UTF-8 (quoted as written).
    #[error("parameter '{name}': '{value}' {problem}")]
    Encoding {
        name: String,
        value: String,
        problem: EncodingProblem,
    },
    /// A parameter that may appear once appeared again.
    #[error("parameter '{name}' is given more than once")]
    Repeated { name: String },
    #[error("parameter '{name}': '{value}' is not a valid date-time: {reason}")]
    InvalidDate {
        name: String,
        value: String,
        reason: DateError,
    },
    /// `*_from` later than `*_to`.
    #[error("parameter '{from_name}': '{from}' is later than parameter '{to_name}': '{to}'")]
    InvertedWindow {
        from_name: String,
        from: String,
        to_name: String,
        to: String,
    },
    /// `completed_from`/`completed_to` on an `/active` route.
    #[error(
        "parameter '{name}' only applies to service history and is not accepted on an /active route"
    )]
    HistoryOnly { name: String },
    #[error("parameter 'service_types': '{value}' has an empty item")]
    EmptyServiceType { value: String },
    #[error("parameter 'service_types': '{item}' is not a configured service type name")]
    UnknownServiceType { item: String },
    #[error("parameter '{name}': '{value}' is not a boolean (true, false, 1 or 0)")]
    InvalidFlag { name: String, value: String },
    #[error(
        "parameter '{name}': '{value}' cannot be used as an extension filter: '{name}' is a Service field"
    )]
    ReservedFilter { name: String, value: String },
    #[error("parameter '': an empty parameter name is not allowed (value '{value}')")]
    EmptyKey { value: String },
    #[error("parameter '{name}': too many extension filters (at most {max} are allowed)")]
    TooManyFilters { name: String, max: usize },
    /// An empty path parameter.
    #[error("parameter '{name}' is empty")]
    EmptyPath { name: String },
    /// A path parameter over the configured byte limit (decoded length).
    #[error("parameter '{name}': '{value}' is {len} bytes long; at most {max} are allowed")]
    TooLong {
        name: String,
        value: String,
        len: usize,
        max: usize,
    },
    /// A path parameter that decodes to a control character (Unicode Cc).
    #[error("parameter '{name}': '{value}' contains a control character")]
    ControlChar { name: String, value: String },
}

/// Limits that come from config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest `contact_key`/`customer_id`, in decoded bytes.
    pub max_key_bytes: usize,
    /// Most extension filters in one query.
    pub max_filters: usize,
}

impl Default for Limits {
    /// The contract's values: 256-byte keys, 32 filters.
    fn default() -> Limits {
        Limits {
            max_key_bytes: 256,
            max_filters: 32,
        }
    }
}

/// Validate + normalise the raw (still percent-encoded) query string of one of the six
/// Query Services routes. The first problem found, in query order, is reported; the
/// `from <= to` checks come after every pair has been read.
pub fn parse_service_query(
    raw_query: Option<&str>,
    lifecycle: Lifecycle,
    anonymous: bool,
    types: &TypeMap,
    limits: &Limits,
) -> Result<ServiceQuery, ParamError> {
    let mut q = QueryBuilder {
        lifecycle,
        types,
        limits,
        dates: Default::default(),
        service_types: BTreeSet::new(),
        include: Include::default(),
        flags_seen: [false; 4],
        extensions_all: false,
        extension_names: BTreeSet::new(),
        filters: Vec::new(),
    };
    for (raw_key, raw_value) in pairs(raw_query.unwrap_or("")) {
        let key = decode(raw_key, true).map_err(|problem| ParamError::KeyEncoding {
            key: shown(raw_key),
            problem,
        })?;
        let value = raw_value
            .map(|raw| {
                decode(raw, true).map_err(|problem| ParamError::Encoding {
                    name: shown(&key),
                    value: shown(raw),
                    problem,
                })
            })
            .transpose()?;
        q.add(key, value)?;
    }
    q.finish(anonymous)
}

impl ServiceQuery {
    /// The normalised query string to send upstream (no leading '?'; "" when nothing).
    pub fn upstream_query(&self) -> String {
        let mut out: Vec<String> = Vec::new();
        let bounds = [
            self.started.from,
            self.started.to,
            self.completed.from,
            self.completed.to,
        ];
        for (name, bound) in DATE_PARAMS.iter().zip(bounds) {
            if let Some(t) = bound {
                out.push(format!("{name}={}", date::format_canonical(t)));
            }
        }
        if !self.service_types.is_empty() {
            let items: Vec<String> = self
                .service_types
                .iter()
                .map(|t| match t {
                    ServiceType::Id(id) => id.to_string(),
                    ServiceType::Name(name) => encode(name),
                })
                .collect();
            out.push(format!("{SERVICE_TYPES}={}", items.join(",")));
        }
        for section in Section::ALL {
            if self.include.get(section) {
                out.push(format!("{}=true", section.name()));
            }
        }
        match &self.extensions {
            Extensions::None => {}
            Extensions::All => out.push(format!("{EXTENSIONS}=*")),
            Extensions::Names(names) if names.is_empty() => {}
            Extensions::Names(names) => {
                let items: Vec<String> = names.iter().map(|n| encode(n)).collect();
                out.push(format!("{EXTENSIONS}={}", items.join(",")));
            }
        }
        for filter in &self.filters {
            out.push(format!("{}={}", encode(&filter.key), encode(&filter.raw)));
        }
        out.join("&")
    }
}

/// For `GET /services/{service_id}`: validate and normalise only the four include flags;
/// every other pair is forwarded as the client wrote it (raw, in order).
/// Returns the flags and the normalised query string to send upstream: the true flags
/// first (canonical order), then the other pairs.
pub fn parse_include_flags(raw_query: Option<&str>) -> Result<(Include, String), ParamError> {
    let mut include = Include::default();
    let mut seen = [false; 4];
    let mut others: Vec<&str> = Vec::new();
    for piece in raw_query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = split_pair(piece);
        // A key that does not decode cannot be a flag name; it is not ours to judge.
        let flag = decode(raw_key, true)
            .ok()
            .and_then(|key| Section::from_name(&key));
        match flag {
            Some(section) => {
                let value = raw_value
                    .map(|raw| {
                        decode(raw, true).map_err(|problem| ParamError::Encoding {
                            name: section.name().to_owned(),
                            value: shown(raw),
                            problem,
                        })
                    })
                    .transpose()?;
                set_flag(&mut include, &mut seen, section, value.as_deref())?;
            }
            None => others.push(piece),
        }
    }
    let query = Section::ALL
        .into_iter()
        .filter(|section| include.get(*section))
        .map(|section| format!("{}=true", section.name()))
        .chain(others.into_iter().map(str::to_owned))
        .collect::<Vec<_>>()
        .join("&");
    Ok((include, query))
}

/// The state of one query while its pairs are read.
struct QueryBuilder<'a> {
    lifecycle: Lifecycle,
    types: &'a TypeMap,
    limits: &'a Limits,
    /// Indexed like `DATE_PARAMS`: the instant and the decoded text the client wrote.
    dates: [Option<(DateTime<Utc>, String)>; 4],
    service_types: BTreeSet<ServiceType>,
    include: Include,
    flags_seen: [bool; 4],
    extensions_all: bool,
    extension_names: BTreeSet<String>,
    filters: Vec<ExtensionFilter>,
}

impl QueryBuilder<'_> {
    /// One decoded pair; `value` is `None` for a bare key.
    fn add(&mut self, key: Cow<'_, str>, value: Option<Cow<'_, str>>) -> Result<(), ParamError> {
        if let Some(i) = DATE_PARAMS.iter().position(|p| *p == key) {
            return self.add_date(i, value);
        }
        if let Some(section) = Section::from_name(&key) {
            return set_flag(
                &mut self.include,
                &mut self.flags_seen,
                section,
                value.as_deref(),
            );
        }
        match &*key {
            SERVICE_TYPES => self.add_service_types(value.as_deref().unwrap_or("")),
            EXTENSIONS => {
                self.add_extension_names(value.as_deref().unwrap_or(""));
                Ok(())
            }
            _ => self.add_filter(
                key.into_owned(),
                value.map(Cow::into_owned).unwrap_or_default(),
            ),
        }
    }

    fn add_date(&mut self, i: usize, value: Option<Cow<'_, str>>) -> Result<(), ParamError> {
        let name = DATE_PARAMS[i];
        if self.lifecycle == Lifecycle::Active && name.starts_with("completed_") {
            return Err(ParamError::HistoryOnly {
                name: name.to_owned(),
            });
        }
        if self.dates[i].is_some() {
            return Err(ParamError::Repeated {
                name: name.to_owned(),
            });
        }
        let text = value.map(Cow::into_owned).unwrap_or_default();
        let instant = date::parse_param(&text).map_err(|reason| ParamError::InvalidDate {
            name: name.to_owned(),
            value: shown(&text),
            reason,
        })?;
        self.dates[i] = Some((instant, text));
        Ok(())
    }

    fn add_service_types(&mut self, value: &str) -> Result<(), ParamError> {
        for item in value.split(',') {
            let item = item.trim_matches(|c: char| c.is_ascii_whitespace());
            if item.is_empty() {
                return Err(ParamError::EmptyServiceType {
                    value: shown(value),
                });
            }
            let service_type = match parse_id(item) {
                Some(id) => ServiceType::Id(id),
                None if !self.types.is_empty() && self.types.id_of(item).is_none() => {
                    return Err(ParamError::UnknownServiceType { item: shown(item) });
                }
                None => ServiceType::Name(item.to_owned()),
            };
            self.service_types.insert(service_type);
        }
        Ok(())
    }

    /// Names as the upstream reads them: comma-separated, empty items ignored, `*` is all.
    fn add_extension_names(&mut self, list: &str) {
        for name in list.split(',').filter(|n| !n.is_empty()) {
            if name == "*" {
                self.extensions_all = true;
            } else {
                self.extension_names.insert(name.to_owned());
            }
        }
    }

    fn add_filter(&mut self, key: String, raw: String) -> Result<(), ParamError> {
        if key.is_empty() {
            return Err(ParamError::EmptyKey { value: shown(&raw) });
        }
        if RESERVED_FIELDS.contains(&key.as_str()) {
            return Err(ParamError::ReservedFilter {
                name: key,
                value: shown(&raw),
            });
        }
        if self.filters.len() >= self.limits.max_filters {
            return Err(ParamError::TooManyFilters {
                name: shown(&key),
                max: self.limits.max_filters,
            });
        }
        // The upstream must return the filtered extension, and it reads `extensions` as a
        // comma list: widen with the key exactly as the upstream will read it.
        self.add_extension_names(&key);
        let value =
            serde_json::from_str::<Value>(&raw).unwrap_or_else(|_| Value::String(raw.clone()));
        self.filters.push(ExtensionFilter { key, value, raw });
        Ok(())
    }

    fn finish(self, anonymous: bool) -> Result<ServiceQuery, ParamError> {
        let [started_from, started_to, completed_from, completed_to] = self.dates;
        let started = window(STARTED_FROM, started_from, STARTED_TO, started_to)?;
        let completed = window(COMPLETED_FROM, completed_from, COMPLETED_TO, completed_to)?;
        let extensions = if self.extensions_all {
            Extensions::All
        } else if self.extension_names.is_empty() {
            Extensions::None
        } else {
            Extensions::Names(self.extension_names.into_iter().collect())
        };
        Ok(ServiceQuery {
            lifecycle: self.lifecycle,
            anonymous,
            started,
            completed,
            service_types: self.service_types.into_iter().collect(),
            include: self.include,
            extensions,
            filters: self.filters,
        })
    }
}

/// `from == to` is a valid (empty) window; `from > to` is a client mistake.
fn window(
    from_name: &str,
    from: Option<(DateTime<Utc>, String)>,
    to_name: &str,
    to: Option<(DateTime<Utc>, String)>,
) -> Result<Window, ParamError> {
    if let (Some((f, f_text)), Some((t, t_text))) = (&from, &to) {
        if f > t {
            return Err(ParamError::InvertedWindow {
                from_name: from_name.to_owned(),
                from: shown(f_text),
                to_name: to_name.to_owned(),
                to: shown(t_text),
            });
        }
    }
    Ok(Window {
        from: from.map(|(t, _)| t),
        to: to.map(|(t, _)| t),
    })
}

/// Sets a section's include flag from its decoded value (`None`: a bare key, meaning
/// true). `seen` is indexed by the section's place in `Section::ALL`.
fn set_flag(
    include: &mut Include,
    seen: &mut [bool; 4],
    section: Section,
    value: Option<&str>,
) -> Result<(), ParamError> {
    let name = section.name();
    let i = section as usize;
    if seen[i] {
        return Err(ParamError::Repeated {
            name: name.to_owned(),
        });
    }
    seen[i] = true;
    let on = match value {
        None => true,
        Some(v) if v == "1" || v.eq_ignore_ascii_case("true") => true,
        Some(v) if v == "0" || v.eq_ignore_ascii_case("false") => false,
        Some(v) => {
            return Err(ParamError::InvalidFlag {
                name: name.to_owned(),
                value: shown(v),
            })
        }
    };
    include.set(section, on);
    Ok(())
}

/// An optional `-` then ASCII digits, within `i64`. (`str::parse` alone would also take `+7`.)
fn parse_id(item: &str) -> Option<i64> {
    let digits = item.strip_prefix('-').unwrap_or(item);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    item.parse().ok()
}

#[cfg(test)]
mod tests;
