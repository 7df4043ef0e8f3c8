//! statedb: an in-memory transactional database of immutable objects.
//!
//! Owns tables (`Arc`-shared immutable objects with a primary index and secondary
//! indexes), lock-free snapshot reads ([`ReadTxn`]), multi-table write transactions
//! ([`WriteTxn`]), watches on query results ([`Watch`], [`WatchSet`]), per-table
//! revisions, change iteration including deletions ([`ChangeIterator`]), table
//! initializers, type-erased JSON dumps for the API layer, and the generic
//! [`reconciler`] that pushes table contents to the outside world.

mod changes;
mod db;
mod error;
mod health;
mod index;
mod init;
mod metrics;
pub mod reconciler;
mod table;
mod txn;
mod watch;
mod write;

pub use changes::{Change, ChangeIterator};
pub use db::{AnyTable, Db, ErasedMeta, TableInfo};
pub use error::Error;
pub use health::{HealthReporter, NoopHealth};
pub use index::{Index, Key, Query, key_from_str, key_from_u64};
pub use init::Initializer;
pub use table::{AnyTableState, ObjIter, ObjRef, Table, TableDef};
pub use txn::{ReadTxn, Txn, WriteTxn};
pub use watch::{Watch, WatchSet};

/// A per-table revision number: every insert and delete takes a fresh, higher one.
pub type Revision = u64;

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Bound for objects stored in a table: immutable, shareable, serializable for dumps.
pub trait Object: Clone + Send + Sync + serde::Serialize + 'static {}
impl<T: Clone + Send + Sync + serde::Serialize + 'static> Object for T {}
