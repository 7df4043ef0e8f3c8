//! The internal rule model shared by the three policy kinds, and the resolved per-endpoint
//! policy (`endpoint_policies` table) the datapath reconciler consumes.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use statedb::reconciler::{Reconcilable, Status};
use statedb::{Db, Index, Key, Query, Table, TableDef, key_from_str, key_from_u64};

use crate::selector::Selector;

/// Name of the resolved-policy table.
pub const ENDPOINT_POLICIES_TABLE: &str = "endpoint_policies";
/// Primary index of [`ENDPOINT_POLICIES_TABLE`] (endpoint id).
pub const ENDPOINT_POLICIES_INDEX: &str = "endpoint";
/// Primary index of the three policy tables (`namespace/name`).
pub const POLICY_INDEX: &str = "key";

/// Traffic direction, seen from the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Towards the endpoint.
    Ingress,
    /// From the endpoint.
    Egress,
}

impl Direction {
    /// `ingress` / `egress`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of a policy document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PolicyKind {
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy,
    /// `cilium.io/v2` CiliumNetworkPolicy.
    CiliumNetworkPolicy,
    /// `cilium.io/v2` CiliumClusterwideNetworkPolicy.
    CiliumClusterwideNetworkPolicy,
}

impl PolicyKind {
    /// The document `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            PolicyKind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
        }
    }
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Named peers (`fromEntities`/`toEntities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    /// Any peer (identity 0).
    All,
    /// Outside the cluster: identity 2 and every CIDR identity.
    World,
    /// Every endpoint identity, host, remote-node, health, init, unmanaged, kube-apiserver.
    Cluster,
    /// The local host (1).
    Host,
    /// Other nodes (6).
    RemoteNode,
    /// The API server (7).
    KubeApiserver,
    /// Health endpoints (4).
    Health,
    /// Endpoints still initializing (5).
    Init,
    /// Endpoints not managed by the agent (3).
    Unmanaged,
}

impl Entity {
    /// Parse the spelling used in policies.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "all" => Entity::All,
            "world" | "world-ipv4" => Entity::World,
            "cluster" => Entity::Cluster,
            "host" => Entity::Host,
            "remote-node" => Entity::RemoteNode,
            "kube-apiserver" => Entity::KubeApiserver,
            "health" => Entity::Health,
            "init" => Entity::Init,
            "unmanaged" => Entity::Unmanaged,
            _ => return None,
        })
    }
}

/// A peer of a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Peer {
    /// Any peer at all, inside or outside the cluster (identity 0).
    Any,
    /// Identities whose labels the selector matches (namespace scoping already applied).
    Endpoints(Selector),
    /// Addresses in `cidr` but not in any `except`: node-local CIDR identities and the
    /// identities of endpoints whose IP is inside.
    Cidr {
        /// The block.
        cidr: Ipv4Net,
        /// Carved-out sub-blocks.
        #[serde(default)]
        except: Vec<Ipv4Net>,
    },
    /// A named entity.
    Entity(Entity),
}

/// Which ports of a protocol a rule covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortSpec {
    /// Every port.
    Any,
    /// `first..=last` (an exact port has `first == last`; ICMP types use this too).
    Range {
        /// First port.
        first: u16,
        /// Last port (inclusive).
        last: u16,
    },
    /// A named container port, resolved on the destination pod.
    Named(String),
}

/// One protocol/port match of a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct L4 {
    /// IP protocol (0 = any; 6 TCP, 17 UDP, 132 SCTP, 1 ICMP, 58 ICMPv6).
    pub protocol: u8,
    /// Ports (ICMP: the type).
    pub port: PortSpec,
}

/// One rule: an element of `ingress`, `egress`, `ingressDeny` or `egressDeny`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Direction.
    pub direction: Direction,
    /// True for `ingressDeny`/`egressDeny`.
    pub deny: bool,
    /// Index among the policy's rules of the same direction and deny flag (counted across
    /// `specs`); part of the cookie key.
    pub index: usize,
    /// Field path in the document, e.g. `spec.ingress[0]`.
    pub path: String,
    /// Peers (union). Empty selects no peer (a Cilium rule `{}`).
    pub peers: Vec<Peer>,
    /// Protocol/port matches (union). Empty = every protocol and port.
    pub ports: Vec<L4>,
}

/// One subject of a policy: which endpoints it selects, which directions it turns into
/// default-deny, and its rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySpec {
    /// Endpoints the spec applies to (namespace scoping already applied).
    pub subject: Selector,
    /// Selected endpoints become default-deny for ingress.
    pub enforce_ingress: bool,
    /// Selected endpoints become default-deny for egress.
    pub enforce_egress: bool,
    /// Rules.
    pub rules: Vec<Rule>,
}

/// A stored policy of any of the three kinds, converted to the internal model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Kind.
    pub kind: PolicyKind,
    /// Namespace (empty for CiliumClusterwideNetworkPolicy).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Subjects with their rules.
    pub specs: Vec<PolicySpec>,
    /// The document's `spec` (or `specs`) as written.
    #[serde(default)]
    pub source: serde_json::Value,
}

impl Policy {
    /// `Kind namespace/name` (or `Kind name`): how messages name the policy.
    pub fn describe(&self) -> String {
        if self.namespace.is_empty() {
            format!("{} {}", self.kind, self.name)
        } else {
            format!("{} {}/{}", self.kind, self.namespace, self.name)
        }
    }

    /// Owner string used for CIDR identities this policy allocates.
    pub fn owner(&self) -> String {
        format!("policy:{}/{}/{}", self.kind, self.namespace, self.name)
    }

    /// Number of rules over all specs.
    pub fn rule_count(&self) -> usize {
        self.specs.iter().map(|s| s.rules.len()).sum()
    }
}

/// Primary key of a policy in its table: `namespace/name`.
pub fn policy_key(namespace: &str, name: &str) -> Key {
    key_from_str(&format!("{namespace}/{name}"))
}

/// Registers one policy table (one per kind).
pub fn new_policy_table(db: &Db, name: &str) -> Result<Table<Policy>, statedb::Error> {
    db.register_table(TableDef::new(
        name,
        Index::primary(POLICY_INDEX, |p: &Policy| policy_key(&p.namespace, &p.name)),
    ))
}

/// One resolved policy map entry of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyEntry {
    /// Direction.
    pub direction: Direction,
    /// Peer identity (0 = any peer).
    pub identity: u32,
    /// IP protocol (0 = any).
    pub protocol: u8,
    /// Destination port, or ICMP type (0 with prefix 0 = any).
    pub port: u16,
    /// 16 = exact port, 0 = any port, 1..15 = an aligned block of `2^(16-len)` ports.
    pub port_prefix_len: u8,
    /// Deny (drop) instead of allow.
    pub deny: bool,
    /// The rule that produced the entry ([`crate::Repository::rule_by_cookie`]); 0 = the
    /// implicit allow-all of a direction enforced only by deny rules of
    /// `enableDefaultDeny: false` policies.
    pub cookie: u32,
}

impl PolicyEntry {
    /// True if the entry's port block covers `port`.
    pub fn covers_port(&self, port: u16) -> bool {
        if self.port_prefix_len == 0 {
            return true;
        }
        let shift = 16 - u32::from(self.port_prefix_len.min(16));
        (u32::from(port) >> shift) == (u32::from(self.port) >> shift)
    }

    /// First and last port of the block.
    pub fn port_range(&self) -> (u16, u16) {
        if self.port_prefix_len == 0 {
            return (0, u16::MAX);
        }
        let size = 1u32 << (16 - u32::from(self.port_prefix_len.min(16)));
        let first = u32::from(self.port) & !(size - 1);
        let last = first + size - 1;
        (
            u16::try_from(first).unwrap_or(u16::MAX),
            u16::try_from(last).unwrap_or(u16::MAX),
        )
    }
}

/// The resolved policy of one endpoint: a row of `endpoint_policies`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPolicy {
    /// Endpoint id (primary key).
    pub endpoint_id: u16,
    /// The endpoint's identity when resolved.
    pub identity: u32,
    /// Ingress is default-deny.
    pub ingress_enforced: bool,
    /// Egress is default-deny.
    pub egress_enforced: bool,
    /// Entries, sorted.
    pub entries: Vec<PolicyEntry>,
    /// Reconcile status (written pending).
    #[serde(default)]
    pub status: Status,
}

impl EndpointPolicy {
    /// True if everything but the status is equal.
    pub fn same_content(&self, other: &EndpointPolicy) -> bool {
        self.endpoint_id == other.endpoint_id
            && self.identity == other.identity
            && self.ingress_enforced == other.ingress_enforced
            && self.egress_enforced == other.egress_enforced
            && self.entries == other.entries
    }

    /// Is `direction` enforced?
    pub fn enforced(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.ingress_enforced,
            Direction::Egress => self.egress_enforced,
        }
    }
}

impl Reconcilable for EndpointPolicy {
    fn status(&self) -> &Status {
        &self.status
    }
    fn set_status(&mut self, status: Status) {
        self.status = status;
    }
}

/// Key of an endpoint's row in `endpoint_policies`.
pub fn endpoint_policy_key(endpoint_id: u16) -> Key {
    key_from_u64(u64::from(endpoint_id))
}

/// Query for an endpoint's row in `endpoint_policies`.
pub fn endpoint_policy_query(endpoint_id: u16) -> Query {
    Query::new(ENDPOINT_POLICIES_INDEX, endpoint_policy_key(endpoint_id))
}

/// Registers the `endpoint_policies` table (primary key: endpoint id).
pub fn new_endpoint_policies_table(db: &Db) -> Result<Table<EndpointPolicy>, statedb::Error> {
    db.register_table(TableDef::new(
        ENDPOINT_POLICIES_TABLE,
        Index::primary(ENDPOINT_POLICIES_INDEX, |e: &EndpointPolicy| {
            endpoint_policy_key(e.endpoint_id)
        }),
    ))
}

/// What a cookie names: one rule of one policy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleRef {
    /// Policy kind.
    pub kind: PolicyKind,
    /// Policy namespace (empty for cluster-wide).
    pub namespace: String,
    /// Policy name.
    pub name: String,
    /// Direction of the rule.
    pub direction: Direction,
    /// Index of the rule among the policy's rules of that direction and deny flag.
    pub rule_index: usize,
    /// Deny rule.
    pub deny: bool,
}

impl RuleRef {
    /// `CiliumNetworkPolicy ns/name egressDeny[2]`.
    pub fn describe(&self) -> String {
        let field = match (self.direction, self.deny) {
            (Direction::Ingress, false) => "ingress",
            (Direction::Egress, false) => "egress",
            (Direction::Ingress, true) => "ingressDeny",
            (Direction::Egress, true) => "egressDeny",
        };
        let who = if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        };
        format!("{} {} {}[{}]", self.kind, who, field, self.rule_index)
    }
}

/// Split `first..=last` into aligned power-of-two blocks `(port, prefix_len)`.
pub fn split_port_range(first: u16, last: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    if first > last {
        return out;
    }
    if first == 0 && last == u16::MAX {
        return vec![(0, 0)];
    }
    let mut start = u32::from(first);
    let end = u32::from(last);
    while start <= end {
        // Largest aligned block starting at `start` that fits.
        let mut size: u32 = if start == 0 {
            1 << 16
        } else {
            1 << start.trailing_zeros()
        };
        while start + size - 1 > end {
            size >>= 1;
        }
        let prefix = 16 - size.trailing_zeros();
        out.push((
            u16::try_from(start).unwrap_or(u16::MAX),
            u8::try_from(prefix).unwrap_or(16),
        ));
        start += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_split_into_aligned_blocks() {
        assert_eq!(split_port_range(80, 80), vec![(80, 16)]);
        assert_eq!(split_port_range(80, 81), vec![(80, 15)]);
        assert_eq!(split_port_range(81, 82), vec![(81, 16), (82, 16)]);
        assert_eq!(
            split_port_range(1000, 2000),
            vec![
                (1000, 13),
                (1008, 12),
                (1024, 7),
                (1536, 8),
                (1792, 9),
                (1920, 10),
                (1984, 12),
                (2000, 16)
            ]
        );
        assert_eq!(split_port_range(0, 65535), vec![(0, 0)]);
        assert_eq!(split_port_range(32768, 65535), vec![(32768, 1)]);
        assert!(split_port_range(5, 4).is_empty());
        // Every port of the range is covered exactly once, nothing outside.
        for (a, b) in [
            (1u16, 1u16),
            (3, 1000),
            (1000, 2000),
            (65000, 65535),
            (0, 7),
        ] {
            let blocks = split_port_range(a, b);
            for p in a.saturating_sub(3)..=b.saturating_add(3) {
                let n = blocks
                    .iter()
                    .filter(|(port, len)| {
                        PolicyEntry {
                            direction: Direction::Ingress,
                            identity: 0,
                            protocol: 6,
                            port: *port,
                            port_prefix_len: *len,
                            deny: false,
                            cookie: 1,
                        }
                        .covers_port(p)
                    })
                    .count();
                assert_eq!(n, usize::from((a..=b).contains(&p)), "port {p} in {a}-{b}");
            }
        }
    }
}
