//! Module health: each module (and each scope inside it, e.g. a job) reports ok, degraded or
//! stopped; the reports are kept in a table keyed by module path plus scope.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::Serialize;

use crate::error::HiveError;
use crate::graph::ResolveCtx;
use crate::inject::{Dependency, Inject};

/// How a module is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Nothing reported yet.
    Unknown,
    /// Working.
    Ok,
    /// Working badly or not at all; see the error.
    Degraded,
    /// Finished or shut down.
    Stopped,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Unknown => "unknown",
            Level::Ok => "ok",
            Level::Degraded => "degraded",
            Level::Stopped => "stopped",
        })
    }
}

/// One row of the health table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthStatus {
    /// Module path plus scope, e.g. `agent.ipam.job-sync`.
    pub id: String,
    /// The level.
    pub level: Level,
    /// The last message.
    pub message: String,
    /// The error, when degraded.
    pub error: Option<String>,
    /// When it was last reported (RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: SystemTime,
    /// How many times in a row this same level and message was reported.
    pub count: u64,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// Where health reports go. The default is an in-memory map; `statedb` backs the `health` table.
pub trait HealthStore: Send + Sync + 'static {
    /// Record a report for `id`.
    fn report(&self, id: &str, level: Level, message: &str, error: Option<String>);
    /// Remove `id` and every scope under it.
    fn remove_subtree(&self, id: &str);
    /// All rows, ordered by id.
    fn all(&self) -> Vec<HealthStatus>;
}

/// Build the next row from the previous one.
pub(crate) fn next_status(
    prev: Option<&HealthStatus>,
    id: &str,
    level: Level,
    message: &str,
    error: Option<String>,
) -> HealthStatus {
    let count = match prev {
        Some(p) if p.level == level && p.message == message && p.error == error => p.count + 1,
        _ => 1,
    };
    HealthStatus {
        id: id.to_string(),
        level,
        message: message.to_string(),
        error,
        updated_at: SystemTime::now(),
        count,
    }
}

/// Whether `id` is `root` or a scope under it.
pub(crate) fn in_subtree(id: &str, root: &str) -> bool {
    id == root || (id.starts_with(root) && id[root.len()..].starts_with('.'))
}

/// An in-memory health store.
#[derive(Default)]
pub struct MemoryHealthStore {
    rows: Mutex<BTreeMap<String, HealthStatus>>,
}

impl HealthStore for MemoryHealthStore {
    fn report(&self, id: &str, level: Level, message: &str, error: Option<String>) {
        let mut rows = self.rows.lock();
        let next = next_status(rows.get(id), id, level, message, error);
        rows.insert(id.to_string(), next);
    }
    fn remove_subtree(&self, id: &str) {
        self.rows.lock().retain(|k, _| !in_subtree(k, id));
    }
    fn all(&self) -> Vec<HealthStatus> {
        self.rows.lock().values().cloned().collect()
    }
}

/// A health reporter for one module or scope. Inject it to report the module's health.
#[derive(Clone)]
pub struct Health {
    store: Arc<dyn HealthStore>,
    id: String,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health").field("id", &self.id).finish()
    }
}

impl Health {
    /// A root reporter writing into `store`.
    pub fn new(store: Arc<dyn HealthStore>) -> Self {
        Health {
            store,
            id: String::new(),
        }
    }

    /// A reporter for a standalone test, backed by a fresh in-memory store.
    pub fn for_test(id: &str) -> Self {
        Health {
            store: Arc::new(MemoryHealthStore::default()),
            id: id.to_string(),
        }
    }

    pub(crate) fn for_module(&self, path: &str) -> Health {
        Health {
            store: self.store.clone(),
            id: if path.is_empty() {
                "root".to_string()
            } else {
                path.to_string()
            },
        }
    }

    /// The id rows of this reporter are stored under.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The store behind this reporter.
    pub fn store(&self) -> &Arc<dyn HealthStore> {
        &self.store
    }

    /// Report that all is well.
    pub fn ok(&self, message: impl AsRef<str>) {
        self.store
            .report(&self.id, Level::Ok, message.as_ref(), None);
    }

    /// Report a problem.
    pub fn degraded(&self, message: impl AsRef<str>, error: impl fmt::Display) {
        self.store.report(
            &self.id,
            Level::Degraded,
            message.as_ref(),
            Some(format!("{error:#}")),
        );
    }

    /// Report that this module or scope has stopped.
    pub fn stopped(&self, message: impl AsRef<str>) {
        self.store
            .report(&self.id, Level::Stopped, message.as_ref(), None);
    }

    /// A reporter for a sub-scope, stored under `<id>.<name>`.
    pub fn scope(&self, name: &str) -> Health {
        Health {
            store: self.store.clone(),
            id: format!("{}.{name}", self.id),
        }
    }

    /// Remove this reporter's row and all its sub-scopes.
    pub fn close(&self) {
        self.store.remove_subtree(&self.id);
    }

    /// This reporter's row, if any.
    pub fn status(&self) -> Option<HealthStatus> {
        self.store.all().into_iter().find(|s| s.id == self.id)
    }
}

impl statedb::HealthReporter for Health {
    fn ok(&self, msg: &str) {
        Health::ok(self, msg);
    }
    fn degraded(&self, msg: &str, err: &str) {
        Health::degraded(self, msg, err);
    }
}

impl Inject for Health {
    fn dependency() -> Dependency {
        Dependency::Builtin("Health")
    }
    fn resolve(ctx: &mut ResolveCtx<'_>) -> Result<Self, HiveError> {
        Ok(ctx.health())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_repeats_and_removes_subtrees() {
        let h = Health::for_test("agent");
        h.ok("fine");
        h.ok("fine");
        assert_eq!(h.status().map(|s| s.count), Some(2));
        h.degraded("broken", "disk full");
        let s = h.status().expect("row");
        assert_eq!(
            (s.level, s.count, s.error.as_deref()),
            (Level::Degraded, 1, Some("disk full"))
        );
        let sub = h.scope("job-x");
        sub.ok("running");
        Health {
            store: h.store.clone(),
            id: "agentx".into(),
        }
        .ok("other");
        h.close();
        let ids: Vec<String> = h.store.all().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, vec!["agentx".to_string()]);
    }
}
