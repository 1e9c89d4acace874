//! The README's front door, held to the code: its set-up block names exactly the two
//! commands CI relies on, it stays short, its links lead somewhere, and its session
//! (the `sh` block under "## A session") is replayed against the real binary started
//! the way the first set-up command starts it (`config/csgate.toml`, the embedded store,
//! an empty `data/`), each command's output compared with the `#>` lines under it.
//!
//! Only what varies from run to run is masked, on both sides: the `date` header, the
//! digits of `x-request-id` (its shape is compared), `age`, the `ttl=` of
//! `Cache-Status`, the store's `"timestamp"` values and a service's `"duration"`. A
//! change to the README's block or to what the binary answers, alone, fails this test.
//!
//! The commands are `curl` lines, interpreted here (the flags the block uses: `-s`, `-i`,
//! `-X`, `-H`, `-d`; pipes into `head -N` and `grep -iE`) and sent by a small HTTP/1.1
//! client over loopback, so the test needs no curl.
#![cfg(unix)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::process::Process;

fn repo_file(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The body of the first fenced block of `lang` after the line `heading`.
fn block_after(readme: &str, heading: &str, lang: &str) -> Vec<String> {
    let mut lines = readme.lines().skip_while(|l| l.trim() != heading);
    assert!(lines.next().is_some(), "README has no line {heading:?}");
    let fence = format!("```{lang}");
    let mut lines = lines.skip_while(|l| l.trim() != fence);
    assert!(
        lines.next().is_some(),
        "no ```{lang} block under {heading:?}"
    );
    lines
        .take_while(|l| l.trim() != "```")
        .map(str::to_owned)
        .collect()
}

// --- the front door ------------------------------------------------------------------

#[test]
fn the_readme_is_a_front_door_of_at_most_300_lines() {
    let readme = repo_file("README.md");
    let n = readme.lines().count();
    assert!(
        n <= 300,
        "README.md has {n} lines; the rest belongs in docs/"
    );
}

/// `.ci/run` runs "the README's test command"; the first screen gives exactly two
/// commands: the gateway with its embedded store, and the tests.
#[test]
fn the_set_up_block_has_the_two_commands() {
    let readme = repo_file("README.md");
    let heading = readme
        .lines()
        .find(|l| l.starts_with("## Set-up"))
        .expect("README has a ## Set-up section");
    let position = readme
        .lines()
        .position(|l| l == heading)
        .unwrap_or(usize::MAX);
    assert!(
        position < 40,
        "## Set-up starts on line {position}: not on the first screen"
    );
    let commands: Vec<String> = block_after(&readme, heading, "sh")
        .iter()
        .map(|l| l.split('#').next().unwrap_or_default().trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(commands, ["cargo run --release", "cargo test"]);
    let ci = repo_file(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == "cargo test --locked"),
        ".ci/run no longer runs the README's test command"
    );
}

/// The relative links of one Markdown file that name no file or directory.
fn broken_links(path: &str) -> (usize, Vec<String>) {
    let text = repo_file(path);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join(path).parent().expect("a directory").to_owned();
    let mut checked = 0;
    let mut broken = Vec::new();
    for (i, _) in text.match_indices("](") {
        let rest = &text[i + 2..];
        let Some(end) = rest.find(')') else { continue };
        let target = &rest[..end];
        if target.starts_with("http") || target.starts_with('#') || target.contains(' ') {
            continue;
        }
        let file = target.split('#').next().unwrap_or_default();
        checked += 1;
        if !dir.join(file).exists() {
            broken.push(format!("{path} links to {target}, which does not exist"));
        }
    }
    (checked, broken)
}

/// Every relative link of the README names a file or directory of the repository.
#[test]
fn the_readme_links_lead_somewhere() {
    let (checked, broken) = broken_links("README.md");
    assert!(broken.is_empty(), "{}", broken.join("\n"));
    assert!(checked >= 6, "only {checked} links into the repository");
}

/// And so does every relative link of the documents the README leads to.
#[test]
fn the_docs_links_lead_somewhere() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec!["deploy/README.md".to_owned()];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let name = entry
            .expect("entry")
            .file_name()
            .into_string()
            .expect("UTF-8");
        if name.ends_with(".md") {
            files.push(format!("docs/{name}"));
        }
    }
    assert!(files.len() >= 8, "docs/ holds {files:?}");
    let broken: Vec<String> = files.iter().flat_map(|f| broken_links(f).1).collect();
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

// --- the session ---------------------------------------------------------------------

/// One command of the session and the output the README shows under it.
#[derive(Debug)]
struct Step {
    command: String,
    expected: Vec<String>,
}

/// The session block: `NAME=value` lines set variables (the base URLs), `# ...` lines
/// narrate, `#> ...` lines are the output of the command above them, other lines are
/// commands (a trailing `\` continues one).
fn parse_session(block: &[String]) -> (Vars, Vec<Step>) {
    let mut vars = Vars::new();
    let mut steps: Vec<Step> = Vec::new();
    let mut pending = String::new();
    for line in block {
        if let Some(output) = line.strip_prefix("#>") {
            assert!(
                pending.is_empty(),
                "output inside a continued command: {line}"
            );
            let step = steps.last_mut().expect("output before any command");
            step.expected
                .push(output.strip_prefix(' ').unwrap_or(output).to_owned());
        } else if line.starts_with('#') || (line.trim().is_empty() && pending.is_empty()) {
            continue;
        } else if let Some((name, value)) = line
            .split_once('=')
            .filter(|(n, _)| pending.is_empty() && is_name(n))
        {
            vars.insert(name.to_owned(), value.trim().to_owned());
        } else {
            let (text, continued) = match line.trim_end().strip_suffix('\\') {
                Some(text) => (text, true),
                None => (line.as_str(), false),
            };
            pending.push_str(text.trim());
            pending.push(' ');
            if !continued {
                steps.push(Step {
                    command: pending.trim().to_owned(),
                    expected: Vec::new(),
                });
                pending.clear();
            }
        }
    }
    assert!(pending.is_empty(), "the block ends inside a command");
    (vars, steps)
}

type Vars = BTreeMap<String, String>;

fn is_name(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Expands `$NAME` at `chars` (the `$` already read) into `word`.
fn expand(chars: &mut std::iter::Peekable<std::str::Chars>, vars: &Vars, word: &mut String) {
    let mut name = String::new();
    while let Some(&c) = chars.peek() {
        if !(c.is_ascii_alphanumeric() || c == '_') {
            break;
        }
        name.push(c);
        chars.next();
    }
    let value = vars
        .get(&name)
        .unwrap_or_else(|| panic!("the session uses ${name} without setting it"));
    word.push_str(value);
}

/// Shell words with `$NAME` expanded (outside single quotes) and `|` as its own word.
fn shell_words(command: &str, vars: &Vars) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = command.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '$' => expand(&mut chars, vars, &mut word),
                        c => word.push(c),
                    }
                }
            }
            '$' => {
                in_word = true;
                expand(&mut chars, vars, &mut word);
            }
            '|' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
                words.push("|".to_owned());
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// A `curl` invocation, as far as the session uses curl.
#[derive(Debug, Default)]
struct Curl {
    method: Option<String>,
    url: String,
    headers: Vec<(String, String)>,
    data: Option<String>,
    include: bool,
}

fn parse_curl(words: &[String]) -> Curl {
    assert_eq!(words.first().map(String::as_str), Some("curl"), "{words:?}");
    let mut curl = Curl::default();
    let mut args = words[1..].iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-s" | "--silent" => {}
            "-i" | "--include" => curl.include = true,
            "-si" | "-is" => curl.include = true,
            "-X" | "--request" => curl.method = args.next().cloned(),
            "-H" | "--header" => {
                let header = args.next().expect("-H takes a header");
                let (name, value) = header.split_once(':').expect("Name: value");
                curl.headers
                    .push((name.trim().to_owned(), value.trim().to_owned()));
            }
            "-d" | "--data" => curl.data = args.next().cloned(),
            a if a.starts_with("-X") => curl.method = Some(a[2..].to_owned()),
            a if a.starts_with('-') => {
                panic!("the session uses a curl flag this test does not know: {a}")
            }
            url => curl.url = url.to_owned(),
        }
    }
    assert!(!curl.url.is_empty(), "curl without a URL: {words:?}");
    curl
}

/// Sends one request the way curl would and prints what curl would print: the status
/// line and the headers as they came (with `-i`), a blank line, then the body.
async fn run_curl(curl: &Curl) -> String {
    let rest = curl.url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let method = curl
        .method
        .clone()
        .unwrap_or_else(|| if curl.data.is_some() { "POST" } else { "GET" }.to_owned());
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: curl/8\r\nAccept: */*\r\n"
    );
    for (name, value) in &curl.headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(data) = &curl.data {
        if !curl
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            request.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        }
        request.push_str(&format!("Content-Length: {}\r\n", data.len()));
    }
    request.push_str("\r\n");
    if let Some(data) = &curl.data {
        request.push_str(data);
    }
    let exchange = async {
        let mut stream = TcpStream::connect(authority).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        read_answer(&mut stream, method == "HEAD").await
    };
    let (head, body) = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer within 20 s to {method} {path}"));
    let body = String::from_utf8(body).expect("a UTF-8 body");
    if curl.include {
        format!("{head}\n\n{body}")
    } else {
        body
    }
}

/// Reads one answer: its head (lines joined with `\n`) and its body, framed by
/// `content-length` or chunked.
async fn read_answer(stream: &mut TcpStream, head_only: bool) -> (String, Vec<u8>) {
    let mut buffer = Vec::new();
    let end = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the connection closed inside the head");
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buffer[..end].to_vec()).expect("an ASCII head");
    let mut rest = buffer[end + 4..].to_vec();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let head_text = head.replace("\r\n", "\n");
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        return (head_text, Vec::new());
    }
    let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    if let Some(length) = header("content-length").filter(|_| !chunked) {
        let length: usize = length.parse().expect("a content-length");
        while rest.len() < length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the connection closed inside the body");
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(length);
        return (head_text, rest);
    }
    assert!(
        chunked,
        "an answer with neither content-length nor chunked: {head}"
    );
    while !rest.windows(5).any(|w| w == b"0\r\n\r\n") {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the connection closed inside a chunked body");
        rest.extend_from_slice(&chunk[..n]);
    }
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at
            + rest[at..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("a chunk size");
        let size = usize::from_str_radix(
            std::str::from_utf8(&rest[at..line_end])
                .expect("hex")
                .split(';')
                .next()
                .unwrap_or("0"),
            16,
        )
        .expect("a chunk size");
        if size == 0 {
            return (head_text, body);
        }
        body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
        at = line_end + 2 + size + 2;
    }
}

/// `head -N` / `head -n N` and `grep -iE 'a|^b'` (alternatives of literals, each may be
/// anchored with `^`; `-i` ignores case), applied to curl's output.
fn filter(output: &str, command: &[String]) -> String {
    let mut lines: Vec<String> = output.lines().map(str::to_owned).collect();
    match command.first().map(String::as_str) {
        Some("head") => {
            let n = match &command[1..] {
                [flag, n] if flag == "-n" => n.parse::<usize>(),
                [n] => n.trim_start_matches('-').parse::<usize>(),
                other => panic!("head {other:?}"),
            }
            .expect("a line count");
            lines.truncate(n);
        }
        Some("grep") => {
            let (flags, pattern) = match &command[1..] {
                [flags, pattern] if flags.starts_with('-') => (flags.as_str(), pattern),
                [pattern] => ("", pattern),
                other => panic!("grep {other:?}"),
            };
            let fold = flags.contains('i');
            let norm = |s: &str| {
                if fold {
                    s.to_ascii_lowercase()
                } else {
                    s.to_owned()
                }
            };
            let alternatives: Vec<String> = pattern.split('|').map(norm).collect();
            assert!(
                alternatives
                    .iter()
                    .all(|a| !a[a.starts_with('^') as usize..]
                        .contains(['.', '*', '+', '?', '[', '(', '$', '\\'])),
                "grep pattern {pattern:?}: only literals and ^ are interpreted"
            );
            lines.retain(|line| {
                let line = norm(line);
                alternatives.iter().any(|a| match a.strip_prefix('^') {
                    Some(a) => line.starts_with(a),
                    None => line.contains(a.as_str()),
                })
            });
        }
        other => panic!("the session pipes into {other:?}, which this test does not interpret"),
    }
    lines.join("\n")
}

/// Masks what varies between runs; the rest must match to the byte.
fn mask(line: &str) -> String {
    let lower = line.to_ascii_lowercase();
    if lower.starts_with("date:") && line.ends_with(" GMT") {
        return "date: <IMF-fixdate>".to_owned();
    }
    if lower.starts_with("age:") {
        return "age: <seconds>".to_owned();
    }
    if lower.starts_with("x-request-id:") {
        // The shape stays: hex digits become x.
        return line
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i > 13 && c.is_ascii_hexdigit() {
                    'x'
                } else {
                    c
                }
            })
            .collect();
    }
    let fixed = |with: &'static str| move |_: &str| with.to_owned();
    let mut out = mask_after(
        line,
        "ttl=",
        |c| c.is_ascii_digit() || c == '-',
        fixed("<seconds>"),
    );
    out = mask_after(
        &out,
        "\"duration\":",
        |c| c.is_ascii_digit(),
        fixed("<duration>"),
    );
    // A timestamp keeps its shape (2026-12-05T13:27:19.843Z: dddd-dd-ddTdd:dd:dd.dddZ).
    mask_after(
        &out,
        "\"timestamp\":\"",
        |c| c != '"',
        |t| {
            t.chars()
                .map(|c| if c.is_ascii_digit() { 'd' } else { c })
                .collect()
        },
    )
}

/// Replaces the run of `keep`-matching characters after every `marker` with `with` of it.
fn mask_after(
    text: &str,
    marker: &str,
    keep: impl Fn(char) -> bool,
    with: impl Fn(&str) -> String,
) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(marker) {
        out.push_str(&rest[..i + marker.len()]);
        rest = &rest[i + marker.len()..];
        let end = rest.find(|c: char| !keep(c)).unwrap_or(rest.len());
        if end > 0 {
            out.push_str(&with(&rest[..end]));
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn trimmed(lines: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut lines: Vec<String> = lines.into_iter().map(|l| mask(l.trim_end())).collect();
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    lines
}

#[tokio::test]
async fn the_readme_session_is_what_the_binary_answers() {
    let readme = repo_file("README.md");
    let heading = readme
        .lines()
        .find(|l| l.starts_with("## A session"))
        .expect("README has a ## A session section");
    let (readme_vars, steps) = parse_session(&block_after(&readme, heading, "sh"));
    assert!(steps.len() >= 8, "a session of {} commands", steps.len());
    assert!(
        steps.iter().all(|s| !s.expected.is_empty()),
        "every command shows its output: {steps:#?}"
    );

    // What `cargo run --release` starts: config/csgate.toml, the embedded store in an
    // empty data/ under the working directory (Process runs in a fresh temporary one).
    let process = Process::start(&repo_file("config/csgate.toml"), &[]).await;
    // The README talks to the default listeners; this run's are on free ports.
    let ports = [
        ("127.0.0.1:8080", process.listen.as_str()),
        ("127.0.0.1:9090", process.admin.as_str()),
    ];
    let mut vars = Vars::new();
    for (name, value) in &readme_vars {
        let authority = value
            .strip_prefix("http://")
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("{name}={value}: not an http:// URL"));
        let (_, actual) = ports
            .iter()
            .find(|(readme, _)| *readme == authority)
            .unwrap_or_else(|| panic!("{name}={value}: neither default listener"));
        vars.insert(name.clone(), value.replacen(authority, actual, 1));
    }

    let mut failures = BTreeMap::new();
    for (i, step) in steps.iter().enumerate() {
        let words = shell_words(&step.command, &vars);
        let mut stages = words.split(|w| w == "|");
        let curl = parse_curl(stages.next().expect("a command"));
        let mut output = run_curl(&curl).await;
        for stage in stages {
            output = filter(&output, stage);
        }
        let actual = trimmed(output.lines().map(str::to_owned));
        let expected = trimmed(step.expected.iter().cloned());
        if actual != expected {
            failures.insert(
                i + 1,
                format!(
                    "$ {}\n--- README (masked)\n{}\n--- binary (masked)\n{}\n--- binary (as printed)\n{output}",
                    step.command,
                    expected.join("\n"),
                    actual.join("\n"),
                ),
            );
        }
    }
    assert!(
        failures.is_empty(),
        "the README's session differs from what the binary answers:\n\n{}",
        failures
            .into_iter()
            .map(|(n, f)| format!("command {n}:\n{f}"))
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}

// --- the test's own pieces -----------------------------------------------------------

#[test]
fn masking_keeps_the_shape_of_what_it_hides() {
    assert_eq!(
        mask("x-request-id: 352b85b58de14d27-0000000000000002"),
        "x-request-id: xxxxxxxxxxxxxxxx-xxxxxxxxxxxxxxxx"
    );
    assert_ne!(
        mask("x-request-id: 16ae50cc-45e3-441b-9442-a1e4610f572c"),
        mask("x-request-id: 352b85b58de14d27-0000000000000002")
    );
    assert_eq!(
        mask("cache-status: csgate; hit; ttl=29"),
        "cache-status: csgate; hit; ttl=<seconds>"
    );
    assert_eq!(
        mask(r#"{"duration":125,"started":{"timestamp":"2026-11-28T01:43:27.548Z"}}"#),
        r#"{"duration":<duration>,"started":{"timestamp":"dddd-dd-ddTdd:dd:dd.dddZ"}}"#
    );
    assert_eq!(mask("content-length: 267"), "content-length: 267");
}

#[test]
fn the_interpreter_reads_the_shell_the_session_writes() {
    let words = shell_words(
        r#"curl -s -i -XPOST "$B/x?a=1&b=2" -H 'Content-Type: application/json' -d '{"k": "$B"}' | grep -iE '^age|cache-status'"#,
        &Vars::from([("B".to_owned(), "http://h:1/p".to_owned())]),
    );
    assert_eq!(
        words,
        [
            "curl",
            "-s",
            "-i",
            "-XPOST",
            "http://h:1/p/x?a=1&b=2",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"k": "$B"}"#,
            "|",
            "grep",
            "-iE",
            "^age|cache-status"
        ]
    );
    let curl = parse_curl(&words[..9]);
    assert_eq!(curl.method.as_deref(), Some("POST"));
    assert!(curl.include);
    let output = "HTTP/1.1 200 OK\nAge: 0\ncache-status: csgate; hit\nvia: 1.1 csgate\n\n[]";
    assert_eq!(
        filter(output, &words[10..]),
        "Age: 0\ncache-status: csgate; hit"
    );
    assert_eq!(
        filter(output, &["head".into(), "-1".into()]),
        "HTTP/1.1 200 OK"
    );
}
