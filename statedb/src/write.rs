//! Write operations: the per-table part of a write transaction.

use std::any::Any;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use smallvec::SmallVec;

use crate::index::{IKey, Index, Key, KeySet};
use crate::table::{AnyTableState, Entry, Table, TableMeta, TableState, new_entry};
use crate::txn::WriteTxn;
use crate::watch::Watch;
use crate::{Error, Object, Result, Revision};

/// Type-erased per-table part of a write transaction.
pub(crate) trait TableTxnDyn: Send {
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn state(&self) -> &dyn AnyTableState;
    /// Collects garbage and returns the state to publish (None if nothing changed).
    fn prepare_commit(&mut self) -> Option<Arc<dyn AnyTableState>>;
    /// Fires watches; called after the new root is stored.
    fn notify(&mut self);
    fn tracker_count(&self) -> usize;
    /// Marks an initializer done; false if it was not pending.
    fn initializer_done(&mut self, id: u64) -> bool;
}

pub(crate) struct TableTxn<T> {
    pub(crate) state: TableState<T>,
    /// The table's metadata (kept beside `state` so both can be borrowed at once).
    meta: Arc<TableMeta<T>>,
    /// True if some secondary index is unique (inserts must check for conflicts).
    unique_secondary: bool,
    replaced: Vec<Entry<T>>,
    changed: bool,
    pub(crate) has_trackers: bool,
    old_table_watch: Option<Watch>,
    pub(crate) fire_init: Option<Watch>,
    pub(crate) inits_changed: bool,
}

fn lossy(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}

enum Expect {
    Any,
    Revision(Revision),
}

impl<T: Object> TableTxn<T> {
    pub(crate) fn new(state: TableState<T>) -> Self {
        let meta = state.meta.clone();
        let has_trackers = !meta.trackers.lock().is_empty();
        let unique_secondary = meta.secondary.iter().any(Index::is_unique);
        TableTxn {
            state,
            meta,
            unique_secondary,
            replaced: Vec::new(),
            changed: false,
            has_trackers,
            old_table_watch: None,
            fire_init: None,
            inits_changed: false,
        }
    }

    fn check_rev(&self, key: &[u8], old: Option<&Entry<T>>, rev: Revision) -> Result<()> {
        match old {
            None => Err(Error::ObjectNotFound {
                table: self.meta.name.clone(),
                key: lossy(key),
            }),
            Some(e) if e.rev != rev => Err(Error::RevisionMismatch {
                table: self.meta.name.clone(),
                key: lossy(key),
                expected: rev,
                found: e.rev,
            }),
            Some(_) => Ok(()),
        }
    }

    fn remove_secondary(&mut self, pk: &Key, obj: &T) {
        for (i, idx) in self.meta.secondary.iter().enumerate() {
            for k in idx.keys(obj) {
                self.state.secondary[i].remove(&(k, pk.clone()));
            }
        }
    }

    fn insert(&mut self, obj: Arc<T>, expect: Expect) -> Result<Option<Arc<T>>> {
        let pk = self.meta.primary.primary_key(&obj);
        let ik = IKey::new(&pk);
        if let Expect::Revision(rev) = expect {
            self.check_rev(&pk, self.state.primary.get(&ik), rev)?;
        }
        let new_keys: SmallVec<[KeySet; 2]> =
            self.meta.secondary.iter().map(|i| i.keys(&obj)).collect();
        if self.unique_secondary {
            self.check_unique(&pk, &new_keys)?;
        }
        let rev = self.state.revision + 1;
        self.state.revision = rev;
        let entry = new_entry(obj, rev);
        if !self.state.graveyard.is_empty()
            && let Some(g) = self.state.graveyard.remove(&ik)
        {
            self.state.graveyard_rev.remove(&g.rev);
        }
        self.state.by_rev.insert(rev, entry.clone());
        // One lookup: insert returns the version it replaced.
        let old = if new_keys.is_empty() {
            self.state.primary.insert(ik, entry)
        } else {
            let old = self.state.primary.insert(ik, entry);
            if let Some(old) = &old {
                self.remove_secondary(&pk, &old.obj);
            }
            for (i, keys) in new_keys.into_iter().enumerate() {
                for k in keys {
                    self.state.secondary[i].insert((k, pk.clone()));
                }
            }
            old
        };
        self.changed = true;
        Ok(old.map(|e| {
            self.state.by_rev.remove(&e.rev);
            let o = e.obj.clone();
            self.replaced.push(e);
            o
        }))
    }

    /// Errors with [`Error::UniqueConflict`] if another object holds one of `new_keys`
    /// in a unique secondary index.
    fn check_unique(&self, pk: &Key, new_keys: &[KeySet]) -> Result<()> {
        for (i, idx) in self.meta.secondary.iter().enumerate() {
            if !idx.is_unique() {
                continue;
            }
            for k in &new_keys[i] {
                let from = (k.clone(), Key::new());
                let mut hits =
                    self.state.secondary[i].range((Bound::Included(from), Bound::Unbounded));
                if let Some((sk, spk)) = hits.next()
                    && sk == k
                    && spk != pk
                {
                    return Err(Error::UniqueConflict {
                        table: self.meta.name.clone(),
                        index: idx.name().to_string(),
                        key: lossy(k),
                    });
                }
            }
        }
        Ok(())
    }

    fn delete(&mut self, pk: &[u8], expect: Expect) -> Result<Option<Arc<T>>> {
        let ik = IKey::new(pk);
        if let Expect::Revision(rev) = expect {
            self.check_rev(pk, self.state.primary.get(&ik), rev)?;
        }
        // One lookup: remove returns the deleted version.
        let Some(old) = self.state.primary.remove(&ik) else {
            return Ok(None);
        };
        self.state.by_rev.remove(&old.rev);
        self.state.revision += 1;
        if !self.meta.secondary.is_empty() {
            self.remove_secondary(&Key::from_slice(pk), &old.obj);
        }
        if self.has_trackers {
            let rev = self.state.revision;
            let g = new_entry(old.obj.clone(), rev);
            self.state.graveyard_rev.insert(rev, g.clone());
            self.state.graveyard.insert(ik, g);
        }
        self.changed = true;
        let o = old.obj.clone();
        self.replaced.push(old);
        Ok(Some(o))
    }

    /// Drops graveyard entries every tracker has passed. Returns true if any was dropped.
    fn gc_graveyard(&mut self) -> bool {
        if self.state.graveyard.is_empty() {
            return false;
        }
        let low = {
            let trackers = self.meta.trackers.lock();
            trackers.values().map(|w| w.load(Ordering::SeqCst)).min()
        };
        match low {
            None => {
                self.state.graveyard.clear();
                self.state.graveyard_rev.clear();
            }
            Some(low) => {
                let dead: Vec<Revision> = self
                    .state
                    .graveyard_rev
                    .range(..=low)
                    .map(|(r, _)| *r)
                    .collect();
                if dead.is_empty() {
                    return false;
                }
                for r in dead {
                    if let Some(e) = self.state.graveyard_rev.remove(&r) {
                        let pk = self.meta.primary.primary_key(&e.obj);
                        self.state.graveyard.remove(&IKey::new(&pk));
                    }
                }
            }
        }
        true
    }
}

impl<T: Object> TableTxnDyn for TableTxn<T> {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn state(&self) -> &dyn AnyTableState {
        &self.state
    }

    fn prepare_commit(&mut self) -> Option<Arc<dyn AnyTableState>> {
        let collected = self.gc_graveyard();
        if self.changed {
            self.old_table_watch = Some(std::mem::take(&mut self.state.watch));
        }
        if self.changed || collected || self.inits_changed {
            Some(Arc::new(self.state.clone()))
        } else {
            None
        }
    }

    fn notify(&mut self) {
        for e in self.replaced.drain(..) {
            // A reader may allocate the watch right now; filling the slot with a closed
            // watch first means it then observes "closed" instead of a watch nobody fires.
            let w = e.watch.get_or_init(Watch::closed);
            // Mostly the shared closed watch: a load avoids a write to its cache line.
            if !w.is_closed() {
                w.close();
            }
        }
        if let Some(w) = self.old_table_watch.take() {
            w.close();
        }
        if let Some(w) = self.fire_init.take() {
            w.close();
        }
    }

    fn tracker_count(&self) -> usize {
        self.meta.trackers.lock().len()
    }

    fn initializer_done(&mut self, id: u64) -> bool {
        if self.state.pending_inits.remove(&id).is_none() {
            return false;
        }
        self.inits_changed = true;
        if self.state.pending_inits.is_empty() {
            self.fire_init = Some(self.state.init_watch.clone());
        }
        true
    }
}

impl<T: Object> Table<T> {
    /// Inserts or replaces the object with the same primary key; returns the old one.
    pub fn insert(&self, txn: &mut WriteTxn, obj: impl Into<Arc<T>>) -> Result<Option<Arc<T>>> {
        txn.table_txn(&self.meta)?.insert(obj.into(), Expect::Any)
    }

    /// Inserts `obj`, or if an object with its primary key exists, inserts
    /// `merge(old, obj)`. Returns the old object.
    pub fn modify(
        &self,
        txn: &mut WriteTxn,
        obj: T,
        merge: impl FnOnce(&T, T) -> T,
    ) -> Result<Option<Arc<T>>> {
        let tt = txn.table_txn(&self.meta)?;
        let pk = tt.meta.primary.primary_key(&obj);
        let new = match tt.state.primary.get(&IKey::new(&pk)) {
            Some(old) => merge(&old.obj, obj),
            None => obj,
        };
        tt.insert(Arc::new(new), Expect::Any)
    }

    /// Replaces the object only if its current revision is `rev`. Errors with
    /// [`Error::RevisionMismatch`] or [`Error::ObjectNotFound`] otherwise.
    pub fn compare_and_swap(
        &self,
        txn: &mut WriteTxn,
        rev: Revision,
        obj: impl Into<Arc<T>>,
    ) -> Result<Option<Arc<T>>> {
        txn.table_txn(&self.meta)?
            .insert(obj.into(), Expect::Revision(rev))
    }

    /// Deletes the object with the primary key of `obj`; returns it if it existed.
    pub fn delete(&self, txn: &mut WriteTxn, obj: &T) -> Result<Option<Arc<T>>> {
        let pk = self.primary_key(obj);
        txn.table_txn(&self.meta)?.delete(&pk, Expect::Any)
    }

    /// Deletes by primary key; returns the deleted object.
    pub fn delete_key(&self, txn: &mut WriteTxn, key: impl AsRef<[u8]>) -> Result<Option<Arc<T>>> {
        txn.table_txn(&self.meta)?.delete(key.as_ref(), Expect::Any)
    }

    /// Deletes the object only if its current revision is `rev`.
    pub fn compare_and_delete(
        &self,
        txn: &mut WriteTxn,
        rev: Revision,
        obj: &T,
    ) -> Result<Option<Arc<T>>> {
        let pk = self.primary_key(obj);
        txn.table_txn(&self.meta)?
            .delete(&pk, Expect::Revision(rev))
    }

    /// Deletes every object (each gets a deletion revision for change trackers).
    pub fn delete_all(&self, txn: &mut WriteTxn) -> Result<usize> {
        let tt = txn.table_txn(&self.meta)?;
        let keys: Vec<Key> = tt.state.primary.keys().map(IKey::to_key).collect();
        for k in &keys {
            tt.delete(k, Expect::Any)?;
        }
        Ok(keys.len())
    }
}
