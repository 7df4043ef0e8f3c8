//! Endpoint models: what the CNI plugin asks for and what the agent reports.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `PUT /v1/endpoint/{key}`: create (idempotently) the endpoint for one CNI attachment.
/// `key` is `cni:<container-id>:<ifname>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EndpointChangeRequest {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_NETNS: path of the pod's network namespace.
    pub netns: String,
    /// CNI_IFNAME: interface name inside the pod.
    pub ifname: String,
    /// K8S_POD_NAMESPACE from CNI_ARGS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    /// K8S_POD_NAME from CNI_ARGS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// K8S_POD_INFRA_CONTAINER_ID from CNI_ARGS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infra_container_id: Option<String>,
    /// `IP=` from CNI_ARGS: a specific address from the node's pod range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub requested_ipv4: Option<Ipv4Addr>,
    /// MTU for the pod interface; the agent's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// Policy enforcement state of an endpoint per direction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PolicyEnforcement {
    /// Ingress is default-deny (some policy selects this endpoint for ingress).
    pub ingress: bool,
    /// Egress is default-deny.
    pub egress: bool,
}

/// An endpoint as the agent holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Endpoint {
    /// Numeric endpoint id (16 bit), stable across agent restarts.
    pub id: u16,
    /// `cni:<container-id>:<ifname>`.
    pub key: String,
    /// CNI container id.
    pub container_id: String,
    /// Path of the pod's network namespace.
    pub netns: String,
    /// Interface name inside the pod.
    pub ifname: String,
    /// Host-side veth name (`lxc…`).
    pub host_ifname: String,
    /// Host-side ifindex.
    pub host_ifindex: u32,
    /// Pod-side MAC.
    pub mac: String,
    /// Host-side MAC.
    pub host_mac: String,
    /// Pod address.
    #[schema(value_type = String)]
    pub ipv4: Ipv4Addr,
    /// Gateway the pod routes through.
    #[schema(value_type = String)]
    pub gateway: Ipv4Addr,
    /// Prefix length of the pod range.
    pub prefix_len: u8,
    /// Pod namespace/name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Security identity.
    pub identity: u32,
    /// Security-relevant labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Named container ports (name -> port/protocol).
    #[serde(default)]
    pub named_ports: BTreeMap<String, String>,
    /// Lifecycle state: `creating`, `ready`, `disconnecting`, `not-ready`.
    pub state: String,
    /// Policy enforcement per direction.
    #[serde(default)]
    pub policy_enforcement: PolicyEnforcement,
}

/// Body of `POST /v1/endpoints/gc`: the attachments still valid (CNI GC).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EndpointGcRequest {
    /// Attachment keys (`cni:<container-id>:<ifname>`) to keep; everything else is removed.
    pub keep: Vec<String>,
}

/// Answer of `POST /v1/endpoints/gc`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EndpointGcResult {
    /// Keys of the endpoints removed.
    pub removed: Vec<String>,
}

/// The key the CNI plugin uses for one attachment.
pub fn attachment_key(container_id: &str, ifname: &str) -> String {
    format!("cni:{container_id}:{ifname}")
}
