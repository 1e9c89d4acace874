//! Issue 14, items 4 and 5, and issue 10 item 15: the request id an upstream answers
//! with, `Via`, `X-Forwarded-Host`, `preserve_host`, and the trust model of forwarding
//! headers.

mod common;

use common::{get_with, start_gateway, FakeUpstream, Recorded, Reply};

const CS: &str = "/genesys/1/cs";
const NO_CACHE: &str = "[cache]\nenabled = false\n";
const TRUSTED: &str =
    "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\"]\n[cache]\nenabled = false\n";

fn header(recorded: &Recorded, name: &str) -> Option<String> {
    recorded
        .headers
        .get(name)
        .map(|v| v.to_str().expect("ascii").to_owned())
}

/// A proxied route, a Query Services route, and a passed-through upstream error.
fn paths() -> [String; 2] {
    [
        format!("{CS}/services/42/states"),
        format!("{CS}/customers/ABC/services"),
    ]
}

#[tokio::test]
async fn the_upstreams_request_id_is_kept_and_csgates_goes_upstream() {
    let upstream =
        FakeUpstream::start(Reply::json(200, "[]").with_header("x-request-id", "up-7")).await;
    let gw = start_gateway(NO_CACHE, &[upstream.url()]).await;
    let proxied = format!("{CS}/services/42/states");
    let answer = get_with(&gw.url(&proxied), &[("x-request-id", "client-1")]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-request-id").as_deref(), Some("up-7"));
    let got = upstream.requests().pop().expect("forwarded");
    assert_eq!(header(&got, "x-request-id").as_deref(), Some("client-1"));
    // A passed-through upstream error keeps the upstream's id too.
    upstream.push(Reply::json(404, "{}").with_header("x-request-id", "up-8"));
    let answer = get_with(&gw.url(&format!("{CS}/customers/ABC/services")), &[]).await;
    assert_eq!(
        (answer.status, answer.header("x-request-id").as_deref()),
        (404, Some("up-8"))
    );
    // No id from the upstream: csgate's own.
    upstream.set_default(Reply::json(200, "[]"));
    let answer = get_with(&gw.url(&proxied), &[("x-request-id", "client-2")]).await;
    assert_eq!(answer.header("x-request-id").as_deref(), Some("client-2"));
}

#[tokio::test]
async fn via_is_added_both_ways_and_appended_to_an_existing_one() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway(NO_CACHE, &[upstream.url()]).await;
    for path in paths() {
        let answer = get_with(&gw.url(&path), &[]).await;
        assert_eq!(
            answer.header("via").as_deref(),
            Some("1.1 csgate"),
            "{path}"
        );
        let got = upstream.requests().pop().expect("forwarded");
        assert_eq!(header(&got, "via").as_deref(), Some("1.1 csgate"), "{path}");
    }
    // The client's Via on a proxied route, and the upstream's on its answer, are extended.
    upstream.set_default(Reply::json(200, "[]").with_header("via", "1.1 origin-cdn"));
    let proxied = format!("{CS}/services/42/states");
    let answer = get_with(&gw.url(&proxied), &[("via", "1.0 corp-proxy")]).await;
    assert_eq!(
        answer.header("via").as_deref(),
        Some("1.1 origin-cdn, 1.1 csgate")
    );
    let got = upstream.requests().pop().expect("forwarded");
    assert_eq!(
        header(&got, "via").as_deref(),
        Some("1.0 corp-proxy, 1.1 csgate")
    );

    // A gateway's own error is not a forwarded message: no Via.
    let answer = get_with(
        &gw.url(&format!("{CS}/customers/ABC/services?active_states=x")),
        &[],
    )
    .await;
    assert_eq!((answer.status, answer.header("via")), (400, None));

    let renamed = start_gateway(
        "[server]\nvia = \"edge-7\"\n[cache]\nenabled = false\n",
        &[upstream.url()],
    )
    .await;
    let answer = get_with(&renamed.url(&proxied), &[]).await;
    assert_eq!(
        answer.header("via").as_deref(),
        Some("1.1 origin-cdn, 1.1 edge-7")
    );
    let silent = start_gateway(
        "[server]\nvia = \"\"\n[cache]\nenabled = false\n",
        &[upstream.url()],
    )
    .await;
    let answer = get_with(&silent.url(&proxied), &[("via", "1.0 corp-proxy")]).await;
    assert_eq!(answer.header("via").as_deref(), Some("1.1 origin-cdn"));
    let got = upstream.requests().pop().expect("forwarded");
    assert_eq!(header(&got, "via").as_deref(), Some("1.0 corp-proxy"));
}

#[tokio::test]
async fn an_untrusted_peers_forwarding_headers_are_replaced() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway(NO_CACHE, &[upstream.url()]).await;
    let host = gw.addr.to_string();
    let spoofed = [
        ("forwarded", "for=6.6.6.6;host=evil;proto=https"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
        ("x-real-ip", "6.6.6.6"),
    ];
    for path in paths() {
        let answer = get_with(&gw.url(&path), &spoofed).await;
        assert_eq!(answer.status, 200, "{path}");
        let got = upstream.requests().pop().expect("forwarded");
        let seen = |name| header(&got, name);
        assert_eq!(
            seen("forwarded"),
            Some(format!("for=127.0.0.1;host=\"{host}\";proto=http")),
            "{path}"
        );
        assert_eq!(seen("x-forwarded-for").as_deref(), Some("127.0.0.1"));
        assert_eq!(seen("x-forwarded-host"), Some(host.clone()));
        assert_eq!(seen("x-forwarded-proto").as_deref(), Some("http"));
        assert_eq!(seen("x-real-ip").as_deref(), Some("127.0.0.1"));
        assert_eq!(got.headers.get_all("x-forwarded-for").iter().count(), 1);
        // The upstream is addressed by its own name.
        assert_eq!(seen("host"), Some(upstream.addr.to_string()));
    }
}

#[tokio::test]
async fn a_trusted_proxys_forwarding_headers_are_extended() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway(TRUSTED, &[upstream.url()]).await;
    let host = gw.addr.to_string();
    let relayed = [
        ("forwarded", "for=203.0.113.9;proto=https"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-host", "api.example.com"),
        ("x-forwarded-proto", "https"),
        ("x-real-ip", "203.0.113.9"),
    ];
    for path in paths() {
        let answer = get_with(&gw.url(&path), &relayed).await;
        assert_eq!(answer.status, 200, "{path}");
        let got = upstream.requests().pop().expect("forwarded");
        let seen = |name| header(&got, name);
        assert_eq!(
            seen("forwarded"),
            Some(format!(
                "for=203.0.113.9;proto=https, for=127.0.0.1;host=\"{host}\";proto=http"
            )),
            "{path}"
        );
        assert_eq!(
            seen("x-forwarded-for").as_deref(),
            Some("203.0.113.9, 127.0.0.1")
        );
        assert_eq!(seen("x-forwarded-host").as_deref(), Some("api.example.com"));
        assert_eq!(seen("x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(seen("x-real-ip").as_deref(), Some("203.0.113.9"));
    }
    // A trusted proxy that sent nothing: csgate's own values.
    let answer = get_with(&gw.url(&paths()[0]), &[]).await;
    assert_eq!(answer.status, 200);
    let got = upstream.requests().pop().expect("forwarded");
    assert_eq!(
        header(&got, "x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(header(&got, "x-forwarded-host"), Some(host));
}

#[tokio::test]
async fn preserve_host_forwards_the_clients_host() {
    let upstream = FakeUpstream::start(Reply::json(200, "[]")).await;
    let gw = start_gateway(
        "[upstream]\npreserve_host = true\n[cache]\nenabled = false\n",
        &[upstream.url()],
    )
    .await;
    for path in paths() {
        let answer = get_with(&gw.url(&path), &[("host", "tenant-a.example")]).await;
        assert_eq!(answer.status, 200, "{path}");
        let got = upstream.requests().pop().expect("forwarded");
        assert_eq!(
            header(&got, "host").as_deref(),
            Some("tenant-a.example"),
            "{path}"
        );
        assert_eq!(
            header(&got, "x-forwarded-host").as_deref(),
            Some("tenant-a.example")
        );
    }
}
