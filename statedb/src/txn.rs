//! Read and write transactions.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::RawMutex;
use parking_lot::lock_api::ArcMutexGuard;
use smallvec::SmallVec;

use crate::db::{Db, MetaDyn};
use crate::table::{AnyTableState, TableMeta};
use crate::write::{TableTxn, TableTxnDyn};
use crate::{Error, Object, Result};

/// One published version of the whole database.
pub(crate) struct Root {
    pub(crate) db_id: u64,
    pub(crate) tables: Vec<Arc<dyn AnyTableState>>,
}

/// Anything tables can be read from: a [`ReadTxn`] or a [`WriteTxn`] (which sees its
/// own uncommitted writes).
pub trait Txn {
    /// Identity of the [`Db`] this transaction belongs to.
    fn db_id(&self) -> u64;
    /// Type-erased state of the table with the given registration id.
    fn table_state(&self, id: usize) -> Option<&dyn AnyTableState>;
}

/// A consistent, immutable snapshot of every table. Taking one is a single atomic load.
#[derive(Clone)]
pub struct ReadTxn(pub(crate) Arc<Root>);

impl std::fmt::Debug for ReadTxn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadTxn")
            .field("tables", &self.0.tables.len())
            .finish()
    }
}

impl Txn for ReadTxn {
    fn db_id(&self) -> u64 {
        self.0.db_id
    }
    fn table_state(&self, id: usize) -> Option<&dyn AnyTableState> {
        self.0.tables.get(id).map(|t| &**t)
    }
}

impl ReadTxn {
    /// Type-erased states of all tables, in registration order.
    pub fn tables(&self) -> impl Iterator<Item = &dyn AnyTableState> {
        self.0.tables.iter().map(|t| &**t)
    }

    /// Type-erased state of the table called `name`.
    pub fn table_by_name(&self, name: &str) -> Result<&dyn AnyTableState> {
        self.tables()
            .find(|t| t.name() == name)
            .ok_or_else(|| Error::UnknownTable {
                name: name.to_string(),
            })
    }

    /// All objects of the table `name` as JSON (`{"revision": N, "object": ...}`).
    /// Errors with [`Error::UnknownTable`] (the API maps it to 404).
    pub fn dump_table(&self, name: &str) -> Result<Vec<serde_json::Value>> {
        Ok(self.table_by_name(name)?.to_json())
    }
}

pub(crate) struct Slot {
    pub(crate) id: usize,
    // Field order matters: the txn state drops before the lock is released.
    pub(crate) txn: Box<dyn TableTxnDyn>,
    pub(crate) meta: Arc<dyn MetaDyn>,
    pub(crate) _guard: ArcMutexGuard<RawMutex, ()>,
}

/// A write transaction over the tables it locked. Dropping it without
/// [`WriteTxn::commit`] aborts it; nothing it wrote becomes visible.
pub struct WriteTxn {
    pub(crate) db: Db,
    pub(crate) root: Arc<Root>,
    pub(crate) slots: SmallVec<[Slot; 2]>,
    /// When the locks were taken (only with metrics).
    pub(crate) started: Option<Instant>,
}

impl std::fmt::Debug for WriteTxn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.slots.iter().map(|s| s.meta.name()).collect();
        f.debug_struct("WriteTxn").field("tables", &names).finish()
    }
}

impl Txn for WriteTxn {
    fn db_id(&self) -> u64 {
        self.root.db_id
    }
    fn table_state(&self, id: usize) -> Option<&dyn AnyTableState> {
        match self.slots.iter().find(|s| s.id == id) {
            Some(s) => Some(s.txn.state()),
            None => self.root.tables.get(id).map(|t| &**t),
        }
    }
}

impl WriteTxn {
    pub(crate) fn slot_mut(&mut self, db_id: u64, id: usize, name: &str) -> Result<&mut Slot> {
        if db_id != self.root.db_id {
            return Err(Error::ForeignTable {
                table: name.to_string(),
            });
        }
        self.slots
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(|| Error::TableNotLocked {
                table: name.to_string(),
            })
    }

    pub(crate) fn table_txn<T: Object>(&mut self, meta: &TableMeta<T>) -> Result<&mut TableTxn<T>> {
        let slot = self.slot_mut(meta.db_id, meta.id, &meta.name)?;
        slot.txn
            .as_any_mut()
            .downcast_mut::<TableTxn<T>>()
            .ok_or_else(|| Error::ForeignTable {
                table: meta.name.clone(),
            })
    }

    /// Publishes every write atomically, then fires the watches of changed data and
    /// releases the table locks. Returns a snapshot that includes the writes.
    pub fn commit(mut self) -> ReadTxn {
        let mut slots = std::mem::take(&mut self.slots);
        let inner = &self.db.0;
        let mut updates: SmallVec<[(usize, Arc<dyn AnyTableState>); 2]> = SmallVec::new();
        for slot in slots.iter_mut() {
            if let Some(st) = slot.txn.prepare_commit() {
                updates.push((slot.id, st));
            }
        }
        let root = if updates.is_empty() {
            inner.root.load_full()
        } else {
            let _g = inner.root_lock.lock();
            let cur = inner.root.load();
            let mut tables = cur.tables.clone();
            for (id, st) in updates {
                tables[id] = st;
            }
            let root = Arc::new(Root {
                db_id: cur.db_id,
                tables,
            });
            inner.root.store(root.clone());
            root
        };
        // Only now, with the new root visible, wake watchers.
        for slot in slots.iter_mut() {
            slot.txn.notify();
        }
        if let (Some(m), Some(started)) = (&inner.metrics, self.started) {
            let secs = started.elapsed().as_secs_f64();
            for slot in slots.iter() {
                m.observe_commit(
                    slot.meta.name(),
                    secs,
                    slot.txn.state(),
                    slot.txn.tracker_count(),
                );
            }
        }
        drop(slots);
        ReadTxn(root)
    }

    /// Discards every write (same as dropping the transaction).
    pub fn abort(self) {}
}
