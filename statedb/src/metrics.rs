//! Prometheus metrics of the database (off unless a registry is given).

use prometheus::{HistogramOpts, HistogramVec, IntGaugeVec, Opts, Registry};

use crate::table::AnyTableState;

#[derive(Clone)]
pub(crate) struct Metrics {
    write_txn_duration: HistogramVec,
    objects: IntGaugeVec,
    revision: IntGaugeVec,
    graveyard: IntGaugeVec,
    trackers: IntGaugeVec,
}

fn gauge(reg: &Registry, name: &str, help: &str) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), &["table"])?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    pub(crate) fn new(reg: &Registry) -> prometheus::Result<Self> {
        let write_txn_duration = HistogramVec::new(
            HistogramOpts::new(
                "cilium_statedb_write_txn_duration_seconds",
                "Duration of write transactions, from lock acquisition to commit",
            )
            .buckets(prometheus::exponential_buckets(1e-6, 4.0, 12)?),
            &["table"],
        )?;
        reg.register(Box::new(write_txn_duration.clone()))?;
        Ok(Metrics {
            write_txn_duration,
            objects: gauge(reg, "cilium_statedb_table_objects", "Objects in a table")?,
            revision: gauge(
                reg,
                "cilium_statedb_table_revision",
                "Latest table revision",
            )?,
            graveyard: gauge(
                reg,
                "cilium_statedb_graveyard_objects",
                "Deleted objects kept for change trackers",
            )?,
            trackers: gauge(
                reg,
                "cilium_statedb_table_delete_trackers",
                "Registered change trackers of a table",
            )?,
        })
    }

    pub(crate) fn observe_commit(
        &self,
        table: &str,
        secs: f64,
        st: &dyn AnyTableState,
        trackers: usize,
    ) {
        self.write_txn_duration
            .with_label_values(&[table])
            .observe(secs);
        self.observe_table(table, st, trackers);
    }

    pub(crate) fn observe_table(&self, table: &str, st: &dyn AnyTableState, trackers: usize) {
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.objects
            .with_label_values(&[table])
            .set(clamp(st.len() as u64));
        self.revision
            .with_label_values(&[table])
            .set(clamp(st.revision()));
        self.graveyard
            .with_label_values(&[table])
            .set(clamp(st.graveyard_len() as u64));
        self.trackers
            .with_label_values(&[table])
            .set(clamp(trackers as u64));
    }
}
