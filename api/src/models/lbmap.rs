//! Load-balancer maps as the BPF datapath holds them: `GET /v1/bpf/lb` and
//! `GET /v1/bpf/nat` (cilium-lbmap).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One backend slot of a frontend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BpfLbSlot {
    /// Slot number (1-based).
    pub slot: u16,
    /// Backend id.
    pub backend_id: u32,
    /// `addr:port` of the backend (empty when the id is unknown to the backends map).
    pub backend: String,
}

/// A frontend of the services map (`cilium_lb4_services_v1`), decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BpfLbService {
    /// `addr:port`.
    pub frontend: String,
    /// `tcp`, `udp`, `sctp` or `proto-<n>`.
    pub protocol: String,
    /// Reverse-NAT index (service id).
    pub service_id: u16,
    /// Number of backend slots in the header.
    pub count: u16,
    /// `random` or `maglev`.
    pub algorithm: String,
    /// Maglev table size (0 when not Maglev).
    #[serde(default)]
    pub maglev_table_size: u32,
    /// Header flags: `affinity`, `no-backends`, `external`, `source-range`,
    /// `source-range-deny` (the ranges are the clients refused), `two-scopes` (clients on
    /// this node use `internal_slots`).
    pub flags: Vec<String>,
    /// ClientIP affinity timeout (s), 0 = none.
    pub affinity_timeout_secs: u32,
    /// Client prefixes (`cilium_lb4_source_range_v1`) when flagged `source-range`: the only
    /// ones admitted, or with `source-range-deny` the ones refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<String>,
    /// Backend slots in order (with `two-scopes`: those of outside clients).
    pub slots: Vec<BpfLbSlot>,
    /// With `two-scopes`: the backend slots of the internal scope, which pods and host
    /// processes of this node use (`externalTrafficPolicy: Local` with backends elsewhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub internal_slots: Vec<BpfLbSlot>,
}

/// A backend of `cilium_lb4_backends_v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BpfLbBackend {
    /// Backend id.
    pub id: u32,
    /// `addr:port`.
    pub address: String,
    /// `tcp`, `udp`, ...
    pub protocol: String,
    /// `active` or `terminating`.
    pub state: String,
}

/// `GET /v1/bpf/lb` (`?backends=true` also fills `backends`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct BpfLbList {
    /// Every frontend, sorted.
    pub services: Vec<BpfLbService>,
    /// Every backend (only with `?backends=true`).
    #[serde(default)]
    pub backends: Vec<BpfLbBackend>,
}

/// One reverse-NAT entry (`cilium_lb4_reverse_nat_v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BpfRevNatEntry {
    /// Service id.
    pub service_id: u16,
    /// The frontend replies are rewritten to, `addr:port`.
    pub frontend: String,
}

/// One translated (service) conntrack entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BpfNatFlow {
    /// `tcp`, `udp`, ...
    pub protocol: String,
    /// Client `addr:port` as the backend sees it.
    pub source: String,
    /// Backend `addr:port`.
    pub backend: String,
    /// The frontend `addr:port` (from reverse NAT), empty when unknown.
    pub frontend: String,
    /// Service id.
    pub service_id: u16,
    /// `service`, `hairpin`, `nodeport`.
    pub flags: Vec<String>,
}

/// One NodePort flow source-NATed towards a backend elsewhere (`cilium_snat4_v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BpfSnatEntry {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The client's `addr:port`.
    pub client: String,
    /// Backend `addr:port`.
    pub backend: String,
    /// The node `addr:port` the flow leaves with (what the backend sees).
    pub node: String,
}

/// `GET /v1/bpf/nat`: reverse NAT and the translated flows.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct BpfNatList {
    /// Reverse-NAT entries by service id.
    pub reverse_nat: Vec<BpfRevNatEntry>,
    /// Conntrack entries of translated flows.
    pub flows: Vec<BpfNatFlow>,
    /// NodePort flows source-NATed towards backends that are not on this node.
    #[serde(default)]
    pub snat: Vec<BpfSnatEntry>,
}
