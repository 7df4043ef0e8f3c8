//! Prometheus metrics of reconcilers, labelled by reconciler name.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Reconciler metrics; create once per registry and put a clone in each
/// [`super::Config`].
#[derive(Clone)]
pub struct ReconcilerMetrics {
    pub(crate) duration: HistogramVec,
    pub(crate) errors_total: IntCounterVec,
    pub(crate) current_errors: IntGaugeVec,
    pub(crate) prune_total: IntCounterVec,
}

impl std::fmt::Debug for ReconcilerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReconcilerMetrics")
    }
}

impl ReconcilerMetrics {
    /// Registers the `cilium_reconciler_*` metrics in `reg`.
    pub fn new(reg: &Registry) -> crate::Result<Self> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "cilium_reconciler_operation_duration_seconds",
                "Duration of reconciler operations (update, delete, prune)",
            ),
            &["name", "op"],
        )?;
        let errors_total = IntCounterVec::new(
            Opts::new(
                "cilium_reconciler_errors_total",
                "Failed reconciler operations",
            ),
            &["name", "op"],
        )?;
        let current_errors = IntGaugeVec::new(
            Opts::new(
                "cilium_reconciler_current_errors",
                "Objects currently failing and awaiting retry",
            ),
            &["name"],
        )?;
        let prune_total = IntCounterVec::new(
            Opts::new(
                "cilium_reconciler_prune_count_total",
                "Prune operations run",
            ),
            &["name", "result"],
        )?;
        reg.register(Box::new(duration.clone()))?;
        reg.register(Box::new(errors_total.clone()))?;
        reg.register(Box::new(current_errors.clone()))?;
        reg.register(Box::new(prune_total.clone()))?;
        Ok(ReconcilerMetrics {
            duration,
            errors_total,
            current_errors,
            prune_total,
        })
    }
}
