//! Load-balancing models: `GET /v1/services`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One backend of a frontend's final selection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FrontendBackendInfo {
    /// Backend id (stable across restarts).
    pub id: u32,
    /// Backend address.
    pub address: String,
    /// Backend port.
    pub port: u16,
    /// `active` or `terminating`.
    pub state: String,
}

/// One frontend of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FrontendInfo {
    /// Frontend address.
    pub address: String,
    /// Frontend port.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// `ClusterIP`, `NodePort`, `ExternalIP` or `LoadBalancer`.
    pub kind: String,
    /// Service id (reverse-NAT index) of this frontend.
    pub service_id: u16,
    /// Service port name.
    #[serde(default)]
    pub port_name: String,
    /// The backends new connections go to (empty: connections are refused).
    #[serde(default)]
    pub backends: Vec<FrontendBackendInfo>,
    /// What pods and host processes of this node get instead of `backends`, when it
    /// differs: every usable backend of a NodePort, ExternalIP or LoadBalancer frontend of
    /// an `externalTrafficPolicy: Local` service (`backends` are then the local ones, for
    /// outside clients). Absent: `backends` serve every client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_backends: Option<Vec<FrontendBackendInfo>>,
    /// Client prefixes allowed to reach it (`loadBalancerSourceRanges`, LoadBalancer
    /// frontends); empty = every client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<String>,
    /// With source ranges: `allow` (they are the only clients admitted) or `deny` (they are
    /// the clients refused, `service.cilium.io/src-ranges-policy: deny`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_ranges_policy: String,
    /// Reconcile status into the BPF maps (`pending`, `done`, `error: ...`).
    #[serde(default)]
    pub status: String,
}

/// One backend of a service with its condition, selected or not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceBackendInfo {
    /// Backend id.
    pub id: u32,
    /// Address.
    pub address: String,
    /// Port (the resolved target port).
    pub port: u16,
    /// Protocol.
    pub protocol: String,
    /// Service port name it serves.
    #[serde(default)]
    pub port_name: String,
    /// `active`, `terminating` or `not-ready`.
    pub condition: String,
    /// `nodeName` of the endpoint.
    #[serde(default)]
    pub node_name: String,
    /// Target pod (`namespace/name`).
    #[serde(default)]
    pub pod: String,
}

/// One service port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServicePortInfo {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Port.
    pub port: u16,
    /// Target port (number or name).
    pub target_port: String,
    /// Node port (0: none).
    #[serde(default)]
    pub node_port: u16,
    /// Protocol.
    pub protocol: String,
}

/// A service with its frontends and backends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `ClusterIP`, `NodePort` or `LoadBalancer`.
    #[serde(rename = "type")]
    pub service_type: String,
    /// The cluster IP, or `None` when headless.
    pub cluster_ip: String,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<ServicePortInfo>,
    /// External IPs.
    #[serde(default)]
    pub external_ips: Vec<String>,
    /// Load balancer ingress IPs.
    #[serde(default)]
    pub lb_ingress_ips: Vec<String>,
    /// `None` or `ClientIP`.
    pub session_affinity: String,
    /// ClientIP affinity timeout in seconds (0 without affinity).
    #[serde(default)]
    pub affinity_timeout_secs: u32,
    /// `loadBalancerSourceRanges`: the only clients its LoadBalancer frontends admit (or,
    /// with `source_ranges_policy: deny`, the clients they refuse).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancer_source_ranges: Vec<String>,
    /// With source ranges: `allow` or `deny` (`service.cilium.io/src-ranges-policy`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_ranges_policy: String,
    /// `Cluster` or `Local`.
    pub external_traffic_policy: String,
    /// Node port answering HTTP health checks of the service on this node (LoadBalancer with
    /// `externalTrafficPolicy: Local`); 0 = none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub health_check_node_port: u16,
    /// `Cluster` or `Local`.
    pub internal_traffic_policy: String,
    /// `publishNotReadyAddresses`.
    #[serde(default)]
    pub publish_not_ready_addresses: bool,
    /// Frontends with their final backend selection.
    #[serde(default)]
    pub frontends: Vec<FrontendInfo>,
    /// Every backend with its condition.
    #[serde(default)]
    pub backends: Vec<ServiceBackendInfo>,
    /// Why the service has no frontends (a conflict), when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the agent leaves the service alone, as kube-proxy does (type ExternalName, the
    /// label `service.kubernetes.io/headless`, a `service.kubernetes.io/service-proxy-name`
    /// label for another proxy): no cluster IP, node ports or frontends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
    /// `spec.externalName` (type ExternalName).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub external_name: String,
}

fn is_zero(v: &u16) -> bool {
    *v == 0
}
