//! cilium-policymap: the reconciler of the statedb table `endpoint_policies`
//! (`cilium_policy::EndpointPolicy`, written by the policy cell) into the BPF policy maps
//! `cilium_policy_v1` (entries), `cilium_policy_cfg_v1` (enforcement flags) and the
//! routes over them and over `cilium_policy_stats_v1` (per-rule counters):
//! `GET /v1/bpf/policy/{endpoint}`, `GET /v1/policy/stats`.
//!
//! It also makes the host's own addresses known to the datapath: ipcache rows (source
//! `host`) with the reserved identity 1 for the IPAM gateway, the node IP and every IPv4
//! address of the agent's network namespace at start, unless a row for the address
//! already exists. Policy peers `host` then match packets from and to the host.
//!
//! Write order per endpoint: new entries, then flags, then stale entries deleted (see
//! [`ops`]); prune only after the table is initialized (the statedb reconciler's rule);
//! a deleted row removes the endpoint's entries, then its flags.

pub mod api;
pub mod entries;
mod error;
pub mod ops;

use std::net::Ipv4Addr;
use std::sync::Arc;

use cilium_ipcache::{IpcacheEntry, prefix_query};
use cilium_policy::{EndpointPolicy, Repository};
use hive::{BoxCell, Invoke, JobGroup, Module};
use ipnet::Ipv4Net;
use statedb::reconciler::ReconcilerMetrics;
use statedb::{Db, Table};

pub use api::PolicyMapApi;
pub use entries::{PolicySource, Simulated, normalize, simulate};
pub use error::Error;
pub use ops::{PolicyBackend, PolicyMapOps};

/// Reconciler name (logs, health, metrics).
pub const RECONCILER_NAME: &str = "endpoint-policies";
/// `source` of the ipcache rows for the host's addresses.
pub const HOST_IPCACHE_SOURCE: &str = "host";
/// Reserved identity of the host.
pub const IDENTITY_HOST: u32 = 1;

/// IPv4 addresses of the calling thread's network namespace, loopback excluded.
pub fn local_ipv4_addresses() -> Vec<Ipv4Addr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<Ipv4Addr> = addrs
        .filter_map(|a| {
            a.address
                .and_then(|s| s.as_sockaddr_in().map(|sin| sin.ip()))
        })
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Inserts ipcache rows `addr/32 -> 1` (source `host`) for addresses without a row.
/// Returns how many rows were added.
pub fn insert_host_rows(
    db: &Db,
    ipcache: &Table<IpcacheEntry>,
    addrs: &[Ipv4Addr],
) -> Result<usize, statedb::Error> {
    let mut w = db.write_txn(&[ipcache])?;
    let init = ipcache.register_initializer(&mut w, "host-addresses")?;
    let mut added = 0;
    for ip in addrs {
        let Ok(prefix) = Ipv4Net::new(*ip, 32) else {
            continue;
        };
        if ipcache.get(&w, &prefix_query(&prefix)).is_none() {
            ipcache.insert(
                &mut w,
                IpcacheEntry::new(prefix, IDENTITY_HOST, HOST_IPCACHE_SOURCE),
            )?;
            added += 1;
        }
    }
    init.done(&mut w)?;
    w.commit();
    Ok(added)
}

#[expect(clippy::too_many_arguments, reason = "injected dependencies")]
fn start(
    db: Arc<Db>,
    table: Option<Arc<Table<EndpointPolicy>>>,
    ipcache: Arc<Table<IpcacheEntry>>,
    dp: Arc<cilium_bpf::Datapath>,
    repo: Option<Arc<Repository>>,
    ipam: Option<Arc<cilium_ipam::Ipam>>,
    node: Option<Arc<cilium_node::Node>>,
    routes: Arc<cilium_api::routes::ApiRoutes>,
    jobs: JobGroup,
    metrics: Option<Arc<ReconcilerMetrics>>,
    resources: Option<Arc<cilium_resources::Resources>>,
) -> hive::anyhow::Result<()> {
    let mut addrs = local_ipv4_addresses();
    addrs.extend(ipam.as_ref().map(|i| i.gateway()));
    addrs.extend(node.as_ref().and_then(|n| n.ip));
    let added = insert_host_rows(&db, &ipcache, &addrs)?;
    tracing::info!(added, addresses = ?addrs, "host addresses in the ipcache as identity 1");

    routes.add(
        PolicyMapApi {
            dp: dp.clone(),
            repo,
        }
        .router(),
    );

    let Some(table) = table else {
        tracing::warn!(
            "no endpoint_policies table (policy cell not wired): policy maps stay as they are"
        );
        return Ok(());
    };
    let ops = Arc::new(PolicyMapOps::new(dp));
    let mut config = statedb::reconciler::Config::new(RECONCILER_NAME);
    config.metrics = metrics.map(|m| (*m).clone());
    cilium_resources::run_reconciler(
        &jobs,
        resources.as_deref(),
        "the BPF policy map reconciler",
        ((*db).clone(), (*table).clone()),
        ops,
        config,
    );
    Ok(())
}

/// The policy map cell: reconciles `endpoint_policies` into the BPF policy maps, inserts
/// the host's addresses into the ipcache and serves the policy map routes.
pub fn cell() -> BoxCell {
    Module::new(
        "policymap",
        "endpoint_policies reconciled into the BPF policy maps; policy map and counter routes",
        vec![Invoke::new(start)],
    )
}
