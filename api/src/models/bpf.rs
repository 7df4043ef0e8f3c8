//! Decoded BPF map contents: `GET /v1/bpf/{lxc,ipcache,ct,metrics}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One row of `cilium_lxc_v1` (local endpoints by address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BpfEndpoint {
    /// Endpoint IPv4 address (the key).
    pub ip: String,
    /// Endpoint id.
    pub endpoint_id: u16,
    /// Host-side interface index.
    pub ifindex: u32,
    /// Flags, e.g. `host`.
    pub flags: Vec<String>,
    /// Pod-side MAC.
    pub mac: String,
    /// Host-side (node) MAC.
    pub node_mac: String,
    /// Security identity.
    pub identity: u32,
}

/// One row of `cilium_ipcache_v1` (prefix to identity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BpfIpcacheEntry {
    /// Prefix, e.g. `10.200.0.5/32`.
    pub prefix: String,
    /// Security identity.
    pub identity: u32,
    /// Tunnel endpoint (node address) or empty.
    pub tunnel_endpoint: String,
    /// Raw flags.
    pub flags: u8,
}

/// One conntrack entry (`cilium_ct4_v1` / `cilium_ct_any4_v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BpfCtEntry {
    /// `tcp`, `udp`, `icmp` or `proto-<n>`.
    pub protocol: String,
    /// Source address of the packet that opened the connection.
    pub src_ip: String,
    /// Source port (ICMP echo id).
    pub src_port: u16,
    /// Destination address.
    pub dst_ip: String,
    /// Destination port.
    pub dst_port: u16,
    /// State flags: `established`, `closing`.
    pub flags: Vec<String>,
    /// TCP flags seen in the original direction, e.g. `SYN ACK`.
    pub tx_flags_seen: String,
    /// TCP flags seen in the reply direction.
    pub rx_flags_seen: String,
    /// Seconds until the entry expires (negative: expired, awaiting GC).
    pub expires_in_seconds: i64,
    /// Packets in the original direction.
    pub tx_packets: u64,
    /// Bytes in the original direction.
    pub tx_bytes: u64,
    /// Packets in the reply direction.
    pub rx_packets: u64,
    /// Bytes in the reply direction.
    pub rx_bytes: u64,
    /// Security identity of the connection's source.
    pub src_identity: u32,
}

/// One row of `cilium_metrics_v1`, summed over CPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BpfMetric {
    /// `forwarded` or the drop reason name.
    pub reason: String,
    /// 0 for forwarded, else the drop reason code.
    pub reason_code: u8,
    /// `ingress` or `egress`.
    pub direction: String,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Answer of `POST /v1/bpf/ct/gc`: what one conntrack GC pass did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CtGcResult {
    /// Entries looked at.
    pub scanned: u64,
    /// Expired entries deleted.
    pub deleted: u64,
    /// Seconds until the next scheduled pass.
    pub next_run_seconds: u64,
}
