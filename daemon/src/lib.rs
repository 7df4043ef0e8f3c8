//! cilium-agent: assembles the hive of cells that make up the node agent and serves its REST
//! API. The binary (`main.rs`) only parses the command line and runs [`agent_hive`].

pub mod api;
pub mod logging;
pub mod metrics_server;

use std::sync::Arc;
use std::time::Instant;

use hive::{BoxCell, Hive, Module, Provide};

/// Facts about this agent process that the API reports.
#[derive(Debug)]
pub struct AgentInfo {
    /// When the process started.
    pub started: Instant,
    /// Version string.
    pub version: &'static str,
}

impl AgentInfo {
    /// Seconds since start.
    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}

/// Every cell of the agent, in the order they are declared.
pub fn agent_cells(log: Arc<logging::LogControl>) -> Vec<BoxCell> {
    let cells: Vec<BoxCell> = vec![
        infra_cell(log),
        // Control plane and datapath cells: each cell crate adds its `cell()` below.
        cilium_ipam::cell(),
        cilium_resources::cell(),
        cilium_datapath::cell(),
        cilium_ipcache::cell(),
        cilium_loadbalancer::cell(),
        cilium_policymap::cell(),
        cilium_endpoint::cell(),
        cilium_identity::cell(),
        cilium_policy::cell(),
        cilium_lbmap::cell(),
        cilium_node::cell(),
    ];
    vec![Module::new("agent", "cilium-rs node agent", cells)]
}

/// The infrastructure module: logging, metrics endpoint, API server. Needs no privileges, so
/// tests can build a hive of just this.
pub fn infra_cell(log: Arc<logging::LogControl>) -> BoxCell {
    Module::new(
        "infra",
        "API server, metrics, logging",
        vec![
            Provide::arc(log),
            Provide::value(AgentInfo {
                started: Instant::now(),
                version: env!("CARGO_PKG_VERSION"),
            }),
            logging::cell(),
            metrics_server::cell(),
            api::cell(),
        ],
    )
}

/// The agent's hive.
pub fn agent_hive(log: Arc<logging::LogControl>) -> Hive {
    Hive::new(agent_cells(log))
}
