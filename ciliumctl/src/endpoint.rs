//! `ciliumctl endpoint list|get ID`: the agent's endpoints.

use std::process::ExitCode;

use cilium_api::Client;
use cilium_api::models::Endpoint;
use clap::Subcommand;

use crate::output::{Format, Table, print_structured};

/// `ciliumctl endpoint ...`.
#[derive(Debug, Subcommand)]
pub enum EndpointCmd {
    /// List endpoints: id, pod, address, host interface, identity, state, labels.
    ///
    /// Example: `ciliumctl endpoint list -o json`
    List,
    /// Show every field of one endpoint, by numeric id or attachment key.
    ///
    /// Example: `ciliumctl endpoint get 412` or `ciliumctl endpoint get cni:abc:eth0`
    Get {
        /// Endpoint id or `cni:<container-id>:<ifname>`.
        id: String,
    },
}

/// Run one `endpoint` subcommand.
pub async fn run(client: &Client, format: Format, cmd: EndpointCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        EndpointCmd::List => {
            let eps = client.endpoint_list().await?;
            if !print_structured(format, &eps)? {
                print!("{}", list_table(&eps).render());
            }
        }
        EndpointCmd::Get { id } => {
            let ep = client.endpoint_get(&id).await?;
            if !print_structured(format, &ep)? {
                print!("{}", detail_table(&ep).render());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn labels(ep: &Endpoint) -> String {
    ep.labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The `endpoint list` table.
pub fn list_table(eps: &[Endpoint]) -> Table {
    let mut t = Table::new(["ID", "POD", "IPV4", "IFACE", "IDENTITY", "STATE", "LABELS"]);
    for ep in eps {
        t.row([
            ep.id.to_string(),
            ep.pod.clone().unwrap_or_else(|| "-".into()),
            ep.ipv4.to_string(),
            ep.host_ifname.clone(),
            ep.identity.to_string(),
            ep.state.clone(),
            labels(ep),
        ]);
    }
    t
}

/// The `endpoint get` table: one row per field.
pub fn detail_table(ep: &Endpoint) -> Table {
    let mut t = Table::new(["FIELD", "VALUE"]);
    let ports = ep
        .named_ports
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    for (k, v) in [
        ("ID", ep.id.to_string()),
        ("KEY", ep.key.clone()),
        ("POD", ep.pod.clone().unwrap_or_else(|| "-".into())),
        ("STATE", ep.state.clone()),
        // The pod's interface holds the address as a /32 (routes via the gateway);
        // `prefix_len` is the pool's, which says nothing about this endpoint.
        ("IPV4", ep.ipv4.to_string()),
        ("GATEWAY", ep.gateway.to_string()),
        ("IDENTITY", ep.identity.to_string()),
        ("LABELS", labels(ep)),
        ("NAMED PORTS", ports),
        ("CONTAINER", ep.container_id.clone()),
        ("NETNS", ep.netns.clone()),
        ("IFNAME", ep.ifname.clone()),
        ("MAC", ep.mac.clone()),
        (
            "HOST IFACE",
            format!("{} (ifindex {})", ep.host_ifname, ep.host_ifindex),
        ),
        ("HOST MAC", ep.host_mac.clone()),
        (
            "POLICY",
            format!(
                "ingress {}, egress {}",
                enforced(ep.policy_enforcement.ingress),
                enforced(ep.policy_enforcement.egress)
            ),
        ),
    ] {
        t.row([k.to_string(), v]);
    }
    t
}

fn enforced(on: bool) -> &'static str {
    if on { "enforced" } else { "allow-all" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Endpoint {
        serde_json::from_value(serde_json::json!({
            "id": 412, "key": "cni:abc:eth0", "container_id": "abc", "netns": "/var/run/netns/x",
            "ifname": "eth0", "host_ifname": "lxc0123456789a", "host_ifindex": 17,
            "mac": "02:00:00:00:00:01", "host_mac": "02:00:00:00:00:02",
            "ipv4": "10.200.0.2", "gateway": "10.200.0.1", "prefix_len": 16,
            "pod": "default/web", "identity": 0, "labels": {"app": "web"},
            "named_ports": {"http": "80/TCP"}, "state": "ready"
        }))
        .unwrap()
    }

    #[test]
    fn list_row_has_every_column() {
        let out = list_table(&[ep()]).render();
        let mut lines = out.lines();
        let header = lines.next().unwrap();
        for col in ["ID", "POD", "IPV4", "IFACE", "IDENTITY", "STATE", "LABELS"] {
            assert!(header.contains(col), "{header}");
        }
        let row = lines.next().unwrap();
        for cell in [
            "412",
            "default/web",
            "10.200.0.2",
            "lxc0123456789a",
            "ready",
            "app=web",
        ] {
            assert!(row.contains(cell), "{row}");
        }
    }

    #[test]
    fn detail_shows_all_fields() {
        let out = detail_table(&ep()).render();
        for s in [
            "cni:abc:eth0",
            "10.200.0.2",
            "http=80/TCP",
            "ifindex 17",
            "/var/run/netns/x",
        ] {
            assert!(out.contains(s), "{out}");
        }
        // The pool's prefix is not the endpoint's (its interface holds a /32).
        assert!(!out.contains("10.200.0.2/16"), "{out}");
    }
}
