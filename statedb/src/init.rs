//! Table initializers: a table is initialized once every registered initializer is done.

use crate::table::Table;
use crate::txn::WriteTxn;
use crate::watch::Watch;
use crate::{Error, Object, Result};

/// A pending initializer of one table; mark it done with [`Initializer::done`].
#[derive(Debug)]
pub struct Initializer {
    db_id: u64,
    table_id: usize,
    table: String,
    id: u64,
    name: String,
}

impl<T: Object> Table<T> {
    /// Registers an initializer: the table counts as uninitialized until it is done.
    pub fn register_initializer(&self, txn: &mut WriteTxn, name: &str) -> Result<Initializer> {
        let id = self.meta.fresh_id();
        let tt = txn.table_txn(&self.meta)?;
        if tt.state.pending_inits.is_empty() {
            // The current init watch was either never handed out or already closed.
            tt.state.init_watch = Watch::new();
            tt.fire_init = None;
        }
        tt.state.pending_inits.insert(id, name.to_string());
        tt.inits_changed = true;
        Ok(Initializer {
            db_id: self.meta.db_id,
            table_id: self.meta.id,
            table: self.meta.name.clone(),
            id,
            name: name.to_string(),
        })
    }
}

impl Initializer {
    /// The initializer name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Marks this initializer done (effective when `txn` commits; if `txn` aborts the
    /// handle can be used again).
    pub fn done(&self, txn: &mut WriteTxn) -> Result<()> {
        let slot = txn.slot_mut(self.db_id, self.table_id, &self.table)?;
        if slot.txn.initializer_done(self.id) {
            Ok(())
        } else {
            Err(Error::UnknownInitializer {
                table: self.table.clone(),
                name: self.name.clone(),
            })
        }
    }
}
