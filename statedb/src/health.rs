//! A minimal health reporting interface so the reconciler can report without
//! depending on the `hive` crate (which depends on statedb).

/// Receives health updates from long-running statedb workers (reconcilers).
pub trait HealthReporter: Send + Sync {
    /// The worker is healthy; `msg` says what it did ("12 object(s) reconciled").
    fn ok(&self, msg: &str);
    /// The worker is degraded; `msg` summarises, `err` is the latest error.
    fn degraded(&self, msg: &str, err: &str);
}

/// A [`HealthReporter`] that drops every report.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopHealth;

impl HealthReporter for NoopHealth {
    fn ok(&self, _msg: &str) {}
    fn degraded(&self, _msg: &str, _err: &str) {}
}
