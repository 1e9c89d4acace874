//! The upstream's `1xx` interim answers on pass-through routes, forwarded to the client
//! before the final answer (RFC 9110 §15.2): `102 Processing`, `103 Early Hints` with its
//! `Link` headers, and any other interim status but `100 Continue` (hop-by-hop: it
//! answers csgate's own request) and `101` (an upgrade, which hyper hands back as the
//! final answer and `usable_head` refuses). Hop-by-hop headers are stripped as on final
//! answers, and `Via` is extended.
//!
//! The client's side is the patched hyper's `InformationalSender` (vendor/PATCHES.md),
//! present on HTTP/1.1 and HTTP/2 requests and absent on HTTP/1.0 ones, which so never
//! get an interim answer; the upstream's side is hyper's client `on_informational`.

use http::header;
use http::{Request, Response};

use crate::httputil;

/// Where one client request's interim answers go. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Interim {
    client: hyper::ext::InformationalSender,
    /// csgate's `Via` pseudonym, `None` when `[server] via` is empty.
    via: Option<String>,
}

impl Interim {
    /// The client's interim channel, when its protocol allows interim answers.
    pub fn for_request(request: &http::request::Parts, via: Option<&str>) -> Option<Interim> {
        request
            .extensions
            .get::<hyper::ext::InformationalSender>()
            .map(|client| Interim {
                client: client.clone(),
                via: via.map(str::to_owned),
            })
    }

    /// Has the upstream's interim answers to `request` forwarded to the client.
    pub(super) fn attach<B>(&self, request: &mut Request<B>) {
        let interim = self.clone();
        hyper::ext::on_informational(request, move |answer| {
            interim.forward(answer.status(), answer.version(), answer.headers());
        });
    }

    fn forward(
        &self,
        status: http::StatusCode,
        version: http::Version,
        headers: &header::HeaderMap,
    ) {
        if status == http::StatusCode::CONTINUE || status == http::StatusCode::SWITCHING_PROTOCOLS {
            return;
        }
        let mut answer = Response::new(());
        *answer.status_mut() = status;
        *answer.headers_mut() = headers.clone();
        httputil::strip_hop_by_hop(answer.headers_mut());
        if let Some(pseudonym) = &self.via {
            let entry = httputil::via_entry(version, pseudonym);
            httputil::append_to_list(answer.headers_mut(), &header::VIA, &entry);
        }
        if let Err(refused) = self.client.send(answer) {
            tracing::debug!(%refused, "interim answer not forwarded");
        }
    }
}
