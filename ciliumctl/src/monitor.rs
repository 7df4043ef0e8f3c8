//! `ciliumctl monitor`: live datapath events, one line each.

use std::process::ExitCode;

use cilium_api::Client;
use cilium_api::models::{MonitorEvent, MonitorEventType};

use crate::output::Format;

/// Event type filter of `--type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MonitorType {
    /// Dropped packets.
    Drop,
    /// Forwarded packets (first of a connection, TCP SYN/FIN/RST).
    Trace,
    /// Policy decisions on new connections.
    PolicyVerdict,
}

impl MonitorType {
    fn name(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Trace => "trace",
            Self::PolicyVerdict => "policy-verdict",
        }
    }
}

fn addr(ip: &str, port: u16) -> String {
    if port == 0 {
        ip.to_string()
    } else {
        format!("{ip}:{port}")
    }
}

fn proto(ev: &MonitorEvent) -> String {
    if ev.tcp_flags.is_empty() {
        ev.protocol.clone()
    } else {
        format!("{} {}", ev.protocol, ev.tcp_flags)
    }
}

/// One human line for an event.
pub fn render(ev: &MonitorEvent) -> String {
    let flow = format!(
        "{} -> {}",
        addr(&ev.src_ip, ev.src_port),
        addr(&ev.dst_ip, ev.dst_port)
    );
    match ev.kind {
        MonitorEventType::Drop => {
            let mut line = format!(
                "xx drop ({}) endpoint {} {flow} {} ({}, ifindex {}, identity {} -> {})",
                ev.drop_reason.as_deref().unwrap_or("unknown"),
                ev.endpoint,
                proto(ev),
                ev.direction,
                ev.ifindex,
                ev.src_identity,
                ev.dst_identity
            );
            if let Some(p) = &ev.policy {
                line.push_str(&format!(" policy: {p}"));
            }
            line
        }
        MonitorEventType::Trace => format!(
            "-> endpoint {} flow {flow} {} {} (trace {}, ifindex {}, identity {} -> {})",
            ev.endpoint,
            proto(ev),
            ev.verdict,
            ev.observation_point.as_deref().unwrap_or("unknown"),
            ev.ifindex,
            ev.src_identity,
            ev.dst_identity
        ),
        MonitorEventType::PolicyVerdict => {
            let verdict = match &ev.drop_reason {
                Some(r) => format!("{} ({r})", ev.verdict),
                None => ev.verdict.clone(),
            };
            let mut line = format!(
                "policy-verdict {verdict} endpoint {} {} {flow} {} identity {} -> {}",
                ev.endpoint,
                ev.direction,
                proto(ev),
                ev.src_identity,
                ev.dst_identity
            );
            if let Some(p) = &ev.policy {
                line.push_str(&format!(" policy: {p}"));
            }
            line
        }
        MonitorEventType::Lost => format!(
            "!! lost {} event(s): this monitor read too slowly",
            ev.lost.unwrap_or(0)
        ),
    }
}

/// Streams events until Ctrl-C or the agent ends the stream.
pub async fn run(
    client: &Client,
    format: Format,
    kind: Option<MonitorType>,
) -> anyhow::Result<ExitCode> {
    let mut stream = client.monitor(kind.map(MonitorType::name)).await?;
    eprintln!(
        "Listening for {} events from {} (Ctrl-C to stop)",
        kind.map_or("all", MonitorType::name),
        client.target()
    );
    loop {
        let line = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            line = stream.next_line() => line?,
        };
        let Some(line) = line else {
            eprintln!("the agent closed the event stream");
            return Ok(ExitCode::SUCCESS);
        };
        if line.trim().is_empty() {
            continue;
        }
        match format {
            Format::Json => println!("{line}"),
            Format::Yaml => {
                let v: serde_json::Value = serde_json::from_str(&line)?;
                print!("---\n{}", serde_yaml::to_string(&v)?);
            }
            Format::Table => match serde_json::from_str::<MonitorEvent>(&line) {
                Ok(ev) => println!("{}", render(&ev)),
                Err(_) => println!("{line}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: MonitorEventType) -> MonitorEvent {
        let mut e = MonitorEvent::lost(0);
        e.kind = kind;
        e.lost = None;
        e.endpoint = 12;
        e.src_ip = "10.200.0.5".into();
        e.dst_ip = "10.200.0.7".into();
        e.src_port = 43210;
        e.dst_port = 80;
        e.protocol = "tcp".into();
        e.tcp_flags = "SYN".into();
        e.direction = "egress".into();
        e
    }

    #[test]
    fn trace_and_drop_lines_name_endpoint_flow_and_verdict() {
        let mut t = ev(MonitorEventType::Trace);
        t.verdict = "forwarded".into();
        t.observation_point = Some("to-endpoint".into());
        let line = render(&t);
        assert!(
            line.starts_with(
                "-> endpoint 12 flow 10.200.0.5:43210 -> 10.200.0.7:80 tcp SYN forwarded (trace to-endpoint"
            ),
            "{line}"
        );
        let mut d = ev(MonitorEventType::Drop);
        d.endpoint = 0;
        d.src_ip = "10.9.9.9".into();
        d.src_port = 0;
        d.dst_port = 0;
        d.protocol = "icmp".into();
        d.tcp_flags = String::new();
        d.drop_reason = Some("invalid-source-ip".into());
        let line = render(&d);
        assert!(
            line.starts_with("xx drop (invalid-source-ip) endpoint 0 10.9.9.9 -> 10.200.0.7 icmp"),
            "{line}"
        );
        assert!(render(&MonitorEvent::lost(7)).contains("lost 7"));
        let mut v = ev(MonitorEventType::PolicyVerdict);
        v.verdict = "denied".into();
        v.drop_reason = Some("policy-deny".into());
        v.policy = Some("CiliumNetworkPolicy x/deny-all ingressDeny[0] ingress".into());
        let line = render(&v);
        assert!(
            line.starts_with("policy-verdict denied (policy-deny) endpoint 12 egress")
                && line.ends_with("policy: CiliumNetworkPolicy x/deny-all ingressDeny[0] ingress"),
            "{line}"
        );
    }
}
