//! SQLite connections, pragmas and the schema.
//!
//! One writer connection does every write, each in an `IMMEDIATE` transaction, so writes
//! are serialised without `SQLITE_BUSY` games and a per-service counter (state and task
//! ids) can never hand out the same id twice. A small pool of read connections serves
//! queries concurrently with it (WAL). All SQLite calls run on tokio's blocking pool.
//!
//! Memory is bounded by one setting, `[store] max_memory_bytes` (see [`Memory`]): it is
//! SQLite's soft heap limit, and half of it is split between the connections' page
//! caches. SQLite allocates with the C allocator, not Rust's, so this is the one bound
//! that reaches it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::Semaphore;

use super::error::StoreError;

/// The schema, one entry per version; `PRAGMA user_version` records how many ran.
/// Append only: never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: services, states, tasks. JSON columns hold serde_json text (events, extension
    // maps, type values that may be an integer or a name); *_at columns are Unix
    // milliseconds, for range conditions.
    r#"
    CREATE TABLE services (
        service_id        INTEGER PRIMARY KEY AUTOINCREMENT,
        contact_center_id TEXT NOT NULL,
        group_id          TEXT NOT NULL,
        customer_id       TEXT,
        contact_key       TEXT,
        service_type      TEXT,
        est_duration      INTEGER,
        started_at        INTEGER NOT NULL,
        started           TEXT NOT NULL,
        completed_at      INTEGER,
        completed         TEXT,
        disposition       TEXT,
        disposition_desc  TEXT,
        auto_complete_at  INTEGER,
        expires_at        INTEGER,
        extensions        TEXT NOT NULL DEFAULT '{}',
        next_state_id     INTEGER NOT NULL DEFAULT 1,
        next_task_id      INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX services_by_contact_key
        ON services (contact_center_id, group_id, contact_key, service_id);
    CREATE INDEX services_by_customer
        ON services (contact_center_id, group_id, customer_id, service_id);
    CREATE INDEX services_to_auto_complete
        ON services (auto_complete_at) WHERE auto_complete_at IS NOT NULL AND completed_at IS NULL;
    CREATE INDEX services_to_expire
        ON services (expires_at) WHERE expires_at IS NOT NULL;
    CREATE INDEX services_completed
        ON services (contact_center_id, group_id, completed_at) WHERE completed_at IS NOT NULL;

    CREATE TABLE states (
        service_id       INTEGER NOT NULL REFERENCES services (service_id) ON DELETE CASCADE,
        state_id         INTEGER NOT NULL,
        state_type       TEXT,
        est_duration     INTEGER,
        started_at       INTEGER NOT NULL,
        started          TEXT NOT NULL,
        completed_at     INTEGER,
        completed        TEXT,
        disposition      TEXT,
        disposition_desc TEXT,
        extensions       TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (service_id, state_id)
    ) WITHOUT ROWID;

    CREATE TABLE tasks (
        service_id       INTEGER NOT NULL REFERENCES services (service_id) ON DELETE CASCADE,
        task_id          INTEGER NOT NULL,
        task_type        TEXT,
        state_id         INTEGER,
        est_duration     INTEGER,
        started_at       INTEGER NOT NULL,
        started          TEXT NOT NULL,
        completed_at     INTEGER,
        completed        TEXT,
        disposition      TEXT,
        disposition_desc TEXT,
        extensions       TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (service_id, task_id)
    ) WITHOUT ROWID;
    "#,
];

/// How long a connection waits on a lock held by another connection (e.g. a checkpoint)
/// before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection: every distinct statement the store runs
/// (about thirty, with the state/task variants) stays compiled.
const STATEMENT_CACHE: usize = 64;

/// How SQLite's memory is bounded, from `[store] max_memory_bytes`.
#[derive(Clone, Copy, Debug)]
struct Memory {
    /// `PRAGMA soft_heap_limit`: process-wide; past it SQLite frees page-cache pages
    /// before allocating more (it never fails a query for it, unlike the hard limit).
    soft_heap_limit: i64,
    /// `PRAGMA cache_size` of every connection, negative as SQLite takes KiB: half the
    /// limit over all connections, so the page caches together stay within half and the
    /// rest covers schema, prepared statements and sorting.
    cache_size: i64,
}

impl Memory {
    fn new(max_memory_bytes: usize, connections: usize) -> Memory {
        let bytes = i64::try_from(max_memory_bytes).unwrap_or(i64::MAX);
        let per_connection_kib = bytes / 2 / 1024 / i64::try_from(connections.max(1)).unwrap_or(1);
        Memory {
            soft_heap_limit: bytes,
            cache_size: -per_connection_kib.max(1),
        }
    }

    /// The per-connection pragmas. `mmap_size = 0`: pages are read into the bounded page
    /// cache, never mapped, so a large file does not become resident memory.
    fn apply(self, conn: &Connection) -> Result<(), StoreError> {
        conn.pragma_update(None, "cache_size", self.cache_size)?;
        conn.pragma_update(None, "mmap_size", 0)?;
        Ok(())
    }
}

/// The store's connections. Cheap to share behind the store's `Arc`.
pub struct Db {
    path: PathBuf,
    memory: Memory,
    writer: Arc<tokio::sync::Mutex<Connection>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// One permit per pooled reader: holding a permit guarantees a connection (or the
    /// right to open a replacement when one was lost to a panic).
    reader_permits: Arc<Semaphore>,
}

impl Db {
    /// Opens or creates the file, migrates the schema and opens `readers` read
    /// connections, SQLite's memory bounded by `max_memory_bytes`.
    pub fn open(path: &Path, readers: usize, max_memory_bytes: usize) -> Result<Db, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.to_owned(),
                source,
            })?;
        }
        let readers = readers.max(1);
        let memory = Memory::new(max_memory_bytes, readers + 1);
        let mut writer = Connection::open(path)?;
        configure_writer(&writer, memory)?;
        migrate(&mut writer)?;
        let pool = (0..readers)
            .map(|_| open_reader(path, memory))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Db {
            path: path.to_owned(),
            memory,
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            readers: Arc::new(Mutex::new(pool)),
            reader_permits: Arc::new(Semaphore::new(readers)),
        })
    }

    /// Runs `f` in one write transaction, committed when `f` succeeds and rolled back
    /// otherwise.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let mut conn = self.writer.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::from)?;
            let out = f(&tx)?;
            tx.commit().map_err(StoreError::from)?;
            Ok(out)
        })
        .await
        .map_err(StoreError::from)?
    }

    /// Runs `f` on a read connection inside one read transaction (a consistent snapshot).
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let permit = self
            .reader_permits
            .clone()
            .acquire_owned()
            .await
            .expect("the reader semaphore is never closed");
        let pool = self.readers.clone();
        let path = self.path.clone();
        let memory = self.memory;
        tokio::task::spawn_blocking(move || {
            let pooled = pool.lock().unwrap_or_else(PoisonError::into_inner).pop();
            let mut conn = match pooled {
                Some(conn) => conn,
                None => open_reader(&path, memory)?,
            };
            let result = (|| {
                let tx = conn.transaction().map_err(StoreError::from)?;
                let out = f(&tx)?;
                tx.finish().map_err(StoreError::from)?;
                Ok(out)
            })();
            pool.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
            drop(permit);
            result
        })
        .await
        .map_err(StoreError::from)?
    }
}

fn configure_writer(conn: &Connection, memory: Memory) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // Process-wide: set once, by the connection every store opens first.
    let _: i64 = conn.query_row(
        &format!("PRAGMA soft_heap_limit = {}", memory.soft_heap_limit),
        [],
        |row| row.get(0),
    )?;
    memory.apply(conn)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt(format!(
            "the database refused WAL mode (journal_mode = {mode})"
        )));
    }
    // synchronous = NORMAL in WAL mode: COMMIT returns once the transaction's frames are
    // written to the WAL file, i.e. handed to the kernel. A process killed with `kill -9`
    // right after an acknowledged write loses nothing (the kernel still writes the page
    // cache out, and the next open replays the WAL). Only an OS crash or power loss can
    // drop the last transactions, and never corrupts the file. FULL would add an fsync
    // per commit to cover power loss too; for the reference store (demo, tests,
    // benchmarks) surviving process death is the requirement, at far lower write latency.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(())
}

fn open_reader(path: &Path, memory: Memory) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    memory.apply(&conn)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// Applies the migrations the file has not seen yet, each in its own transaction.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let known = MIGRATIONS.len();
    let applied = usize::try_from(version).unwrap_or(usize::MAX);
    if applied > known {
        return Err(StoreError::SchemaTooNew {
            found: version,
            known,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        let version = i64::try_from(index + 1).expect("a handful of migrations fits an i64");
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version = index + 1, "store schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::defaults::STORE_MAX_MEMORY_BYTES as MEMORY;

    /// The settings every connection reads back. The heap limit is process-wide and other
    /// tests open stores concurrently, all with the default, so that is what this uses.
    #[tokio::test]
    async fn the_memory_bound_is_applied_to_every_connection() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Db::open(&dir.path().join("cs.db"), 4, MEMORY).expect("open");
        let settings = |conn: &Connection| -> Result<[i64; 3], StoreError> {
            let read = |pragma: &str| conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0));
            Ok([
                read("cache_size")?,
                read("mmap_size")?,
                read("soft_heap_limit")?,
            ])
        };
        // 16 MiB: 8 MiB of page cache over 5 connections, 1638 KiB each (SQLite's own
        // default is 2000 KiB per connection, and no heap limit at all).
        let expected = [-1638, 0, 16 * 1024 * 1024];
        assert_eq!(db.write(settings).await.expect("writer"), expected);
        for _ in 0..4 {
            assert_eq!(db.read(settings).await.expect("reader"), expected);
        }
    }

    #[test]
    fn migrations_run_once_and_record_the_version() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nested/dir/cs.db");
        let db = Db::open(&path, 1, MEMORY).expect("first open");
        drop(db);
        let db = Db::open(&path, 1, MEMORY).expect("second open does not re-run migrations");
        drop(db);
        let conn = Connection::open(&path).expect("open");
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .expect("version");
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cs.db");
        let conn = Connection::open(&path).expect("open");
        conn.pragma_update(None, "user_version", 99)
            .expect("set version");
        drop(conn);
        assert!(matches!(
            Db::open(&path, 1, MEMORY),
            Err(StoreError::SchemaTooNew { found: 99, .. })
        ));
    }
}
