//! The two listeners [`run`](super::run) serves: the public one (the gateway, with its
//! connection limits and optional TLS) and the admin one (health, readiness, metrics,
//! cache administration).

use std::future::Future;

use tokio::net::TcpListener;

use super::Control;
use crate::admin::{self, Draining};
use crate::config::Config;
use crate::server::{self, Plain, ServeOptions};
use crate::settings::defaults;
use crate::tls::Tls;

/// The listeners [`run`](super::run) serves on, bound by the caller (tests bind
/// `127.0.0.1:0`).
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds `server.listen` and `admin.listen`; an error names the key.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        Ok(Listeners {
            public: super::bind(&config.server.listen.to_string(), "server.listen").await?,
            admin: super::bind(&config.admin.listen.to_string(), "admin.listen").await?,
        })
    }
}

/// The admin listener, serving until `stop` resolves. Warns (now, not when polled)
/// when it is reachable from outside and asks for no token.
pub(super) fn serve_admin(
    listener: TcpListener,
    config: &Config,
    control: &Control,
    draining: &Draining,
    stop: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    // Its own connection cap keeps the admin listener reachable when the public one is
    // saturated; its clients get the configured header read timeout.
    let options = ServeOptions {
        header_read_timeout: config.server.header_read_timeout,
        max_connections: defaults::ADMIN_MAX_CONNECTIONS,
        ..ServeOptions::internal()
    };
    let control = control.clone();
    let draining = draining.clone();
    let access = admin::Access::from_config(&config.admin);
    if access.token.is_none() && !config.admin.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.admin.listen,
            "the admin listener is on a routable address and asks for no token: \
             anyone who reaches it can purge the cache; set [admin] token_file \
             (or CSGATE_ADMIN_TOKEN_FILE)"
        );
    }
    let handler = move |request, _peer| {
        admin::handle(control.gateway(), draining.clone(), access.clone(), request)
    };
    server::serve(listener, Plain, options, handler, stop)
}

/// The public listener (over `tls` when it is configured), serving the gateway
/// [`Control`] currently holds until `stop` resolves, then draining.
pub(super) fn serve_public(
    listener: TcpListener,
    tls: Option<Tls>,
    config: &Config,
    control: &Control,
    stop: impl Future<Output = ()>,
) -> impl Future<Output = ()> {
    let handler = {
        let control = control.clone();
        move |request, peer| {
            let gateway = control.gateway();
            async move { gateway.handle(request, peer).await }
        }
    };
    let options = ServeOptions {
        limits: Some(server::ConnectionLimits {
            per_client: config.limits.connections.per_client,
            trusted_proxies: config.server.trusted_proxies.clone(),
            h2_streams: config.limits.connections.h2_streams_per_connection,
            metrics: control.gateway().metrics().limits().clone(),
        }),
        ..config.server.serve_options()
    };
    async move {
        match tls {
            Some(tls) => server::serve(listener, tls, options, handler, stop).await,
            None => server::serve(listener, Plain, options, handler, stop).await,
        }
    }
}
