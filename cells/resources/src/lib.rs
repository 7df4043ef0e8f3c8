//! The resources cell: Kubernetes-shaped objects that `ciliumctl apply -f` feeds into the
//! agent in standalone mode, stored in statedb tables and persisted in
//! `<state-dir>/resources.json`.
//!
//! It owns the kind registry [`Resources`] (injected as `Arc<Resources>`) with the
//! [`ResourceKind`] extension trait other cells implement to add kinds (Service,
//! NetworkPolicy, ...), the `Namespace` and `Pod` kinds with their tables `namespaces` and
//! `pods` (injected as `Arc<Table<Namespace>>` and `Arc<Table<Pod>>`), and the routes
//! `POST /v1/apply`, `POST /v1/delete` and `GET /v1/resources/{kind}`.
//!
//! A file is applied all or nothing: every document is validated first (errors name the
//! document, the field path and the reason), then one write transaction writes all of them
//! and the state file is written before it commits. A Pod whose Namespace object was never
//! applied is accepted: namespaces are optional in standalone mode. Deleting a Namespace
//! does not delete its pods.

pub mod api;
mod document;
mod error;
mod kinds;
mod par;
mod store;
mod sync;

use std::sync::Arc;

use cilium_api::routes::ApiRoutes;
use cilium_node::Node;
use hive::{BoxCell, Health, Invoke, Module, Provide};
use statedb::{Db, Table};

pub use document::{
    Document, FieldError, Fields, parse_documents, type_name, validate_dns_label,
    validate_dns_subdomain, validate_label_key, validate_label_value, validate_port_name,
};
pub use error::{DocumentError, ResourcesError};
pub use kinds::{
    NAMESPACE_NAME_LABEL, NAMESPACES_TABLE, NamedPort, Namespace, NamespaceKind,
    POD_NAMESPACE_INDEX, PODS_TABLE, Pod, PodKind, Protocol, new_namespaces_table, new_pods_table,
    pod_key, pod_query, pods_in_namespace,
};
pub use store::{DEFAULT_NAMESPACE, ObjectId, ResourceKind, Resources};
pub use sync::{
    RANK_DATAPATH, RANK_TABLES, ReconcilerSlot, SyncFuture, SyncWaiter, SyncWaiters,
    reconciler_waiter, revisions_waiter, run_reconciler,
};

/// Name of the state file inside `--state-dir`.
pub const STATE_FILE: &str = "resources.json";

/// The resources cell: `Arc<Resources>`, `Arc<Table<Namespace>>`, `Arc<Table<Pod>>` and the
/// apply/delete/get routes.
pub fn cell() -> BoxCell {
    Module::new(
        "resources",
        "Namespace and Pod objects applied with ciliumctl",
        vec![
            Provide::new(|db: Arc<Db>, node: Arc<Node>, health: Health| {
                Ok(Resources::new(
                    (*db).clone(),
                    node.state_file(STATE_FILE),
                    Some(health),
                )?)
            }),
            Provide::new(|db: Arc<Db>, resources: Arc<Resources>| {
                let table = new_namespaces_table(&db)?;
                resources.register(NamespaceKind {
                    table: table.clone(),
                })?;
                Ok(table)
            }),
            Provide::new(|db: Arc<Db>, resources: Arc<Resources>| {
                let table = new_pods_table(&db)?;
                resources.register(PodKind {
                    table: table.clone(),
                })?;
                Ok(table)
            }),
            // Depending on both tables makes sure both kinds are registered before serving.
            Invoke::new(
                |routes: Arc<ApiRoutes>,
                 resources: Arc<Resources>,
                 _ns: Arc<Table<Namespace>>,
                 _pods: Arc<Table<Pod>>| {
                    routes.add(api::router(resources));
                    Ok(())
                },
            ),
        ],
    )
}

#[cfg(test)]
mod tests;
