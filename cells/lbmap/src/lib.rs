//! cilium-lbmap: the load-balancer datapath glue. It reconciles the statedb table
//! `frontends` (written by cilium-loadbalancer) into the BPF maps `cilium_lb4_services_v1`,
//! `cilium_lb4_backends_v1`, `cilium_lb4_reverse_nat_v1`, `cilium_lb4_maglev_v1` and
//! `cilium_lb4_source_range_v1` (in an order that never exposes a half-written service, see
//! [`ops`]), computes Maglev tables ([`maglev`]), attaches the socket load-balancing
//! programs to `--cgroup-root` and the NodePort program to the `--devices`, and serves
//! `GET /v1/bpf/lb` and `GET /v1/bpf/nat`.
//!
//! Flags: `--lb-algorithm random|maglev`, `--maglev-table-size` (prime, default 16381),
//! `--cgroup-root` (default: the host's cgroup v2 mount). With `--enable-lb=false` (the
//! loadbalancer cell's flag) nothing is written and no program is attached.

pub mod api;
pub mod cgroup;
mod error;
pub mod maglev;
pub mod ops;

use std::path::PathBuf;
use std::sync::Arc;

use cilium_loadbalancer::{Frontend, LbConfig, NodeAddresses};
use hive::{BoxCell, Config, Invoke, JobGroup, Module};
use serde::Serialize;
use statedb::reconciler::ReconcilerMetrics;
use statedb::{Db, Table};

pub use api::LbMapApi;
pub use error::Error;
pub use ops::{
    Algorithm, BackendDesc, FrontendDesc, FrontendKey, FrontendSource, LbBackend, LbMapOps,
};

/// Reconciler name (logs, health, metrics).
pub const RECONCILER_NAME: &str = "lb-frontends";

/// Flags of the lbmap cell.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct LbMapFlags {
    /// Backend selection for new flows: random, or maglev (consistent hashing on the
    /// 5-tuple, per-packet path; the socket layer picks randomly).
    #[arg(long = "lb-algorithm", value_enum, default_value = "random")]
    pub lb_algorithm: Algorithm,
    /// Maglev lookup table size per frontend (a prime, 251..=131071).
    #[arg(long = "maglev-table-size", default_value_t = maglev::DEFAULT_TABLE_SIZE)]
    pub maglev_table_size: u32,
    /// cgroup v2 directory the socket load-balancing programs attach to (every process
    /// below it gets socket-level translation). Default: the host's cgroup v2 mount
    /// (/sys/fs/cgroup when it is cgroup2, else /sys/fs/cgroup/unified).
    #[arg(long = "cgroup-root")]
    pub cgroup_root: Option<PathBuf>,
}

impl Default for LbMapFlags {
    fn default() -> Self {
        Self {
            lb_algorithm: Algorithm::Random,
            maglev_table_size: maglev::DEFAULT_TABLE_SIZE,
            cgroup_root: None,
        }
    }
}

fn backend_descs(set: &[cilium_loadbalancer::FrontendBackend]) -> Vec<BackendDesc> {
    set.iter()
        .map(|b| BackendDesc {
            id: b.id,
            address: b.address,
            port: b.port,
            terminating: b.state == cilium_loadbalancer::BackendState::Terminating,
        })
        .collect()
}

impl FrontendSource for Frontend {
    fn desc(&self) -> FrontendDesc {
        FrontendDesc {
            address: self.address,
            port: self.port,
            proto: self.protocol as u8,
            external: self.kind.is_external(),
            kind: self.kind.as_str().to_string(),
            service: format!("{}/{}", self.service.namespace, self.service.name),
            service_id: self.service_id,
            backends: backend_descs(&self.backends),
            affinity_timeout_secs: self.affinity_timeout_secs,
            source_ranges: self
                .source_ranges
                .iter()
                .map(|n| (n.network(), n.prefix_len()))
                .collect(),
            source_ranges_deny: self.source_ranges_deny,
            internal: self.internal_backends.as_deref().map(backend_descs),
        }
    }
}

#[expect(clippy::too_many_arguments, reason = "injected dependencies")]
fn start(
    db: Arc<Db>,
    flags: Arc<LbMapFlags>,
    lb: Option<Arc<LbConfig>>,
    table: Option<Arc<Table<Frontend>>>,
    dp: Arc<cilium_bpf::Datapath>,
    node: Option<Arc<cilium_node::Node>>,
    addrs: Option<Arc<NodeAddresses>>,
    routes: Arc<cilium_api::routes::ApiRoutes>,
    jobs: JobGroup,
    metrics: Option<Arc<ReconcilerMetrics>>,
    resources: Option<Arc<cilium_resources::Resources>>,
) -> hive::anyhow::Result<()> {
    maglev::validate_table_size(flags.maglev_table_size).map_err(|reason| Error::Flag {
        flag: "maglev-table-size",
        value: flags.maglev_table_size.to_string(),
        reason,
    })?;
    routes.add(LbMapApi { dp: dp.clone() }.router());
    let enabled = lb.as_ref().is_none_or(|c| c.enable_lb);
    if !enabled {
        tracing::info!("--enable-lb=false: no load-balancer map writes, no socket programs");
        return Ok(());
    }
    let cgroup = match &flags.cgroup_root {
        Some(p) => p.clone(),
        None => cgroup::default_root().ok_or(Error::NoCgroup2)?,
    };
    // Unbound host sockets are checked against loadBalancerSourceRanges as this address:
    // --node-ip, else the lowest node address.
    let node_addr = node
        .as_ref()
        .and_then(|n| n.ip)
        .or_else(|| addrs.as_ref().and_then(|a| a.0.first().copied()));
    if let Some(cookie) = cgroup::own_netns_cookie() {
        dp.maps().lb.set_lb_config(cookie, node_addr)?;
    }
    dp.attach_cgroup(&cgroup)?;
    let devices = node.as_ref().map(|n| n.devices.clone()).unwrap_or_default();
    let attached = cgroup::attach_devices(&dp, &devices)?;
    tracing::info!(cgroup = %cgroup.display(), devices = ?attached, algorithm = ?flags.lb_algorithm,
        maglev_table_size = flags.maglev_table_size, "load balancer datapath ready");

    let Some(table) = table else {
        tracing::warn!(
            "no frontends table (loadbalancer cell not wired): LB maps stay as they are"
        );
        return Ok(());
    };
    let ops = Arc::new(LbMapOps::new(
        dp,
        flags.lb_algorithm,
        flags.maglev_table_size,
    ));
    let mut config = statedb::reconciler::Config::new(RECONCILER_NAME);
    config.metrics = metrics.map(|m| (*m).clone());
    cilium_resources::run_reconciler(
        &jobs,
        resources.as_deref(),
        "the BPF load-balancer map reconciler",
        ((*db).clone(), (*table).clone()),
        ops,
        config,
    );
    Ok(())
}

/// The lbmap cell: flags, the `frontends` → BPF reconciler, socket-LB and NodePort
/// attachment, LB map routes.
pub fn cell() -> BoxCell {
    Module::new(
        "lbmap",
        "frontends reconciled into the BPF load-balancer maps; socket LB and NodePort attach",
        vec![Config::<LbMapFlags>::new(), Invoke::new(start)],
    )
}
