//! The node cell: settings every other cell shares (`--state-dir`, `--node-name`, `--node-ip`,
//! `--devices`) and [`StateFile`], the crash-safe JSON file cells persist their state in so a
//! restarted agent (even after `kill -9`) finds exactly what was last committed.

mod error;
mod state;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use hive::{BoxCell, Config, Module, Provide};
use serde::Serialize;

pub use error::Error;
pub use state::StateFile;

/// Default directory of the agent's persistent state.
pub const DEFAULT_STATE_DIR: &str = "/var/run/cilium/state";

/// Node-wide flags.
#[derive(Debug, Clone, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeConfig {
    /// Directory where cells persist their state (endpoints, IPAM, identities, objects).
    #[arg(long = "state-dir", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Name of this node; the host name when empty.
    #[arg(long = "node-name", default_value = "")]
    pub node_name: String,
    /// This node's address, used for NodePort and between nodes; detected when empty.
    #[arg(long = "node-ip", default_value = "")]
    pub node_ip: String,
    /// Native devices (NodePort, masquerade), comma-separated.
    #[arg(long = "devices", value_delimiter = ',')]
    pub devices: Vec<String>,
}

/// The resolved node identity and paths, injected as `Arc<Node>`.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// Node name.
    pub name: String,
    /// Node address, when known.
    pub ip: Option<Ipv4Addr>,
    /// State directory (created at construction).
    pub state_dir: PathBuf,
    /// Native devices.
    pub devices: Vec<String>,
}

impl Node {
    /// The state file `name` inside the state directory.
    pub fn state_file(&self, name: &str) -> StateFile {
        StateFile::new(self.state_dir.join(name))
    }

    fn from_config(cfg: &NodeConfig) -> Result<Self, Error> {
        std::fs::create_dir_all(&cfg.state_dir).map_err(|source| Error::Io {
            what: "create the state directory (--state-dir)".into(),
            path: cfg.state_dir.clone(),
            source,
        })?;
        let name = if cfg.node_name.is_empty() {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "localhost".into())
        } else {
            cfg.node_name.clone()
        };
        let ip = if cfg.node_ip.is_empty() {
            None
        } else {
            Some(cfg.node_ip.parse().map_err(|_| Error::Invalid {
                field: "--node-ip".into(),
                reason: format!("{:?} is not an IPv4 address", cfg.node_ip),
            })?)
        };
        Ok(Self {
            name,
            ip,
            state_dir: cfg.state_dir.clone(),
            devices: cfg
                .devices
                .iter()
                .filter(|d| !d.is_empty())
                .cloned()
                .collect(),
        })
    }
}

/// The node cell.
pub fn cell() -> BoxCell {
    Module::new(
        "node",
        "node name, address, devices and state directory",
        vec![
            Config::<NodeConfig>::new(),
            Provide::new(|cfg: Arc<NodeConfig>, health: hive::Health| {
                let node = Node::from_config(&cfg)?;
                health.ok(format!(
                    "node {} state in {}",
                    node.name,
                    node.state_dir.display()
                ));
                Ok(node)
            }),
            // Every agent needs the state directory, even before any cell asks for it.
            hive::Invoke::new(|_node: Arc<Node>| Ok(())),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_config(args: &[&str]) -> Arc<NodeConfig> {
        let dir = tempfile::tempdir().unwrap();
        let hive = hive::Hive::new(vec![cell()]);
        let state = dir.path().display().to_string();
        let mut argv = vec!["cilium-agent", "--state-dir", state.as_str()];
        argv.extend_from_slice(args);
        hive.populate_with_args(argv).unwrap();
        hive.get::<NodeConfig>().unwrap().unwrap()
    }

    /// Without `--devices` the configuration shows no devices (not one empty name).
    #[test]
    fn devices_default_to_none_and_split_on_commas() {
        assert!(node_config(&[]).devices.is_empty());
        assert_eq!(
            node_config(&["--devices", "eth0,eth1"]).devices,
            ["eth0", "eth1"]
        );
    }
}
