//! The reconcile loop.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::{BatchEntry, Config, Operations, Reconcilable, Status, StatusKind, backoff};
use crate::index::Key;
use crate::{ChangeIterator, Db, Error, HealthReporter, ReadTxn, Result, Revision, Table, Watch};

#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    /// Every change up to this revision was handled once.
    processed: Revision,
    /// Lowest revision still failing (awaiting retry).
    retry_low: Option<Revision>,
}

/// Handle to a running reconciler.
#[derive(Debug, Clone)]
pub struct ReconcilerHandle {
    name: String,
    prune: Arc<Notify>,
    progress: watch::Receiver<Progress>,
}

impl ReconcilerHandle {
    /// Requests a prune (runs once the table is initialized).
    pub fn prune(&self) {
        self.prune.notify_one();
    }

    /// Waits until every change up to `revision` of the table was reconciled
    /// successfully (or superseded by a newer write). Errors if the reconciler stops.
    pub async fn wait_until_reconciled(&self, revision: Revision) -> Result<()> {
        let mut rx = self.progress.clone();
        rx.wait_for(|p| p.processed >= revision && p.retry_low.is_none_or(|l| l > revision))
            .await
            .map(|_| ())
            .map_err(|_| Error::ReconcilerStopped {
                name: self.name.clone(),
                revision,
            })
    }
}

/// Constructor of reconcilers.
#[derive(Debug)]
pub struct Reconciler;

struct Retry<T> {
    object: Arc<T>,
    /// Revision of the object version to retry (our own error-status write).
    rev: Revision,
    /// Revision the user waits on (first failing version).
    wm_rev: Revision,
    deleted: bool,
    attempts: u32,
    at: Instant,
}

struct Runner<T: Reconcilable, O: Operations<T>> {
    cfg: Config,
    db: Db,
    table: Table<T>,
    ops: Arc<O>,
    health: Arc<dyn HealthReporter>,
    changes: ChangeIterator<T>,
    retries: BTreeMap<Key, Retry<T>>,
    last_error: String,
    prune_error: Option<String>,
    last_health: String,
    progress: watch::Sender<Progress>,
    initialized: bool,
    prune_requested: bool,
    next_prune: Option<Instant>,
    next_refresh: Option<Instant>,
}

impl Reconciler {
    /// Creates a reconciler for `table`; returns its handle and the loop future to spawn.
    /// The loop ends when `cancel` is cancelled.
    #[expect(
        clippy::new_ret_no_self,
        reason = "returns the handle plus the loop future"
    )]
    pub fn new<T: Reconcilable, O: Operations<T>>(
        config: Config,
        db: Db,
        table: Table<T>,
        ops: Arc<O>,
        health: Arc<dyn HealthReporter>,
        cancel: CancellationToken,
    ) -> Result<(ReconcilerHandle, impl Future<Output = ()> + Send + 'static)> {
        let mut wtxn = db.write_txn(&[&table])?;
        let changes = table.changes(&mut wtxn)?;
        wtxn.commit();
        let (tx, rx) = watch::channel(Progress::default());
        let prune = Arc::new(Notify::new());
        let handle = ReconcilerHandle {
            name: config.name.clone(),
            prune: prune.clone(),
            progress: rx,
        };
        let next_refresh = config.refresh_interval.map(|i| Instant::now() + i / 2);
        let runner = Runner {
            cfg: config,
            db,
            table,
            ops,
            health,
            changes,
            retries: BTreeMap::new(),
            last_error: String::new(),
            prune_error: None,
            last_health: String::new(),
            progress: tx,
            initialized: false,
            prune_requested: false,
            next_prune: None,
            next_refresh,
        };
        Ok((handle, runner.run(prune, cancel)))
    }
}

fn to_str<E: std::fmt::Display>(r: Option<Result<(), E>>) -> Result<(), String> {
    match r {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("batch operation returned no result for this object".into()),
    }
}

impl<T: Reconcilable, O: Operations<T>> Runner<T, O> {
    async fn run(mut self, prune: Arc<Notify>, cancel: CancellationToken) {
        tracing::debug!(reconciler = %self.cfg.name, table = self.table.name(), "reconciler started");
        loop {
            let round_start = Instant::now();
            let (watch, init_watch) = self.round().await;
            let next_retry = self.retries.values().map(|r| r.at).min();
            let prune_at = if self.initialized {
                self.next_prune
            } else {
                None
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = watch.changed() => {}
                _ = init_watch.changed(), if !self.initialized => {}
                _ = prune.notified() => self.prune_requested = true,
                _ = sleep_opt(next_retry) => {}
                _ = sleep_opt(prune_at) => {}
                _ = sleep_opt(self.next_refresh) => {}
            }
            // Rate limit: round starts are at least `min_round_interval` apart. A round
            // that already took that long (a busy one) starts the next without sleeping.
            let next_round = round_start + self.cfg.min_round_interval;
            if Instant::now() < next_round {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = sleep_until(next_round) => {}
                }
            } else if cancel.is_cancelled() {
                break;
            }
        }
        tracing::debug!(reconciler = %self.cfg.name, "reconciler stopped");
    }

    /// One round: incremental changes, due retries, prune, refresh. Returns the table
    /// watch for the next round and the init watch.
    async fn round(&mut self) -> (Watch, Watch) {
        let rtxn = self.db.read_txn();
        let (changes, watch) = self.changes.next_limited(&rtxn, self.cfg.round_size);
        let complete = !watch.is_closed();
        let last_change = changes.last().map(|c| c.revision);
        let mut deletes = Vec::new();
        let mut updates = Vec::new();
        for c in changes {
            if c.deleted || c.object.status().kind == StatusKind::Pending {
                self.forget_retry(&c.object);
                let e = BatchEntry {
                    object: c.object,
                    revision: c.revision,
                    result: None,
                };
                if c.deleted {
                    deletes.push(e)
                } else {
                    updates.push(e)
                }
            }
        }
        self.collect_due_retries(&rtxn, &mut deletes, &mut updates);
        self.apply(&rtxn, deletes, updates).await;

        let processed = if complete {
            self.table.revision(&rtxn)
        } else {
            last_change.unwrap_or(0)
        };
        let retry_low = self.retries.values().map(|r| r.wm_rev).min();
        self.progress.send_modify(|p| {
            p.processed = p.processed.max(processed);
            p.retry_low = retry_low;
        });

        let (initialized, init_watch) = self.table.initialized(&rtxn);
        if initialized && !self.initialized {
            self.initialized = true;
            self.prune_requested = true;
        }
        let now = Instant::now();
        if self.initialized && (self.prune_requested || self.next_prune.is_some_and(|t| t <= now)) {
            self.prune(&rtxn).await;
        }
        if self.next_refresh.is_some_and(|t| t <= now) {
            self.refresh(&rtxn);
        }
        self.report_health(&rtxn);
        (watch, init_watch)
    }

    fn collect_due_retries(
        &mut self,
        rtxn: &ReadTxn,
        deletes: &mut Vec<BatchEntry<T, O::Error>>,
        updates: &mut Vec<BatchEntry<T, O::Error>>,
    ) {
        let now = Instant::now();
        let due: Vec<Key> = self
            .retries
            .iter()
            .filter(|(_, r)| r.at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let pk = self.table.primary_index().name();
        for key in due {
            let current = self.table.get(rtxn, &crate::Query::new(pk, &key));
            let Some(r) = self.retries.get(&key) else {
                continue;
            };
            match (r.deleted, current) {
                (true, None) => deletes.push(BatchEntry {
                    object: r.object.clone(),
                    revision: r.rev,
                    result: None,
                }),
                (false, Some(o)) if o.revision() == r.rev => updates.push(BatchEntry {
                    object: o.object(),
                    revision: r.rev,
                    result: None,
                }),
                // Re-created, changed or deleted since: the change feed brings it back.
                _ => {
                    self.retries.remove(&key);
                }
            }
        }
    }

    async fn apply(
        &mut self,
        rtxn: &ReadTxn,
        mut deletes: Vec<BatchEntry<T, O::Error>>,
        mut updates: Vec<BatchEntry<T, O::Error>>,
    ) {
        if deletes.is_empty() && updates.is_empty() {
            return;
        }
        if !deletes.is_empty() {
            let t = Instant::now();
            self.ops.delete_batch(rtxn, &mut deletes).await;
            self.observe("delete", t);
        }
        if !updates.is_empty() {
            let t = Instant::now();
            self.ops.update_batch(rtxn, &mut updates).await;
            self.observe("update", t);
        }
        let table = self.table.clone();
        let mut wtxn = match self.db.write_txn(&[&table]) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(reconciler = %self.cfg.name, error = %e, "cannot write statuses");
                return;
            }
        };
        for d in deletes {
            match to_str(d.result) {
                Ok(()) => self.forget_retry(&d.object),
                Err(err) => {
                    let key = table.primary_key(&d.object);
                    self.count_error("delete");
                    tracing::debug!(reconciler = %self.cfg.name, error = %err, "delete failed");
                    self.schedule_retry(key, d.object, d.revision, d.revision, true);
                    self.last_error = err;
                }
            }
        }
        // One timestamp per batch: reading the clock per object is measurable.
        let done = Status::done();
        for u in updates {
            let mut obj = (*u.object).clone();
            let result = to_str(u.result);
            obj.set_status(match &result {
                Ok(()) => done.clone(),
                Err(e) => Status::error(e.clone()),
            });
            let written = table.compare_and_swap(&mut wtxn, u.revision, obj).is_ok();
            match result {
                Ok(()) => self.forget_retry(&u.object),
                Err(err) => {
                    let key = table.primary_key(&u.object);
                    self.count_error("update");
                    tracing::debug!(reconciler = %self.cfg.name, error = %err, "update failed");
                    if written {
                        let new_rev = table.revision(&wtxn);
                        self.schedule_retry(key, u.object, new_rev, u.revision, false);
                    } else {
                        // A newer write won; it arrives through the change feed.
                        self.retries.remove(&key);
                    }
                    self.last_error = err;
                }
            }
        }
        wtxn.commit();
        if let Some(m) = &self.cfg.metrics {
            m.current_errors
                .with_label_values(&[self.cfg.name.as_str()])
                .set(i64::try_from(self.retries.len()).unwrap_or(i64::MAX));
        }
    }

    /// Drops a pending retry of `obj` (no-op, and no key computed, when none is pending).
    fn forget_retry(&mut self, obj: &T) {
        if !self.retries.is_empty() {
            self.retries.remove(&self.table.primary_key(obj));
        }
    }

    fn schedule_retry(
        &mut self,
        key: Key,
        object: Arc<T>,
        rev: Revision,
        wm: Revision,
        deleted: bool,
    ) {
        let (attempts, wm_rev) = match self.retries.get(&key) {
            Some(r) => (r.attempts.saturating_add(1), r.wm_rev),
            None => (1, wm),
        };
        let at = Instant::now() + backoff(self.cfg.retry_min, self.cfg.retry_max, attempts);
        self.retries.insert(
            key,
            Retry {
                object,
                rev,
                wm_rev,
                deleted,
                attempts,
                at,
            },
        );
    }

    async fn prune(&mut self, rtxn: &ReadTxn) {
        self.prune_requested = false;
        self.next_prune = self.cfg.prune_interval.map(|i| Instant::now() + i);
        let t = Instant::now();
        let res = self.ops.prune(rtxn, self.table.all(rtxn)).await;
        self.observe("prune", t);
        let result = match res {
            Ok(()) => {
                self.prune_error = None;
                "ok"
            }
            Err(e) => {
                self.count_error("prune");
                tracing::warn!(reconciler = %self.cfg.name, error = %e, "prune failed");
                self.prune_error = Some(e.to_string());
                "error"
            }
        };
        if let Some(m) = &self.cfg.metrics {
            m.prune_total
                .with_label_values(&[self.cfg.name.as_str(), result])
                .inc();
        }
    }

    /// Marks objects done for longer than the refresh interval as pending again.
    fn refresh(&mut self, rtxn: &ReadTxn) {
        let Some(interval) = self.cfg.refresh_interval else {
            return;
        };
        let cutoff = SystemTime::now().checked_sub(interval);
        let stale: Vec<_> = self
            .table
            .all(rtxn)
            .filter(|o| {
                let s = o.status();
                s.kind == StatusKind::Done && cutoff.is_none_or(|c| s.updated_at <= c)
            })
            .take(self.cfg.refresh_batch.max(1))
            .collect();
        let busy = stale.len() >= self.cfg.refresh_batch.max(1);
        let pause = if busy {
            std::time::Duration::from_secs(1)
        } else {
            interval / 2
        };
        self.next_refresh = Some(Instant::now() + pause.max(self.cfg.min_round_interval));
        if stale.is_empty() {
            return;
        }
        let table = self.table.clone();
        let Ok(mut wtxn) = self.db.write_txn(&[&table]) else {
            return;
        };
        for o in stale {
            let mut obj = (*o).clone();
            obj.set_status(Status::pending());
            // A concurrent writer wins; its version is pending anyway.
            let _ = table.compare_and_swap(&mut wtxn, o.revision(), obj);
        }
        wtxn.commit();
    }

    fn report_health(&mut self, rtxn: &ReadTxn) {
        let (msg, err) = if !self.retries.is_empty() {
            (
                format!("{} error(s)", self.retries.len()),
                Some(self.last_error.clone()),
            )
        } else if let Some(e) = &self.prune_error {
            ("prune failed".to_string(), Some(e.clone()))
        } else {
            (format!("OK, {} object(s)", self.table.len(rtxn)), None)
        };
        let key = format!("{msg}|{}", err.as_deref().unwrap_or(""));
        if key == self.last_health {
            return;
        }
        self.last_health = key;
        match err {
            Some(e) => self.health.degraded(&msg, &e),
            None => self.health.ok(&msg),
        }
    }

    fn observe(&self, op: &str, start: Instant) {
        if let Some(m) = &self.cfg.metrics {
            m.duration
                .with_label_values(&[self.cfg.name.as_str(), op])
                .observe(start.elapsed().as_secs_f64());
        }
    }

    fn count_error(&self, op: &str) {
        if let Some(m) = &self.cfg.metrics {
            m.errors_total
                .with_label_values(&[self.cfg.name.as_str(), op])
                .inc();
        }
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}
