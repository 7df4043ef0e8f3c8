//! The three policy kinds as [`ResourceKind`]s of the resources registry; each has its own
//! table of [`Policy`] objects.

use cilium_resources::{Document, FieldError, ObjectId, ResourceKind};
use statedb::{Key, Table};

use crate::model::{Policy, PolicyKind, policy_key};
use crate::parse::{parse_cilium_policy, parse_network_policy};

/// Table of NetworkPolicy objects.
pub const NETWORK_POLICIES_TABLE: &str = "networkpolicies";
/// Table of CiliumNetworkPolicy objects.
pub const CILIUM_NETWORK_POLICIES_TABLE: &str = "ciliumnetworkpolicies";
/// Table of CiliumClusterwideNetworkPolicy objects.
pub const CILIUM_CLUSTERWIDE_POLICIES_TABLE: &str = "ciliumclusterwidenetworkpolicies";

/// One policy kind registered with the resources registry.
#[derive(Debug, Clone)]
pub struct PolicyResourceKind {
    /// Which kind.
    pub kind: PolicyKind,
    /// Its table.
    pub table: Table<Policy>,
}

impl PolicyResourceKind {
    /// The table name of `kind`.
    pub fn table_name(kind: PolicyKind) -> &'static str {
        match kind {
            PolicyKind::NetworkPolicy => NETWORK_POLICIES_TABLE,
            PolicyKind::CiliumNetworkPolicy => CILIUM_NETWORK_POLICIES_TABLE,
            PolicyKind::CiliumClusterwideNetworkPolicy => CILIUM_CLUSTERWIDE_POLICIES_TABLE,
        }
    }
}

impl ResourceKind for PolicyResourceKind {
    type Object = Policy;

    fn kind(&self) -> &'static str {
        self.kind.as_str()
    }
    fn api_versions(&self) -> &'static [&'static str] {
        match self.kind {
            PolicyKind::NetworkPolicy => &["networking.k8s.io/v1"],
            _ => &["cilium.io/v2"],
        }
    }
    fn names(&self) -> &'static [&'static str] {
        match self.kind {
            PolicyKind::NetworkPolicy => &["networkpolicy", "networkpolicies", "netpol"],
            PolicyKind::CiliumNetworkPolicy => {
                &["ciliumnetworkpolicy", "ciliumnetworkpolicies", "cnp"]
            }
            PolicyKind::CiliumClusterwideNetworkPolicy => &[
                "ciliumclusterwidenetworkpolicy",
                "ciliumclusterwidenetworkpolicies",
                "ccnp",
            ],
        }
    }
    fn namespaced(&self) -> bool {
        self.kind != PolicyKind::CiliumClusterwideNetworkPolicy
    }
    fn table(&self) -> &Table<Policy> {
        &self.table
    }
    fn key(&self, id: &ObjectId) -> Key {
        policy_key(&id.namespace, &id.name)
    }
    fn id_of(&self, obj: &Policy) -> ObjectId {
        ObjectId {
            namespace: obj.namespace.clone(),
            name: obj.name.clone(),
        }
    }
    fn parse(&self, doc: &Document) -> Result<Policy, Vec<FieldError>> {
        match self.kind {
            PolicyKind::NetworkPolicy => parse_network_policy(doc),
            k => parse_cilium_policy(doc, k),
        }
    }
}
