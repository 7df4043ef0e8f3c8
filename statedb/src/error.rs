//! Errors of the statedb crate.

use crate::Revision;

/// Everything that can go wrong in statedb and its reconciler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A write touched a table that the write transaction did not lock.
    #[error("table {table:?} is not locked by this write transaction; pass it to Db::write_txn")]
    TableNotLocked {
        /// Table name.
        table: String,
    },
    /// A table name was not found in the database.
    #[error("table {name:?} not found; known tables are listed by Db::table_names")]
    UnknownTable {
        /// The requested name.
        name: String,
    },
    /// A table with the same name was registered twice.
    #[error("table {name:?} is already registered; table names must be unique")]
    DuplicateTable {
        /// Table name.
        name: String,
    },
    /// A table definition is invalid (e.g. duplicate index names).
    #[error("table {table:?}: invalid definition: {reason}")]
    InvalidTable {
        /// Table name.
        table: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The table handle belongs to another database.
    #[error("table {table:?} belongs to another Db; use the handle returned by this Db")]
    ForeignTable {
        /// Table name.
        table: String,
    },
    /// Compare-and-swap/delete found another revision.
    #[error(
        "table {table:?}, key {key:?}: revision mismatch (expected {expected}, found {found}); \
         the object was changed concurrently, re-read it"
    )]
    RevisionMismatch {
        /// Table name.
        table: String,
        /// Primary key (lossy UTF-8).
        key: String,
        /// Revision the caller expected.
        expected: Revision,
        /// Revision found in the table.
        found: Revision,
    },
    /// Compare-and-swap/delete found no object.
    #[error("table {table:?}, key {key:?}: object not found; it was deleted concurrently")]
    ObjectNotFound {
        /// Table name.
        table: String,
        /// Primary key (lossy UTF-8).
        key: String,
    },
    /// A unique secondary index already maps the key to another object.
    #[error(
        "table {table:?}, index {index:?}: key {key:?} already used by another object; \
         delete that object first"
    )]
    UniqueConflict {
        /// Table name.
        table: String,
        /// Index name.
        index: String,
        /// Conflicting key (lossy UTF-8).
        key: String,
    },
    /// An initializer was marked done twice or belongs to another table.
    #[error("table {table:?}: initializer {name:?} is unknown or already done")]
    UnknownInitializer {
        /// Table name.
        table: String,
        /// Initializer name.
        name: String,
    },
    /// Registering or using Prometheus metrics failed.
    #[error("statedb metrics: {0}; register metrics only once per registry")]
    Metrics(#[from] prometheus::Error),
    /// The reconciler stopped before the awaited revision was reconciled.
    #[error("reconciler {name:?} stopped before revision {revision} was reconciled")]
    ReconcilerStopped {
        /// Reconciler name.
        name: String,
        /// The awaited revision.
        revision: Revision,
    },
}
