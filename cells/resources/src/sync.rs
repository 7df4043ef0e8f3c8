//! Waiting until applied objects have reached the datapath (`ciliumctl apply --wait`).
//!
//! Cells that turn stored objects into datapath state (the load-balancer writer, the BPF map
//! reconcilers, ...) register a waiter: a function returning a future that completes once the
//! cell has handled everything committed before the call. Waiters run by rank
//! ([`RANK_TABLES`] before [`RANK_DATAPATH`]), so a later stage waits for what an earlier one
//! has just written.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::ResourcesError;

/// What a waiter returns: `Err(reason)` when its stage cannot catch up (stopped, failing).
pub type SyncFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A stage's waiter (see the module docs).
pub type SyncWaiter = Arc<dyn Fn() -> SyncFuture + Send + Sync>;

/// Rank of stages that turn applied objects into other tables (load-balancer writer, policy
/// resolution).
pub const RANK_TABLES: u32 = 10;
/// Rank of stages that write tables into BPF maps (reconcilers).
pub const RANK_DATAPATH: u32 = 20;

/// The registered waiters, by rank.
#[derive(Default)]
pub struct SyncWaiters {
    list: Mutex<Vec<(u32, &'static str, SyncWaiter)>>,
}

impl std::fmt::Debug for SyncWaiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.list.lock().iter().map(|(_, n, _)| *n).collect();
        f.debug_struct("SyncWaiters")
            .field("stages", &names)
            .finish()
    }
}

impl SyncWaiters {
    /// Register stage `name` at `rank` (equal ranks keep registration order).
    pub fn add(&self, name: &'static str, rank: u32, waiter: SyncWaiter) {
        let mut list = self.list.lock();
        list.push((rank, name, waiter));
        list.sort_by_key(|(r, _, _)| *r);
    }

    /// The registered stage names, in the order they are waited for.
    pub fn stages(&self) -> Vec<&'static str> {
        self.list.lock().iter().map(|(_, n, _)| *n).collect()
    }

    /// Run every waiter in order within `timeout` overall; returns how long each stage took.
    pub async fn wait(
        &self,
        timeout: Duration,
    ) -> Result<Vec<(&'static str, Duration)>, ResourcesError> {
        let stages: Vec<(&'static str, SyncWaiter)> = self
            .list
            .lock()
            .iter()
            .map(|(_, n, w)| (*n, w.clone()))
            .collect();
        let start = Instant::now();
        let mut took = Vec::with_capacity(stages.len());
        for (name, waiter) in stages {
            let t = Instant::now();
            let left = timeout.saturating_sub(start.elapsed());
            match tokio::time::timeout(left, waiter()).await {
                Ok(Ok(())) => took.push((name, t.elapsed())),
                Ok(Err(reason)) => {
                    return Err(ResourcesError::SyncFailed {
                        stage: name.to_string(),
                        reason,
                    });
                }
                Err(_) => {
                    return Err(ResourcesError::NotSynced {
                        stage: name.to_string(),
                        timeout_secs: timeout.as_secs_f64(),
                    });
                }
            }
        }
        Ok(took)
    }
}

/// Where a reconciler job keeps the handle of its running reconciler (replaced when the job
/// restarts it), so that a waiter can reach it.
pub type ReconcilerSlot = Arc<Mutex<Option<statedb::reconciler::ReconcilerHandle>>>;

/// A waiter for a statedb reconciler of `table`: done once every change of the table
/// committed before the call is reconciled (a failing object keeps it waiting).
pub fn reconciler_waiter<T: statedb::Object>(
    db: statedb::Db,
    table: statedb::Table<T>,
    slot: ReconcilerSlot,
) -> SyncWaiter {
    Arc::new(move || {
        let handle = slot.lock().clone();
        let revision = table.revision(&db.read_txn());
        Box::pin(async move {
            match handle {
                Some(h) => h
                    .wait_until_reconciled(revision)
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("the reconciler is not running".to_string()),
            }
        })
    })
}

/// A waiter for a pass-based stage that publishes, after each successful pass, the input
/// table revisions the pass had seen (`processed`); `current` gives the revisions now.
pub fn revisions_waiter(
    processed: tokio::sync::watch::Receiver<Vec<u64>>,
    current: impl Fn() -> Vec<u64> + Send + Sync + 'static,
    stopped: &'static str,
) -> SyncWaiter {
    Arc::new(move || {
        let target = current();
        let mut rx = processed.clone();
        Box::pin(async move {
            rx.wait_for(|seen| {
                seen.len() == target.len() && seen.iter().zip(&target).all(|(s, t)| s >= t)
            })
            .await
            .map(|_| ())
            .map_err(|_| stopped.to_string())
        })
    })
}

/// Run a statedb reconciler of `table` with `ops` as the one-shot job "reconciler" of `jobs`
/// and, when `resources` is given, register it as the `apply --wait` stage `stage` (rank
/// [`RANK_DATAPATH`]). A restarted job replaces the handle the waiter uses.
pub fn run_reconciler<T, O>(
    jobs: &hive::JobGroup,
    resources: Option<&crate::Resources>,
    stage: &'static str,
    (db, table): (statedb::Db, statedb::Table<T>),
    ops: Arc<O>,
    config: statedb::reconciler::Config,
) where
    T: statedb::reconciler::Reconcilable,
    O: statedb::reconciler::Operations<T>,
{
    let slot = ReconcilerSlot::default();
    if let Some(resources) = resources {
        resources.add_sync_waiter(
            stage,
            RANK_DATAPATH,
            reconciler_waiter(db.clone(), table.clone(), slot.clone()),
        );
    }
    jobs.add(hive::Job::one_shot("reconciler", move |cancel, health| {
        let (db, table, ops, config, slot) = (
            db.clone(),
            table.clone(),
            ops.clone(),
            config.clone(),
            slot.clone(),
        );
        async move {
            let (h, run) = statedb::reconciler::Reconciler::new(
                config,
                db,
                table,
                ops,
                Arc::new(health),
                cancel,
            )?;
            *slot.lock() = Some(h);
            run.await;
            Ok(())
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn stages_run_in_order_and_a_slow_one_times_out_by_name() {
        let w = SyncWaiters::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        for (name, rank) in [("second", RANK_DATAPATH), ("first", RANK_TABLES)] {
            let order = order.clone();
            w.add(
                name,
                rank,
                Arc::new(move || {
                    let order = order.clone();
                    Box::pin(async move {
                        order.lock().push(name);
                        Ok(())
                    })
                }),
            );
        }
        let took = w.wait(Duration::from_secs(5)).await.unwrap();
        assert_eq!(*order.lock(), vec!["first", "second"]);
        assert_eq!(took.len(), 2);

        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        w.add(
            "stuck",
            RANK_DATAPATH,
            Arc::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
                Box::pin(std::future::pending())
            }),
        );
        match w.wait(Duration::from_millis(50)).await {
            Err(ResourcesError::NotSynced { stage, .. }) => assert_eq!(stage, "stuck"),
            other => panic!("expected NotSynced, got {other:?}"),
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let w = SyncWaiters::default();
        w.add(
            "broken",
            RANK_TABLES,
            Arc::new(|| Box::pin(async { Err("reconciler stopped".to_string()) })),
        );
        let e = w.wait(Duration::from_secs(1)).await.unwrap_err();
        assert!(
            e.to_string().contains("broken") && e.to_string().contains("reconciler stopped"),
            "{e}"
        );
    }
}
