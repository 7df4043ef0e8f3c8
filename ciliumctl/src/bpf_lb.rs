//! `ciliumctl bpf lb list [--backends]` and `ciliumctl bpf nat list`.

use std::process::ExitCode;

use cilium_api::Client;
use clap::Subcommand;

use crate::output::{Format, Table, print_structured};

/// Actions on the load-balancer maps.
#[derive(Debug, Subcommand)]
pub enum LbAction {
    /// List frontends with their backend slots. A frontend flagged `two-scopes`
    /// (externalTrafficPolicy Local with backends elsewhere) also lists the slots this node's
    /// own clients use, as `i1`, `i2`, ...
    ///
    /// Example: `ciliumctl bpf lb list --backends`
    List {
        /// Also list the backends map.
        #[arg(long)]
        backends: bool,
    },
}

/// Runs `bpf lb list`.
pub async fn run_lb(client: &Client, format: Format, action: LbAction) -> anyhow::Result<ExitCode> {
    let LbAction::List { backends } = action;
    let list = client.bpf_lb(backends).await?;
    if print_structured(format, &list)? {
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(["FRONTEND", "PROTO", "ID", "SLOT", "BACKEND", "DETAILS"]);
    for s in &list.services {
        let mut details = vec![s.algorithm.clone()];
        details.extend(s.flags.iter().cloned());
        if s.affinity_timeout_secs > 0 {
            details.push(format!("affinity-timeout={}s", s.affinity_timeout_secs));
        }
        if !s.source_ranges.is_empty() {
            let deny = s.flags.iter().any(|f| f == "source-range-deny");
            let what = if deny { "not-from" } else { "from" };
            details.push(format!("{what}={}", s.source_ranges.join("+")));
        }
        t.row([
            s.frontend.clone(),
            s.protocol.clone(),
            s.service_id.to_string(),
            "0".into(),
            format!("{} backends", s.count),
            details.join(","),
        ]);
        // Internal-scope slots (two-scopes: what clients on this node use) as `i1`, `i2`...
        let scopes = [
            ("", "", &s.slots),
            ("i", "from this node", &s.internal_slots),
        ];
        for (prefix, note, slots) in scopes {
            for slot in slots {
                t.row([
                    String::new(),
                    String::new(),
                    String::new(),
                    format!("{prefix}{}", slot.slot),
                    format!("{} (id {})", slot.backend, slot.backend_id),
                    note.to_string(),
                ]);
            }
        }
    }
    print!("{}", t.render());
    if backends {
        let mut b = Table::new(["BACKEND ID", "ADDRESS", "PROTO", "STATE"]);
        for r in &list.backends {
            b.row([
                r.id.to_string(),
                r.address.clone(),
                r.protocol.clone(),
                r.state.clone(),
            ]);
        }
        println!();
        print!("{}", b.render());
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `bpf nat list`.
pub async fn run_nat(client: &Client, format: Format) -> anyhow::Result<ExitCode> {
    let list = client.bpf_nat().await?;
    if print_structured(format, &list)? {
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(["SERVICE ID", "REVERSE NAT TO"]);
    for r in &list.reverse_nat {
        t.row([r.service_id.to_string(), r.frontend.clone()]);
    }
    print!("{}", t.render());
    println!();
    let mut f = Table::new(["PROTO", "SOURCE", "BACKEND", "FRONTEND", "FLAGS"]);
    for r in &list.flows {
        f.row([
            r.protocol.clone(),
            r.source.clone(),
            r.backend.clone(),
            r.frontend.clone(),
            r.flags.join(","),
        ]);
    }
    print!("{}", f.render());
    if !list.snat.is_empty() {
        println!();
        let mut s = Table::new(["PROTO", "CLIENT", "BACKEND", "SNAT TO (NODE)"]);
        for r in &list.snat {
            s.row([
                r.protocol.clone(),
                r.client.clone(),
                r.backend.clone(),
                r.node.clone(),
            ]);
        }
        print!("{}", s.render());
    }
    Ok(ExitCode::SUCCESS)
}
