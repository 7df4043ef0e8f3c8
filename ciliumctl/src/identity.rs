//! `ciliumctl identity list|get ID`: the agent's security identities.

use std::process::ExitCode;

use cilium_api::Client;
use cilium_api::models::IdentityInfo;
use clap::Subcommand;

use crate::output::{Format, Table, print_structured};

/// `ciliumctl identity ...`.
#[derive(Debug, Subcommand)]
pub enum IdentityCmd {
    /// List identities: id, kind, labels, owners and reference count.
    ///
    /// Example: `ciliumctl identity list -o json`
    List,
    /// Show one identity by numeric id.
    ///
    /// Example: `ciliumctl identity get 256` or `ciliumctl identity get 1 -o yaml`
    Get {
        /// Numeric identity (1 host, 2 world, ..., from 256 for label sets).
        id: String,
    },
}

/// Run one `identity` subcommand.
pub async fn run(client: &Client, format: Format, cmd: IdentityCmd) -> anyhow::Result<ExitCode> {
    let ids = match cmd {
        IdentityCmd::List => client.identity_list().await?,
        IdentityCmd::Get { id } => {
            let one = client.identity_get(&id).await?;
            if print_structured(format, &one)? {
                return Ok(ExitCode::SUCCESS);
            }
            vec![one]
        }
    };
    if !print_structured(format, &ids)? {
        print!("{}", table(&ids).render());
    }
    Ok(ExitCode::SUCCESS)
}

fn labels(i: &IdentityInfo) -> String {
    i.labels
        .iter()
        .map(|(k, v)| {
            if v.is_empty() {
                k.clone()
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The identity table: ID, KIND, LABELS, OWNERS/REFS.
pub fn table(ids: &[IdentityInfo]) -> Table {
    let mut t = Table::new(["ID", "KIND", "LABELS", "OWNERS/REFS"]);
    for i in ids {
        let owners = if i.owners.is_empty() {
            "-".to_string()
        } else {
            format!("{} ({})", i.owners.join(","), i.refs)
        };
        t.row([i.id.to_string(), i.kind.clone(), labels(i), owners]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_labels_and_owners() {
        let ids = vec![
            IdentityInfo {
                id: 1,
                kind: "reserved".into(),
                labels: [("reserved:host".to_string(), String::new())].into(),
                ..Default::default()
            },
            IdentityInfo {
                id: 256,
                kind: "endpoint".into(),
                labels: [("app".to_string(), "web".to_string())].into(),
                owners: vec!["cni:a:eth0".into(), "cni:b:eth0".into()],
                refs: 2,
                ..Default::default()
            },
        ];
        let out = table(&ids).render();
        assert!(out.contains("OWNERS/REFS"), "{out}");
        assert!(out.contains("reserved:host"), "{out}");
        assert!(out.contains("app=web"), "{out}");
        assert!(out.contains("cni:a:eth0,cni:b:eth0 (2)"), "{out}");
    }
}
