//! `ciliumctl policy list|explain|endpoint`: stored network policies and their verdicts.

use std::process::ExitCode;

use cilium_api::Client;
use cilium_api::models::{PolicyExplanation, PolicySummary, PolicyVerdict};
use clap::Subcommand;

use crate::output::{Format, Table, print_structured};

/// `ciliumctl policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// List stored policies (all kinds): rules, enforced directions, selected endpoints.
    ///
    /// Example: `ciliumctl policy list -o json`
    List,
    /// Explain the verdict for a connection between two pods: the source's egress decision,
    /// the destination's ingress decision and the rules deciding them (the same entries the
    /// BPF maps hold). Exits 0 when allowed, 1 when denied.
    ///
    /// Example: `ciliumctl policy explain --from x/a --to y/b --port 80/TCP`
    Explain {
        /// Source pod, `NAMESPACE/POD`.
        #[arg(long, value_name = "NS/POD")]
        from: String,
        /// Destination pod, `NAMESPACE/POD`.
        #[arg(long, value_name = "NS/POD")]
        to: String,
        /// Destination port and protocol, `N/PROTO`: `80/TCP`, `53/UDP`, `8/ICMP`; a bare `80`
        /// means `80/TCP`.
        #[arg(long, value_name = "N/PROTO")]
        port: String,
    },
    /// Show an endpoint's resolved policy entries with the rule behind each.
    ///
    /// Example: `ciliumctl policy endpoint 412`
    Endpoint {
        /// Endpoint id or `cni:<container-id>:<ifname>`.
        id: String,
    },
}

/// Run one `policy` subcommand.
pub async fn run(client: &Client, format: Format, cmd: PolicyCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCmd::List => {
            let list = client.policy_list().await?;
            if !print_structured(format, &list)? {
                print!("{}", list_table(&list).render());
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Explain { from, to, port } => {
            let (port, proto) = match port.split_once('/') {
                Some((p, pr)) => (p.to_string(), pr.to_string()),
                None => (port.clone(), "TCP".to_string()),
            };
            let port: u16 = port.parse().map_err(|_| {
                anyhow::anyhow!("--port {port:?}: expected N or N/PROTO, e.g. 80/TCP")
            })?;
            let e = client.policy_explain(&from, &to, port, &proto).await?;
            if !print_structured(format, &e)? {
                print!("{}", explain_text(&e));
            }
            Ok(if e.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        PolicyCmd::Endpoint { id } => {
            let d = client.policy_endpoint(&id).await?;
            if !print_structured(format, &d)? {
                println!(
                    "Endpoint {} ({}), identity {}: ingress {}, egress {}",
                    d.endpoint_id,
                    d.pod.as_deref().unwrap_or("-"),
                    d.identity,
                    if d.ingress_enforced {
                        "enforced"
                    } else {
                        "not enforced"
                    },
                    if d.egress_enforced {
                        "enforced"
                    } else {
                        "not enforced"
                    },
                );
                let mut t = Table::new([
                    "DIRECTION",
                    "VERDICT",
                    "IDENTITY",
                    "LABELS",
                    "PROTO",
                    "PORTS",
                    "COOKIE",
                    "RULE",
                ]);
                for e in &d.entries {
                    t.row([
                        e.direction.clone(),
                        if e.deny { "deny" } else { "allow" }.to_string(),
                        e.identity.to_string(),
                        e.identity_labels.clone(),
                        e.protocol.clone(),
                        e.ports.clone(),
                        e.cookie.to_string(),
                        e.rule
                            .as_ref()
                            .map(|r| r.description.clone())
                            .unwrap_or_else(|| "-".into()),
                    ]);
                }
                print!("{}", t.render());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The `policy list` table.
pub fn list_table(list: &[PolicySummary]) -> Table {
    let mut t = Table::new([
        "KIND",
        "NAMESPACE",
        "NAME",
        "RULES",
        "ENFORCES",
        "ENDPOINTS",
    ]);
    for p in list {
        let enforces = match (p.enforces_ingress, p.enforces_egress) {
            (true, true) => "ingress,egress",
            (true, false) => "ingress",
            (false, true) => "egress",
            (false, false) => "-",
        };
        let eps: Vec<String> = p
            .endpoints
            .iter()
            .map(|e| match &e.pod {
                Some(pod) => format!("{} ({pod})", e.id),
                None => e.id.to_string(),
            })
            .collect();
        t.row([
            p.kind.clone(),
            if p.namespace.is_empty() {
                "-".into()
            } else {
                p.namespace.clone()
            },
            p.name.clone(),
            p.rules.to_string(),
            enforces.to_string(),
            if eps.is_empty() {
                "-".into()
            } else {
                eps.join(", ")
            },
        ]);
    }
    t
}

fn verdict_line(dir: &str, v: &PolicyVerdict) -> String {
    let rule = v
        .rule
        .as_ref()
        .map(|r| format!(" by {} (cookie {})", r.description, r.cookie))
        .unwrap_or_default();
    let what = match v.reason.as_str() {
        "not-enforced" => "allowed (not enforced)".to_string(),
        "allowed" => format!("allowed{rule}"),
        "policy-deny" => format!("denied{rule}"),
        _ => "denied (no rule allows it: default deny)".to_string(),
    };
    format!("{dir:<8} {what}\n")
}

/// The text form of an explanation.
pub fn explain_text(e: &PolicyExplanation) -> String {
    let mut s = format!(
        "{} (endpoint {}, identity {}) -> {} (endpoint {}, identity {}) {}/{}\n",
        e.from.pod,
        e.from.endpoint_id,
        e.from.identity,
        e.to.pod,
        e.to.endpoint_id,
        e.to.identity,
        e.port,
        e.protocol
    );
    s.push_str(&verdict_line("egress", &e.egress));
    s.push_str(&verdict_line("ingress", &e.ingress));
    s.push_str(&format!(
        "verdict  {}\n",
        if e.allowed { "ALLOWED" } else { "DENIED" }
    ));
    s
}
