//! Generic reconciler: pushes the desired state in a table to an external system
//! (BPF maps, routes, ...) through [`Operations`], writing a [`Status`] back into each
//! object, retrying failures with exponential backoff and pruning stale external state
//! once the table is initialized.

mod metrics;
mod run;
mod status;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{ObjIter, Object, ReadTxn, Revision};

pub use metrics::ReconcilerMetrics;
pub use run::{Reconciler, ReconcilerHandle};
pub use status::{Status, StatusKind};

/// An object that carries a reconcile [`Status`].
pub trait Reconcilable: Object {
    /// The current status.
    fn status(&self) -> &Status;
    /// Replaces the status (called on a clone before writing it back).
    fn set_status(&mut self, status: Status);
}

/// One object of a batch operation; the implementation fills in `result`.
#[derive(Debug)]
pub struct BatchEntry<T, E> {
    /// The object to update or delete.
    pub object: Arc<T>,
    /// Its revision.
    pub revision: Revision,
    /// Outcome; `None` after the batch call counts as a failure.
    pub result: Option<Result<(), E>>,
}

/// Operations that apply objects to the external system. All must be idempotent, and
/// deleting something already absent counts as success.
#[async_trait]
pub trait Operations<T: Object>: Send + Sync + 'static {
    /// Error type; its `Display` text goes into [`Status::error`].
    type Error: std::fmt::Display + Send + Sync + 'static;

    /// Creates or updates `obj` in the external system.
    async fn update(&self, txn: &ReadTxn, rev: Revision, obj: &T) -> Result<(), Self::Error>;

    /// Removes `obj` (its last version before deletion) from the external system.
    async fn delete(&self, txn: &ReadTxn, rev: Revision, obj: &T) -> Result<(), Self::Error>;

    /// Removes from the external system everything not in `objects` (the whole table).
    async fn prune(&self, txn: &ReadTxn, objects: ObjIter<'_, T>) -> Result<(), Self::Error>;

    /// Updates many objects; the default calls [`Operations::update`] for each.
    async fn update_batch(&self, txn: &ReadTxn, batch: &mut [BatchEntry<T, Self::Error>]) {
        for e in batch.iter_mut() {
            e.result = Some(self.update(txn, e.revision, &e.object).await);
        }
    }

    /// Deletes many objects; the default calls [`Operations::delete`] for each.
    async fn delete_batch(&self, txn: &ReadTxn, batch: &mut [BatchEntry<T, Self::Error>]) {
        for e in batch.iter_mut() {
            e.result = Some(self.delete(txn, e.revision, &e.object).await);
        }
    }
}

/// Reconciler configuration; [`Config::new`] gives Cilium's defaults.
#[derive(Clone)]
pub struct Config {
    /// Name used in logs, health and metric labels.
    pub name: String,
    /// Maximum objects handled per incremental round.
    pub round_size: usize,
    /// Minimum time between rounds (rate limit).
    pub min_round_interval: Duration,
    /// First retry delay after a failure.
    pub retry_min: Duration,
    /// Maximum retry delay.
    pub retry_max: Duration,
    /// Prune interval once initialized (`None`: prune once at init and on trigger).
    pub prune_interval: Option<Duration>,
    /// Objects done for longer than this are marked pending again (`None`: never).
    pub refresh_interval: Option<Duration>,
    /// Maximum objects re-marked per refresh pass (one pass per second when busy).
    pub refresh_batch: usize,
    /// Metrics (shared by all reconcilers of a registry).
    pub metrics: Option<ReconcilerMetrics>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("name", &self.name)
            .field("round_size", &self.round_size)
            .field("retry_min", &self.retry_min)
            .field("retry_max", &self.retry_max)
            .field("prune_interval", &self.prune_interval)
            .field("refresh_interval", &self.refresh_interval)
            .finish()
    }
}

impl Config {
    /// Defaults: 1000 objects per round, 1000 rounds/s, retries 100 ms .. 1 min, prune
    /// hourly, refresh after 30 min at 100 objects/s.
    pub fn new(name: impl Into<String>) -> Self {
        Config {
            name: name.into(),
            round_size: 1000,
            min_round_interval: Duration::from_millis(1),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(60),
            prune_interval: Some(Duration::from_secs(3600)),
            refresh_interval: Some(Duration::from_secs(1800)),
            refresh_batch: 100,
            metrics: None,
        }
    }
}

/// Delay before retry number `attempt` (1-based): `min * 2^(attempt-1)`, capped at
/// `max`, without overflow.
pub fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    min.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(60));
        assert_eq!(backoff(min, max, 1), min);
        assert_eq!(backoff(min, max, 2), Duration::from_millis(200));
        assert_eq!(backoff(min, max, 4), Duration::from_millis(800));
        assert_eq!(backoff(min, max, 20), max);
        assert_eq!(backoff(min, max, u32::MAX), max);
    }
}
