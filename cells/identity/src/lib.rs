//! cilium-identity: security identities.
//!
//! Owns the statedb table `identities` ([`IdentityObj`], reserved identities always present),
//! the [`IdentityAllocator`] (injected as `Arc<IdentityAllocator>`) that hands out one
//! identity per distinct set of security labels (from 256) and one node-local identity per
//! CIDR prefix (`0x0100_0000 + n`, with the prefix's ipcache row), reference counted by
//! owner and deleted when the last owner releases it, persisted in
//! `<state-dir>/identities.json` so ids are stable across restarts; the security labels of a
//! pod ([`pod_security_labels`]); and the routes `GET /v1/identities`, `GET /v1/identity/{id}`.
//!
//! The host's own traffic carries the reserved identity 1 (`host`): the datapath assigns it
//! to packets from the host stack; this cell only guarantees the reserved rows exist.

mod allocator;
mod api;
mod error;
mod identity;
mod labels;

use std::sync::Arc;

use cilium_api::routes::ApiRoutes;
use cilium_ipcache::IpcacheEntry;
use cilium_node::Node;
use hive::{BoxCell, FnHook, Health, Invoke, Lifecycle, Module, Provide};
use statedb::{Db, Table};

pub use allocator::{CidrSync, IPCACHE_SOURCE, IdentityAllocator, STATE_FILE};
pub use error::IdentityError;
pub use identity::{
    INDEX_ID, INDEX_LABEL, INDEX_LABELS, Identity, IdentityKind, IdentityObj, RESERVED, TABLE_NAME,
    cidr_labels, id_query, label_query, labels_key, labels_query, new_table, reserved_by_name,
    reserved_labels, reserved_name,
};
pub use labels::{
    CIDR_LABEL, CLUSTER_LABEL, CLUSTER_NAME, Labels, NAMESPACE_LABELS_PREFIX, POD_NAMESPACE_LABEL,
    RESERVED_PREFIX, SERVICE_ACCOUNT_LABEL, SOURCE_PREFIXES, format_labels,
    namespace_security_labels, pod_security_labels, strip_source,
};

fn new_allocator(
    db: Arc<Db>,
    table: Arc<Table<IdentityObj>>,
    ipcache: Arc<Table<IpcacheEntry>>,
    node: Arc<Node>,
    registry: Arc<prometheus::Registry>,
) -> hive::anyhow::Result<IdentityAllocator> {
    Ok(IdentityAllocator::new(
        db,
        table,
        ipcache,
        node.state_file(STATE_FILE),
        Some(&registry),
    )?)
}

/// Start hook: the restored CIDR rows are in the ipcache; report the counts.
fn register_lifecycle(
    alloc: Arc<IdentityAllocator>,
    lc: Lifecycle,
    health: Health,
) -> hive::anyhow::Result<()> {
    lc.append(FnHook::start_only("identity-restore", move |_ctx| {
        let alloc = alloc.clone();
        let health = health.clone();
        async move {
            alloc.restore_done()?;
            let all = alloc.list();
            let count = |k: IdentityKind| all.iter().filter(|o| o.kind == k).count();
            health.ok(format!(
                "{} identities ({} endpoint, {} cidr, {} reserved)",
                all.len(),
                count(IdentityKind::Endpoint),
                count(IdentityKind::Cidr),
                count(IdentityKind::Reserved)
            ));
            Ok(())
        }
    }));
    Ok(())
}

/// The identity cell: provides `Arc<Table<IdentityObj>>` and `Arc<IdentityAllocator>`, and
/// serves the identity routes.
pub fn cell() -> BoxCell {
    Module::new(
        "identity",
        "security identities: reserved, per label set, node-local CIDR",
        vec![
            Provide::new(|db: Arc<Db>| Ok(new_table(&db)?)),
            Provide::new(new_allocator),
            Invoke::new(register_lifecycle),
            Invoke::new(|routes: Arc<ApiRoutes>, alloc: Arc<IdentityAllocator>| {
                api::register(&routes, alloc);
                Ok(())
            }),
        ],
    )
}

#[cfg(test)]
mod tests;
