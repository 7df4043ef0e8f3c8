//! Table handles, per-table snapshot state and queries.

use std::any::Any;
use std::collections::BTreeMap;
use std::ops::{Bound, Deref};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use imbl::{OrdMap, OrdSet};
use parking_lot::Mutex;

use crate::index::{IKey, Index, Key, Query};
use crate::txn::Txn;
use crate::watch::Watch;
use crate::{Object, Revision};

/// One stored object version. The watch sits behind the shared `Arc`, so a lazily
/// allocated watch is seen by every snapshot holding this entry.
pub(crate) struct EntryInner<T> {
    pub(crate) obj: Arc<T>,
    pub(crate) rev: Revision,
    pub(crate) watch: OnceLock<Watch>,
}

pub(crate) type Entry<T> = Arc<EntryInner<T>>;

pub(crate) fn new_entry<T>(obj: Arc<T>, rev: Revision) -> Entry<T> {
    Arc::new(EntryInner {
        obj,
        rev,
        watch: OnceLock::new(),
    })
}

/// A reference to an object returned by a query; derefs to the object.
pub struct ObjRef<T>(pub(crate) Entry<T>);

impl<T> Clone for ObjRef<T> {
    fn clone(&self) -> Self {
        ObjRef(self.0.clone())
    }
}

impl<T> Deref for ObjRef<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0.obj
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for ObjRef<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjRef")
            .field("revision", &self.0.rev)
            .field("object", &self.0.obj)
            .finish()
    }
}

impl<T> ObjRef<T> {
    /// The revision at which this object version was written.
    pub fn revision(&self) -> Revision {
        self.0.rev
    }

    /// The shared object.
    pub fn object(&self) -> Arc<T> {
        self.0.obj.clone()
    }

    /// A watch that closes when this object version is replaced or deleted.
    pub fn watch(&self) -> Watch {
        self.0.watch.get_or_init(Watch::new).clone()
    }
}

/// An iterator over query results borrowing the transaction.
pub type ObjIter<'a, T> = Box<dyn Iterator<Item = ObjRef<T>> + Send + 'a>;

/// Declaration of a table: its name, primary index and secondary indexes.
pub struct TableDef<T> {
    pub(crate) name: String,
    pub(crate) primary: Index<T>,
    pub(crate) secondary: Vec<Index<T>>,
}

impl<T> TableDef<T> {
    /// A table called `name` with the given primary index.
    pub fn new(name: impl Into<String>, primary: Index<T>) -> Self {
        TableDef {
            name: name.into(),
            primary,
            secondary: Vec::new(),
        }
    }

    /// Adds a secondary index.
    pub fn with_index(mut self, index: Index<T>) -> Self {
        self.secondary.push(index);
        self
    }
}

/// Shared, non-snapshot data of a table.
pub(crate) struct TableMeta<T> {
    pub(crate) id: usize,
    pub(crate) db_id: u64,
    pub(crate) name: String,
    pub(crate) primary: Index<T>,
    pub(crate) secondary: Vec<Index<T>>,
    pub(crate) lock: Arc<Mutex<()>>,
    pub(crate) trackers: Mutex<BTreeMap<u64, Arc<AtomicU64>>>,
    pub(crate) next_id: AtomicU64,
}

impl<T> TableMeta<T> {
    pub(crate) fn fresh_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Position of a secondary index, `None` for the primary, `Err` if unknown.
    fn index_pos(&self, name: &str) -> Result<Option<usize>, ()> {
        if self.primary.name() == name {
            return Ok(None);
        }
        match self.secondary.iter().position(|i| i.name() == name) {
            Some(p) => Ok(Some(p)),
            None => {
                tracing::warn!(table = %self.name, index = name, "query on unknown index");
                Err(())
            }
        }
    }
}

/// The state of one table inside one snapshot. Cloning is O(1) (persistent maps).
pub(crate) struct TableState<T> {
    pub(crate) meta: Arc<TableMeta<T>>,
    pub(crate) primary: OrdMap<IKey, Entry<T>>,
    /// Live entries by revision (the same `Arc`s as in `primary`), so change
    /// iteration needs no second lookup through the primary index.
    pub(crate) by_rev: OrdMap<Revision, Entry<T>>,
    pub(crate) secondary: Vec<OrdSet<(Key, Key)>>,
    pub(crate) graveyard: OrdMap<IKey, Entry<T>>,
    /// Graveyard entries by deletion revision (the same `Arc`s as in `graveyard`).
    pub(crate) graveyard_rev: OrdMap<Revision, Entry<T>>,
    pub(crate) revision: Revision,
    pub(crate) watch: Watch,
    pub(crate) pending_inits: OrdMap<u64, String>,
    pub(crate) init_watch: Watch,
}

impl<T> Clone for TableState<T> {
    fn clone(&self) -> Self {
        TableState {
            meta: self.meta.clone(),
            primary: self.primary.clone(),
            by_rev: self.by_rev.clone(),
            secondary: self.secondary.clone(),
            graveyard: self.graveyard.clone(),
            graveyard_rev: self.graveyard_rev.clone(),
            revision: self.revision,
            watch: self.watch.clone(),
            pending_inits: self.pending_inits.clone(),
            init_watch: self.init_watch.clone(),
        }
    }
}

impl<T: Object> TableState<T> {
    pub(crate) fn new(meta: Arc<TableMeta<T>>) -> Self {
        let n = meta.secondary.len();
        TableState {
            meta,
            primary: OrdMap::new(),
            by_rev: OrdMap::new(),
            secondary: vec![OrdSet::new(); n],
            graveyard: OrdMap::new(),
            graveyard_rev: OrdMap::new(),
            revision: 0,
            watch: Watch::new(),
            pending_inits: OrdMap::new(),
            init_watch: Watch::new(),
        }
    }
}

/// Type-erased read access to a table inside a snapshot (for dumps and status).
pub trait AnyTableState: Send + Sync + 'static {
    /// Table name.
    fn name(&self) -> &str;
    /// Number of live objects.
    fn len(&self) -> usize;
    /// True if the table holds no object.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Latest revision of the table.
    fn revision(&self) -> Revision;
    /// Number of deleted objects kept for change trackers.
    fn graveyard_len(&self) -> usize;
    /// Names of initializers not yet done.
    fn pending_initializers(&self) -> Vec<String>;
    /// All objects as JSON values `{"revision": N, "object": ...}` in primary-key order.
    fn to_json(&self) -> Vec<serde_json::Value>;
    /// Watch that closes on the next change of this table.
    fn table_watch(&self) -> Watch;
    /// For downcasting to the typed state.
    fn as_any(&self) -> &dyn Any;
}

impl<T: Object> AnyTableState for TableState<T> {
    fn name(&self) -> &str {
        &self.meta.name
    }
    fn len(&self) -> usize {
        self.primary.len()
    }
    fn revision(&self) -> Revision {
        self.revision
    }
    fn graveyard_len(&self) -> usize {
        self.graveyard.len()
    }
    fn pending_initializers(&self) -> Vec<String> {
        self.pending_inits.values().cloned().collect()
    }
    fn to_json(&self) -> Vec<serde_json::Value> {
        self.primary
            .values()
            .map(|e| match serde_json::to_value(&*e.obj) {
                Ok(v) => serde_json::json!({ "revision": e.rev, "object": v }),
                Err(err) => serde_json::json!({ "revision": e.rev, "error": err.to_string() }),
            })
            .collect()
    }
    fn table_watch(&self) -> Watch {
        self.watch.clone()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Handle to a table of `T`. Cheap to clone; reads take any transaction, writes need a
/// [`crate::WriteTxn`] that locked this table.
pub struct Table<T> {
    pub(crate) meta: Arc<TableMeta<T>>,
}

impl<T> Clone for Table<T> {
    fn clone(&self) -> Self {
        Table {
            meta: self.meta.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("name", &self.meta.name)
            .finish()
    }
}

fn sec_range<'a>(
    set: &'a OrdSet<(Key, Key)>,
    from: &Key,
) -> impl Iterator<Item = &'a (Key, Key)> + Send + 'a {
    set.range((
        Bound::Included((from.clone(), Key::new())),
        Bound::Unbounded,
    ))
}

impl<T: Object> Table<T> {
    /// Table name.
    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// The primary index.
    pub fn primary_index(&self) -> &Index<T> {
        &self.meta.primary
    }

    /// Primary key of `obj`.
    pub fn primary_key(&self, obj: &T) -> Key {
        self.meta.primary.primary_key(obj)
    }

    /// The table state in `txn`, if the txn belongs to this table's db and knows it.
    pub(crate) fn state<'a, X: Txn + ?Sized>(&self, txn: &'a X) -> Option<&'a TableState<T>> {
        if txn.db_id() != self.meta.db_id {
            tracing::warn!(table = %self.meta.name, "table used with a transaction of another Db");
            return None;
        }
        txn.table_state(self.meta.id)?
            .as_any()
            .downcast_ref::<TableState<T>>()
    }

    fn table_watch_of<X: Txn + ?Sized>(&self, txn: &X) -> Watch {
        // A snapshot that predates the table: the caller should re-read with a new one.
        self.state(txn)
            .map_or_else(Watch::closed, |s| s.watch.clone())
    }

    /// Latest revision of the table in `txn`.
    pub fn revision<X: Txn + ?Sized>(&self, txn: &X) -> Revision {
        self.state(txn).map_or(0, |s| s.revision)
    }

    /// Number of objects in `txn`.
    pub fn len<X: Txn + ?Sized>(&self, txn: &X) -> usize {
        self.state(txn).map_or(0, |s| s.primary.len())
    }

    /// True if the table is empty in `txn`.
    pub fn is_empty<X: Txn + ?Sized>(&self, txn: &X) -> bool {
        self.len(txn) == 0
    }

    /// Number of deleted objects kept for change trackers in `txn`.
    pub fn graveyard_len<X: Txn + ?Sized>(&self, txn: &X) -> usize {
        self.state(txn).map_or(0, |s| s.graveyard.len())
    }

    /// Number of registered change trackers (live [`crate::ChangeIterator`]s).
    pub fn delete_trackers(&self) -> usize {
        self.meta.trackers.lock().len()
    }

    /// Whether all initializers are done, and a watch that closes when that changes.
    /// Never returns `(false, closed watch)`.
    pub fn initialized<X: Txn + ?Sized>(&self, txn: &X) -> (bool, Watch) {
        match self.state(txn) {
            Some(s) if s.pending_inits.is_empty() => (true, Watch::closed()),
            Some(s) => (false, s.init_watch.clone()),
            None => (false, Watch::new()),
        }
    }

    /// Looks up the first object with the query key.
    pub fn get<X: Txn + ?Sized>(&self, txn: &X, q: &Query) -> Option<ObjRef<T>> {
        let s = self.state(txn)?;
        match self.meta.index_pos(q.index).ok()? {
            None => s.primary.get(&IKey::new(&q.key)).map(|e| ObjRef(e.clone())),
            Some(p) => {
                let (sk, pk) = sec_range(&s.secondary[p], &q.key).next()?;
                if *sk != q.key {
                    return None;
                }
                s.primary.get(&IKey::new(pk)).map(|e| ObjRef(e.clone()))
            }
        }
    }

    /// Like [`Table::get`], plus a watch closing when the result may have changed: the
    /// object's own watch on a hit, the table watch on a miss.
    pub fn get_watch<X: Txn + ?Sized>(&self, txn: &X, q: &Query) -> (Option<ObjRef<T>>, Watch) {
        match self.get(txn, q) {
            Some(o) => {
                let w = o.watch();
                (Some(o), w)
            }
            None => (None, self.table_watch_of(txn)),
        }
    }

    /// All objects with exactly the query key (for non-unique indexes).
    pub fn list<'a, X: Txn + ?Sized>(&self, txn: &'a X, q: &Query) -> ObjIter<'a, T> {
        let Some(s) = self.state(txn) else {
            return Box::new(std::iter::empty());
        };
        match self.meta.index_pos(q.index) {
            Err(()) => Box::new(std::iter::empty()),
            Ok(None) => Box::new(
                s.primary
                    .get(&IKey::new(&q.key))
                    .map(|e| ObjRef(e.clone()))
                    .into_iter(),
            ),
            Ok(Some(p)) => {
                let key = q.key.clone();
                Box::new(
                    sec_range(&s.secondary[p], &q.key)
                        .take_while(move |(sk, _)| *sk == key)
                        .filter_map(|(_, pk)| {
                            s.primary.get(&IKey::new(pk)).map(|e| ObjRef(e.clone()))
                        }),
                )
            }
        }
    }

    /// [`Table::list`] plus the table watch.
    pub fn list_watch<'a, X: Txn + ?Sized>(
        &self,
        txn: &'a X,
        q: &Query,
    ) -> (ObjIter<'a, T>, Watch) {
        (self.list(txn, q), self.table_watch_of(txn))
    }

    /// All objects whose key in the query index starts with the query key.
    pub fn prefix<'a, X: Txn + ?Sized>(&self, txn: &'a X, q: &Query) -> ObjIter<'a, T> {
        let Some(s) = self.state(txn) else {
            return Box::new(std::iter::empty());
        };
        let prefix = q.key.clone();
        match self.meta.index_pos(q.index) {
            Err(()) => Box::new(std::iter::empty()),
            Ok(None) => Box::new(
                s.primary
                    .range((Bound::Included(IKey::new(&q.key)), Bound::Unbounded))
                    .take_while(move |(k, _)| k.starts_with(&prefix))
                    .map(|(_, e)| ObjRef(e.clone())),
            ),
            Ok(Some(p)) => Box::new(
                sec_range(&s.secondary[p], &q.key)
                    .take_while(move |(sk, _)| sk.starts_with(&prefix))
                    .filter_map(|(_, pk)| s.primary.get(&IKey::new(pk)).map(|e| ObjRef(e.clone()))),
            ),
        }
    }

    /// [`Table::prefix`] plus the table watch.
    pub fn prefix_watch<'a, X: Txn + ?Sized>(
        &self,
        txn: &'a X,
        q: &Query,
    ) -> (ObjIter<'a, T>, Watch) {
        (self.prefix(txn, q), self.table_watch_of(txn))
    }

    /// All objects whose key in the query index is >= the query key, in index order.
    pub fn lower_bound<'a, X: Txn + ?Sized>(&self, txn: &'a X, q: &Query) -> ObjIter<'a, T> {
        let Some(s) = self.state(txn) else {
            return Box::new(std::iter::empty());
        };
        match self.meta.index_pos(q.index) {
            Err(()) => Box::new(std::iter::empty()),
            Ok(None) => Box::new(
                s.primary
                    .range((Bound::Included(IKey::new(&q.key)), Bound::Unbounded))
                    .map(|(_, e)| ObjRef(e.clone())),
            ),
            Ok(Some(p)) => Box::new(
                sec_range(&s.secondary[p], &q.key)
                    .filter_map(|(_, pk)| s.primary.get(&IKey::new(pk)).map(|e| ObjRef(e.clone()))),
            ),
        }
    }

    /// [`Table::lower_bound`] plus the table watch.
    pub fn lower_bound_watch<'a, X: Txn + ?Sized>(
        &self,
        txn: &'a X,
        q: &Query,
    ) -> (ObjIter<'a, T>, Watch) {
        (self.lower_bound(txn, q), self.table_watch_of(txn))
    }

    /// All objects in primary-key order.
    pub fn all<'a, X: Txn + ?Sized>(&self, txn: &'a X) -> ObjIter<'a, T> {
        match self.state(txn) {
            Some(s) => Box::new(s.primary.values().map(|e| ObjRef(e.clone()))),
            None => Box::new(std::iter::empty()),
        }
    }

    /// [`Table::all`] plus the table watch.
    pub fn all_watch<'a, X: Txn + ?Sized>(&self, txn: &'a X) -> (ObjIter<'a, T>, Watch) {
        (self.all(txn), self.table_watch_of(txn))
    }
}
