//! The database: table registry, root snapshot and transaction entry points.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;

use crate::metrics::Metrics;
use crate::table::{AnyTableState, Table, TableDef, TableMeta, TableState};
use crate::txn::{ReadTxn, Root, Slot, WriteTxn};
use crate::write::{TableTxn, TableTxnDyn};
use crate::{Error, Object, Result, Revision};

static NEXT_DB_ID: AtomicU64 = AtomicU64::new(1);

/// Type-erased table metadata, for locking and creating table transactions.
pub(crate) trait MetaDyn: Send + Sync {
    fn id(&self) -> usize;
    fn db_id(&self) -> u64;
    fn name(&self) -> &str;
    fn lock(&self) -> &Arc<Mutex<()>>;
    fn begin(&self, state: &dyn AnyTableState) -> Option<Box<dyn TableTxnDyn>>;
    fn tracker_count(&self) -> usize;
}

impl<T: Object> MetaDyn for TableMeta<T> {
    fn id(&self) -> usize {
        self.id
    }
    fn db_id(&self) -> u64 {
        self.db_id
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn lock(&self) -> &Arc<Mutex<()>> {
        &self.lock
    }
    fn begin(&self, state: &dyn AnyTableState) -> Option<Box<dyn TableTxnDyn>> {
        let st = state.as_any().downcast_ref::<TableState<T>>()?;
        Some(Box::new(TableTxn::new(st.clone())))
    }
    fn tracker_count(&self) -> usize {
        self.trackers.lock().len()
    }
}

/// A table of any object type, as passed to [`Db::write_txn`].
pub trait AnyTable: Send + Sync {
    /// Table name.
    fn table_name(&self) -> &str;
    #[doc(hidden)]
    fn meta_dyn(&self) -> ErasedMeta;
}

/// Opaque type-erased table metadata (implementation detail of [`AnyTable`]).
pub struct ErasedMeta(pub(crate) Arc<dyn MetaDyn>);

impl<T: Object> AnyTable for Table<T> {
    fn table_name(&self) -> &str {
        &self.meta.name
    }
    fn meta_dyn(&self) -> ErasedMeta {
        ErasedMeta(self.meta.clone())
    }
}

pub(crate) struct DbInner {
    id: u64,
    pub(crate) root: ArcSwap<Root>,
    pub(crate) root_lock: Mutex<()>,
    metas: RwLock<Vec<Arc<dyn MetaDyn>>>,
    pub(crate) metrics: Option<Metrics>,
}

/// The database handle. Cheap to clone.
#[derive(Clone)]
pub struct Db(pub(crate) Arc<DbInner>);

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("tables", &self.table_names())
            .finish()
    }
}

impl Default for Db {
    fn default() -> Self {
        Self::build(None)
    }
}

/// Status summary of one table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableInfo {
    /// Table name.
    pub name: String,
    /// Number of objects.
    pub objects: usize,
    /// Latest revision.
    pub revision: Revision,
    /// Deleted objects kept for change trackers.
    pub graveyard: usize,
    /// Registered change trackers.
    pub delete_trackers: usize,
    /// Initializers not yet done (empty when initialized).
    pub pending_initializers: Vec<String>,
}

impl Db {
    /// A database without metrics.
    pub fn new() -> Self {
        Self::build(None)
    }

    /// A database exporting `cilium_statedb_*` metrics to `registry`.
    pub fn with_metrics(registry: &prometheus::Registry) -> Result<Self> {
        Ok(Self::build(Some(Metrics::new(registry)?)))
    }

    fn build(metrics: Option<Metrics>) -> Self {
        let id = NEXT_DB_ID.fetch_add(1, Ordering::Relaxed);
        Db(Arc::new(DbInner {
            id,
            root: ArcSwap::from_pointee(Root {
                db_id: id,
                tables: Vec::new(),
            }),
            root_lock: Mutex::new(()),
            metas: RwLock::new(Vec::new()),
            metrics,
        }))
    }

    /// Registers a table. Names must be unique, index names unique within the table.
    pub fn register_table<T: Object>(&self, def: TableDef<T>) -> Result<Table<T>> {
        let mut names: Vec<&str> = def.secondary.iter().map(|i| i.name()).collect();
        names.push(def.primary.name());
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::InvalidTable {
                table: def.name,
                reason: "index names must be unique".into(),
            });
        }
        let mut metas = self.0.metas.write();
        if metas.iter().any(|m| m.name() == def.name) {
            return Err(Error::DuplicateTable { name: def.name });
        }
        let meta = Arc::new(TableMeta {
            id: metas.len(),
            db_id: self.0.id,
            name: def.name,
            primary: def.primary,
            secondary: def.secondary,
            lock: Arc::new(Mutex::new(())),
            trackers: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
        });
        let state: Arc<dyn AnyTableState> = Arc::new(TableState::new(meta.clone()));
        {
            let _g = self.0.root_lock.lock();
            let cur = self.0.root.load();
            let mut tables = cur.tables.clone();
            tables.push(state.clone());
            self.0.root.store(Arc::new(Root {
                db_id: self.0.id,
                tables,
            }));
        }
        if let Some(m) = &self.0.metrics {
            m.observe_table(&meta.name, &*state, 0);
        }
        metas.push(meta.clone());
        Ok(Table { meta })
    }

    /// A snapshot of all tables (one atomic load, no locks).
    pub fn read_txn(&self) -> ReadTxn {
        ReadTxn(self.0.root.load_full())
    }

    /// Starts a write transaction locking `tables`. Locks are taken in table
    /// registration order after removing duplicates, so concurrent transactions cannot
    /// deadlock. Errors with [`Error::ForeignTable`] for a table of another Db.
    pub fn write_txn(&self, tables: &[&dyn crate::db::AnyTable]) -> Result<WriteTxn> {
        let mut metas: SmallVec<[Arc<dyn MetaDyn>; 2]> = SmallVec::new();
        for t in tables {
            let m = t.meta_dyn().0;
            if m.db_id() != self.0.id {
                return Err(Error::ForeignTable {
                    table: m.name().to_string(),
                });
            }
            metas.push(m);
        }
        metas.sort_by_key(|m| m.id());
        metas.dedup_by_key(|m| m.id());
        let guards: SmallVec<[_; 2]> = metas.iter().map(|m| m.lock().lock_arc()).collect();
        // The clock is only read when metrics will use it (it is slow on some VMs).
        let started = self.0.metrics.as_ref().map(|_| Instant::now());
        // Locked tables cannot change under us, so this root holds their latest state.
        let root = self.0.root.load_full();
        let mut slots = SmallVec::new();
        for (m, guard) in metas.into_iter().zip(guards) {
            let txn = root
                .tables
                .get(m.id())
                .and_then(|st| m.begin(&**st))
                .ok_or_else(|| Error::ForeignTable {
                    table: m.name().to_string(),
                })?;
            slots.push(Slot {
                id: m.id(),
                txn,
                meta: m,
                _guard: guard,
            });
        }
        Ok(WriteTxn {
            db: self.clone(),
            root,
            slots,
            started,
        })
    }

    /// Names of all tables, in registration order.
    pub fn table_names(&self) -> Vec<String> {
        self.0
            .metas
            .read()
            .iter()
            .map(|m| m.name().to_string())
            .collect()
    }

    /// All objects of table `name` in `txn` as JSON; [`Error::UnknownTable`] if absent.
    pub fn dump_table(&self, txn: &ReadTxn, name: &str) -> Result<Vec<serde_json::Value>> {
        txn.dump_table(name)
    }

    /// Status of every table in `txn`.
    pub fn table_info(&self, txn: &ReadTxn) -> Vec<TableInfo> {
        let metas = self.0.metas.read();
        txn.tables()
            .enumerate()
            .map(|(id, st)| TableInfo {
                name: st.name().to_string(),
                objects: st.len(),
                revision: st.revision(),
                graveyard: st.graveyard_len(),
                delete_trackers: metas.get(id).map_or(0, |m| m.tracker_count()),
                pending_initializers: st.pending_initializers(),
            })
            .collect()
    }
}
