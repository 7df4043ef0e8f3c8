//! `ciliumctl service list`: services with their frontends and backends.

use std::process::ExitCode;

use cilium_api::Client;
use cilium_api::models::{FrontendBackendInfo, FrontendInfo, ServiceInfo};
use clap::Subcommand;

use crate::output::{Format, Table, print_structured};

/// `ciliumctl service ...`.
#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// List service frontends: id, frontend, type, backends (address:port state), affinity.
    /// With externalTrafficPolicy Local, the backends of the node's own clients follow
    /// `from this node:` when they differ.
    ///
    /// Example: `ciliumctl service list` or `ciliumctl service list -o json`
    List,
}

/// Run one `service` subcommand.
pub async fn run(client: &Client, format: Format, cmd: ServiceCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ServiceCmd::List => {
            let services = client.service_list().await?;
            if !print_structured(format, &services)? {
                print!("{}", table(&services).render());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn backend_list(set: &[FrontendBackendInfo]) -> String {
    if set.is_empty() {
        return "(none: refused)".to_string();
    }
    set.iter()
        .map(|b| format!("{}:{} ({})", b.address, b.port, b.state))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The BACKENDS cell: the selection, and what clients on this node get when it differs.
fn backends(f: &FrontendInfo) -> String {
    match &f.internal_backends {
        Some(int) => format!(
            "{}; from this node: {}",
            backend_list(&f.backends),
            backend_list(int)
        ),
        None => backend_list(&f.backends),
    }
}

/// The service table: one row per frontend (ID, FRONTEND, TYPE, BACKENDS, AFFINITY,
/// SERVICE); a service without frontends gets one row saying why.
pub fn table(services: &[ServiceInfo]) -> Table {
    let mut t = Table::new(["ID", "FRONTEND", "TYPE", "BACKENDS", "AFFINITY", "SERVICE"]);
    for s in services {
        let svc = format!("{}/{}", s.namespace, s.name);
        let affinity = if s.session_affinity == "ClientIP" {
            format!("ClientIP {}s", s.affinity_timeout_secs)
        } else {
            "None".to_string()
        };
        if s.frontends.is_empty() {
            let why = match (&s.error, &s.ignored) {
                (Some(e), _) => format!("error: {e}"),
                (None, Some(why)) => format!("ignored: {why}"),
                (None, None) if s.cluster_ip == "None" => "headless".to_string(),
                (None, None) => "-".to_string(),
            };
            t.row([
                "-".to_string(),
                "-".to_string(),
                s.service_type.clone(),
                why,
                affinity.clone(),
                svc.clone(),
            ]);
            continue;
        }
        let mut fronts: Vec<&FrontendInfo> = s.frontends.iter().collect();
        fronts.sort_by_key(|f| (f.kind != "ClusterIP", f.service_id));
        for f in fronts {
            t.row([
                f.service_id.to_string(),
                format!("{}:{}/{}", f.address, f.port, f.protocol),
                f.kind.clone(),
                backends(f),
                affinity.clone(),
                svc.clone(),
            ]);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_frontends_backends_and_errors() {
        let services = vec![
            ServiceInfo {
                namespace: "default".into(),
                name: "web".into(),
                service_type: "ClusterIP".into(),
                cluster_ip: "10.96.0.10".into(),
                session_affinity: "ClientIP".into(),
                affinity_timeout_secs: 10800,
                frontends: vec![FrontendInfo {
                    address: "10.96.0.10".into(),
                    port: 80,
                    protocol: "TCP".into(),
                    kind: "ClusterIP".into(),
                    service_id: 7,
                    backends: vec![FrontendBackendInfo {
                        id: 3,
                        address: "10.200.0.5".into(),
                        port: 8080,
                        state: "active".into(),
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
            ServiceInfo {
                namespace: "default".into(),
                name: "dup".into(),
                service_type: "ClusterIP".into(),
                session_affinity: "None".into(),
                error: Some("already used by service default/web".into()),
                ..Default::default()
            },
            ServiceInfo {
                namespace: "default".into(),
                name: "alias".into(),
                service_type: "ExternalName".into(),
                cluster_ip: "None".into(),
                session_affinity: "None".into(),
                ignored: Some("type ExternalName (db.example.com): a DNS alias".into()),
                ..Default::default()
            },
        ];
        let out = table(&services).render();
        assert!(out.contains("FRONTEND"), "{out}");
        assert!(out.contains("10.96.0.10:80/TCP"), "{out}");
        assert!(out.contains("10.200.0.5:8080 (active)"), "{out}");
        assert!(out.contains("ClientIP 10800s"), "{out}");
        assert!(
            out.contains("error: already used by service default/web"),
            "{out}"
        );
        assert!(
            out.contains("ignored: type ExternalName (db.example.com)"),
            "{out}"
        );
    }

    #[test]
    fn the_nodes_own_backends_follow_when_they_differ() {
        let be = |a: &str| FrontendBackendInfo {
            id: 1,
            address: a.into(),
            port: 8080,
            state: "active".into(),
        };
        let f = FrontendInfo {
            backends: Vec::new(),
            internal_backends: Some(vec![be("10.201.0.5")]),
            ..Default::default()
        };
        assert_eq!(
            backends(&f),
            "(none: refused); from this node: 10.201.0.5:8080 (active)"
        );
        let f = FrontendInfo {
            backends: vec![be("10.200.0.5")],
            ..Default::default()
        };
        assert_eq!(backends(&f), "10.200.0.5:8080 (active)");
    }
}
