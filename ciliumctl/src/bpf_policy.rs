//! `ciliumctl bpf policy list ENDPOINT`: an endpoint's policy as the datapath holds it.

use std::process::ExitCode;

use cilium_api::Client;
use cilium_api::models::BpfPolicy;
use clap::Subcommand;

use crate::output::{Format, Table, print_structured};

/// Actions on the policy maps.
#[derive(Debug, Subcommand)]
pub enum PolicyAction {
    /// List an endpoint's policy map entries with the rule and packets of each.
    ///
    /// Example: `ciliumctl bpf policy list 1234` or `ciliumctl bpf policy list default/web`
    List {
        /// Endpoint id, `cni:<container-id>:<ifname>`, or the pod as `NAMESPACE/NAME` (see
        /// `ciliumctl endpoint list`).
        endpoint: String,
    },
}

fn ports(e: &cilium_api::models::BpfPolicyEntry) -> String {
    if e.port_prefix_len == 0 {
        "any".into()
    } else if e.port == e.port_end {
        e.port.to_string()
    } else {
        format!("{}-{}", e.port, e.port_end)
    }
}

fn identity(id: u32) -> String {
    match id {
        0 => "any".into(),
        1 => "1 (host)".into(),
        2 => "2 (world)".into(),
        i => i.to_string(),
    }
}

/// The table printed for `bpf policy list`.
pub fn render(p: &BpfPolicy) -> String {
    let on = |b: bool| {
        if b {
            "enforced"
        } else {
            "not enforced (allow all)"
        }
    };
    let mut out = format!(
        "Endpoint {}: ingress {}, egress {}\n",
        p.endpoint_id,
        on(p.ingress_enforced),
        on(p.egress_enforced)
    );
    let mut t = Table::new([
        "DIRECTION",
        "IDENTITY",
        "PROTO",
        "PORT(S)",
        "VERDICT",
        "COOKIE/RULE",
        "PACKETS",
    ]);
    for e in &p.entries {
        let rule = if e.rule.is_empty() {
            e.cookie.to_string()
        } else {
            format!("{} {}", e.cookie, e.rule)
        };
        t.row([
            e.direction.clone(),
            identity(e.identity),
            e.protocol.clone(),
            ports(e),
            e.verdict.clone(),
            rule,
            e.packets.to_string(),
        ]);
    }
    out.push_str(&t.render());
    out
}

/// The id of the endpoint named by an id, a `cni:` key or a pod's `NAMESPACE/NAME`.
async fn endpoint_id(client: &Client, name: &str) -> anyhow::Result<u16> {
    if let Ok(id) = name.parse::<u16>() {
        return Ok(id);
    }
    if name.starts_with("cni:") {
        return Ok(client.endpoint_get(name).await?.id);
    }
    let ids: Vec<u16> = client
        .endpoint_list()
        .await?
        .iter()
        .filter(|ep| ep.pod.as_deref() == Some(name))
        .map(|ep| ep.id)
        .collect();
    match ids.as_slice() {
        [id] => Ok(*id),
        [] => anyhow::bail!(
            "no endpoint of pod {name:?}: give an endpoint id, a cni:<container-id>:<ifname> key \
             or a pod as NAMESPACE/NAME (see `ciliumctl endpoint list`)"
        ),
        many => anyhow::bail!(
            "pod {name:?} has {} endpoints ({}): give one of their ids",
            many.len(),
            many.iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs a `bpf policy` subcommand.
pub async fn run(
    client: &Client,
    format: Format,
    action: PolicyAction,
) -> anyhow::Result<ExitCode> {
    let PolicyAction::List { endpoint } = action;
    let id = endpoint_id(client, &endpoint).await?;
    let p = client.bpf_policy(id).await?;
    if print_structured(format, &p)? {
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render(&p));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use cilium_api::models::BpfPolicyEntry;

    use super::*;

    #[test]
    fn lists_ranges_identities_and_rules() {
        let p = BpfPolicy {
            endpoint_id: 7,
            ingress_enforced: true,
            egress_enforced: false,
            revision: 3,
            entries: vec![BpfPolicyEntry {
                direction: "ingress".into(),
                identity: 0,
                protocol: "tcp".into(),
                protocol_number: 6,
                port: 8080,
                port_end: 8083,
                port_prefix_len: 14,
                verdict: "allow".into(),
                cookie: 12,
                rule: "NetworkPolicy x/a ingress[0]".into(),
                packets: 5,
                bytes: 300,
            }],
        };
        let s = render(&p);
        assert!(
            s.starts_with("Endpoint 7: ingress enforced, egress not enforced"),
            "{s}"
        );
        assert!(s.contains("8080-8083"), "{s}");
        assert!(s.contains("12 NetworkPolicy x/a ingress[0]"), "{s}");
        assert!(s.contains("COOKIE/RULE"), "{s}");
    }
}
