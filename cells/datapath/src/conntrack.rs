//! Conntrack garbage collection: a job that deletes expired entries from the CT maps with
//! an adaptive interval, counts what it removes, and can be run on demand.
//!
//! The datapath ignores expired entries already; GC only frees the slots. The interval
//! shrinks when a pass removed a large share of what it scanned (connections churn, the
//! map could fill) and grows when it removed little.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cilium_bpf::{CtEntry4, CtKey4, Datapath, TypedMap};
use parking_lot::Mutex;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::sync::Notify;

use crate::error::Error;

/// First interval of the adaptive schedule.
pub const INITIAL_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Share of scanned entries above which the interval shrinks.
const SHRINK_ABOVE: f64 = 0.25;
/// Share of scanned entries below which the interval grows.
const GROW_BELOW: f64 = 0.05;

/// The next adaptive interval after a pass that scanned `scanned` and deleted `deleted`.
pub fn next_interval(
    prev: Duration,
    scanned: u64,
    deleted: u64,
    min: Duration,
    max: Duration,
) -> Duration {
    let ratio = if scanned == 0 {
        0.0
    } else {
        deleted as f64 / scanned as f64
    };
    let next = if ratio >= SHRINK_ABOVE {
        // Remove at most 90% of the interval in one step.
        prev.mul_f64((1.0 - ratio).max(0.1))
    } else if ratio < GROW_BELOW {
        prev.mul_f64(1.5)
    } else {
        prev
    };
    next.clamp(min, max.max(min))
}

/// Result of one GC pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Entries looked at (both maps).
    pub scanned: u64,
    /// Expired entries deleted.
    pub deleted: u64,
    /// Interval until the next scheduled pass.
    pub next_interval: Duration,
}

#[derive(Debug)]
struct Metrics {
    entries: IntCounterVec,
    alive: IntGaugeVec,
    runs: IntCounterVec,
}

impl Metrics {
    fn new(registry: &Registry) -> Result<Self, Error> {
        let entries = IntCounterVec::new(
            Opts::new(
                "cilium_datapath_conntrack_gc_entries_total",
                "Conntrack entries deleted by garbage collection",
            ),
            &["family", "protocol", "status"],
        )?;
        let alive = IntGaugeVec::new(
            Opts::new(
                "cilium_datapath_conntrack_gc_alive_entries",
                "Conntrack entries still alive after the last garbage collection",
            ),
            &["family", "protocol"],
        )?;
        let runs = IntCounterVec::new(
            Opts::new(
                "cilium_datapath_conntrack_gc_runs_total",
                "Conntrack garbage collection passes",
            ),
            &["status"],
        )?;
        registry.register(Box::new(entries.clone()))?;
        registry.register(Box::new(alive.clone()))?;
        registry.register(Box::new(runs.clone()))?;
        Ok(Self {
            entries,
            alive,
            runs,
        })
    }
}

/// Conntrack GC, injected as `Arc<ConntrackGc>`.
#[derive(Debug)]
pub struct ConntrackGc {
    dp: Arc<Datapath>,
    metrics: Metrics,
    fixed: Option<Duration>,
    min: Duration,
    max: Duration,
    interval: Mutex<Duration>,
    pass: Mutex<()>,
    wake: Notify,
}

impl ConntrackGc {
    /// A GC over `dp`'s CT maps; `fixed` = `Some` for a fixed interval, else adaptive
    /// between `min` and `max`. Registers its metrics in `registry`.
    pub fn new(
        dp: Arc<Datapath>,
        registry: &Registry,
        fixed: Option<Duration>,
        min: Duration,
        max: Duration,
    ) -> Result<Self, Error> {
        if min.is_zero() || min > max {
            return Err(Error::InvalidFlag {
                flag: "--conntrack-gc-min-interval",
                reason: format!(
                    "must be above 0 and at most --conntrack-gc-max-interval ({}), got {}",
                    humantime::format_duration(max),
                    humantime::format_duration(min)
                ),
            });
        }
        let start = fixed.unwrap_or(INITIAL_INTERVAL.clamp(min, max));
        Ok(Self {
            dp,
            metrics: Metrics::new(registry)?,
            fixed,
            min,
            max,
            interval: Mutex::new(start),
            pass: Mutex::new(()),
            wake: Notify::new(),
        })
    }

    /// The interval until the next scheduled pass.
    pub fn interval(&self) -> Duration {
        *self.interval.lock()
    }

    /// Asks the GC job to run a pass now (returns at once).
    pub fn trigger(&self) {
        self.wake.notify_one();
    }

    /// Runs one pass now on the calling thread (blocking: walks both CT maps) and
    /// updates the schedule. Passes never overlap.
    pub fn run_now(&self) -> Result<GcStats, Error> {
        let _pass = self.pass.lock();
        let now = cilium_bpf::boot_time_secs();
        let maps = &self.dp.maps().conntrack;
        let mut total = GcStats::default();
        let started = Instant::now();
        for (map, proto) in [(&maps.tcp, "tcp"), (&maps.any, "non-tcp")] {
            let (scanned, deleted) = match gc_map(map, now) {
                Ok(r) => r,
                Err(e) => {
                    self.metrics.runs.with_label_values(&["failed"]).inc();
                    return Err(e);
                }
            };
            self.metrics
                .entries
                .with_label_values(&["ipv4", proto, "deleted"])
                .inc_by(deleted);
            self.metrics
                .alive
                .with_label_values(&["ipv4", proto])
                .set(i64::try_from(scanned - deleted).unwrap_or(i64::MAX));
            total.scanned += scanned;
            total.deleted += deleted;
        }
        self.metrics.runs.with_label_values(&["completed"]).inc();
        let next = match self.fixed {
            Some(f) => f,
            None => next_interval(
                self.interval(),
                total.scanned,
                total.deleted,
                self.min,
                self.max,
            ),
        };
        *self.interval.lock() = next;
        total.next_interval = next;
        tracing::info!(
            scanned = total.scanned,
            deleted = total.deleted,
            took_ms = started.elapsed().as_millis() as u64,
            next = %humantime::format_duration(next),
            "conntrack GC pass done"
        );
        Ok(total)
    }

    /// The job body: a pass at start, then after each interval or trigger, until `cancel`.
    pub async fn run(
        self: Arc<Self>,
        cancel: hive::CancellationToken,
        health: hive::Health,
    ) -> hive::anyhow::Result<()> {
        loop {
            let gc = self.clone();
            match tokio::task::spawn_blocking(move || gc.run_now()).await? {
                Ok(s) => health.ok(format!(
                    "deleted {} of {} entries; next pass in {}",
                    s.deleted,
                    s.scanned,
                    humantime::format_duration(s.next_interval)
                )),
                Err(e) => {
                    tracing::warn!(error = %e, "conntrack GC pass failed");
                    health.degraded("conntrack GC pass failed", &e);
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.interval()) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}

/// Deletes expired entries of one map; returns (scanned, deleted).
fn gc_map(map: &TypedMap<CtKey4, CtEntry4>, now: u32) -> Result<(u64, u64), Error> {
    let mut scanned = 0;
    let mut deleted = 0;
    for (k, v) in map.entries()? {
        scanned += 1;
        if v.lifetime < now && map.delete(&k)? {
            deleted += 1;
        }
    }
    Ok((scanned, deleted))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(10);
    const MAX: Duration = Duration::from_secs(12 * 3600);

    #[test]
    fn interval_shrinks_when_much_was_deleted() {
        let next = next_interval(INITIAL_INTERVAL, 100, 50, MIN, MAX);
        assert_eq!(next, Duration::from_secs(150));
        // Everything expired: at most a 90% cut per pass.
        let next = next_interval(INITIAL_INTERVAL, 100, 100, MIN, MAX);
        assert_eq!(next, Duration::from_secs(30));
    }

    #[test]
    fn interval_grows_when_little_was_deleted_and_stays_in_between() {
        assert_eq!(
            next_interval(INITIAL_INTERVAL, 100, 1, MIN, MAX),
            Duration::from_secs(450)
        );
        assert_eq!(
            next_interval(INITIAL_INTERVAL, 0, 0, MIN, MAX),
            Duration::from_secs(450)
        );
        assert_eq!(
            next_interval(INITIAL_INTERVAL, 100, 10, MIN, MAX),
            INITIAL_INTERVAL
        );
    }

    #[test]
    fn interval_is_clamped() {
        assert_eq!(next_interval(MIN, 10, 10, MIN, MAX), MIN);
        assert_eq!(next_interval(MAX, 10, 0, MIN, MAX), MAX);
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(2));
        assert_eq!(next_interval(INITIAL_INTERVAL, 1, 0, min, max), max);
    }
}
