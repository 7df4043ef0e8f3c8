//! `ciliumctl bpf (lxc|ipcache|ct|metrics) list`: decoded BPF map contents.

use std::process::ExitCode;

use cilium_api::Client;
use clap::Subcommand;

use crate::output::{Format, Table, print_structured};

/// Which map to show.
#[derive(Debug, Subcommand)]
pub enum BpfCommand {
    /// Local endpoints (`cilium_lxc_v1`).
    ///
    /// Example: `ciliumctl bpf lxc list`
    Lxc {
        #[command(subcommand)]
        action: ListAction,
    },
    /// Prefix to identity (`cilium_ipcache_v1`).
    ///
    /// Example: `ciliumctl bpf ipcache list -o json`
    Ipcache {
        #[command(subcommand)]
        action: ListAction,
    },
    /// Connection tracking entries (`cilium_ct4_v1`, `cilium_ct_any4_v1`).
    ///
    /// Example: `ciliumctl bpf ct list`
    Ct {
        #[command(subcommand)]
        action: CtAction,
    },
    /// Datapath packet/byte counters by reason and direction (`cilium_metrics_v1`).
    ///
    /// Example: `ciliumctl bpf metrics list`
    Metrics {
        #[command(subcommand)]
        action: ListAction,
    },
    /// An endpoint's policy entries (`cilium_policy_v1`, `cilium_policy_cfg_v1`).
    ///
    /// Example: `ciliumctl bpf policy list 1234`
    Policy {
        #[command(subcommand)]
        action: crate::bpf_policy::PolicyAction,
    },
    /// Service frontends and backend slots (`cilium_lb4_services_v1`, `cilium_lb4_backends_v1`).
    ///
    /// Example: `ciliumctl bpf lb list --backends`
    Lb {
        #[command(subcommand)]
        action: crate::bpf_lb::LbAction,
    },
    /// Reverse NAT, translated service flows and NodePort SNAT flows (`cilium_lb4_reverse_nat_v1`,
    /// conntrack, `cilium_snat4_v1`).
    ///
    /// Example: `ciliumctl bpf nat list`
    Nat {
        #[command(subcommand)]
        action: ListAction,
    },
}

/// The only action on most maps.
#[derive(Debug, Subcommand)]
pub enum ListAction {
    /// List every entry of the map, decoded (`-o json` for scripts).
    List,
}

/// Conntrack actions.
#[derive(Debug, Subcommand)]
pub enum CtAction {
    /// List every conntrack entry, decoded; service flows are marked.
    List,
    /// Delete expired entries now (one garbage collection pass).
    ///
    /// Example: `ciliumctl bpf ct gc`
    Gc,
}

fn ep(host: &str, port: u16) -> String {
    if port == 0 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    }
}

/// Runs a `bpf` subcommand.
pub async fn run(client: &Client, format: Format, cmd: BpfCommand) -> anyhow::Result<ExitCode> {
    let table = match cmd {
        BpfCommand::Policy { action } => {
            return crate::bpf_policy::run(client, format, action).await;
        }
        BpfCommand::Lb { action } => {
            return crate::bpf_lb::run_lb(client, format, action).await;
        }
        BpfCommand::Nat { .. } => {
            return crate::bpf_lb::run_nat(client, format).await;
        }
        BpfCommand::Lxc { .. } => {
            let rows = client.bpf_lxc().await?;
            if print_structured(format, &rows)? {
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new([
                "IP", "ENDPOINT", "IFINDEX", "IDENTITY", "MAC", "NODE MAC", "FLAGS",
            ]);
            for r in rows {
                t.row([
                    r.ip,
                    r.endpoint_id.to_string(),
                    r.ifindex.to_string(),
                    r.identity.to_string(),
                    r.mac,
                    r.node_mac,
                    r.flags.join(","),
                ]);
            }
            t
        }
        BpfCommand::Ipcache { .. } => {
            let rows = client.bpf_ipcache().await?;
            if print_structured(format, &rows)? {
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new(["PREFIX", "IDENTITY", "TUNNEL ENDPOINT"]);
            for r in rows {
                t.row([r.prefix, r.identity.to_string(), r.tunnel_endpoint]);
            }
            t
        }
        BpfCommand::Ct {
            action: CtAction::Gc,
        } => {
            let res = client.bpf_ct_gc().await?;
            if print_structured(format, &res)? {
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "deleted {} expired of {} entries; next pass in {}s",
                res.deleted, res.scanned, res.next_run_seconds
            );
            return Ok(ExitCode::SUCCESS);
        }
        BpfCommand::Ct {
            action: CtAction::List,
        } => {
            let rows = client.bpf_ct().await?;
            if print_structured(format, &rows)? {
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new([
                "PROTO",
                "SOURCE -> DESTINATION",
                "FLAGS",
                "TCP FLAGS (TX/RX)",
                "EXPIRES",
                "TX PKTS/BYTES",
                "RX PKTS/BYTES",
                "SRC IDENTITY",
            ]);
            for r in rows {
                let expires = if r.expires_in_seconds < 0 {
                    "expired".to_string()
                } else {
                    format!("{}s", r.expires_in_seconds)
                };
                let tcp = if r.protocol == "tcp" {
                    format!("{} / {}", r.tx_flags_seen, r.rx_flags_seen)
                } else {
                    String::new()
                };
                t.row([
                    r.protocol,
                    format!(
                        "{} -> {}",
                        ep(&r.src_ip, r.src_port),
                        ep(&r.dst_ip, r.dst_port)
                    ),
                    r.flags.join(","),
                    tcp,
                    expires,
                    format!("{}/{}", r.tx_packets, r.tx_bytes),
                    format!("{}/{}", r.rx_packets, r.rx_bytes),
                    r.src_identity.to_string(),
                ]);
            }
            t
        }
        BpfCommand::Metrics { .. } => {
            let rows = client.bpf_metrics().await?;
            if print_structured(format, &rows)? {
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new(["REASON", "CODE", "DIRECTION", "PACKETS", "BYTES"]);
            for r in rows {
                t.row([
                    r.reason,
                    r.reason_code.to_string(),
                    r.direction,
                    r.packets.to_string(),
                    r.bytes.to_string(),
                ]);
            }
            t
        }
    };
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}
