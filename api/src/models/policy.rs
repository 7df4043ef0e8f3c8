//! Models of the policy routes: `GET /v1/policies`, `GET /v1/policy/explain`,
//! `GET /v1/policy/endpoint/{id}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One rule of a policy, as a cookie names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyRuleRef {
    /// Policy kind (`NetworkPolicy`, `CiliumNetworkPolicy`, `CiliumClusterwideNetworkPolicy`).
    pub kind: String,
    /// Policy namespace (empty for cluster-wide policies).
    #[serde(default)]
    pub namespace: String,
    /// Policy name.
    pub name: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// Index of the rule among the policy's rules of that direction and deny flag.
    pub rule_index: usize,
    /// A deny rule (`ingressDeny`/`egressDeny`).
    pub deny: bool,
    /// The cookie the datapath reports for this rule.
    pub cookie: u32,
    /// Human-readable form, e.g. `NetworkPolicy x/allow-a ingress[0]`.
    pub description: String,
}

/// An endpoint a policy selects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicySelectedEndpoint {
    /// Endpoint id.
    pub id: u16,
    /// `namespace/name` of its pod.
    #[serde(default)]
    pub pod: Option<String>,
}

/// A stored policy (`GET /v1/policies`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicySummary {
    /// Kind.
    pub kind: String,
    /// Namespace (empty for cluster-wide policies).
    #[serde(default)]
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Number of rules (ingress, egress, ingressDeny, egressDeny elements over all specs).
    pub rules: usize,
    /// Some spec turns selected endpoints default-deny for ingress.
    pub enforces_ingress: bool,
    /// Some spec turns selected endpoints default-deny for egress.
    pub enforces_egress: bool,
    /// Endpoints of this node the policy selects.
    pub endpoints: Vec<PolicySelectedEndpoint>,
}

/// One side of an explained connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyPeer {
    /// `namespace/name`.
    pub pod: String,
    /// Endpoint id.
    pub endpoint_id: u16,
    /// Security identity.
    pub identity: u32,
    /// Address.
    #[schema(value_type = String)]
    pub ipv4: std::net::Ipv4Addr,
}

/// The decision of one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyVerdict {
    /// The direction is enforced (default-deny) for the endpoint.
    pub enforced: bool,
    /// The packet passes this direction.
    pub allowed: bool,
    /// An explicit deny rule decided.
    pub deny: bool,
    /// `not-enforced`, `allowed`, `policy-deny` (explicit deny) or `policy-denied` (no allow).
    pub reason: String,
    /// Cookie of the deciding entry.
    #[serde(default)]
    pub cookie: Option<u32>,
    /// The deciding rule.
    #[serde(default)]
    pub rule: Option<PolicyRuleRef>,
}

/// Answer of `GET /v1/policy/explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyExplanation {
    /// Source pod.
    pub from: PolicyPeer,
    /// Destination pod.
    pub to: PolicyPeer,
    /// Protocol (`TCP`, `UDP`, `SCTP`, `ICMP`).
    pub protocol: String,
    /// Destination port (ICMP: type).
    pub port: u16,
    /// Egress decision of the source endpoint.
    pub egress: PolicyVerdict,
    /// Ingress decision of the destination endpoint.
    pub ingress: PolicyVerdict,
    /// Overall verdict: both directions allow.
    pub allowed: bool,
}

/// One resolved entry of an endpoint's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyEndpointEntry {
    /// `ingress` or `egress`.
    pub direction: String,
    /// Peer identity (0 = any).
    pub identity: u32,
    /// Labels of the peer identity (`k=v,...`, `reserved:world`, `cidr=10.0.0.0/8`, `any`).
    #[serde(default)]
    pub identity_labels: String,
    /// Protocol (`ANY`, `TCP`, ...).
    pub protocol: String,
    /// Port (or ICMP type) of the block.
    pub port: u16,
    /// 16 exact, 0 any, 1..15 a block of ports.
    pub port_prefix_len: u8,
    /// `80`, `1024-2047` or `any`.
    pub ports: String,
    /// Deny instead of allow.
    pub deny: bool,
    /// Cookie.
    pub cookie: u32,
    /// The rule behind the entry.
    #[serde(default)]
    pub rule: Option<PolicyRuleRef>,
}

/// Answer of `GET /v1/policy/endpoint/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyEndpointDetail {
    /// Endpoint id.
    pub endpoint_id: u16,
    /// `namespace/name`.
    #[serde(default)]
    pub pod: Option<String>,
    /// Identity the policy was resolved for.
    pub identity: u32,
    /// Ingress default-deny.
    pub ingress_enforced: bool,
    /// Egress default-deny.
    pub egress_enforced: bool,
    /// Entries.
    pub entries: Vec<PolicyEndpointEntry>,
}
