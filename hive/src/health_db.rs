//! The `health` statedb table: the default [`HealthStore`] of a hive.

use std::sync::Arc;

use statedb::{Db, Index, Query, Table, TableDef, key_from_str};

use crate::health::{HealthStatus, HealthStore, Level, in_subtree, next_status};

/// Name of the health table.
pub const HEALTH_TABLE: &str = "health";

/// Name of the primary index of the health table (module path plus scope).
pub const HEALTH_ID_INDEX: &str = "id";

/// A health store backed by the statedb table `health`, keyed by id.
#[derive(Clone)]
pub struct StatedbHealthStore {
    db: Db,
    table: Table<HealthStatus>,
}

impl StatedbHealthStore {
    /// Register the `health` table in `db`.
    pub fn new(db: &Db) -> Result<Self, statedb::Error> {
        let def = TableDef::new(
            HEALTH_TABLE,
            Index::primary(HEALTH_ID_INDEX, |s: &HealthStatus| key_from_str(&s.id)),
        );
        Ok(StatedbHealthStore {
            db: db.clone(),
            table: db.register_table(def)?,
        })
    }

    /// The health table.
    pub fn table(&self) -> Table<HealthStatus> {
        self.table.clone()
    }

    fn write(
        &self,
        what: &str,
        f: impl FnOnce(&mut statedb::WriteTxn) -> Result<(), statedb::Error>,
    ) {
        let res = self.db.write_txn(&[&self.table]).and_then(|mut txn| {
            f(&mut txn)?;
            txn.commit();
            Ok(())
        });
        if let Err(e) = res {
            tracing::warn!(error = %e, what, "writing the health table failed");
        }
    }
}

impl HealthStore for StatedbHealthStore {
    fn report(&self, id: &str, level: Level, message: &str, error: Option<String>) {
        self.write("report", |txn| {
            let prev = self
                .table
                .get(txn, &Query::new(HEALTH_ID_INDEX, key_from_str(id)));
            let next = next_status(prev.as_deref(), id, level, message, error);
            self.table.insert(txn, next)?;
            Ok(())
        });
    }

    fn remove_subtree(&self, id: &str) {
        self.write("remove", |txn| {
            let doomed: Vec<Arc<HealthStatus>> = self
                .table
                .prefix(txn, &Query::new(HEALTH_ID_INDEX, key_from_str(id)))
                .filter(|o| in_subtree(&o.id, id))
                .map(|o| o.object())
                .collect();
            for o in doomed {
                self.table.delete(txn, &o)?;
            }
            Ok(())
        });
    }

    fn all(&self) -> Vec<HealthStatus> {
        let txn = self.db.read_txn();
        self.table.all(&txn).map(|o| (*o).clone()).collect()
    }
}
