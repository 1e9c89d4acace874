//! The shipped config and the deployment artefacts (`config/`, `deploy/`) stay true to
//! the code: every config validates, every CLI invocation parses and validates with the
//! real binary, ports agree across Dockerfile, compose, Kubernetes and the configs,
//! probes hit real admin paths on the admin port, the Service never exposes the admin
//! port, and every stop timeout leaves room for `server.shutdown_grace`.
//!
//! YAML is read with a real parser (`serde_norway`) and navigated by JSON pointer; the
//! shipped TOML with `toml_edit`, which keeps the comments this test reads.
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
    Config::from_toml(&with_secrets(text), Path::new(origin), overrides)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The admin token files the shipped examples name, longest first. They exist only
/// where csgate is deployed (a Kubernetes Secret, a file the operator writes).
const EXAMPLE_SECRETS: [&str; 2] = ["/etc/csgate-admin/token", "/etc/csgate/admin-token"];

/// `text` with the example secrets' paths pointing at a real token file.
fn with_secrets(text: &str) -> String {
    // Written once: tests run in parallel, and a rewrite would be read half done.
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("admin-token"), "an-example-admin-token\n")
            .expect("write token");
        dir
    });
    let token = dir.path().join("admin-token");
    let mut out = text.to_owned();
    for secret in EXAMPLE_SECRETS {
        out = out.replace(
            &format!("{secret:?}"),
            &format!("{:?}", token.display().to_string()),
        );
    }
    out
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
// YAML, read with a real parser (serde_norway) into a JSON value tree.

/// A parsed YAML document; navigated with JSON pointers (`/spec/template/spec`).
type Yaml = serde_json::Value;

fn yaml(path: &str) -> Yaml {
    serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The value at `pointer`, which must exist.
fn at<'a>(doc: &'a Yaml, pointer: &str) -> &'a Yaml {
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in {doc:#}"))
}

/// The value under `key` (a key that may contain `/`, like `prometheus.io/port`).
fn field<'a>(mapping: &'a Yaml, key: &str) -> &'a Yaml {
    mapping
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in {mapping:#}"))
}

/// A scalar as written: strings as they are, numbers and booleans in their usual form.
fn scalar(value: &Yaml) -> String {
    match value {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:#}"),
    }
}

/// The scalars of a sequence.
fn scalars(value: &Yaml) -> Vec<String> {
    sequence(value).iter().map(scalar).collect()
}

fn sequence(value: &Yaml) -> &Vec<Yaml> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a sequence: {value:#}"))
}

/// The scalars of the sequence under `key`, or none when there is no such key.
fn optional_scalars(mapping: &Yaml, key: &str) -> Vec<String> {
    mapping.get(key).map(scalars).unwrap_or_default()
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
        // The example secrets exist only where deployed: `--check` reads a copy that
        // names a real token file (a missing one is refused, see below).
        let toml = with_secrets(&toml);
        let checked = match &config.server.tls {
            None => {
                let copy = scratch.path().join("config.toml");
                std::fs::write(&copy, &toml).expect("write");
                copy
            }
            Some(tls) => {
                // `--check` loads the TLS files. The example names production paths
                // that do not exist here: with them the check must refuse, naming the
                // key; with a real certificate in their place it must pass.
                let with_secrets = scratch.path().join("with-secrets.toml");
                std::fs::write(&with_secrets, &toml).expect("write");
                let refused = csgate(&[
                    "--check".to_owned(),
                    "--config".to_owned(),
                    with_secrets.display().to_string(),
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
                std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write");
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

/// One key of the shipped file: its table, name, and the comment block directly above
/// it.
#[derive(Debug)]
struct KeyLine {
    table: String,
    key: String,
    comments: Vec<String>,
}

/// The shipped file with its commented-out examples (`# key = value`, `# [table]`)
/// uncommented: a comment line is an example when it parses as TOML on its own.
fn uncommented(text: &str) -> String {
    let is_example =
        |rest: &str| !rest.trim().is_empty() && rest.parse::<toml_edit::DocumentMut>().is_ok();
    text.lines()
        .map(|line| match line.strip_prefix('#').map(str::trim_start) {
            Some(rest) if is_example(rest) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every key of the file, examples included, read by a TOML parser that keeps comments
/// (toml_edit): the comments directly above a key are the end of its prefix, after the
/// last blank line.
fn key_lines(text: &str) -> Vec<KeyLine> {
    let document: toml_edit::DocumentMut = uncommented(text)
        .parse()
        .unwrap_or_else(|e| panic!("config/csgate.toml, examples uncommented: {e}"));
    let mut out = Vec::new();
    collect_keys(document.as_table(), "", &mut out);
    out
}

fn collect_keys(table: &toml_edit::Table, path: &str, out: &mut Vec<KeyLine>) {
    for (key, item) in table {
        let name = if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        };
        if let Some(inner) = item.as_table() {
            collect_keys(inner, &name, out);
            continue;
        }
        // An array of tables (`[[limits.override]]`) is documented above its first
        // header.
        let prefix = match item.as_array_of_tables() {
            Some(array) => array.iter().next().and_then(|t| t.decor().prefix()),
            None => table.key(key).and_then(|k| k.leaf_decor().prefix()),
        }
        .and_then(|p| p.as_str())
        .unwrap_or_default();
        let mut comments: Vec<String> = prefix
            .lines()
            .rev()
            .map(str::trim)
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.trim_start_matches('#').trim().to_owned())
            .collect();
        comments.reverse();
        out.push(KeyLine {
            table: path.to_owned(),
            key: key.to_owned(),
            comments,
        });
    }
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
            if key == "tls"
                || (table == "limits" && matches!(key.as_str(), "backend" | "connections"))
            {
                let sub_table = format!("{table}.{key}");
                for sub_key in accepted_keys(Some(&sub_table)) {
                    code.push((sub_table.clone(), sub_key));
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
    // The commented-out examples are valid settings too. The redaction key file is read
    // at load, so its example path is pointed at a real key.
    let key_dir = tempfile::tempdir().expect("tempdir");
    let key_file = key_dir.path().join("redact.key");
    std::fs::write(&key_file, "an example redaction key").expect("write key");
    let token_file = key_dir.path().join("admin-token");
    std::fs::write(&token_file, "an-example-admin-token\n").expect("write token");
    // The upstream TLS examples name a CA and a client identity: real ones here.
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let client = rcgen::generate_simple_self_signed(vec!["csgate".to_owned()]).expect("client");
    let mut examples_text = uncommented(&text);
    for (example, content) in [
        ("/etc/csgate/tls/upstream-ca.pem", ca.pem()),
        ("/etc/csgate/tls/client.pem", client.cert.pem()),
        (
            "/etc/csgate/tls/client.key",
            client.signing_key.serialize_pem(),
        ),
    ] {
        let real = key_dir
            .path()
            .join(example.rsplit('/').next().expect("name"));
        std::fs::write(&real, content).expect("write");
        examples_text = examples_text.replace(
            &format!("{example:?}"),
            &format!("{:?}", real.display().to_string()),
        );
    }
    let examples_text = examples_text
        .replace(
            "\"/etc/csgate/redact.key\"",
            &format!("{:?}", key_file.display().to_string()),
        )
        .replace(
            "\"/etc/csgate/admin-token\"",
            &format!("{:?}", token_file.display().to_string()),
        );
    assert_ne!(
        examples_text,
        uncommented(&text),
        "the redact_key_file example moved"
    );
    let examples = load(
        &examples_text,
        "config/csgate.toml, examples uncommented",
        &Overrides::default(),
    );
    assert!(!examples.upstream.urls().is_empty());
    assert!(examples.upstream.tls.client.is_some() && examples.upstream.tls.cert.is_some());
    assert!(examples.server.tls.is_some());
    let defaults = Config::default();
    // Section by section, through Debug, so a difference names its section.
    macro_rules! at_defaults {
        ($($section:ident),*) => {$(
            assert_eq!(
                format!("{:?}", shipped.$section),
                format!("{:?}", defaults.$section),
                "[{}] in config/csgate.toml differs from the defaults",
                stringify!($section)
            );
        )*};
    }
    at_defaults!(server, upstream, cache, admin, log, store);
    assert!(shipped.upstream.urls().is_empty());
    assert!(shipped.server.tls.is_none());
    // No service-type names out of the box: the example map is commented out here and
    // lives in its own file.
    assert!(shipped.service_types().is_empty());
    assert!(!examples.service_types().is_empty());
    let example = load(
        &read("config/service-types.example.toml"),
        "config/service-types.example.toml",
        &Overrides::default(),
    );
    assert_eq!(example.service_types(), examples.service_types());
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
    let compose = yaml("deploy/compose.yaml");
    let services = at(&compose, "/services")
        .as_object()
        .expect("services is a mapping");
    assert!(services.len() >= 3, "{:?}", services.keys());
    let entry = entrypoint_args();
    let grace = Config::default().server.shutdown_grace;

    // Per service: the port it listens on (store) or its two listeners (gateway).
    let mut listening: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    let mut store_upstreams = Vec::new();
    let mut store_ports = BTreeMap::new();
    for (name, body) in services {
        // Redis (the cluster profile) is not csgate.
        if body
            .get("image")
            .and_then(|i| i.as_str())
            .is_some_and(|image| image.starts_with("redis"))
        {
            continue;
        }
        let command = optional_scalars(body, "command");
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
        let published: Vec<u16> = optional_scalars(body, "ports")
            .iter()
            .map(|p| port(p))
            .collect();
        let exposed: Vec<u16> = optional_scalars(body, "expose")
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
            for mapping in scalars(field(body, "ports")) {
                if port(&mapping) == admin {
                    assert!(mapping.starts_with("127.0.0.1:"), "{name}: {mapping}");
                }
            }
        }

        // A service-specific healthcheck probes a port it listens on.
        if let Some(healthcheck) = body.get("healthcheck") {
            let test = scalars(field(healthcheck, "test"));
            let url = test.iter().find(|a| a.starts_with("http://")).expect("URL");
            let authority = url["http://".len()..].split('/').next().expect("host");
            assert!(ports.contains(&port(authority)), "{name}: {url}");
        }

        let stop = parse_duration(&scalar(field(body, "stop_grace_period"))).expect("duration");
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

fn k8s(name: &str) -> Yaml {
    yaml(&format!("deploy/k8s/{name}"))
}

/// The Deployment's csgate container.
fn gateway_container(deployment: &Yaml) -> &Yaml {
    let container = at(deployment, "/spec/template/spec/containers/0");
    assert_eq!(scalar(field(container, "name")), "csgate");
    container
}

/// The cluster's `csgate.toml`, which kustomize's configMapGenerator makes the
/// ConfigMap.
fn configmap_toml() -> String {
    read("deploy/k8s/csgate.toml")
}

/// Every document of a multi-document YAML file.
fn yaml_docs(path: &str) -> Vec<Yaml> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(&read(path))
        .map(|doc| Yaml::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
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
    assert_eq!(scalar(field(&deployment, "kind")), "Deployment");
    let pod = at(&deployment, "/spec/template/spec");
    let container = gateway_container(&deployment);

    // The container runs the ConfigMap's csgate.toml, mounted where --config points.
    let cm_toml = configmap_toml();
    let dir = tempfile::tempdir().expect("tempdir");
    let cm_path = dir.path().join("csgate.toml");
    std::fs::write(&cm_path, with_secrets(&cm_toml)).expect("write");
    let command = scalars(field(container, "command"));
    assert_eq!(command, ["/usr/local/bin/csgate"]);
    let args = scalars(field(container, "args"));
    assert_invocation_valid("Deployment args", &args, &cm_path);
    let inv = invocation(&args);
    let config = effective(&inv, &BTreeMap::from([(CONTAINER_CONFIG, cm_toml.clone())]));
    assert!(
        !config.upstream.urls().is_empty(),
        "the cluster config names a remote upstream"
    );
    let mounts = sequence(field(container, "volumeMounts"));
    let mount_paths: Vec<String> = mounts
        .iter()
        .map(|m| scalar(field(m, "mountPath")))
        .collect();
    let config_dir = Path::new(CONTAINER_CONFIG)
        .parent()
        .expect("dir")
        .display()
        .to_string();
    assert!(mount_paths.contains(&config_dir));
    // The volume mounted there is the ConfigMap this directory ships.
    let config_volume = sequence(field(pod, "volumes"))
        .iter()
        .find(|v| v.get("configMap").is_some())
        .expect("a configMap volume");
    assert!(field(config_volume, "configMap").is_object());
    // Generated from csgate.toml with a content-hash suffix: an edit renames it, so the
    // pod template changes and the pods roll.
    let kustomization = k8s("kustomization.yaml");
    let generator = at(&kustomization, "/configMapGenerator/0");
    assert_eq!(scalars(field(generator, "files")), ["csgate.toml"]);
    assert!(
        generator
            .pointer("/options/disableNameSuffixHash")
            .is_none_or(|v| scalar(v) == "false"),
        "the hash suffix is what rolls the pods"
    );
    assert_eq!(
        scalar(at(config_volume, "/configMap/name")),
        scalar(field(generator, "name"))
    );
    assert!(mounts
        .iter()
        .any(|m| field(m, "name") == field(config_volume, "name")
            && scalar(field(m, "mountPath")) == config_dir));

    // Container ports are the two listeners.
    let named: BTreeMap<String, u16> = sequence(field(container, "ports"))
        .iter()
        .map(|p| {
            let number = scalar(field(p, "containerPort")).parse().expect("port");
            (scalar(field(p, "name")), number)
        })
        .collect();
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
        let get = at(field(container, probe), "/httpGet");
        assert_eq!(scalar(field(get, "path")), path, "{probe}");
        assert_eq!(resolve(&scalar(field(get, "port"))), admin, "{probe}");
    }

    // The preStop sleep and the drain both fit in the termination grace period.
    let pre_stop = scalars(at(container, "/lifecycle/preStop/exec/command"));
    assert_eq!(pre_stop[0], "/bin/sleep");
    let sleep: u64 = pre_stop[1].parse().expect("seconds");
    let termination: u64 = scalar(field(pod, "terminationGracePeriodSeconds"))
        .parse()
        .expect("seconds");
    assert!(
        Duration::from_secs(termination) > config.server.shutdown_grace + Duration::from_secs(sleep),
        "terminationGracePeriodSeconds {termination} must exceed preStop {sleep}s + shutdown_grace {:?}",
        config.server.shutdown_grace
    );
    // After the preStop sleep, load balancers may still send on open connections: the
    // cluster config keeps answering them for drain_delay, which is counted inside
    // shutdown_grace.
    assert!(
        !config.server.drain_delay.is_zero()
            && config.server.drain_delay < config.server.shutdown_grace,
        "configmap drain_delay {:?} must be set and below shutdown_grace {:?}",
        config.server.drain_delay,
        config.server.shutdown_grace
    );

    // Non-root (the image's user), read-only root, memory above the cache bound.
    assert_eq!(scalar(at(pod, "/securityContext/runAsNonRoot")), "true");
    let hardening = field(container, "securityContext");
    assert_eq!(scalar(field(hardening, "readOnlyRootFilesystem")), "true");
    assert_eq!(
        scalar(field(hardening, "allowPrivilegeEscalation")),
        "false"
    );
    let image_user = instruction(&dockerfile(), "USER")[0].clone();
    assert_eq!(
        image_user.split(':').next(),
        Some(scalar(at(pod, "/securityContext/runAsUser")).as_str())
    );
    assert!(mount_paths.contains(&"/var/lib/csgate".to_owned()));
    let memory = scalar(at(container, "/resources/limits/memory"));
    assert!(quantity(&memory) > config.cache.max_bytes);
    let annotations = at(&deployment, "/spec/template/metadata/annotations");
    assert_eq!(
        resolve(&scalar(field(annotations, "prometheus.io/port"))),
        admin
    );
    assert_eq!(scalar(field(annotations, "prometheus.io/path")), "/metrics");

    // The Service: the public port only.
    let service = k8s("service.yaml");
    assert_eq!(scalar(field(&service, "kind")), "Service");
    let service_ports = sequence(at(&service, "/spec/ports"));
    let targets: Vec<String> = service_ports
        .iter()
        .map(|p| scalar(field(p, "targetPort")))
        .collect();
    assert!(!targets.is_empty());
    for target in &targets {
        assert_eq!(resolve(target), public, "Service targetPort {target}");
    }
    for p in service_ports.iter().map(|p| scalar(field(p, "port"))) {
        assert_ne!(
            resolve(&p),
            admin,
            "the Service must not expose the admin port"
        );
    }
    let service_text = read("deploy/k8s/service.yaml");
    assert!(!service_text.contains(&format!(" {admin}")) && !service_text.contains("admin\n"));

    // NetworkPolicy, PodMonitor, HPA, PDB.
    let policy = k8s("networkpolicy.yaml");
    let policy_ports: BTreeSet<u16> = sequence(at(&policy, "/spec/ingress"))
        .iter()
        .flat_map(|rule| sequence(field(rule, "ports")))
        .map(|p| resolve(&scalar(field(p, "port"))))
        .collect();
    assert_eq!(policy_ports, BTreeSet::from([public, admin]));
    let monitor = k8s("podmonitor.yaml");
    let endpoint = at(&monitor, "/spec/podMetricsEndpoints/0");
    assert_eq!(resolve(&scalar(field(endpoint, "port"))), admin);
    assert_eq!(scalar(field(endpoint, "path")), "/metrics");
    let hpa = k8s("hpa.yaml");
    assert_eq!(scalar(field(&hpa, "apiVersion")), "autoscaling/v2");
    assert_eq!(scalar(at(&hpa, "/metadata/name")), "csgate");
    assert_eq!(scalar(at(&hpa, "/spec/metrics/0/resource/name")), "cpu");
    let pdb = k8s("pdb.yaml");
    assert_eq!(scalar(field(&pdb, "kind")), "PodDisruptionBudget");

    // Replicas spread over nodes; the Redis password reaches csgate from a Secret.
    let spread = at(
        pod,
        "/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution",
    );
    assert!(sequence(spread)
        .iter()
        .any(|term| scalar(at(term, "/podAffinityTerm/topologyKey")) == "kubernetes.io/hostname"));
    let env = sequence(field(container, "env"));
    let redis_url = env
        .iter()
        .find(|e| scalar(field(e, "name")) == "CSGATE_REDIS_URL")
        .expect("CSGATE_REDIS_URL");
    assert_eq!(
        scalar(at(redis_url, "/valueFrom/secretKeyRef/name")),
        "csgate-redis-auth"
    );

    // The shipped Redis holds personal data: a password, a policy that admits only
    // csgate pods, an unprivileged read-only container with probes.
    let redis = yaml_docs("deploy/k8s/redis.yaml");
    let kind = |k: &str| {
        redis
            .iter()
            .find(|d| scalar(field(d, "kind")) == k)
            .unwrap_or_else(|| panic!("a {k} in redis.yaml"))
    };
    let redis_pod = at(kind("Deployment"), "/spec/template/spec");
    assert_eq!(
        scalar(at(redis_pod, "/securityContext/runAsNonRoot")),
        "true"
    );
    let server = at(redis_pod, "/containers/0");
    let args = scalars(field(server, "args"));
    assert!(args.contains(&"--requirepass".to_owned()), "{args:?}");
    assert_eq!(
        scalar(at(server, "/env/0/valueFrom/secretKeyRef/name")),
        "csgate-redis-auth"
    );
    assert_eq!(
        scalar(at(server, "/securityContext/readOnlyRootFilesystem")),
        "true"
    );
    assert!(server.get("readinessProbe").is_some() && server.get("livenessProbe").is_some());
    let redis_policy = kind("NetworkPolicy");
    assert_eq!(
        scalar(at(
            redis_policy,
            "/spec/ingress/0/from/0/podSelector/matchLabels/app.kubernetes.io~1name"
        )),
        "csgate"
    );

    // kustomization.yaml applies every manifest except the CRD-dependent PodMonitor.
    let listed: BTreeSet<String> = scalars(field(&k8s("kustomization.yaml"), "resources"))
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
    let compose = yaml("deploy/compose.yaml");
    let services = at(&compose, "/services").as_object().expect("services");
    // Redis's own command line (the cluster profile) is not csgate's.
    let is_redis = |s: &serde_json::Value| {
        s.get("image")
            .and_then(|i| i.as_str())
            .is_some_and(|image| image.starts_with("redis"))
    };
    for service in services
        .values()
        .filter(|s| s.get("command").is_some() && !is_redis(s))
    {
        argvs.push(
            entrypoint_args()
                .into_iter()
                .chain(scalars(field(service, "command")))
                .collect(),
        );
    }
    argvs.push(scalars(field(
        gateway_container(&k8s("deployment.yaml")),
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

/// Every metric the shipped dashboard and alerting rules name is one csgate exports
/// (read from a running gateway's `/metrics`, whose `# TYPE` lines declare every
/// family, sampled or not), so a renamed metric cannot leave a silent panel or alert.
#[tokio::test]
async fn the_dashboard_and_the_alerts_name_only_exported_metrics() {
    let upstream = common::FakeUpstream::start(common::Reply::json(200, "[]")).await;
    let gw = common::start_gateway("", &[upstream.url()]).await;
    // OpenMetrics: every family is declared by a `# TYPE` line, sampled or not.
    let exposition = common::get_with(
        &gw.admin_url("/metrics"),
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
    )
    .await
    .text();
    let mut exported = BTreeSet::new();
    for line in exposition.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_count", "_sum"],
                _ => &[""],
            };
            for suffix in suffixes {
                exported.insert(format!("{name}{suffix}"));
            }
        }
    }
    // A labelled family shows up only once it has a sample; the ones no traffic here
    // reaches (evictions, the fleet's) are taken from their registrations in the source,
    // name for name, with the suffixes their samples carry.
    for source in [
        "src/metrics/requests.rs",
        "src/cache/metrics.rs",
        "src/trace/mod.rs",
        "src/cluster/metrics.rs",
    ] {
        let text = read(source);
        for literal in text.split('"').skip(1).step_by(2) {
            if literal.starts_with("csgate_") && !literal.contains(' ') {
                for suffix in ["", "_total", "_bucket", "_count", "_sum"] {
                    exported.insert(format!("{literal}{suffix}"));
                }
            }
        }
    }
    assert!(
        exported.contains("csgate_http_requests_total"),
        "{exported:?}"
    );
    for file in [
        "deploy/monitoring/csgate-dashboard.json",
        "deploy/monitoring/csgate-rules.yaml",
    ] {
        let text = read(file);
        let mut named = BTreeSet::new();
        let bytes = text.as_bytes();
        let mut at = 0;
        while let Some(found) = text[at..].find("csgate_") {
            let start = at + found;
            let end = bytes[start..]
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                .map_or(bytes.len(), |n| start + n);
            named.insert(text[start..end].to_owned());
            at = end;
        }
        assert!(named.len() >= 5, "{file}: {named:?}");
        for name in &named {
            assert!(
                exported.contains(name),
                "{file} names {name}, which csgate does not export"
            );
        }
    }
    gw.stop().await;
}
