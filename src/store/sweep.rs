//! The sweeper: auto-completes services past `auto_complete_after` and deletes services
//! past their expiration. Its core, [`sweep`], takes `now`, so tests need not sleep.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{params, Connection};
use serde_json::{json, Value};

use super::error::StoreError;
use super::model::to_text;
use super::Store;
use crate::query::date;

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub auto_completed: usize,
    pub expired: usize,
}

/// One sweep over every tenant, as of `now`.
///
/// An auto-completed service gets a `completed` event stamped at its deadline
/// (start + `auto_complete_after`), not at the sweep time, so the recorded duration does
/// not depend on how often the sweeper runs. Auto-completion runs before expiration.
pub fn sweep(conn: &Connection, now: DateTime<Utc>) -> Result<SweepReport, StoreError> {
    let now_ms = now.timestamp_millis();
    let due: Vec<(i64, i64)> = {
        let mut statement = conn.prepare_cached(
            "SELECT service_id, auto_complete_at FROM services
             WHERE auto_complete_at IS NOT NULL AND completed_at IS NULL AND auto_complete_at <= ?1",
        )?;
        let rows = statement.query_map(params![now_ms], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (id, at_ms) in &due {
        let at = Utc
            .timestamp_millis_opt(*at_ms)
            .single()
            .ok_or_else(|| StoreError::Corrupt(format!("auto_complete_at {at_ms} out of range")))?;
        let completed: Value = json!({ "timestamp": date::format_canonical(at) });
        conn.prepare_cached(
            "UPDATE services SET completed_at = ?2, completed = ?3 WHERE service_id = ?1",
        )?
        .execute(params![id, at_ms, to_text(&completed)])?;
    }
    let expired = conn
        .prepare_cached("DELETE FROM services WHERE expires_at IS NOT NULL AND expires_at <= ?1")?
        .execute(params![now_ms])?;
    Ok(SweepReport {
        auto_completed: due.len(),
        expired,
    })
}

/// Sweeps every `interval` until the task is aborted; a zero interval disables it.
pub async fn run(store: Store, interval: Duration) {
    if interval.is_zero() {
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match store.sweep_at(Utc::now()).await {
            Ok(report) if report != SweepReport::default() => {
                tracing::info!(
                    auto_completed = report.auto_completed,
                    expired = report.expired,
                    "store sweep"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "store sweep failed"),
        }
    }
}
