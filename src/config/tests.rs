//! Parsing, validation, precedence, and the shipped file against the code's defaults.

use std::time::Duration;

use super::*;

fn load(text: &str) -> Result<Config, String> {
    Config::from_toml(text, Path::new("test.toml"), &Overrides::default())
        .map_err(|e| e.to_string())
}

#[test]
fn defaults_are_valid_and_documented_values() {
    let c = load("").expect("defaults");
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.upstream.path_prefix, "/genesys/1/cs");
    assert!(c.upstream.urls().is_empty());
    assert!(matches!(c.upstream.target, Upstream::Embedded(_)));
    assert_eq!(c.cache.ttl, Duration::from_secs(30));
    assert_eq!(c.cache.max_bytes, 256 << 20);
    assert_eq!(c.cache.max_entry_bytes, 1 << 20);
    assert!(!c.cache.share_across_credentials);
    assert!(c.log.redact);
    assert_eq!(c.server.max_query_bytes, 8192);
    assert_eq!(c.server.max_header_bytes, 16384);
}

#[test]
fn values_are_parsed_once_into_types() {
    let c = load(
        r#"
        [server]
        listen = "0.0.0.0:8081"
        max_body_bytes = "2MiB"
        [upstream]
        urls = ["http://gms-1:8080", "http://gms-2:8080/genesys/1/cs"]
        connect_timeout = "250ms"
        request_timeout = "3s"
        [cache]
        max_bytes = 1048576
        max_entry_bytes = "64KiB"
        ttl = "1m"
        [business_attributes.service_type]
        Wireless = 45
        DeliveringService = 8
        "#,
    )
    .expect("valid");
    assert_eq!(c.server.max_body_bytes, 2 << 20);
    assert_eq!(c.upstream.urls().len(), 2);
    assert_eq!(c.upstream.connect_timeout, Duration::from_millis(250));
    assert_eq!(c.cache.max_entry_bytes, 64 << 10);
    assert_eq!(c.cache.ttl, Duration::from_secs(60));
    assert_eq!(c.service_types().id_of("Wireless"), Some(45));
    assert_eq!(c.service_types().name_of(8), Some("DeliveringService"));
}

#[test]
fn a_log_level_that_is_no_level_is_refused() {
    for level in ["warning", "INFO,csgate", "Warn,hyper=info,fatal"] {
        let toml = format!("[log]\nlevel = {level:?}\n");
        let error = load(&toml).expect_err(level);
        assert!(
            error.contains("log.level") && error.contains("is not a level"),
            "{level}: {error}"
        );
    }
    for level in [
        "warn",
        "INFO",
        "csgate=debug,info",
        "off",
        "csgate=trace",
        "info,[span]=debug",
    ] {
        let toml = format!("[log]\nlevel = {level:?}\n");
        assert!(load(&toml).is_ok(), "{level}");
    }
}

#[test]
fn errors_name_the_key() {
    let cases = [
        ("[server]\nlisten = \"nope\"", "server.listen"),
        ("[server]\nlistne = \"127.0.0.1:1\"", "listne"),
        ("[upstream]\nurls = [\"ftp://x\"]", "upstream.urls[0]"),
        ("[upstream]\nurls = [\"http://u:pw@x\"]", "upstream.urls[0]"),
        (
            "[log]\nredact_key_file = \"/nonexistent/key\"",
            "log.redact_key_file",
        ),
        (
            "[upstream]\nconnect_timeout = \"soon\"",
            "upstream.connect_timeout",
        ),
        (
            "[upstream]\nrequest_timeout = \"0s\"",
            "upstream.request_timeout",
        ),
        ("[upstream]\nretry_budget = 2.0", "upstream.retry_budget"),
        ("[upstream]\neject_on = [\"5xx\"]", "upstream.eject_on"),
        (
            "[upstream]\nretry_on = [\"reset\", \"600\"]",
            "upstream.retry_on",
        ),
        (
            "[server]\nbody_read_timeout = \"0s\"",
            "server.body_read_timeout",
        ),
        ("[cache]\nmax_bytes = \"lots\"", "cache.max_bytes"),
        (
            "[cache]\nmax_bytes = \"1MiB\"\nmax_entry_bytes = \"2MiB\"",
            "cache.max_entry_bytes",
        ),
        ("[log]\nformat = \"xml\"", "log.format"),
        (
            "[store]\nmax_memory_bytes = \"512KiB\"",
            "store.max_memory_bytes",
        ),
        ("[cachee]\nttl = \"1s\"", "cachee"),
        (
            "[business_attributes.service_type]\nA = 1\nB = 1",
            "business_attributes.service_type.B",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:7000\"\n[admin]\nlisten = \"127.0.0.1:7000\"",
            "admin.listen",
        ),
    ];
    for (text, key) in cases {
        let error = load(text).expect_err(text);
        assert!(error.contains(key), "{error:?} should name {key}");
    }
}

#[test]
fn a_zero_duration_is_refused_in_the_same_words_in_every_section() {
    let cases = [
        ("[server]\nidle_timeout = \"0s\"", "server.idle_timeout"),
        ("[upstream]\ndeadline = \"0ms\"", "upstream.deadline"),
        ("[store]\nsweep_interval = \"0s\"", "store.sweep_interval"),
        (
            "[cluster]\nredis_url = \"redis://127.0.0.1:1\"\nop_timeout = \"0s\"",
            "cluster.op_timeout",
        ),
        (
            "[limits.backend]\nqueue_deadline = \"0s\"",
            "limits.backend.queue_deadline",
        ),
        (
            "[tracing]\nexport_timeout = \"0s\"",
            "tracing.export_timeout",
        ),
    ];
    for (text, key) in cases {
        let error = load(text).expect_err(text);
        assert_eq!(error, format!("{key}: must be greater than zero"), "{text}");
    }
}

#[test]
fn precedence_is_cli_over_env_over_file() {
    let file = "[server]\nlisten = \"127.0.0.1:1000\"\n[upstream]\nurls = [\"http://file:1\"]";
    let env = Overrides::from_env([
        ("CSGATE_LISTEN".to_owned(), "127.0.0.1:2000".to_owned()),
        (
            "CSGATE_UPSTREAMS".to_owned(),
            "http://env:1, http://env:2".to_owned(),
        ),
        ("UNRELATED".to_owned(), "x".to_owned()),
    ]);
    let from_env = Config::from_toml(file, Path::new("f"), &env.clone()).expect("valid");
    assert_eq!(from_env.server.listen.port(), 2000);
    assert_eq!(from_env.upstream.urls().len(), 2);

    let cli = Overrides {
        listen: Some("127.0.0.1:3000".to_owned()),
        ..Overrides::default()
    };
    let both = Config::from_toml(file, Path::new("f"), &cli.over(env)).expect("valid");
    assert_eq!(both.server.listen.port(), 3000);
    assert_eq!(both.upstream.urls()[0].host_str(), Some("env"));
}

#[test]
fn the_redis_url_from_the_env_beats_the_file() {
    let file = "[cluster]\nredis_url = \"redis://file:6379\"";
    let env = Overrides::from_env([("CSGATE_REDIS_URL".to_owned(), "redis://env:6379".to_owned())]);
    let config = Config::from_toml(file, Path::new("f"), &env).expect("valid");
    let url = config.cluster.redis_url.expect("a Redis is configured");
    assert_eq!(url.host_str(), Some("env"));
}

#[test]
fn sizes() {
    assert_eq!(parse_size("512"), Ok(512));
    assert_eq!(parse_size("8KiB"), Ok(8192));
    assert_eq!(parse_size("256MiB"), Ok(256 << 20));
    assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
    assert_eq!(parse_size("2MB"), Ok(2_000_000));
    assert!(parse_size("MiB").is_err());
    assert!(parse_size("5 parsecs").is_err());
    assert!(parse_size("99999999999999999999GiB").is_err());
}

/// The value a `Default: …` comment states: a quoted string, a `[…]` list, or the word
/// up to the next space (without a trailing `.`/`,`). `None` for defaults that are an
/// absence.
fn documented_default(comment: &str) -> Option<String> {
    let rest = comment.split("Default: ").nth(1)?;
    if let Some(list) = rest.strip_prefix('[') {
        return Some(format!("[{}]", list.split(']').next()?));
    }
    let value = match rest.strip_prefix('"') {
        Some(quoted) => format!("\"{}\"", quoted.split('"').next()?),
        None => rest
            .split_whitespace()
            .next()?
            .trim_end_matches(['.', ','])
            .to_owned(),
    };
    (!matches!(value.as_str(), "none" | "absent" | "no")).then_some(value)
}

/// The section's validated settings, printed, for comparing a single key's effect.
fn section(config: &Config, table: &str) -> String {
    match table {
        "server" => format!("{:?}", config.server),
        "upstream" => format!("{:?}", config.upstream),
        "cache" => format!("{:?}", config.cache),
        "admin" => format!("{:?}", config.admin),
        "log" => format!("{:?}", config.log),
        "store" => format!("{:?}", config.store),
        "cluster" => format!("{:?}", config.cluster),
        "tracing" => format!("{:?}", config.tracing),
        "limits" => format!("{:?}", config.limits),
        other => panic!("config/csgate.toml documents a default in unknown table [{other}]"),
    }
}

/// Every `Default: X` that config/csgate.toml states for a key, set alone in its table,
/// gives exactly the settings the code uses without it: the documented defaults are the
/// code's (and `defaults` is where the code keeps them).
#[test]
fn the_defaults_documented_in_the_shipped_file_are_the_codes() {
    let text = include_str!("../../config/csgate.toml");
    let code = Config::default();
    let mut table = String::new();
    let mut stated: Option<String> = None;
    let mut checked = 0;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = name.to_owned();
            stated = None;
            continue;
        }
        let body = line.trim_start_matches('#').trim();
        let Some((key, _)) = body
            .split_once(" = ")
            .filter(|(key, _)| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        else {
            stated = documented_default(body).or(stated.take());
            continue;
        };
        let Some(value) = stated.take() else {
            continue;
        };
        let (outer, inner) = table.split_once('.').unwrap_or((&table, ""));
        let toml = if inner.is_empty() {
            format!("[{outer}]\n{key} = {value}\n")
        } else {
            format!("[{outer}.{inner}]\n{key} = {value}\n")
        };
        let alone = load(&toml).unwrap_or_else(|e| panic!("{toml}: {e}"));
        assert_eq!(
            section(&alone, outer),
            section(&code, outer),
            "config/csgate.toml says [{table}] {key} defaults to {value}; the code differs"
        );
        checked += 1;
    }
    assert!(
        checked >= 30,
        "only {checked} documented defaults were found"
    );
}

#[test]
fn absent_defaults_are_absent_in_the_code() {
    let code = Config::default();
    assert!(matches!(code.upstream.target, Upstream::Embedded(_)));
    assert!(code.server.tls.is_none());
    assert!(code.business_attributes.is_empty());
}
