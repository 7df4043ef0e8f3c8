//! cilium-ipcache: the `ipcache` statedb table (IPv4 prefix to security identity) and the
//! reconciler that writes it into the BPF ipcache map (`cilium_ipcache_v1`).
//!
//! Writers (the endpoint cell, later policy and node cells) insert and delete
//! [`IpcacheEntry`] rows in their own write transactions and register a table initializer
//! at construction; the reconciler prunes map entries no row wants only once every
//! initializer is done, so a restarted agent keeps established traffic flowing.

mod error;
mod ops;

use std::sync::Arc;

use hive::{BoxCell, Invoke, Job, JobGroup, Module, Provide};
use ipnet::Ipv4Net;
use serde::Serialize;
use statedb::reconciler::{Reconcilable, Reconciler, Status};
use statedb::{Db, Index, Key, Query, Table, TableDef};

pub use error::Error;
pub use ops::{IpcacheBackend, IpcacheOps};

/// Name of the statedb table.
pub const TABLE_NAME: &str = "ipcache";
/// Name of the primary index (the prefix).
pub const PREFIX_INDEX: &str = "prefix";

/// One row: `prefix` maps to security `identity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpcacheEntry {
    /// The IPv4 prefix (primary key; host bits should be clear).
    pub prefix: Ipv4Net,
    /// Security identity of addresses in the prefix.
    pub identity: u32,
    /// Who wrote the row, e.g. `endpoint`, `node`, `policy`.
    pub source: String,
    /// Reconcile status (writers set `Status::pending()`).
    pub status: Status,
}

impl IpcacheEntry {
    /// A pending row.
    pub fn new(prefix: Ipv4Net, identity: u32, source: impl Into<String>) -> Self {
        Self {
            prefix: prefix.trunc(),
            identity,
            source: source.into(),
            status: Status::pending(),
        }
    }
}

impl Reconcilable for IpcacheEntry {
    fn status(&self) -> &Status {
        &self.status
    }
    fn set_status(&mut self, status: Status) {
        self.status = status;
    }
}

/// Primary key of a prefix: network address bytes then prefix length.
pub fn prefix_key(prefix: &Ipv4Net) -> Key {
    let mut k = Key::from_slice(&prefix.trunc().addr().octets());
    k.push(prefix.prefix_len());
    k
}

/// Query for the row of `prefix`: `table.get(&txn, &prefix_query(&p))`.
pub fn prefix_query(prefix: &Ipv4Net) -> Query {
    Query::new(PREFIX_INDEX, prefix_key(prefix))
}

/// Registers the `ipcache` table in `db`.
pub fn new_table(db: &Db) -> Result<Table<IpcacheEntry>, Error> {
    Ok(db.register_table(TableDef::new(
        TABLE_NAME,
        Index::primary(PREFIX_INDEX, |e: &IpcacheEntry| prefix_key(&e.prefix)),
    ))?)
}

fn start_reconciler(
    db: Arc<Db>,
    table: Arc<Table<IpcacheEntry>>,
    dp: Arc<cilium_bpf::Datapath>,
    jobs: JobGroup,
    metrics: Option<Arc<statedb::reconciler::ReconcilerMetrics>>,
) -> hive::anyhow::Result<()> {
    let ops = Arc::new(IpcacheOps::new(dp));
    let mut config = statedb::reconciler::Config::new(TABLE_NAME);
    config.metrics = metrics.map(|m| (*m).clone());
    jobs.add(Job::one_shot("reconciler", move |cancel, health| {
        let (db, table, ops, config) =
            ((*db).clone(), (*table).clone(), ops.clone(), config.clone());
        async move {
            let (_handle, run) = Reconciler::new(config, db, table, ops, Arc::new(health), cancel)?;
            run.await;
            Ok(())
        }
    }));
    Ok(())
}

/// The ipcache cell: provides `Arc<Table<IpcacheEntry>>` and reconciles it into the BPF
/// ipcache map of the injected `Arc<cilium_bpf::Datapath>`.
pub fn cell() -> BoxCell {
    Module::new(
        "ipcache",
        "ipcache table (prefix to identity) reconciled into the BPF ipcache map",
        vec![
            Provide::new(|db: Arc<Db>| Ok(new_table(&db)?)),
            Invoke::new(start_reconciler),
        ],
    )
}
