//! The configuration reference, held three ways:
//!
//! - `docs/configuration.md` lists every key of `config/csgate.toml` (the keys it sets
//!   and the ones it shows commented out) and no other, with the same default: the value
//!   the file sets, or "unset" prose for a key the file leaves commented;
//! - each key `config/csgate.toml` sets says `Default: <that value>` in its comment;
//! - `config/csgate.toml` and the defaults written in the docs are the code's defaults:
//!   `Config::from_toml` of either gives the same configuration as of an empty file.
//!
//! So a key or a default that changes in the docs, the shipped file or the code alone
//! fails here.

use std::collections::BTreeMap;
use std::path::Path;

use csgate::config::{Config, Overrides};

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What a reference says of a key's default.
#[derive(Debug, Clone, PartialEq)]
enum Stated {
    /// The value as written in TOML.
    Value(toml::Value),
    /// No value unless one is given (the file shows the key commented out).
    Unset,
}

/// Parses one TOML value as written after `key = `.
fn toml_value(text: &str) -> Option<toml::Value> {
    let table: toml::Table = toml::from_str(&format!("v = {text}")).ok()?;
    table.get("v").cloned()
}

// --- docs/configuration.md -----------------------------------------------------------

/// The rows of every `| key | default | meaning |` table: the key (dotted) and its
/// default, a TOML literal in code font or prose starting with "unset".
fn docs_keys(markdown: &str) -> BTreeMap<String, Stated> {
    let mut keys = BTreeMap::new();
    let mut in_table = false;
    for line in markdown.lines() {
        let line = line.trim();
        if line == "| key | default | meaning |" {
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        if !in_table || line.starts_with("|---") {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        assert!(
            cells.len() >= 3,
            "a key row with {} cells: {line}",
            cells.len()
        );
        let key = cells[0]
            .strip_prefix('`')
            .and_then(|k| k.strip_suffix('`'))
            .unwrap_or_else(|| panic!("the key is not in code font: {line}"));
        let default = match cells[1].strip_prefix('`').and_then(|d| d.strip_suffix('`')) {
            Some(literal) => Stated::Value(
                toml_value(literal)
                    .unwrap_or_else(|| panic!("{key}: the default {literal} is not a TOML value")),
            ),
            None if cells[1].starts_with("unset") => Stated::Unset,
            None => panic!(
                "{key}: the default is neither a TOML literal in code font nor \"unset ...\": {}",
                cells[1]
            ),
        };
        assert!(
            keys.insert(key.to_owned(), default).is_none(),
            "{key} is listed twice"
        );
    }
    keys
}

// --- config/csgate.toml --------------------------------------------------------------

/// Every key the file sets, flattened to dotted names.
fn set_keys(table: &toml::Table, prefix: &str, out: &mut BTreeMap<String, Stated>) {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value {
            toml::Value::Table(inner) => set_keys(inner, &key, out),
            value => {
                out.insert(key, Stated::Value(value.clone()));
            }
        }
    }
}

/// `# [name]` or `# [[name]]`: a section the file shows commented out.
fn commented_header(line: &str) -> Option<&str> {
    let inner = line.strip_prefix("# [")?.strip_suffix(']')?;
    let inner = inner.trim_start_matches('[').trim_end_matches(']');
    inner
        .chars()
        .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
        .then_some(inner)
}

/// `# name = example`: a key the file shows commented out (lower-case names only; the
/// business-attribute examples are names of the user's own).
fn commented_key(line: &str) -> Option<&str> {
    let (name, _) = line.strip_prefix("# ")?.split_once(" = ")?;
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')).then_some(name)
}

/// The keys the file leaves commented out: `# key = example` lines, under the section
/// in force (a real or a commented header); a commented section with no such line is
/// itself the key (a map of the user's own names).
fn commented_keys(text: &str) -> BTreeMap<String, Stated> {
    let mut keys = BTreeMap::new();
    let mut section = String::new();
    let mut open_commented: Option<(String, bool)> = None;
    let close = |open: &mut Option<(String, bool)>, keys: &mut BTreeMap<String, Stated>| {
        if let Some((name, false)) = open.take() {
            keys.insert(name, Stated::Unset);
        }
    };
    for line in text.lines() {
        if let Some(name) = line
            .strip_prefix('[')
            .map(|l| l.trim_start_matches('[').trim_end_matches(']'))
        {
            close(&mut open_commented, &mut keys);
            section = name.to_owned();
        } else if let Some(name) = commented_header(line) {
            close(&mut open_commented, &mut keys);
            section = name.to_owned();
            open_commented = Some((name.to_owned(), false));
        } else if let Some(name) = commented_key(line) {
            if let Some((_, seen)) = &mut open_commented {
                *seen = true;
            }
            keys.insert(format!("{section}.{name}"), Stated::Unset);
        }
    }
    close(&mut open_commented, &mut keys);
    keys
}

/// Every key of the shipped file: the ones it sets with their values, the commented
/// ones as unset.
fn file_keys(text: &str) -> BTreeMap<String, Stated> {
    let table: toml::Table = toml::from_str(text).expect("config/csgate.toml is TOML");
    let mut keys = BTreeMap::new();
    set_keys(&table, "", &mut keys);
    for (key, default) in commented_keys(text) {
        assert!(
            keys.insert(key.clone(), default).is_none(),
            "{key} is both set and commented out in config/csgate.toml"
        );
    }
    keys
}

fn differences(
    left_name: &str,
    left: &BTreeMap<String, Stated>,
    right_name: &str,
    right: &BTreeMap<String, Stated>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (key, l) in left {
        match right.get(key) {
            None => out.push(format!("{key}: in {left_name}, missing from {right_name}")),
            Some(r) if r != l => out.push(format!(
                "{key}: {left_name} says {l:?}, {right_name} says {r:?}"
            )),
            Some(_) => {}
        }
    }
    for key in right.keys().filter(|k| !left.contains_key(*k)) {
        out.push(format!("{key}: in {right_name}, missing from {left_name}"));
    }
    out
}

#[test]
fn the_reference_lists_every_key_of_the_shipped_file_with_its_default() {
    let docs = docs_keys(&repo_file("docs/configuration.md"));
    let file = file_keys(&repo_file("config/csgate.toml"));
    assert!(
        file.len() > 80,
        "only {} keys found in config/csgate.toml",
        file.len()
    );
    let diff = differences("docs/configuration.md", &docs, "config/csgate.toml", &file);
    assert!(
        diff.is_empty(),
        "the reference and the shipped file disagree:\n{}",
        diff.join("\n")
    );
}

/// Each key the file sets carries `Default: <the value as written>` in the comment
/// block just above it, so the comment and the value cannot drift apart.
#[test]
fn every_set_key_of_the_shipped_file_states_its_value_as_the_default() {
    let text = repo_file("config/csgate.toml");
    let mut comment = String::new();
    let mut wrong = Vec::new();
    for line in text.lines() {
        if let Some(c) = line.strip_prefix('#') {
            comment.push_str(c.trim());
            comment.push(' ');
            continue;
        }
        if let Some((key, value)) = line.split_once(" = ").filter(|_| !line.starts_with('[')) {
            let wanted = format!("Default: {}", value.trim());
            if !comment.contains(&wanted) {
                wrong.push(format!("{key}: its comment does not say `{wanted}`"));
            }
        }
        comment.clear();
    }
    assert!(
        wrong.is_empty(),
        "config/csgate.toml:\n{}",
        wrong.join("\n")
    );
}

// --- the code's defaults -------------------------------------------------------------

fn load(text: &str, origin: &str) -> String {
    let config = Config::from_toml(text, Path::new(origin), &Overrides::default())
        .unwrap_or_else(|e| panic!("{origin}: {e}"));
    format!("{config:#?}")
}

/// Lines that differ between two Debug renderings, for the failure message.
fn changed_lines(left: &str, right: &str) -> String {
    left.lines()
        .zip(right.lines())
        .filter(|(l, r)| l != r)
        .take(20)
        .map(|(l, r)| format!("  defaults: {}\n  file:     {}", l.trim(), r.trim()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_shipped_file_sets_exactly_the_code_defaults() {
    let defaults = load("", "<defaults>");
    let file = load(&repo_file("config/csgate.toml"), "config/csgate.toml");
    assert!(
        defaults == file,
        "config/csgate.toml differs from the built-in defaults:\n{}",
        changed_lines(&defaults, &file)
    );
}

/// The defaults the reference writes, assembled into a file, load as the built-in
/// defaults too (so the reference is checked against the code directly).
#[test]
fn the_defaults_in_the_reference_are_the_code_defaults() {
    let docs = docs_keys(&repo_file("docs/configuration.md"));
    let mut root = toml::Table::new();
    for (key, default) in &docs {
        let Stated::Value(value) = default else {
            continue;
        };
        let mut table = &mut root;
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().expect("a key");
        for part in parts {
            table = table
                .entry(part)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .expect("a table");
        }
        table.insert(last.to_owned(), value.clone());
    }
    let text = toml::to_string(&root).expect("render");
    let defaults = load("", "<defaults>");
    let documented = load(&text, "docs/configuration.md");
    assert!(
        defaults == documented,
        "the defaults of docs/configuration.md differ from the built-in ones:\n{}",
        changed_lines(&defaults, &documented)
    );
}

// --- the test's own pieces -----------------------------------------------------------

#[test]
fn commented_sections_and_keys_are_found() {
    let text = "[a]\nx = 1\n# y = 2\n# [a.tls]\n# cert = \"c\"\n# [b.map]\n# Name = 1\n# [upstream.tls]); prose\n[c]\n";
    let keys = commented_keys(text);
    assert_eq!(
        keys.keys().cloned().collect::<Vec<_>>(),
        ["a.tls.cert", "a.y", "b.map"]
    );
    let docs = docs_keys(
        "| key | default | meaning |\n|---|---|---|\n| `a.x` | `1` | one |\n| `a.y` | unset: none | two |\n\n| `not.a.key` | x |\n",
    );
    assert_eq!(
        docs.get("a.x"),
        Some(&Stated::Value(toml::Value::Integer(1)))
    );
    assert_eq!(docs.get("a.y"), Some(&Stated::Unset));
    assert_eq!(docs.len(), 2);
}
