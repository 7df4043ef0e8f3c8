//! `#[repr(C)]` mirrors of the map keys/values and event record defined in `bpf/lib/*.h`.
//!
//! The C headers are the single definition; the unit tests at the bottom compare size and
//! every field offset with the types libbpf-cargo generated from the object's BTF, so a
//! layout drift fails `cargo test`. All types are padding-free on purpose, which is what
//! makes the byte views in [`Pod`] sound.
#![allow(unsafe_code, reason = "byte views of padding-free repr(C) map types")]

use std::net::Ipv4Addr;

/// Plain-old-data types that can be copied to and from map bytes.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, contain no padding, no pointers, and every bit
/// pattern must be a valid value.
pub unsafe trait Pod: Copy + Default + 'static {
    /// The value's bytes, as the kernel sees them.
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: Pod types are padding-free repr(C), so every byte is initialised.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>()) }
    }

    /// Copies a value out of a byte slice; `None` when it is too short.
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<Self>() {
            return None;
        }
        // SAFETY: length checked; any bit pattern is valid for Pod; read_unaligned handles
        // arbitrary alignment of the source buffer.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }
}

// SAFETY: u32 is plain data without padding.
unsafe impl Pod for u32 {}
// SAFETY: u64 is plain data without padding.
unsafe impl Pod for u64 {}

macro_rules! pod {
    ($($t:ty),*) => {$(
        // SAFETY: repr(C), padding-free (checked by the layout tests), integer fields only.
        unsafe impl Pod for $t {}
    )*};
}

/// Endpoint flag: the address belongs to the host, deliver to the stack (`ENDPOINT_F_HOST`).
pub const ENDPOINT_F_HOST: u16 = 1;

/// Key of `cilium_lxc_v1` (`struct endpoint_key`): IPv4 address in network byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// Address bytes in network order (as `u32` in memory).
    pub ip4: u32,
}

impl EndpointKey {
    /// Key for an address.
    pub fn new(ip: Ipv4Addr) -> Self {
        Self {
            ip4: u32::from_ne_bytes(ip.octets()),
        }
    }
    /// The address.
    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.ip4.to_ne_bytes())
    }
}

/// Value of `cilium_lxc_v1` (`struct endpoint_info`), 24 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct EndpointInfo {
    /// Host-side veth ifindex.
    pub ifindex: u32,
    /// Endpoint id.
    pub ep_id: u16,
    /// `ENDPOINT_F_*` flags.
    pub flags: u16,
    /// Pod (container-side) MAC.
    pub mac: [u8; 6],
    /// Host-side veth MAC (answers ARP, source MAC of delivered packets).
    pub node_mac: [u8; 6],
    /// Security identity of the pod.
    pub sec_identity: u32,
}

/// Key of `cilium_ipcache_v1` (`struct ipcache_key`, LPM trie), 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct IpcacheKey {
    /// Prefix length in bits (0..=32).
    pub prefixlen: u32,
    /// Network address bytes in network order.
    pub ip4: u32,
}

impl IpcacheKey {
    /// Key for `ip/prefixlen`; host bits are cleared.
    pub fn new(ip: Ipv4Addr, prefixlen: u8) -> Self {
        let p = u32::from(prefixlen.min(32));
        let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
        let net = Ipv4Addr::from(u32::from(ip) & mask);
        Self {
            prefixlen: p,
            ip4: u32::from_ne_bytes(net.octets()),
        }
    }
    /// The network address.
    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.ip4.to_ne_bytes())
    }
}

/// Value of `cilium_ipcache_v1` (`struct ipcache_value`), 12 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct IpcacheValue {
    /// Security identity of the prefix.
    pub sec_identity: u32,
    /// Tunnel endpoint (node address), network order; 0 if none.
    pub tunnel_endpoint: u32,
    /// Flags (reserved, 0).
    pub flags: u8,
    /// Padding, keep 0.
    pub pad: [u8; 3],
}

/// Key of `cilium_ct4_v1`/`cilium_ct_any4_v1` (`struct ct_key4`), 16 bytes.
/// Addresses and ports in network byte order, tuple of the packet that created the entry.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CtKey4 {
    /// Source address (network order).
    pub saddr: u32,
    /// Destination address (network order).
    pub daddr: u32,
    /// Source port (network order); ICMP echo id for requests.
    pub sport: u16,
    /// Destination port (network order); ICMP echo id for replies.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Key flags (reserved, 0).
    pub flags: u8,
    /// Padding, keep 0.
    pub pad: u16,
}

/// Decoding accessors of a 4-tuple key (`saddr`, `daddr`, `sport`, `dport`, all in network
/// order as the datapath stores them).
macro_rules! tuple_accessors {
    ($($t:ty),*) => {$(
        impl $t {
            /// Source address.
            pub fn src(&self) -> Ipv4Addr {
                Ipv4Addr::from(self.saddr.to_ne_bytes())
            }
            /// Destination address.
            pub fn dst(&self) -> Ipv4Addr {
                Ipv4Addr::from(self.daddr.to_ne_bytes())
            }
            /// Source port in host order.
            pub fn src_port(&self) -> u16 {
                u16::from_be(self.sport)
            }
            /// Destination port in host order.
            pub fn dst_port(&self) -> u16 {
                u16::from_be(self.dport)
            }
        }
    )*};
}

tuple_accessors!(CtKey4, Snat4Key);

/// `ct_entry4.flags`: TCP ACK seen both ways.
pub const CT_F_ESTABLISHED: u16 = 1;
/// `ct_entry4.flags`: TCP RST seen or FIN both ways.
pub const CT_F_CLOSING: u16 = 2;
/// `ct_entry4.flags`: a load-balanced (translated) service flow; replies get reverse NAT.
pub const CT_F_SERVICE: u16 = 4;
/// `ct_entry4.flags`: hairpin service flow (client = backend, source NATed to the frontend).
pub const CT_F_HAIRPIN: u16 = 8;
/// `ct_entry4.flags`: arrived on a host device (NodePort); replies leave through `nat_aux`.
pub const CT_F_NODEPORT: u16 = 16;
/// `ct_key4.flags`: the client's tuple towards a frontend (service entry: backend in
/// `nat_aux`).
pub const CT_KEY_F_SERVICE: u8 = 1;

/// Value of the CT maps (`struct ct_entry4`), 64 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CtEntry4 {
    /// Packets in the original direction.
    pub tx_packets: u64,
    /// Bytes in the original direction.
    pub tx_bytes: u64,
    /// Packets in the reply direction.
    pub rx_packets: u64,
    /// Bytes in the reply direction.
    pub rx_bytes: u64,
    /// Creation time, ns of CLOCK_BOOTTIME.
    pub created_ns: u64,
    /// Expiry, seconds of CLOCK_BOOTTIME.
    pub lifetime: u32,
    /// Identity of the connection's source.
    pub src_sec_identity: u32,
    /// TCP flags seen in the original direction.
    pub tx_flags_seen: u8,
    /// TCP flags seen in the reply direction.
    pub rx_flags_seen: u8,
    /// `CT_F_*`.
    pub flags: u16,
    /// Seconds of last trace report (aggregation).
    pub last_report: u32,
    /// Service flows: reverse-NAT index (service id), 0 = none.
    pub rev_nat_id: u16,
    /// Padding, keep 0.
    pub pad: u16,
    /// `CT_F_NODEPORT`: ingress device ifindex; service entries (key flag
    /// [`CT_KEY_F_SERVICE`]): the selected backend id.
    pub nat_aux: u32,
}

/// Key of `cilium_metrics_v1` (`struct metrics_key`), 4 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetricsKey {
    /// 0 = forwarded, else a [`crate::DropReason`] code.
    pub reason: u8,
    /// 1 ingress, 2 egress.
    pub dir: u8,
    /// Padding, keep 0.
    pub pad: u16,
}

/// Value of `cilium_metrics_v1` (`struct metrics_value`), per CPU, 16 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct MetricsValue {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Value of `cilium_config_v1[0]` (`struct dp_config`), 24 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DpConfig {
    /// TCP lifetime until established, seconds.
    pub ct_lifetime_tcp_syn: u32,
    /// Established TCP lifetime, seconds.
    pub ct_lifetime_tcp: u32,
    /// TCP lifetime after RST/FIN, seconds.
    pub ct_lifetime_tcp_close: u32,
    /// Non-TCP lifetime, seconds.
    pub ct_lifetime_any: u32,
    /// `EVENT_F_*` bits.
    pub event_flags: u32,
    /// Padding, keep 0.
    pub pad: u32,
}

/// Ring-buffer record (`struct cilium_event`), version 2, 64 bytes (version 1 records are
/// the first 56 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RawEvent {
    /// `EVENT_TYPE_*`.
    pub r#type: u8,
    /// Drop reason / trace observation point.
    pub subtype: u8,
    /// Layout version.
    pub version: u8,
    /// 1 ingress, 2 egress.
    pub dir: u8,
    /// Reporting endpoint.
    pub ep_id: u16,
    /// Destination endpoint.
    pub dst_ep_id: u16,
    /// Interface the program ran on.
    pub ifindex: u32,
    /// Packet length.
    pub pkt_len: u32,
    /// CLOCK_BOOTTIME ns.
    pub ts_ns: u64,
    /// Source (network order).
    pub saddr: u32,
    /// Destination (network order).
    pub daddr: u32,
    /// Source port (network order).
    pub sport: u16,
    /// Destination port (network order).
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Conntrack status.
    pub ct_status: u8,
    /// TCP flags of the packet.
    pub tcp_flags: u8,
    /// Padding.
    pub pad: u8,
    /// Source identity.
    pub src_identity: u32,
    /// Destination identity.
    pub dst_identity: u32,
    /// Local delivery interface.
    pub dst_ifindex: u32,
    /// Policy verdict (0 allow, else -reason).
    pub verdict: i32,
    /// Version 2: cookie of the deciding policy entry (verdicts, policy drops), 0 = none.
    pub cookie: u32,
    /// Padding.
    pub pad2: u32,
}

/// Bits of the exact part of a [`PolicyKey`] (`POLICY_KEY_EXACT_BITS`): endpoint,
/// direction, protocol, identity.
pub const POLICY_KEY_EXACT_BITS: u32 = 64;

/// Key of `cilium_policy_v1` (`struct policy_key`, LPM trie), 16 bytes.
///
/// `prefixlen` = 64 + port prefix bits; `ep_id`/`identity` host order (exact part),
/// `dport` network order (the LPM part; ICMP type for protocol 1).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    /// 64 + port prefix length (0..=16).
    pub prefixlen: u32,
    /// Endpoint id.
    pub ep_id: u16,
    /// 1 ingress, 2 egress.
    pub dir: u8,
    /// IP protocol, 0 = any.
    pub proto: u8,
    /// Peer identity, 0 = any.
    pub identity: u32,
    /// Destination port (network order), masked to the prefix.
    pub dport: u16,
    /// Padding, keep 0.
    pub pad: u16,
}

impl PolicyKey {
    /// Key for a port block `port/port_prefix_len` (host order port; host bits cleared).
    pub fn new(
        ep_id: u16,
        dir: u8,
        identity: u32,
        proto: u8,
        port: u16,
        port_prefix_len: u8,
    ) -> Self {
        let plen = port_prefix_len.min(16);
        let mask = u16::try_from((0xffff_0000_u32 >> plen) & 0xffff).unwrap_or(u16::MAX);
        Self {
            prefixlen: POLICY_KEY_EXACT_BITS + u32::from(plen),
            ep_id,
            dir,
            proto,
            identity,
            dport: (port & mask).to_be(),
            pad: 0,
        }
    }
    /// Port prefix length (0..=16).
    pub fn port_prefix_len(&self) -> u8 {
        u8::try_from(self.prefixlen.saturating_sub(POLICY_KEY_EXACT_BITS).min(16)).unwrap_or(16)
    }
    /// First port of the block (host order).
    pub fn port(&self) -> u16 {
        u16::from_be(self.dport)
    }
    /// Last port of the block (host order).
    pub fn port_end(&self) -> u16 {
        let span = 0xffff_u32 >> u32::from(self.port_prefix_len());
        self.port() | u16::try_from(span).unwrap_or(u16::MAX)
    }
}

/// Value of `cilium_policy_v1` (`struct policy_entry`), 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// Cookie of the rule.
    pub cookie: u32,
    /// 1 deny, 0 allow.
    pub deny: u8,
    /// Padding, keep 0.
    pub pad: [u8; 3],
}

/// Key of `cilium_policy_cfg_v1` (`struct policy_cfg_key`), 4 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyCfgKey {
    /// Endpoint id.
    pub ep_id: u16,
    /// Padding, keep 0.
    pub pad: u16,
}

/// Value of `cilium_policy_cfg_v1` (`struct policy_cfg`), 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PolicyCfg {
    /// 1 when ingress is enforced.
    pub ingress_enforced: u8,
    /// 1 when egress is enforced.
    pub egress_enforced: u8,
    /// Padding, keep 0.
    pub pad: u16,
    /// Write counter (debugging).
    pub revision: u32,
}

/// `lb4_service.flags`: sessionAffinity ClientIP.
pub const SVC_F_AFFINITY: u8 = 1;
/// `lb4_service.flags`: no backend; connections are refused at once.
pub const SVC_F_NO_BACKENDS: u8 = 2;
/// `lb4_service.flags`: NodePort / ExternalIP / LoadBalancer frontend (socket-translated only
/// in the host network namespace).
pub const SVC_F_EXTERNAL: u8 = 4;
/// `lb4_service.flags`: only clients in `cilium_lb4_source_range_v1` under the frontend's
/// service id reach it (`loadBalancerSourceRanges`).
pub const SVC_F_SRC_RANGE: u8 = 8;
/// `lb4_service.flags`, with [`SVC_F_SRC_RANGE`]: the ranges are the clients refused, every
/// other client reaches the frontend (`service.cilium.io/src-ranges-policy: deny`).
pub const SVC_F_SRC_RANGE_DENY: u8 = 16;
/// `lb4_service.flags`: two backend sets (`externalTrafficPolicy: Local` with backends on
/// other nodes): scope [`LB_SCOPE_EXT`] for outside clients, [`LB_SCOPE_INT`] for pods and
/// host processes of this node.
pub const SVC_F_TWO_SCOPES: u8 = 32;
/// `lb4_key.scope`: the frontend's (only or outside clients') backend set.
pub const LB_SCOPE_EXT: u8 = 0;
/// `lb4_key.scope`: the backend set of clients on this node ([`SVC_F_TWO_SCOPES`]).
pub const LB_SCOPE_INT: u8 = 1;
/// `lb4_service.algorithm`: random slot.
pub const LB_ALG_RANDOM: u8 = 0;
/// `lb4_service.algorithm`: Maglev table lookup on the flow hash.
pub const LB_ALG_MAGLEV: u8 = 1;

/// Key of `cilium_lb4_services_v1` (`struct lb4_key`), 12 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4Key {
    /// Frontend address (network order).
    pub address: u32,
    /// Frontend port (network order).
    pub dport: u16,
    /// 0 = header, 1..=count = backend slots.
    pub slot: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`LB_SCOPE_EXT`] or [`LB_SCOPE_INT`].
    pub scope: u8,
    /// Padding, keep 0.
    pub pad: [u8; 2],
}

impl Lb4Key {
    /// Key of `slot` of frontend `addr:port/proto` (port host order), scope external (the
    /// only one of most frontends).
    pub fn new(addr: Ipv4Addr, port: u16, proto: u8, slot: u16) -> Self {
        Self::scoped(addr, port, proto, slot, LB_SCOPE_EXT)
    }
    /// Key of `slot` of frontend `addr:port/proto` in `scope`.
    pub fn scoped(addr: Ipv4Addr, port: u16, proto: u8, slot: u16, scope: u8) -> Self {
        Self {
            address: u32::from_ne_bytes(addr.octets()),
            dport: port.to_be(),
            slot,
            proto,
            scope,
            pad: [0; 2],
        }
    }
    /// Frontend address.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.address.to_ne_bytes())
    }
    /// Frontend port (host order).
    pub fn port(&self) -> u16 {
        u16::from_be(self.dport)
    }
}

/// Value of `cilium_lb4_services_v1` (`struct lb4_service`), 16 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Lb4Service {
    /// Slot >= 1: backend id; slot 0: Maglev table size (0 when not Maglev).
    pub backend_id: u32,
    /// Slot 0: ClientIP affinity timeout in seconds, 0 = none.
    pub affinity_timeout: u32,
    /// Slot 0: number of backend slots.
    pub count: u16,
    /// Service id (reverse-NAT index).
    pub rev_nat_id: u16,
    /// `SVC_F_*`.
    pub flags: u8,
    /// `LB_ALG_*`.
    pub algorithm: u8,
    /// Padding, keep 0.
    pub pad: u16,
}

/// Value of `cilium_lb4_backends_v1` (`struct lb4_backend`; key `u32` id), 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Lb4Backend {
    /// Address (network order).
    pub address: u32,
    /// Port (network order).
    pub port: u16,
    /// IP protocol.
    pub proto: u8,
    /// 0 active, 1 terminating.
    pub state: u8,
}

impl Lb4Backend {
    /// A backend `addr:port/proto` (port host order).
    pub fn new(addr: Ipv4Addr, port: u16, proto: u8, state: u8) -> Self {
        Self {
            address: u32::from_ne_bytes(addr.octets()),
            port: port.to_be(),
            proto,
            state,
        }
    }
    /// Address.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.address.to_ne_bytes())
    }
    /// Port (host order).
    pub fn port_host(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// Key of `cilium_lb4_reverse_nat_v1` and `cilium_lb4_maglev_v1`, 4 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4RevNatKey {
    /// Service id.
    pub rev_nat_id: u16,
    /// Padding, keep 0.
    pub pad: u16,
}

/// Value of `cilium_lb4_reverse_nat_v1` (`struct lb4_reverse_nat`), 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Lb4RevNat {
    /// Frontend address (network order).
    pub address: u32,
    /// Frontend port (network order).
    pub port: u16,
    /// Padding, keep 0.
    pub pad: u16,
}

impl Lb4RevNat {
    /// Reverse NAT to `addr:port` (port host order).
    pub fn new(addr: Ipv4Addr, port: u16) -> Self {
        Self {
            address: u32::from_ne_bytes(addr.octets()),
            port: port.to_be(),
            pad: 0,
        }
    }
    /// Address.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.address.to_ne_bytes())
    }
    /// Port (host order).
    pub fn port_host(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// Key of `cilium_lb4_affinity_v1` (`struct lb4_affinity_key`), 16 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Lb4AffinityKey {
    /// Client IPv4 (network order, zero-extended) or netns cookie.
    pub client: u64,
    /// Service id.
    pub rev_nat_id: u16,
    /// 1: `client` is a netns cookie (socket layer).
    pub netns: u8,
    /// Padding, keep 0.
    pub pad: [u8; 5],
}

/// Value of `cilium_lb4_affinity_v1` (`struct lb4_affinity_val`), 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Lb4AffinityVal {
    /// Backend id.
    pub backend_id: u32,
    /// Last use, seconds of CLOCK_BOOTTIME.
    pub last_used: u32,
}

/// Key of `cilium_lb4_sk_v1` (`struct lb4_sk_key`), 16 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Lb4SkKey {
    /// Socket cookie.
    pub cookie: u64,
    /// Backend address (network order).
    pub address: u32,
    /// Backend port (network order).
    pub port: u16,
    /// Padding, keep 0.
    pub pad: u16,
}

/// Value of `cilium_lb4_sk_v1` (`struct lb4_sk_val`), 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Lb4SkVal {
    /// Frontend address (network order).
    pub address: u32,
    /// Frontend port (network order).
    pub port: u16,
    /// Service id.
    pub rev_nat_id: u16,
}

/// Key of `cilium_lb4_sk_fwd_v1` (`struct lb4_sk_fwd_key`), 16 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Lb4SkFwdKey {
    /// Socket cookie.
    pub cookie: u64,
    /// Frontend address (network order).
    pub address: u32,
    /// Frontend port (network order).
    pub port: u16,
    /// IP protocol.
    pub proto: u8,
    /// Padding, keep 0.
    pub pad: u8,
}

/// Value of `cilium_lb4_sk_fwd_v1` (`struct lb4_sk_fwd_val`), 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Lb4SkFwdVal {
    /// Backend id.
    pub backend_id: u32,
    /// Service id.
    pub rev_nat_id: u16,
    /// Padding, keep 0.
    pub pad: u16,
}

/// Key of `cilium_snat4_v1` (`struct snat4_key`), 16 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Snat4Key {
    /// Source address (network order).
    pub saddr: u32,
    /// Destination address (network order).
    pub daddr: u32,
    /// Source port (network order).
    pub sport: u16,
    /// Destination port (network order).
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`SNAT_DIR_OUT`] (the client's tuple towards the backend) or [`SNAT_DIR_IN`] (the
    /// backend's reply to the node address and port).
    pub dir: u8,
    /// Padding, keep 0.
    pub pad: u16,
}

/// `snat4_key.dir` of the client → backend entry.
pub const SNAT_DIR_OUT: u8 = 0;
/// `snat4_key.dir` of the backend → node entry.
pub const SNAT_DIR_IN: u8 = 1;

/// Value of `cilium_snat4_v1` (`struct snat4_val`), 8 bytes: OUT → the node address and
/// port the flow leaves with; IN → the client's address and port.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Snat4Val {
    /// Address (network order).
    pub address: u32,
    /// Port (network order).
    pub port: u16,
    /// Padding, keep 0.
    pub pad: u16,
}

impl Snat4Val {
    /// The address.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.address.to_ne_bytes())
    }
    /// The port (host order).
    pub fn port_host(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// Value of `cilium_lb_config_v1[0]` (`struct lb_config`), 16 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LbConfig {
    /// Netns cookie of the host namespace: external frontends are socket-translated only
    /// there.
    pub host_netns_cookie: u64,
    /// Reserved, 0.
    pub flags: u32,
    /// The node address (network order) unbound host sockets are checked with against
    /// `loadBalancerSourceRanges`; 0 when unknown.
    pub node_addr: u32,
}

/// Key of `cilium_lb4_source_range_v1` (`struct lb4_src_range_key`, LPM trie), 12 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4SrcRangeKey {
    /// 32 (service id and pad) + the client prefix length.
    pub prefixlen: u32,
    /// Reverse-NAT id of the frontend.
    pub rev_nat_id: u16,
    /// Padding, keep 0.
    pub pad: u16,
    /// Client prefix (network order, host bits zero).
    pub addr: u32,
}

impl Lb4SrcRangeKey {
    /// Bits of `prefixlen` before the client prefix (the service id and pad).
    pub const STATIC_PREFIX: u32 = 32;

    /// The key of `addr/len` for frontend `rev_nat_id`; host bits are cleared.
    pub fn new(rev_nat_id: u16, addr: Ipv4Addr, len: u8) -> Self {
        let len = u32::from(len.min(32));
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        Self {
            prefixlen: Self::STATIC_PREFIX + len,
            rev_nat_id,
            pad: 0,
            addr: (u32::from(addr) & mask).to_be(),
        }
    }
    /// The client prefix.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from_be(self.addr))
    }
    /// The client prefix length.
    pub fn prefix_len(&self) -> u8 {
        u8::try_from(self.prefixlen.saturating_sub(Self::STATIC_PREFIX).min(32)).unwrap_or(32)
    }
}

pod!(
    Lb4Key,
    Lb4Service,
    Lb4Backend,
    Lb4RevNatKey,
    Lb4RevNat,
    Lb4AffinityKey,
    Lb4AffinityVal,
    Lb4SkKey,
    Lb4SkVal,
    Lb4SkFwdKey,
    Lb4SkFwdVal,
    Snat4Key,
    Snat4Val,
    Lb4SrcRangeKey,
    LbConfig
);

pod!(
    EndpointKey,
    EndpointInfo,
    IpcacheKey,
    IpcacheValue,
    CtKey4,
    CtEntry4,
    MetricsKey,
    MetricsValue,
    DpConfig,
    RawEvent,
    PolicyKey,
    PolicyValue,
    PolicyCfgKey,
    PolicyCfg
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skel::types as c;
    use std::mem::offset_of;

    /// Size and every field offset must equal the C layout (BTF-generated types).
    macro_rules! same_layout {
        ($rust:ty, $c:ty, [$($f:ident),* $(,)?]) => {{
            assert_eq!(size_of::<$rust>(), size_of::<$c>(), "size of {}", stringify!($rust));
            $(assert_eq!(
                offset_of!($rust, $f), offset_of!($c, $f),
                "offset of {}.{}", stringify!($rust), stringify!($f)
            );)*
        }};
    }

    #[test]
    fn mirrors_match_c_layout() {
        same_layout!(EndpointKey, c::endpoint_key, [ip4]);
        same_layout!(
            EndpointInfo,
            c::endpoint_info,
            [ifindex, ep_id, flags, mac, node_mac, sec_identity]
        );
        same_layout!(IpcacheKey, c::ipcache_key, [prefixlen, ip4]);
        same_layout!(
            IpcacheValue,
            c::ipcache_value,
            [sec_identity, tunnel_endpoint, flags, pad]
        );
        same_layout!(
            CtKey4,
            c::ct_key4,
            [saddr, daddr, sport, dport, proto, flags, pad]
        );
        same_layout!(
            CtEntry4,
            c::ct_entry4,
            [
                tx_packets,
                tx_bytes,
                rx_packets,
                rx_bytes,
                created_ns,
                lifetime,
                src_sec_identity,
                tx_flags_seen,
                rx_flags_seen,
                flags,
                last_report,
                rev_nat_id,
                pad,
                nat_aux
            ]
        );
        same_layout!(
            Lb4Key,
            c::lb4_key,
            [address, dport, slot, proto, scope, pad]
        );
        same_layout!(
            Lb4Service,
            c::lb4_service,
            [
                backend_id,
                affinity_timeout,
                count,
                rev_nat_id,
                flags,
                algorithm,
                pad
            ]
        );
        same_layout!(Lb4Backend, c::lb4_backend, [address, port, proto, state]);
        same_layout!(Lb4RevNatKey, c::lb4_reverse_nat_key, [rev_nat_id, pad]);
        same_layout!(Lb4RevNat, c::lb4_reverse_nat, [address, port, pad]);
        same_layout!(
            Lb4AffinityKey,
            c::lb4_affinity_key,
            [client, rev_nat_id, netns, pad]
        );
        same_layout!(Lb4AffinityVal, c::lb4_affinity_val, [backend_id, last_used]);
        same_layout!(Lb4SkKey, c::lb4_sk_key, [cookie, address, port, pad]);
        same_layout!(Lb4SkVal, c::lb4_sk_val, [address, port, rev_nat_id]);
        same_layout!(
            Lb4SkFwdKey,
            c::lb4_sk_fwd_key,
            [cookie, address, port, proto, pad]
        );
        same_layout!(
            Lb4SkFwdVal,
            c::lb4_sk_fwd_val,
            [backend_id, rev_nat_id, pad]
        );
        same_layout!(
            Snat4Key,
            c::snat4_key,
            [saddr, daddr, sport, dport, proto, dir, pad]
        );
        same_layout!(Snat4Val, c::snat4_val, [address, port, pad]);
        same_layout!(
            LbConfig,
            c::lb_config,
            [host_netns_cookie, flags, node_addr]
        );
        same_layout!(
            Lb4SrcRangeKey,
            c::lb4_src_range_key,
            [prefixlen, rev_nat_id, pad, addr]
        );
        same_layout!(MetricsKey, c::metrics_key, [reason, dir, pad]);
        same_layout!(MetricsValue, c::metrics_value, [packets, bytes]);
        same_layout!(
            DpConfig,
            c::dp_config,
            [
                ct_lifetime_tcp_syn,
                ct_lifetime_tcp,
                ct_lifetime_tcp_close,
                ct_lifetime_any,
                event_flags,
                pad
            ]
        );
        same_layout!(
            RawEvent,
            c::cilium_event,
            [
                r#type,
                subtype,
                version,
                dir,
                ep_id,
                dst_ep_id,
                ifindex,
                pkt_len,
                ts_ns,
                saddr,
                daddr,
                sport,
                dport,
                proto,
                ct_status,
                tcp_flags,
                pad,
                src_identity,
                dst_identity,
                dst_ifindex,
                verdict,
                cookie,
                pad2
            ]
        );
        same_layout!(
            PolicyKey,
            c::policy_key,
            [prefixlen, ep_id, dir, proto, identity, dport, pad]
        );
        same_layout!(PolicyValue, c::policy_entry, [cookie, deny, pad]);
        same_layout!(PolicyCfgKey, c::policy_cfg_key, [ep_id, pad]);
        same_layout!(
            PolicyCfg,
            c::policy_cfg,
            [ingress_enforced, egress_enforced, pad, revision]
        );
        same_layout!(MetricsValue, c::policy_stats, [packets, bytes]);
    }

    #[test]
    fn documented_sizes() {
        assert_eq!(size_of::<EndpointInfo>(), 24);
        assert_eq!(size_of::<IpcacheKey>(), 8);
        assert_eq!(size_of::<IpcacheValue>(), 12);
        assert_eq!(size_of::<CtKey4>(), 16);
        assert_eq!(size_of::<CtEntry4>(), 64);
        assert_eq!(size_of::<MetricsKey>(), 4);
        assert_eq!(size_of::<MetricsValue>(), 16);
        assert_eq!(size_of::<DpConfig>(), 24);
        assert_eq!(size_of::<RawEvent>(), 64);
        assert_eq!(size_of::<PolicyKey>(), 16);
        assert_eq!(size_of::<PolicyValue>(), 8);
        assert_eq!(size_of::<PolicyCfgKey>(), 4);
        assert_eq!(size_of::<PolicyCfg>(), 8);
        assert_eq!(size_of::<Lb4Key>(), 12);
        assert_eq!(size_of::<Lb4Service>(), 16);
        assert_eq!(size_of::<Lb4Backend>(), 8);
        assert_eq!(size_of::<Lb4RevNatKey>(), 4);
        assert_eq!(size_of::<Lb4RevNat>(), 8);
        assert_eq!(size_of::<Lb4AffinityKey>(), 16);
        assert_eq!(size_of::<Lb4AffinityVal>(), 8);
        assert_eq!(size_of::<Lb4SkKey>(), 16);
        assert_eq!(size_of::<Lb4SkVal>(), 8);
        assert_eq!(size_of::<Lb4SkFwdKey>(), 16);
        assert_eq!(size_of::<Lb4SkFwdVal>(), 8);
        assert_eq!(size_of::<LbConfig>(), 16);
        assert_eq!(size_of::<Lb4SrcRangeKey>(), 12);
    }

    #[test]
    fn policy_keys_mask_ports_and_report_ranges() {
        let k = PolicyKey::new(7, 1, 300, 6, 8080, 16);
        assert_eq!((k.prefixlen, k.port(), k.port_end()), (80, 8080, 8080));
        assert_eq!(k.as_bytes()[14..], [0, 0]);
        assert_eq!(k.as_bytes()[12..14], 8080u16.to_be_bytes());
        let r = PolicyKey::new(7, 1, 300, 6, 8083, 14);
        assert_eq!(
            (r.port(), r.port_end(), r.port_prefix_len()),
            (8080, 8083, 14)
        );
        let any = PolicyKey::new(7, 2, 0, 0, 80, 0);
        assert_eq!((any.prefixlen, any.port(), any.port_end()), (64, 0, 65535));
    }

    #[test]
    fn keys_round_trip_addresses() {
        let ip = Ipv4Addr::new(10, 244, 1, 7);
        assert_eq!(EndpointKey::new(ip).ip(), ip);
        assert_eq!(EndpointKey::new(ip).as_bytes(), &[10, 244, 1, 7]);
        let k = IpcacheKey::new(ip, 24);
        assert_eq!(k.ip(), Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(k.prefixlen, 24);
        assert_eq!(IpcacheKey::new(ip, 0).ip(), Ipv4Addr::UNSPECIFIED);
        let info = EndpointInfo {
            ifindex: 7,
            ep_id: 3,
            ..Default::default()
        };
        assert_eq!(EndpointInfo::from_bytes(info.as_bytes()), Some(info));
        assert_eq!(EndpointInfo::from_bytes(&[0; 3]), None);
    }
}
