//! Change iteration: upserts and deletions in revision order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::table::{Table, TableMeta};
use crate::txn::{Txn, WriteTxn};
use crate::watch::Watch;
use crate::{Object, Result, Revision};

/// One change of an object.
#[derive(Debug)]
pub struct Change<T> {
    /// The object (for a deletion: its last version).
    pub object: Arc<T>,
    /// Revision of the upsert or deletion.
    pub revision: Revision,
    /// True if the object was deleted.
    pub deleted: bool,
}

impl<T> Clone for Change<T> {
    fn clone(&self) -> Self {
        Change {
            object: self.object.clone(),
            revision: self.revision,
            deleted: self.deleted,
        }
    }
}

/// Iterates over the changes of a table: first every existing object as an upsert,
/// then incremental upserts and deletions. While it lives, deleted objects are kept in
/// the table's graveyard until it has passed them; dropping it unregisters it.
pub struct ChangeIterator<T> {
    meta: Arc<TableMeta<T>>,
    tracker: u64,
    watermark: Arc<AtomicU64>,
    upsert_rev: Revision,
    delete_rev: Revision,
}

impl<T> std::fmt::Debug for ChangeIterator<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeIterator")
            .field("table", &self.meta.name)
            .field("upsert_rev", &self.upsert_rev)
            .field("delete_rev", &self.delete_rev)
            .finish()
    }
}

impl<T> Drop for ChangeIterator<T> {
    fn drop(&mut self) {
        self.meta.trackers.lock().remove(&self.tracker);
    }
}

impl<T: Object> Table<T> {
    /// Registers a change tracker and returns its iterator. Needs a write transaction
    /// that locked this table so no deletion can slip past the registration.
    pub fn changes(&self, txn: &mut WriteTxn) -> Result<ChangeIterator<T>> {
        let tt = txn.table_txn(&self.meta)?;
        let rev = tt.state.revision;
        let watermark = Arc::new(AtomicU64::new(rev));
        let tracker = self.meta.fresh_id();
        self.meta.trackers.lock().insert(tracker, watermark.clone());
        tt.has_trackers = true;
        Ok(ChangeIterator {
            meta: self.meta.clone(),
            tracker,
            watermark,
            upsert_rev: 0,
            delete_rev: rev,
        })
    }
}

impl<T: Object> ChangeIterator<T> {
    /// All changes since the last call, in revision order, and a watch that closes
    /// when more changes are available.
    pub fn next<X: Txn + ?Sized>(&mut self, txn: &X) -> (Vec<Change<T>>, Watch) {
        self.next_limited(txn, usize::MAX)
    }

    /// Like [`ChangeIterator::next`] but returns at most `limit` changes; the watch is
    /// already closed if more are pending.
    pub fn next_limited<X: Txn + ?Sized>(
        &mut self,
        txn: &X,
        limit: usize,
    ) -> (Vec<Change<T>>, Watch) {
        let table = Table {
            meta: self.meta.clone(),
        };
        let Some(s) = table.state(txn) else {
            return (Vec::new(), Watch::closed());
        };
        let mut ups = s.by_rev.range(self.upsert_rev + 1..).peekable();
        let mut dels = s.graveyard_rev.range(self.delete_rev + 1..).peekable();
        let mut out = Vec::new();
        let mut more = false;
        loop {
            let take_up = match (ups.peek(), dels.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((u, _)), Some((d, _))) => u < d,
            };
            if out.len() >= limit {
                more = true;
                break;
            }
            let next = if take_up {
                ups.next().map(|(r, e)| (*r, e, false))
            } else {
                dels.next().map(|(r, e)| (*r, e, true))
            };
            let Some((rev, e, deleted)) = next else {
                break;
            };
            out.push(Change {
                object: e.obj.clone(),
                revision: rev,
                deleted,
            });
            self.upsert_rev = self.upsert_rev.max(rev);
            self.delete_rev = self.delete_rev.max(rev);
        }
        self.watermark.store(self.delete_rev, Ordering::SeqCst);
        let w = if more {
            Watch::closed()
        } else {
            s.watch.clone()
        };
        (out, w)
    }
}
