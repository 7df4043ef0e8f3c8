//! cilium-endpoint: pod endpoints, one per CNI attachment.
//!
//! Owns the statedb table `endpoints` ([`EndpointObj`], persisted to
//! `<state-dir>/endpoints.json`), the [`EndpointManager`] that creates and deletes endpoints
//! (IPAM address, `lxc…` veth with the peer in the pod's namespace, routes and sysctls,
//! the BPF endpoint map entry, the programs attached to the host veth, the ipcache row),
//! restores them after a restart without interrupting traffic, follows Pod label changes,
//! and the `/v1/endpoint*` API routes. Netlink work runs on one dedicated OS thread
//! ([`netlink`]).
//!
//! Identities: an endpoint's `labels` are its security labels and `identity` is
//! `IdentityAllocator::allocate(labels)` with the endpoint key as owner; the BPF endpoint
//! entry (`sec_identity`) and the ipcache /32 row carry it. The labels come from
//! - the Pod object `K8S_POD_NAMESPACE/K8S_POD_NAME` and its Namespace object
//!   (`cilium_identity::pod_security_labels`), when the Pod exists;
//! - otherwise, when K8S_POD_NAMESPACE is given, the namespace alone:
//!   `io.kubernetes.pod.namespace=<ns>`, the Namespace object's labels as
//!   `io.cilium.k8s.namespace.labels.*`, and `io.cilium.k8s.policy.cluster=default` (no
//!   service account, no named ports), so such pods are still selectable by namespace;
//! - otherwise (a plain CNI attachment without Kubernetes arguments) `reserved:unmanaged`,
//!   i.e. the reserved identity 3.
//!
//! Pod and Namespace changes are followed live: the new identity is allocated and written to
//! the BPF entry and the ipcache before the old one is released. After a restart the
//! identity is allocated again for the same labels (the identity cell restored it with the
//! same id; if it was lost the old id is kept when free), and references of endpoints that
//! did not come back are dropped.

mod api;
mod error;
mod manager;
pub mod netlink;
mod obj;

use std::sync::Arc;

use cilium_api::routes::ApiRoutes;
use cilium_bpf::Datapath;
use cilium_identity::IdentityAllocator;
use cilium_ipam::Ipam;
use cilium_ipcache::IpcacheEntry;
use cilium_node::Node;
use cilium_resources::{Namespace, Pod};
use hive::{BoxCell, FnHook, Health, Invoke, Job, JobGroup, Lifecycle, Module, Provide};
use statedb::{Db, Table};

pub use error::EndpointError;
pub use manager::{
    EndpointManager, HOST_DEVICE, IPCACHE_SOURCE, RestoreReport, STATE_FILE, ipcache_row,
};
pub use obj::{
    DEFAULT_MTU, EndpointObj, EndpointState, INDEX_ID, INDEX_KEY, INDEX_POD, MAX_IFNAME_LEN,
    TABLE_NAME, fmt_mac, host_ifname, new_table, parse_mac, validate,
};

#[expect(
    clippy::too_many_arguments,
    reason = "a hive constructor takes each dependency by type"
)]
fn new_manager(
    db: Arc<Db>,
    table: Arc<Table<EndpointObj>>,
    ipcache: Arc<Table<IpcacheEntry>>,
    pods: Arc<Table<Pod>>,
    namespaces: Arc<Table<Namespace>>,
    identities: Arc<IdentityAllocator>,
    ipam: Arc<Ipam>,
    datapath: Arc<Datapath>,
    node: Arc<Node>,
) -> hive::anyhow::Result<EndpointManager> {
    EndpointManager::new(
        db,
        table,
        ipcache,
        pods,
        namespaces,
        identities,
        ipam,
        datapath,
        node.state_file(STATE_FILE),
    )
}

/// Start hook (restore) and the pod label watcher.
fn register_lifecycle(
    mgr: Arc<EndpointManager>,
    lc: Lifecycle,
    jobs: JobGroup,
    health: Health,
) -> hive::anyhow::Result<()> {
    let m = mgr.clone();
    // No stop hook on purpose: endpoints (veths, pinned links, map entries) outlive the agent.
    lc.append(FnHook::start_only("endpoint-restore", move |_ctx| {
        let m = m.clone();
        let health = health.clone();
        async move {
            let r = m.restore().await?;
            let msg = format!("{} endpoints restored, {} removed", r.restored, r.removed);
            if r.errors.is_empty() {
                health.ok(msg);
            } else {
                health.degraded(msg, r.errors.join("; "));
            }
            Ok(())
        }
    }));
    jobs.add(Job::one_shot("labels", move |cancel, _health| {
        let m = mgr.clone();
        async move { m.watch_labels(cancel).await }
    }));
    Ok(())
}

/// Policy enforcement state of an endpoint, by endpoint id: `Some((ingress_enforced,
/// egress_enforced))`, or `None` when the endpoint has no resolved policy (both false). The
/// policy cell provides it; the endpoint API fills `Endpoint.policy_enforcement` from it.
pub struct EnforcementLookup(pub Box<dyn Fn(u16) -> Option<(bool, bool)> + Send + Sync>);

impl std::fmt::Debug for EnforcementLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnforcementLookup")
    }
}

impl EnforcementLookup {
    /// `(ingress_enforced, egress_enforced)` of endpoint `id`; `(false, false)` when unknown.
    pub fn lookup(&self, id: u16) -> (bool, bool) {
        (self.0)(id).unwrap_or((false, false))
    }
}

/// The endpoint cell: provides `Arc<Table<EndpointObj>>` and `Arc<EndpointManager>`, and
/// serves the endpoint routes.
pub fn cell() -> BoxCell {
    Module::new(
        "endpoint",
        "pod endpoints: veths, BPF endpoint entries, ipcache rows, labels",
        vec![
            Provide::new(|db: Arc<Db>| Ok(new_table(&db)?)),
            Provide::new(new_manager),
            Invoke::new(register_lifecycle),
            Invoke::new(
                |routes: Arc<ApiRoutes>,
                 mgr: Arc<EndpointManager>,
                 enforcement: Option<Arc<EnforcementLookup>>| {
                    api::register(&routes, mgr, enforcement);
                    Ok(())
                },
            ),
        ],
    )
}
