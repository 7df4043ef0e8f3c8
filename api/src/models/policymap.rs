//! Resolved policy as the BPF datapath holds it: `GET /v1/bpf/policy/{endpoint}` and
//! per-rule counters `GET /v1/policy/stats`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One entry of an endpoint's BPF policy map (`cilium_policy_v1`), decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BpfPolicyEntry {
    /// `ingress` or `egress`.
    pub direction: String,
    /// Peer identity, 0 = any peer.
    pub identity: u32,
    /// `tcp`, `udp`, `sctp`, `icmp`, `any` or `proto-<n>`.
    pub protocol: String,
    /// IP protocol number (0 = any).
    #[serde(default)]
    pub protocol_number: u8,
    /// First port of the block (ICMP: the type); 0 with prefix 0 = any.
    pub port: u16,
    /// Last port of the block.
    pub port_end: u16,
    /// Port prefix length: 16 exact, 0 any, else an aligned range block.
    pub port_prefix_len: u8,
    /// `allow` or `deny` (as written to the map: an allow hidden by a covering deny is
    /// written as that deny).
    pub verdict: String,
    /// Cookie naming the rule.
    pub cookie: u32,
    /// The rule the cookie names, e.g. `CiliumNetworkPolicy x/deny-all ingressDeny[0]`;
    /// empty when unknown.
    #[serde(default)]
    pub rule: String,
    /// Packets the cookie decided (all endpoints; per-cookie counter).
    #[serde(default)]
    pub packets: u64,
    /// Bytes of those packets.
    #[serde(default)]
    pub bytes: u64,
}

/// An endpoint's policy in the datapath.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BpfPolicy {
    /// Endpoint id.
    pub endpoint_id: u16,
    /// Ingress is enforced (default deny) in the datapath.
    pub ingress_enforced: bool,
    /// Egress is enforced (default deny) in the datapath.
    pub egress_enforced: bool,
    /// Write counter of the enforcement flags (0 when none are written).
    #[serde(default)]
    pub revision: u32,
    /// Entries, sorted by direction, identity, protocol, port.
    pub entries: Vec<BpfPolicyEntry>,
}

/// Counters of one policy cookie (one rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyRuleStats {
    /// Cookie.
    pub cookie: u32,
    /// The rule it names; empty when unknown.
    #[serde(default)]
    pub rule: String,
    /// Packets the rule decided (allowed or denied), original direction only.
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
}
