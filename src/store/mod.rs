//! The reference Context Services store: a persistent implementation of the GMS side
//! of the Context Services REST API (services, states, tasks, attached data, Query
//! Services) on SQLite. csgate runs it embedded as its default upstream, or standalone
//! with `csgate store`.
//!
//! # Layout
//! - `routes`: method + path → [`routes::Route`] (404/405 decided there).
//! - `handler`: the HTTP edge: tenant headers, body reading, one function per operation.
//! - `body`: request bodies → typed start/end/update commands (documented fields vs
//!   extensions, field validation).
//! - `model`: rows as read from SQLite and their JSON rendering.
//! - `repo`: the SQL of every operation (`repo::services`, `repo::items` for states and
//!   tasks).
//! - `query`: Query Services and the state/task list parameters.
//! - `sweep`: auto-completion and expiration.
//! - `config`: `[store]` as written and validated ([`StoreConfig`]).
//! - `db`: connections (one writer, a pool of readers), pragmas, schema migrations.
//! - `error`: [`StoreError`] (storage failures) and `ApiError` (what a client is told),
//!   with the one mapping from errors to responses.

mod body;
pub mod config;
mod db;
mod error;
mod handler;
mod model;
mod query;
mod repo;
mod routes;
mod sweep;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};

use crate::query::TypeMap;
use crate::server::{Plain, ServeOptions};

pub use config::StoreConfig;
pub use error::StoreError;
pub use routes::{is_routed, ROUTES};
pub use sweep::SweepReport;

/// Read connections kept open. WAL lets them read while the writer writes; queries are
/// short, so a handful covers many concurrent requests.
const READERS: usize = 4;

/// A cheap, cloneable handle on an open store.
///
/// Locking: the writer connection sits behind an async mutex that is taken before a
/// blocking task is spawned and held only by that task; readers come from a pool guarded
/// by a semaphore (one permit per connection). No lock is held across an `.await` other
/// than the acquisition itself.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: db::Db,
    legacy: bool,
    attributes: BTreeMap<String, TypeMap>,
    /// Stands in for an attribute without a configured map.
    no_map: TypeMap,
    sweep_interval: Duration,
    max_body_bytes: usize,
}

impl Store {
    /// Opens (creating when needed) the database file and brings its schema up to date.
    pub fn open(config: StoreConfig) -> Result<Store, StoreError> {
        let db = db::Db::open(&config.db, READERS, config.max_memory_bytes)?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                legacy: config.legacy,
                attributes: config.business_attributes,
                no_map: TypeMap::default(),
                sweep_interval: config.sweep_interval,
                max_body_bytes: config.max_body_bytes,
            }),
        })
    }

    /// Runs one sweep as if the time were `now`: auto-completes services past
    /// `auto_complete_after`, then deletes services past their expiration.
    pub async fn sweep_at(&self, now: DateTime<Utc>) -> Result<SweepReport, StoreError> {
        let now = now.trunc_subsecs(3);
        self.inner
            .db
            .write(move |conn| sweep::sweep(conn, now))
            .await
    }

    fn db(&self) -> &db::Db {
        &self.inner.db
    }

    fn max_body_bytes(&self) -> usize {
        self.inner.max_body_bytes
    }

    fn legacy(&self) -> bool {
        self.inner.legacy
    }

    /// The configured map for one business attribute, if any.
    fn attribute(&self, name: &str) -> Option<&TypeMap> {
        self.inner
            .attributes
            .get(name)
            .filter(|map| !map.is_empty())
    }

    /// The configured map for one business attribute, or an empty one.
    fn attribute_or_empty(&self, name: &str) -> &TypeMap {
        self.attribute(name).unwrap_or(&self.inner.no_map)
    }

    /// Every configured business-attribute map, by name.
    fn attributes(&self) -> &BTreeMap<String, TypeMap> {
        &self.inner.attributes
    }
}

impl body::Attributes for Store {
    fn map(&self, attribute: &str) -> Option<&TypeMap> {
        self.attribute(attribute)
    }
}

/// Serves the store's API on `listener` and runs the sweeper, until `shutdown` resolves
/// and in-flight requests have finished.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    shutdown: impl Future<Output = ()>,
) {
    let sweeper = tokio::spawn(sweep::run(store.clone(), store.inner.sweep_interval));
    let handler = move |request, _peer| handler::handle(store.clone(), request);
    crate::server::serve(listener, Plain, ServeOptions::internal(), handler, shutdown).await;
    sweeper.abort();
}

/// The current time at the precision the API speaks (milliseconds).
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}
