//! [`Identity`], the reserved identities, [`IdentityObj`] and the `identities` table.

use std::collections::BTreeSet;

use cilium_api::models::IdentityInfo;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use statedb::{Db, Index, Key, Query, Table, TableDef, key_from_str, key_from_u64};

use crate::labels::{CIDR_LABEL, Labels, RESERVED_PREFIX};

/// A numeric security identity, as the datapath carries it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Identity(pub u32);

impl Identity {
    /// Unknown / any peer (0).
    pub const UNKNOWN: Identity = Identity(0);
    /// The local host (1); packets from the host stack carry it.
    pub const HOST: Identity = Identity(1);
    /// Anything outside the cluster the ipcache does not know (2).
    pub const WORLD: Identity = Identity(2);
    /// Endpoints not managed by the agent (3).
    pub const UNMANAGED: Identity = Identity(3);
    /// Health-check endpoints (4).
    pub const HEALTH: Identity = Identity(4);
    /// Endpoints whose identity is not resolved yet (5).
    pub const INIT: Identity = Identity(5);
    /// Other nodes of the cluster (6).
    pub const REMOTE_NODE: Identity = Identity(6);
    /// The Kubernetes API server (7).
    pub const KUBE_APISERVER: Identity = Identity(7);
    /// The first identity handed out for a label set.
    pub const MIN_ALLOCATED: u32 = 256;
    /// The last identity handed out for a label set.
    pub const MAX_ALLOCATED: u32 = 0x00FF_FFFF;
    /// Node-local CIDR identities have bit 24 set: `CIDR_BASE + n`, n >= 1.
    pub const CIDR_BASE: u32 = 0x0100_0000;
    /// The last node-local CIDR identity.
    pub const CIDR_MAX: u32 = 0x01FF_FFFF;

    /// True for the reserved identities (1..256).
    pub fn is_reserved(self) -> bool {
        (1..Self::MIN_ALLOCATED).contains(&self.0)
    }

    /// True for node-local CIDR identities.
    pub fn is_cidr(self) -> bool {
        self.0 & Self::CIDR_BASE != 0 && self.0 <= Self::CIDR_MAX
    }

    /// True for identities allocated for a label set (endpoints).
    pub fn is_endpoint(self) -> bool {
        (Self::MIN_ALLOCATED..=Self::MAX_ALLOCATED).contains(&self.0)
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<Identity> for u32 {
    fn from(i: Identity) -> u32 {
        i.0
    }
}

/// The reserved identities and their names; each is always in the table, with the single
/// label `reserved:<name>`.
pub const RESERVED: [(Identity, &str); 7] = [
    (Identity::HOST, "host"),
    (Identity::WORLD, "world"),
    (Identity::UNMANAGED, "unmanaged"),
    (Identity::HEALTH, "health"),
    (Identity::INIT, "init"),
    (Identity::REMOTE_NODE, "remote-node"),
    (Identity::KUBE_APISERVER, "kube-apiserver"),
];

/// The name of a reserved identity (`host`, `world`, ...).
pub fn reserved_name(id: Identity) -> Option<&'static str> {
    RESERVED.iter().find(|(i, _)| *i == id).map(|(_, n)| *n)
}

/// The reserved identity called `name`.
pub fn reserved_by_name(name: &str) -> Option<Identity> {
    RESERVED.iter().find(|(_, n)| *n == name).map(|(i, _)| *i)
}

/// The label set of a reserved identity: `{reserved:<name>: ""}`.
pub fn reserved_labels(name: &str) -> Labels {
    [(format!("{RESERVED_PREFIX}{name}"), String::new())].into()
}

/// The label set of a node-local CIDR identity: `{cidr: <prefix>}`.
pub fn cidr_labels(prefix: &Ipv4Net) -> Labels {
    [(CIDR_LABEL.to_string(), prefix.trunc().to_string())].into()
}

/// What an identity stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityKind {
    /// One of the fixed identities below 256.
    Reserved,
    /// Allocated for a set of security labels.
    Endpoint,
    /// A node-local identity of an IPv4 prefix (bit 24 set).
    Cidr,
}

impl IdentityKind {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Endpoint => "endpoint",
            Self::Cidr => "cidr",
        }
    }
}

/// A row of the `identities` table and an entry of `identities.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityObj {
    /// The numeric identity (primary key).
    pub id: u32,
    /// Its security labels (unique among identities).
    pub labels: Labels,
    /// What it stands for.
    pub kind: IdentityKind,
    /// The prefix of a CIDR identity.
    #[serde(default)]
    pub cidr: Option<Ipv4Net>,
    /// Who holds a reference (endpoint keys, policy names); empty for reserved identities.
    #[serde(default)]
    pub owners: BTreeSet<String>,
}

impl IdentityObj {
    /// The typed id.
    pub fn identity(&self) -> Identity {
        Identity(self.id)
    }

    /// The API form.
    pub fn to_api(&self) -> IdentityInfo {
        IdentityInfo {
            id: self.id,
            kind: self.kind.as_str().to_string(),
            labels: self.labels.clone(),
            cidr: self.cidr.map(|c| c.to_string()),
            owners: self.owners.iter().cloned().collect(),
            refs: self.owners.len(),
        }
    }

    pub(crate) fn reserved(id: Identity, name: &str) -> Self {
        Self {
            id: id.0,
            labels: reserved_labels(name),
            kind: IdentityKind::Reserved,
            cidr: None,
            owners: BTreeSet::new(),
        }
    }
}

/// Name of the statedb table.
pub const TABLE_NAME: &str = "identities";
/// Primary index: the numeric id.
pub const INDEX_ID: &str = "id";
/// Unique index: the whole label set ([`labels_key`]).
pub const INDEX_LABELS: &str = "labels";
/// Non-unique index: one key `k=v` per label ([`label_query`]), for selector matching.
pub const INDEX_LABEL: &str = "label";

/// Key of a whole label set in [`INDEX_LABELS`]: `k \0 v \0` for each label in order.
pub fn labels_key(labels: &Labels) -> Key {
    let mut k = Key::new();
    for (key, value) in labels {
        k.extend_from_slice(key.as_bytes());
        k.push(0);
        k.extend_from_slice(value.as_bytes());
        k.push(0);
    }
    k
}

/// Query for the identity with exactly these labels.
pub fn labels_query(labels: &Labels) -> Query {
    Query::new(INDEX_LABELS, labels_key(labels))
}

/// Query for every identity that has the label `key=value`.
pub fn label_query(key: &str, value: &str) -> Query {
    Query::new(INDEX_LABEL, key_from_str(&format!("{key}={value}")))
}

/// Query for the identity `id`.
pub fn id_query(id: Identity) -> Query {
    Query::new(INDEX_ID, key_from_u64(u64::from(id.0)))
}

/// Registers the `identities` table (primary `id`; unique `labels`; non-unique `label`).
pub fn new_table(db: &Db) -> Result<Table<IdentityObj>, statedb::Error> {
    db.register_table(
        TableDef::new(
            TABLE_NAME,
            Index::primary(INDEX_ID, |o: &IdentityObj| key_from_u64(u64::from(o.id))),
        )
        .with_index(Index::unique(INDEX_LABELS, |o: &IdentityObj| {
            std::iter::once(labels_key(&o.labels)).collect()
        }))
        .with_index(Index::non_unique(INDEX_LABEL, |o: &IdentityObj| {
            o.labels
                .iter()
                .map(|(k, v)| key_from_str(&format!("{k}={v}")))
                .collect()
        })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert!(Identity::HOST.is_reserved());
        assert!(!Identity(256).is_reserved());
        assert!(Identity(256).is_endpoint());
        assert!(Identity(Identity::CIDR_BASE + 1).is_cidr());
        assert!(!Identity(Identity::CIDR_BASE + 1).is_endpoint());
        assert!(!Identity(300).is_cidr());
        assert_eq!(reserved_name(Identity::REMOTE_NODE), Some("remote-node"));
        assert_eq!(reserved_by_name("world"), Some(Identity::WORLD));
        assert_eq!(
            serde_json::to_string(&Identity(300)).unwrap_or_default(),
            "300"
        );
    }

    #[test]
    fn label_keys_do_not_collide() {
        let a: Labels = [("ab".into(), "c".into())].into();
        let b: Labels = [("a".into(), "bc".into())].into();
        assert_ne!(labels_key(&a), labels_key(&b));
    }
}
