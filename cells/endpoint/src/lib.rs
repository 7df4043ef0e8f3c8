//! cilium-endpoint: pod endpoints, one per CNI attachment.
//!
//! Owns the statedb table `endpoints` ([`EndpointObj`], persisted to
//! `<state-dir>/endpoints.json`), the [`EndpointManager`] that creates and deletes endpoints
//! (IPAM address, `lxc…` veth with the peer in the pod's namespace, routes and sysctls,
//! the BPF endpoint map entry, the programs attached to the host veth, the ipcache row),
//! restores them after a restart without interrupting traffic, follows Pod label changes,
//! and the `/v1/endpoint*` API routes. Netlink work runs on one dedicated OS thread
//! ([`netlink`]).

mod api;
mod error;
mod manager;
pub mod netlink;
mod obj;

use std::sync::Arc;

use cilium_api::routes::ApiRoutes;
use cilium_bpf::Datapath;
use cilium_ipam::Ipam;
use cilium_ipcache::IpcacheEntry;
use cilium_node::Node;
use cilium_resources::Pod;
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

fn new_manager(
    db: Arc<Db>,
    table: Arc<Table<EndpointObj>>,
    ipcache: Arc<Table<IpcacheEntry>>,
    pods: Arc<Table<Pod>>,
    ipam: Arc<Ipam>,
    datapath: Arc<Datapath>,
    node: Arc<Node>,
) -> hive::anyhow::Result<EndpointManager> {
    EndpointManager::new(
        db,
        table,
        ipcache,
        pods,
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
    jobs.add(Job::one_shot("pod-labels", move |cancel, _health| {
        let m = mgr.clone();
        async move { m.watch_pods(cancel).await }
    }));
    Ok(())
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
            Invoke::new(|routes: Arc<ApiRoutes>, mgr: Arc<EndpointManager>| {
                api::register(&routes, mgr);
                Ok(())
            }),
        ],
    )
}
