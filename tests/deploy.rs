//! The shipped config and the deployment artefacts (`config/`, `deploy/`) stay true to
//! the code: every config validates, every CLI invocation parses and validates with the
//! real binary, ports agree across Dockerfile, compose, Kubernetes and the configs,
//! probes hit real admin paths on the admin port, the Service never exposes the admin
//! port, and every stop timeout leaves room for `server.shutdown_grace`.
//!
//! YAML is read by line matching (no YAML parser among the dependencies): the manifests
//! keep to block style, one key per line, and write command lines as one-line JSON
//! arrays (`command: ["store", "--listen", ...]`).
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use csgate::config::{parse_duration, parse_size, Config, Overrides};

/// Where the image and the unit files put the config (`COPY`, ConfigMap mount, systemd).
const CONTAINER_CONFIG: &str = "/etc/csgate/csgate.toml";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn load(text: &str, origin: &str, overrides: &Overrides) -> Config {
    Config::from_toml(text, Path::new(origin), overrides).unwrap_or_else(|e| panic!("{e}"))
}

fn port(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("'{address}' has no port"))
}

fn json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("not a one-line JSON array of strings: {text}: {e}"))
}

// ---------------------------------------------------------------------------------
// The binary.

/// Runs the built binary in an empty directory (so no `config/csgate.toml` is picked up
/// by accident) with an empty environment (so no `CSGATE_*` leaks in).
fn csgate(args: &[String]) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    Command::new(env!("CARGO_BIN_EXE_csgate"))
        .args(args)
        .current_dir(dir.path())
        .env_clear()
        .output()
        .expect("run csgate")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `argv` (without the program) with `--check` added and the container config path
/// replaced by `config`: exits 0 when clap accepts every flag and the config validates.
fn assert_invocation_valid(what: &str, argv: &[String], config: &Path) {
    let mut args = vec!["--check".to_owned()];
    args.extend(argv.iter().map(|a| {
        if a == CONTAINER_CONFIG {
            config.display().to_string()
        } else {
            a.clone()
        }
    }));
    let output = csgate(&args);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{what}: csgate {args:?} should be valid:\n{}",
        text(&output)
    );
}

/// The pieces of a csgate command line the artefacts rely on.
#[derive(Debug, Default)]
struct Invocation {
    config: Option<String>,
    overrides: Overrides,
    /// `Some(listen port)` for the `store` subcommand.
    store_listen: Option<u16>,
    top_flags: Vec<String>,
    store_flags: Vec<String>,
}

fn invocation(argv: &[String]) -> Invocation {
    let mut out = Invocation::default();
    let mut in_store = false;
    let mut store_listen = "127.0.0.1:8081".to_owned();
    let mut i = 0;
    while i < argv.len() {
        let arg = argv[i].as_str();
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        if arg == "store" {
            in_store = true;
        } else if arg.starts_with("--") {
            if in_store {
                out.store_flags.push(arg.to_owned());
            } else {
                out.top_flags.push(arg.to_owned());
            }
            match (in_store, arg) {
                (_, "--config") => out.config = Some(value),
                (false, "--listen") => out.overrides.listen = Some(value),
                (false, "--admin-listen") => out.overrides.admin_listen = Some(value),
                (false, "--upstream") => out.overrides.upstreams.push(value),
                (true, "--listen") => store_listen = value,
                _ => {}
            }
        }
        i += 1;
    }
    if in_store {
        out.store_listen = Some(port(&store_listen));
    }
    out
}

// ---------------------------------------------------------------------------------
// Minimal YAML: blocks by indentation, `key: value` scalars.

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// `line` without indentation and a leading list dash.
fn bare(line: &str) -> &str {
    let t = line.trim();
    t.strip_prefix("- ").unwrap_or(t).trim_start()
}

/// The lines nested under the first `key:` line (more indented than it).
fn block<'a>(lines: &[&'a str], key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}:");
    let start = lines
        .iter()
        .position(|l| is_content(l) && bare(l).starts_with(&prefix))
        .unwrap_or_else(|| panic!("no '{key}:' in {lines:#?}"));
    let base = indent(lines[start]) + usize::from(lines[start].trim().starts_with("- "));
    lines[start + 1..]
        .iter()
        .copied()
        .take_while(|l| !is_content(l) || indent(l) > base)
        .collect()
}

fn unquote(value: &str) -> String {
    value.trim().trim_matches('"').trim_matches('\'').to_owned()
}

/// Every `key: value` in `lines`, values unquoted.
fn scalars(lines: &[&str], key: &str) -> Vec<String> {
    let prefix = format!("{key}:");
    lines
        .iter()
        .filter(|l| is_content(l))
        .filter_map(|l| bare(l).strip_prefix(&prefix))
        .map(unquote)
        .collect()
}

fn scalar(lines: &[&str], key: &str) -> String {
    scalars(lines, key)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no '{key}:' in {lines:#?}"))
}

/// The `- item` entries of a block.
fn items(lines: &[&str]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| is_content(l))
        .filter_map(|l| l.trim().strip_prefix("- "))
        .map(unquote)
        .collect()
}

/// The `- item` entries under `key:`, or none when there is no such key.
fn optional_items(lines: &[&str], key: &str) -> Vec<String> {
    let prefix = format!("{key}:");
    if lines.iter().any(|l| is_content(l) && bare(l) == prefix) {
        items(&block(lines, key))
    } else {
        Vec::new()
    }
}

/// The direct children of a mapping block, by name.
fn children<'a>(lines: &[&'a str]) -> BTreeMap<String, Vec<&'a str>> {
    let base = lines
        .iter()
        .filter(|l| is_content(l))
        .map(|l| indent(l))
        .min()
        .unwrap_or(0);
    let mut out: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut current = None;
    for line in lines {
        if is_content(line) && indent(line) == base {
            let name = line.trim().trim_end_matches(':').to_owned();
            out.insert(name.clone(), Vec::new());
            current = Some(name);
        } else if let Some(name) = &current {
            out.get_mut(name).expect("inserted").push(line);
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// Config files.

#[test]
fn every_config_file_validates_and_passes_check() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo("config")).expect("config/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        seen += 1;
        let toml = std::fs::read_to_string(&path).expect("read");
        let config = load(&toml, &path.display().to_string(), &Overrides::default());
        let scratch = tempfile::tempdir().expect("tempdir");
        let checked = match &config.server.tls {
            None => path.clone(),
            Some(tls) => {
                // `--check` loads the TLS files. The example names production paths
                // that do not exist here: with them the check must refuse, naming the
                // key; with a real certificate in their place it must pass.
                let refused = csgate(&[
                    "--check".to_owned(),
                    "--config".to_owned(),
                    path.display().to_string(),
                ]);
                assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
                assert!(
                    text(&refused).contains("server.tls.cert"),
                    "{}",
                    text(&refused)
                );

                let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
                    .expect("certificate");
                let cert_path = scratch.path().join("cert.pem");
                let key_path = scratch.path().join("key.pem");
                std::fs::write(&cert_path, cert.cert.pem()).expect("write");
                std::fs::write(&key_path, cert.key_pair.serialize_pem()).expect("write");
                let replaced = toml
                    .replace(
                        &tls.cert.display().to_string(),
                        &cert_path.display().to_string(),
                    )
                    .replace(
                        &tls.key.display().to_string(),
                        &key_path.display().to_string(),
                    );
                let copy = scratch.path().join("config.toml");
                std::fs::write(&copy, replaced).expect("write");
                copy
            }
        };
        let output = csgate(&[
            "--check".to_owned(),
            "--config".to_owned(),
            checked.display().to_string(),
        ]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            text(&output)
        );
    }
    assert!(seen >= 2, "config/ should hold csgate.toml and an example");
}

#[test]
fn check_refuses_a_broken_file_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("[cache]\nttl = \"soon\"\n", "cache.ttl"),
        ("[server]\nlisten = \"everywhere\"\n", "server.listen"),
        ("[upstream]\nurl = [\"http://gms:8080\"]\n", "url"),
    ];
    for (i, (body, key)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("broken-{i}.toml"));
        std::fs::write(&path, body).expect("write");
        let output = csgate(&[
            "--check".to_owned(),
            "--config".to_owned(),
            path.display().to_string(),
        ]);
        assert_eq!(output.status.code(), Some(1), "{body}: {}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "{body}: {stderr} should name {key}");
    }
}

/// The keys the code accepts in a table, read from serde's "unknown field" message so
/// that a key added to `config.rs` shows up here without editing this test.
fn accepted_keys(table: Option<&str>) -> BTreeSet<String> {
    let text = match table {
        Some(t) => format!("[{t}]\n__probe__ = 1\n"),
        None => "__probe__ = 1\n".to_owned(),
    };
    let error = Config::from_toml(&text, Path::new("probe"), &Overrides::default())
        .expect_err("an unknown key is refused")
        .to_string();
    let expected = error
        .split("expected")
        .nth(1)
        .unwrap_or_else(|| panic!("no key list in: {error}"));
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// One key line of the shipped file: its table, name, whether it is commented out, and
/// the comment block directly above it.
#[derive(Debug)]
struct KeyLine {
    table: String,
    key: String,
    comments: Vec<String>,
}

fn is_key_line(line: &str) -> Option<(bool, String)> {
    let (commented, rest) = match line.strip_prefix('#') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, line),
    };
    let (key, _) = rest.split_once('=')?;
    let key = key.trim();
    let ident = key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    (!key.is_empty() && ident && !key.contains(' ')).then(|| (commented, key.to_owned()))
}

fn is_table_line(line: &str) -> Option<String> {
    let t = line.trim_start_matches('#').trim();
    (t.starts_with('[') && t.ends_with(']') && !t.contains(' ') && !t.contains('"'))
        .then(|| t.trim_matches(|c| c == '[' || c == ']').to_owned())
}

fn key_lines(text: &str) -> Vec<KeyLine> {
    let mut out = Vec::new();
    let mut table = String::new();
    let mut comments: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            comments.clear();
        } else if let Some(t) = is_table_line(line) {
            table = t;
            comments.clear();
        } else if let Some((_, key)) = is_key_line(line) {
            out.push(KeyLine {
                table: table.clone(),
                key,
                comments: std::mem::take(&mut comments),
            });
        } else if let Some(comment) = line.strip_prefix('#') {
            comments.push(comment.trim().to_owned());
        } else {
            panic!("unexpected line in config/csgate.toml: {line}");
        }
    }
    out
}

#[test]
fn shipped_config_documents_every_key_at_its_default() {
    let text = read("config/csgate.toml");
    let lines = key_lines(&text);

    // Every key the code accepts is in the file (set or commented out) in its table.
    let mut tables = accepted_keys(None);
    tables.remove("business_attributes");
    assert!(lines
        .iter()
        .any(|l| l.table == "business_attributes.service_type"));
    let mut code: Vec<(String, String)> = Vec::new();
    for table in &tables {
        for key in accepted_keys(Some(table)) {
            if key == "tls" {
                for tls_key in accepted_keys(Some("server.tls")) {
                    code.push(("server.tls".to_owned(), tls_key));
                }
            } else {
                code.push((table.clone(), key));
            }
        }
    }
    for (table, key) in &code {
        assert!(
            lines.iter().any(|l| &l.table == table && &l.key == key),
            "config/csgate.toml does not document [{table}] {key}"
        );
    }

    // Every key line has a comment directly above it, saying the default (service
    // type names are examples, not settings with defaults).
    for line in &lines {
        assert!(
            !line.comments.is_empty(),
            "[{}] {} has no comment directly above it",
            line.table,
            line.key
        );
        if !line.table.starts_with("business_attributes") {
            assert!(
                line.comments.iter().any(|c| c.contains("Default")),
                "[{}] {}: the comment above it should state the default",
                line.table,
                line.key
            );
        }
    }

    // The keys that are set carry their defaults; no upstream, so the embedded store runs.
    let shipped = load(&text, "config/csgate.toml", &Overrides::default());
    let defaults = Config::default();
    for (name, a, b) in [
        (
            "server",
            format!("{:?}", shipped.server),
            format!("{:?}", defaults.server),
        ),
        (
            "upstream",
            format!("{:?}", shipped.upstream),
            format!("{:?}", defaults.upstream),
        ),
        (
            "cache",
            format!("{:?}", shipped.cache),
            format!("{:?}", defaults.cache),
        ),
        (
            "admin",
            format!("{:?}", shipped.admin),
            format!("{:?}", defaults.admin),
        ),
        (
            "log",
            format!("{:?}", shipped.log),
            format!("{:?}", defaults.log),
        ),
        (
            "store",
            format!("{:?}", shipped.store),
            format!("{:?}", defaults.store),
        ),
    ] {
        assert_eq!(
            a, b,
            "[{name}] in config/csgate.toml differs from the defaults"
        );
    }
    assert!(shipped.upstream.urls().is_empty());
    assert!(shipped.server.tls.is_none());
    assert!(!shipped.service_types().is_empty());
}

// ---------------------------------------------------------------------------------
// Dockerfile.

/// Instructions with line continuations joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = read("deploy/Dockerfile");
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && pending.is_empty()) {
            continue;
        }
        pending.push_str(t.trim_end_matches('\\'));
        pending.push(' ');
        if !t.ends_with('\\') {
            let full = pending.trim().to_owned();
            pending.clear();
            let (word, rest) = full.split_once(' ').unwrap_or((&full, ""));
            out.push((word.to_uppercase(), rest.trim().to_owned()));
        }
    }
    out
}

fn instruction(file: &[(String, String)], name: &str) -> Vec<String> {
    file.iter()
        .filter(|(w, _)| w == name)
        .map(|(_, r)| r.clone())
        .collect()
}

/// The image's ENTRYPOINT (exec form), with the program removed.
fn entrypoint_args() -> Vec<String> {
    let file = dockerfile();
    let entry = instruction(&file, "ENTRYPOINT");
    assert_eq!(entry.len(), 1, "one ENTRYPOINT");
    let mut argv = json_list(&entry[0]);
    assert_eq!(argv.remove(0), "/usr/local/bin/csgate");
    argv
}

/// The config an invocation runs with: `--config` mapped to a repo file, plus flags.
fn effective(inv: &Invocation, files: &BTreeMap<&str, String>) -> Config {
    let path = inv.config.as_deref().expect("--config is given");
    let text = files
        .get(path)
        .unwrap_or_else(|| panic!("unknown config path {path}"));
    load(text, path, &inv.overrides)
}

fn image_files() -> BTreeMap<&'static str, String> {
    BTreeMap::from([(CONTAINER_CONFIG, read("config/csgate.toml"))])
}

#[test]
fn dockerfile_matches_the_code() {
    let file = dockerfile();
    let from = instruction(&file, "FROM");
    assert!(from[0].starts_with("rust:1-bookworm"), "{from:?}");
    let runs = instruction(&file, "RUN").join("\n");
    assert!(runs.contains("cargo build --release --locked"), "{runs}");

    let copies = instruction(&file, "COPY");
    assert!(
        copies
            .iter()
            .any(|c| c == &format!("config/csgate.toml {CONTAINER_CONFIG}")),
        "the image ships config/csgate.toml at {CONTAINER_CONFIG}: {copies:?}"
    );
    for copy in &copies {
        let source = copy.split_whitespace().next().expect("source");
        if !source.starts_with("--") && source != "." {
            assert!(repo(source).exists(), "COPY {source}: no such file");
        }
    }

    let user = instruction(&file, "USER");
    assert_eq!(user.len(), 1);
    assert!(!user[0].starts_with("root") && !user[0].starts_with("0"));
    assert_eq!(instruction(&file, "STOPSIGNAL"), ["SIGTERM"]);
    assert_eq!(
        instruction(&file, "WORKDIR").last().unwrap(),
        "/var/lib/csgate"
    );

    // The listeners the ENTRYPOINT configures are the ports the image exposes.
    let args = entrypoint_args();
    assert_invocation_valid("Dockerfile ENTRYPOINT", &args, &repo("config/csgate.toml"));
    let inv = invocation(&args);
    let config = effective(&inv, &image_files());
    assert!(config.server.listen.ip().is_unspecified());
    assert!(config.admin.listen.ip().is_unspecified());
    let exposed: BTreeSet<u16> = instruction(&file, "EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace().map(port).collect::<Vec<_>>())
        .collect();
    assert_eq!(
        exposed,
        BTreeSet::from([config.server.listen.port(), config.admin.listen.port()])
    );

    // HEALTHCHECK probes /healthz on the admin port.
    let health = instruction(&file, "HEALTHCHECK");
    assert_eq!(health.len(), 1);
    let admin_healthz = format!("http://127.0.0.1:{}/healthz", config.admin.listen.port());
    assert!(health[0].contains(&admin_healthz), "{health:?}");
}

// ---------------------------------------------------------------------------------
// compose.yaml.

#[test]
fn compose_matches_the_code() {
    let text = read("deploy/compose.yaml");
    let lines: Vec<&str> = text.lines().collect();
    let services = children(&block(&lines, "services"));
    assert!(services.len() >= 3, "{:?}", services.keys());
    let entry = entrypoint_args();
    let grace = Config::default().server.shutdown_grace;

    // Per service: the port it listens on (store) or its two listeners (gateway).
    let mut listening: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    let mut store_upstreams = Vec::new();
    let mut store_ports = BTreeMap::new();
    for (name, body) in &services {
        // Redis (the cluster profile) is not csgate.
        if scalars(body, "image")
            .first()
            .is_some_and(|image| image.starts_with("redis"))
        {
            continue;
        }
        let command = scalars(body, "command")
            .first()
            .map(|c| json_list(c))
            .unwrap_or_default();
        let argv: Vec<String> = entry.iter().chain(&command).cloned().collect();
        assert_invocation_valid(
            &format!("compose service {name}"),
            &argv,
            &repo("config/csgate.toml"),
        );
        let inv = invocation(&argv);
        let ports = match inv.store_listen {
            Some(port) => {
                store_ports.insert(name.clone(), port);
                BTreeSet::from([port])
            }
            None => {
                let config = effective(&inv, &image_files());
                store_upstreams.extend(inv.overrides.upstreams.clone());
                BTreeSet::from([config.server.listen.port(), config.admin.listen.port()])
            }
        };

        // Published and exposed ports are ports the service listens on.
        let published: Vec<u16> = optional_items(body, "ports")
            .iter()
            .map(|p| port(p))
            .collect();
        let exposed: Vec<u16> = optional_items(body, "expose")
            .iter()
            .map(|p| p.parse().expect("port"))
            .collect();
        assert!(!published.is_empty() || !exposed.is_empty(), "{name}");
        for p in published.iter().chain(&exposed) {
            assert!(
                ports.contains(p),
                "{name}: port {p} is not one of {ports:?}"
            );
        }
        // An admin port reaches the host on loopback only.
        if inv.store_listen.is_none() {
            let admin = effective(&inv, &image_files()).admin.listen.port();
            for mapping in items(&block(body, "ports")) {
                if port(&mapping) == admin {
                    assert!(mapping.starts_with("127.0.0.1:"), "{name}: {mapping}");
                }
            }
        }

        // A service-specific healthcheck probes a port it listens on.
        if body.iter().any(|l| bare(l) == "healthcheck:") {
            let test = json_list(&scalar(&block(body, "healthcheck"), "test"));
            let url = test.iter().find(|a| a.starts_with("http://")).expect("URL");
            let authority = url["http://".len()..].split('/').next().expect("host");
            assert!(ports.contains(&port(authority)), "{name}: {url}");
        }

        let stop = parse_duration(&scalar(body, "stop_grace_period")).expect("duration");
        assert!(
            stop > grace,
            "{name}: stop_grace_period {stop:?} <= {grace:?}"
        );
        listening.insert(name.clone(), ports);
    }

    // The gateway's --upstream names the store service on the store's port.
    assert!(!store_upstreams.is_empty());
    for upstream in store_upstreams {
        let url = url::Url::parse(&upstream).expect("url");
        let host = url.host_str().expect("host");
        assert_eq!(
            Some(url.port().expect("port")),
            store_ports.get(host).copied(),
            "{upstream} should name a store service and its --listen port"
        );
    }
}

// ---------------------------------------------------------------------------------
// Kubernetes.

fn k8s(name: &str) -> String {
    read(&format!("deploy/k8s/{name}"))
}

/// The `csgate.toml` embedded in the ConfigMap (a `|` block scalar), dedented.
fn configmap_toml() -> String {
    let text = k8s("configmap.yaml");
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == "csgate.toml: |")
        .expect("csgate.toml: | in the ConfigMap");
    let body: Vec<&str> = lines[start + 1..]
        .iter()
        .copied()
        .take_while(|l| l.trim().is_empty() || indent(l) > indent(lines[start]))
        .collect();
    let cut = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| indent(l))
        .min()
        .unwrap_or(0);
    body.iter()
        .map(|l| l.get(cut..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Kubernetes memory quantities: `384Mi`, `1Gi`, `500M`.
fn quantity(text: &str) -> usize {
    let k8s_to_ours = text
        .replace("Ki", "KiB")
        .replace("Mi", "MiB")
        .replace("Gi", "GiB");
    parse_size(&k8s_to_ours).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn kubernetes_manifests_match_the_code() {
    let deployment = k8s("deployment.yaml");
    let lines: Vec<&str> = deployment.lines().collect();
    assert_eq!(scalar(&lines, "kind"), "Deployment");

    // The container runs the ConfigMap's csgate.toml, mounted where --config points.
    let cm_toml = configmap_toml();
    let dir = tempfile::tempdir().expect("tempdir");
    let cm_path = dir.path().join("csgate.toml");
    std::fs::write(&cm_path, &cm_toml).expect("write");
    let command = json_list(&scalar(&lines, "command"));
    assert_eq!(command, ["/usr/local/bin/csgate"]);
    let args = json_list(&scalar(&lines, "args"));
    assert_invocation_valid("Deployment args", &args, &cm_path);
    let inv = invocation(&args);
    let config = effective(&inv, &BTreeMap::from([(CONTAINER_CONFIG, cm_toml.clone())]));
    assert!(
        !config.upstream.urls().is_empty(),
        "the cluster config names a remote upstream"
    );
    let mounts = block(&lines, "volumeMounts");
    let config_dir = Path::new(CONTAINER_CONFIG)
        .parent()
        .expect("dir")
        .display()
        .to_string();
    assert!(scalars(&mounts, "mountPath").contains(&config_dir));
    assert_eq!(scalar(&lines, "configMap").trim(), "");
    assert_eq!(
        scalar(&block(&lines, "configMap"), "name"),
        scalar(&k8s("configmap.yaml").lines().collect::<Vec<_>>(), "name")
    );

    // Container ports are the two listeners.
    let ports_block = block(&lines, "ports");
    let names = scalars(&ports_block, "name");
    let numbers: Vec<u16> = scalars(&ports_block, "containerPort")
        .iter()
        .map(|p| p.parse().expect("port"))
        .collect();
    let named: BTreeMap<String, u16> = names.into_iter().zip(numbers).collect();
    let public = config.server.listen.port();
    let admin = config.admin.listen.port();
    assert!(config.server.listen.ip().is_unspecified());
    assert!(config.admin.listen.ip().is_unspecified());
    assert_eq!(named.get("http"), Some(&public));
    assert_eq!(named.get("admin"), Some(&admin));
    assert_eq!(named.len(), 2);
    let resolve = |p: &str| -> u16 {
        p.parse()
            .ok()
            .or_else(|| named.get(p).copied())
            .unwrap_or_else(|| panic!("unknown port {p}"))
    };

    // Probes: real admin paths on the admin port.
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let b = block(&lines, probe);
        assert_eq!(scalar(&b, "path"), path, "{probe}");
        assert_eq!(resolve(&scalar(&b, "port")), admin, "{probe}");
    }

    // The preStop sleep and the drain both fit in the termination grace period.
    let pre_stop = json_list(&scalar(&block(&lines, "preStop"), "command"));
    assert_eq!(pre_stop[0], "/bin/sleep");
    let sleep: u64 = pre_stop[1].parse().expect("seconds");
    let termination: u64 = scalar(&lines, "terminationGracePeriodSeconds")
        .parse()
        .expect("seconds");
    assert!(
        Duration::from_secs(termination) > config.server.shutdown_grace + Duration::from_secs(sleep),
        "terminationGracePeriodSeconds {termination} must exceed preStop {sleep}s + shutdown_grace {:?}",
        config.server.shutdown_grace
    );

    // Non-root (the image's user), read-only root, memory above the cache bound.
    assert_eq!(scalar(&lines, "runAsNonRoot"), "true");
    assert_eq!(scalar(&lines, "readOnlyRootFilesystem"), "true");
    assert_eq!(scalar(&lines, "allowPrivilegeEscalation"), "false");
    let image_user = instruction(&dockerfile(), "USER")[0].clone();
    assert_eq!(
        image_user.split(':').next(),
        Some(scalar(&lines, "runAsUser").as_str())
    );
    assert!(scalars(&mounts, "mountPath").contains(&"/var/lib/csgate".to_owned()));
    let limits = block(&lines, "limits");
    assert!(quantity(&scalar(&limits, "memory")) > config.cache.max_bytes);
    let annotations = block(&lines, "annotations");
    assert_eq!(resolve(&scalar(&annotations, "prometheus.io/port")), admin);
    assert_eq!(scalar(&annotations, "prometheus.io/path"), "/metrics");

    // The Service: the public port only.
    let service = k8s("service.yaml");
    let service_lines: Vec<&str> = service.lines().collect();
    assert_eq!(scalar(&service_lines, "kind"), "Service");
    let service_ports = block(&service_lines, "ports");
    let targets = scalars(&service_ports, "targetPort");
    assert!(!targets.is_empty());
    for target in &targets {
        assert_eq!(resolve(target), public, "Service targetPort {target}");
    }
    for p in scalars(&service_ports, "port") {
        assert_ne!(
            resolve(&p),
            admin,
            "the Service must not expose the admin port"
        );
    }
    assert!(!service.contains(&format!(" {admin}")) && !service.contains("admin\n"));

    // NetworkPolicy, PodMonitor, HPA, PDB.
    let policy = k8s("networkpolicy.yaml");
    let policy_ports: BTreeSet<u16> = scalars(&policy.lines().collect::<Vec<_>>(), "port")
        .iter()
        .map(|p| resolve(p))
        .collect();
    assert_eq!(policy_ports, BTreeSet::from([public, admin]));
    let monitor = k8s("podmonitor.yaml");
    let monitor_lines: Vec<&str> = monitor.lines().collect();
    assert_eq!(resolve(&scalar(&monitor_lines, "port")), admin);
    assert_eq!(scalar(&monitor_lines, "path"), "/metrics");
    let hpa = k8s("hpa.yaml");
    let hpa_lines: Vec<&str> = hpa.lines().collect();
    assert_eq!(scalar(&hpa_lines, "apiVersion"), "autoscaling/v2");
    assert_eq!(scalar(&hpa_lines, "name"), "csgate");
    assert_eq!(scalar(&block(&hpa_lines, "resource"), "name"), "cpu");
    let pdb = k8s("pdb.yaml");
    assert_eq!(
        scalar(&pdb.lines().collect::<Vec<_>>(), "kind"),
        "PodDisruptionBudget"
    );

    // kustomization.yaml applies every manifest except the CRD-dependent PodMonitor.
    let kustomization = k8s("kustomization.yaml");
    let listed: BTreeSet<String> = items(&block(
        &kustomization.lines().collect::<Vec<_>>(),
        "resources",
    ))
    .into_iter()
    .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(repo("deploy/k8s"))
        .expect("deploy/k8s")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml" && n != "podmonitor.yaml")
        .collect();
    assert_eq!(listed, on_disk);
}

/// The probe and scrape paths the artefacts use answer on a running gateway's admin
/// listener (200, not 404).
#[tokio::test]
async fn probe_paths_are_real_admin_paths() {
    let upstream = common::FakeUpstream::start(common::Reply::json(200, "[]")).await;
    let gw = common::start_gateway("", &[upstream.url()]).await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let answer = common::get(&gw.admin_url(path)).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
    }
    let public = common::get(&gw.url("/healthz")).await;
    assert_eq!(public.status, 404, "admin paths are not on the public port");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------
// systemd.

#[test]
fn systemd_unit_matches_the_code() {
    let text = read("deploy/systemd/csgate.service");
    let mut unit: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with('[') || line.is_empty() {
            continue;
        }
        let (key, value) = line.split_once('=').expect("key=value");
        unit.entry(key.to_owned())
            .or_default()
            .push(value.to_owned());
    }
    let one = |key: &str| -> String {
        let values = unit.get(key).unwrap_or_else(|| panic!("no {key}="));
        values[0].clone()
    };

    let files = image_files();
    for key in ["ExecStart", "ExecStartPre"] {
        let mut argv: Vec<String> = one(key).split_whitespace().map(str::to_owned).collect();
        assert_eq!(argv.remove(0), "/usr/local/bin/csgate", "{key}");
        argv.retain(|a| a != "--check");
        assert_invocation_valid(key, &argv, &repo("config/csgate.toml"));
        effective(&invocation(&argv), &files);
    }
    assert!(one("ExecStartPre").contains("--check"));
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("KillSignal"), "SIGTERM");
    let stop = parse_duration(&one("TimeoutStopSec")).expect("duration");
    let config = effective(
        &invocation(&["--config".to_owned(), CONTAINER_CONFIG.to_owned()]),
        &files,
    );
    assert!(
        stop > config.server.shutdown_grace,
        "TimeoutStopSec {stop:?}"
    );
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert!(unit.contains_key("DynamicUser") || unit.contains_key("User"));

    // The embedded store's relative db path lands in the state directory.
    let state = format!("/var/lib/{}", one("StateDirectory"));
    assert_eq!(one("WorkingDirectory"), state);
    assert!(config.store.db.is_relative());
}

// ---------------------------------------------------------------------------------
// Every flag any artefact passes exists in `--help`.

#[test]
fn every_flag_the_artefacts_use_exists() {
    let mut argvs: Vec<Vec<String>> = vec![entrypoint_args()];
    let compose = read("deploy/compose.yaml");
    for command in scalars(&compose.lines().collect::<Vec<_>>(), "command") {
        // Redis's own command line (the cluster profile) is not csgate's.
        if json_list(&command)
            .first()
            .is_some_and(|c| c == "redis-server")
        {
            continue;
        }
        argvs.push(
            entrypoint_args()
                .into_iter()
                .chain(json_list(&command))
                .collect(),
        );
    }
    let deployment = k8s("deployment.yaml");
    argvs.push(json_list(&scalar(
        &deployment.lines().collect::<Vec<_>>(),
        "args",
    )));
    let unit = read("deploy/systemd/csgate.service");
    for line in unit.lines().filter(|l| l.starts_with("ExecStart")) {
        let (_, command) = line.split_once('=').expect("=");
        argvs.push(
            command
                .split_whitespace()
                .skip(1)
                .map(str::to_owned)
                .collect(),
        );
    }

    let top_help = text(&csgate(&["--help".to_owned()]));
    let store_help = text(&csgate(&["store".to_owned(), "--help".to_owned()]));
    let mut used = 0;
    for argv in &argvs {
        let inv = invocation(argv);
        for flag in &inv.top_flags {
            assert!(
                top_help.contains(&format!("{flag} ")),
                "csgate {flag} does not exist"
            );
            used += 1;
        }
        for flag in &inv.store_flags {
            assert!(
                store_help.contains(&format!("{flag} ")),
                "csgate store {flag} does not exist"
            );
            used += 1;
        }
    }
    assert!(used >= 8, "the artefacts should pass flags: {argvs:?}");
}
