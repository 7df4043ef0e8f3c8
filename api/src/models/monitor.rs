//! Datapath events streamed by `GET /v1/monitor` (newline-delimited JSON, one per line).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Kind of a monitor line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MonitorEventType {
    /// A packet the datapath dropped (see `drop_reason`).
    Drop,
    /// A packet the datapath forwarded (see `observation_point`).
    Trace,
    /// A policy decision on a new connection.
    PolicyVerdict,
    /// Events this subscriber missed because it read too slowly (see `lost`).
    Lost,
}

impl MonitorEventType {
    /// The name used in `?type=` and in JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Trace => "trace",
            Self::PolicyVerdict => "policy-verdict",
            Self::Lost => "lost",
        }
    }
}

/// One datapath event (or a `lost` notice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MonitorEvent {
    /// drop, trace, policy-verdict or lost.
    #[serde(rename = "type")]
    pub kind: MonitorEventType,
    /// CLOCK_BOOTTIME nanoseconds when the packet was seen.
    #[serde(default)]
    pub timestamp_ns: u64,
    /// Reporting endpoint id (0 when unknown, e.g. a spoofed source).
    #[serde(default)]
    pub endpoint: u16,
    /// Local destination endpoint id, 0 when none.
    #[serde(default)]
    pub dst_endpoint: u16,
    /// `ingress` or `egress`, from the reporting endpoint's view.
    #[serde(default)]
    pub direction: String,
    /// Source IPv4 address.
    #[serde(default)]
    pub src_ip: String,
    /// Destination IPv4 address.
    #[serde(default)]
    pub dst_ip: String,
    /// Source port (ICMP echo id on requests), 0 when none.
    #[serde(default)]
    pub src_port: u16,
    /// Destination port, 0 when none.
    #[serde(default)]
    pub dst_port: u16,
    /// `tcp`, `udp`, `icmp` or `proto-<n>`.
    #[serde(default)]
    pub protocol: String,
    /// TCP flags of the packet, e.g. `SYN` or `SYN ACK`; empty for non-TCP.
    #[serde(default)]
    pub tcp_flags: String,
    /// Conntrack state: new, established, reply.
    #[serde(default)]
    pub ct_status: String,
    /// forwarded (trace), allowed/denied (policy verdict), dropped (drop).
    #[serde(default)]
    pub verdict: String,
    /// Drop reason name (drops and denied verdicts), e.g. `invalid-source-ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<String>,
    /// Drop reason code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason_code: Option<u8>,
    /// Source security identity.
    #[serde(default)]
    pub src_identity: u32,
    /// Destination security identity.
    #[serde(default)]
    pub dst_identity: u32,
    /// Interface the program ran on.
    #[serde(default)]
    pub ifindex: u32,
    /// Interface of a local delivery, 0 when none.
    #[serde(default)]
    pub dst_ifindex: u32,
    /// Where a trace was observed: to-endpoint, to-stack, from-endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observation_point: Option<String>,
    /// Packet length in bytes.
    #[serde(default)]
    pub length: u32,
    /// For `lost`: how many events this subscriber missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    /// Policy verdicts and policy drops: cookie of the deciding policy entry (0 = none,
    /// e.g. default deny).
    #[serde(default)]
    pub cookie: u32,
    /// Policy verdicts and policy drops: the deciding policy and rule, e.g.
    /// `CiliumNetworkPolicy x/deny-all ingressDeny[0]`, or `default deny (no rule allows)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

impl MonitorEvent {
    /// A `lost` notice for `n` missed events.
    pub fn lost(n: u64) -> Self {
        Self {
            kind: MonitorEventType::Lost,
            timestamp_ns: 0,
            endpoint: 0,
            dst_endpoint: 0,
            direction: String::new(),
            src_ip: String::new(),
            dst_ip: String::new(),
            src_port: 0,
            dst_port: 0,
            protocol: String::new(),
            tcp_flags: String::new(),
            ct_status: String::new(),
            verdict: String::new(),
            drop_reason: None,
            drop_reason_code: None,
            src_identity: 0,
            dst_identity: 0,
            ifindex: 0,
            dst_ifindex: 0,
            observation_point: None,
            length: 0,
            lost: Some(n),
            cookie: 0,
            policy: None,
        }
    }
}
