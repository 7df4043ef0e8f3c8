//! The two kinds this cell owns: `Namespace` and `Pod` (apiVersion `v1`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use statedb::{Db, Index, Key, Query, Table, TableDef, key_from_str};

use crate::document::{Document, FieldError, Fields, validate_port_name};
use crate::store::{ObjectId, ResourceKind};

/// Name of the namespaces table.
pub const NAMESPACES_TABLE: &str = "namespaces";
/// Name of the pods table.
pub const PODS_TABLE: &str = "pods";
/// Secondary index of the pods table by namespace.
pub const POD_NAMESPACE_INDEX: &str = "namespace";
/// Label every namespace carries with its own name (as Kubernetes sets it), so policies can
/// select namespaces by name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A namespace (`kind: Namespace`). Pods do not require one: in standalone mode a Pod in a
/// namespace nobody applied is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// Name (a DNS label).
    pub name: String,
    /// Labels, including `kubernetes.io/metadata.name`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A container port protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The Kubernetes spelling: `TCP`, `UDP`, `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The IP protocol number (6, 17, 132).
    pub fn ip_proto(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named container port of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPort {
    /// The container port.
    pub port: u16,
    /// Its protocol.
    pub protocol: Protocol,
}

/// A pod (`kind: Pod`): what endpoints take their labels, named ports and service account
/// from. Primary key `namespace/name` (see [`pod_key`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `spec.serviceAccountName` (default `default`).
    pub service_account: String,
    /// Container ports that have a name, by name.
    #[serde(default)]
    pub named_ports: BTreeMap<String, NamedPort>,
    /// Assigned by the agent when the pod is created; kept while it is re-applied.
    pub uid: String,
}

impl Pod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Primary key of a pod in the pods table: `namespace/name`.
pub fn pod_key(namespace: &str, name: &str) -> Key {
    key_from_str(&format!("{namespace}/{name}"))
}

/// Query for the pod `namespace/name` on the pods table's primary index.
pub fn pod_query(namespace: &str, name: &str) -> Query {
    Query::new("key", pod_key(namespace, name))
}

/// Query for every pod of `namespace` (secondary index [`POD_NAMESPACE_INDEX`]).
pub fn pods_in_namespace(namespace: &str) -> Query {
    Query::new(POD_NAMESPACE_INDEX, key_from_str(namespace))
}

/// Register the `namespaces` table (primary index `name`).
pub fn new_namespaces_table(db: &Db) -> Result<Table<Namespace>, statedb::Error> {
    db.register_table(TableDef::new(
        NAMESPACES_TABLE,
        Index::primary("name", |n: &Namespace| key_from_str(&n.name)),
    ))
}

/// Register the `pods` table (primary index `key` = `namespace/name`, secondary
/// [`POD_NAMESPACE_INDEX`]).
pub fn new_pods_table(db: &Db) -> Result<Table<Pod>, statedb::Error> {
    db.register_table(
        TableDef::new(
            PODS_TABLE,
            Index::primary("key", |p: &Pod| pod_key(&p.namespace, &p.name)),
        )
        .with_index(Index::non_unique(POD_NAMESPACE_INDEX, |p: &Pod| {
            std::iter::once(key_from_str(&p.namespace)).collect()
        })),
    )
}

fn new_uid() -> String {
    let n: u128 = rand::random();
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The `Namespace` kind.
#[derive(Debug, Clone)]
pub struct NamespaceKind {
    /// Its table.
    pub table: Table<Namespace>,
}

impl ResourceKind for NamespaceKind {
    type Object = Namespace;

    fn kind(&self) -> &'static str {
        "Namespace"
    }
    fn api_versions(&self) -> &'static [&'static str] {
        &["v1"]
    }
    fn names(&self) -> &'static [&'static str] {
        &["namespace", "namespaces", "ns"]
    }
    fn namespaced(&self) -> bool {
        false
    }
    fn table(&self) -> &Table<Namespace> {
        &self.table
    }
    fn key(&self, id: &ObjectId) -> Key {
        key_from_str(&id.name)
    }
    fn id_of(&self, obj: &Namespace) -> ObjectId {
        ObjectId {
            namespace: String::new(),
            name: obj.name.clone(),
        }
    }
    fn parse(&self, doc: &Document) -> Result<Namespace, Vec<FieldError>> {
        let mut f = Fields::default();
        if let Err(r) = crate::document::validate_dns_label(&doc.name) {
            f.error("metadata.name", r);
        }
        let mut labels = f.labels(Fields::get(doc.metadata(), "labels"), "metadata.labels");
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), doc.name.clone());
        if !f.errors.is_empty() {
            return Err(f.errors);
        }
        Ok(Namespace {
            name: doc.name.clone(),
            labels,
        })
    }
}

/// The `Pod` kind.
#[derive(Debug, Clone)]
pub struct PodKind {
    /// Its table.
    pub table: Table<Pod>,
}

impl ResourceKind for PodKind {
    type Object = Pod;

    fn kind(&self) -> &'static str {
        "Pod"
    }
    fn api_versions(&self) -> &'static [&'static str] {
        &["v1"]
    }
    fn names(&self) -> &'static [&'static str] {
        &["pod", "pods", "po"]
    }
    fn namespaced(&self) -> bool {
        true
    }
    fn table(&self) -> &Table<Pod> {
        &self.table
    }
    fn key(&self, id: &ObjectId) -> Key {
        pod_key(&id.namespace, &id.name)
    }
    fn id_of(&self, obj: &Pod) -> ObjectId {
        ObjectId {
            namespace: obj.namespace.clone(),
            name: obj.name.clone(),
        }
    }
    fn parse(&self, doc: &Document) -> Result<Pod, Vec<FieldError>> {
        let mut f = Fields::default();
        let labels = f.labels(Fields::get(doc.metadata(), "labels"), "metadata.labels");
        let spec = f.object(Fields::get(&doc.value, "spec"), "spec");
        let spec_field = |k: &str| spec.and_then(|s| s.get(k)).filter(|v| !v.is_null());
        let service_account = f
            .string(spec_field("serviceAccountName"), "spec.serviceAccountName")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_string());
        if service_account != "default"
            && let Err(r) = crate::document::validate_dns_subdomain(&service_account)
        {
            f.error("spec.serviceAccountName", r);
        }
        let mut named_ports: BTreeMap<String, NamedPort> = BTreeMap::new();
        let mut port_paths: BTreeMap<String, String> = BTreeMap::new();
        let containers = f.list(spec_field("containers"), "spec.containers");
        for (ci, c) in containers.iter().enumerate() {
            let cpath = format!("spec.containers[{ci}]");
            if !c.is_object() {
                f.error(
                    &cpath,
                    format!("must be an object, got {}", crate::document::type_name(c)),
                );
                continue;
            }
            f.string(Fields::get(c, "name"), &format!("{cpath}.name"));
            let ports = f.list(Fields::get(c, "ports"), &format!("{cpath}.ports"));
            for (pi, p) in ports.iter().enumerate() {
                let ppath = format!("{cpath}.ports[{pi}]");
                if let Some((name, port)) = parse_port(&mut f, p, &ppath) {
                    if let Some(first) = port_paths.get(&name) {
                        f.error(
                            format!("{ppath}.name"),
                            format!("port name {name:?} is already used by {first}"),
                        );
                        continue;
                    }
                    port_paths.insert(name.clone(), ppath);
                    named_ports.insert(name, port);
                }
            }
        }
        if !f.errors.is_empty() {
            return Err(f.errors);
        }
        Ok(Pod {
            namespace: doc.namespace.clone().unwrap_or_default(),
            name: doc.name.clone(),
            labels,
            service_account,
            named_ports,
            uid: new_uid(),
        })
    }

    fn carry_over(&self, mut new: Pod, old: &Pod) -> Pod {
        new.uid = old.uid.clone();
        new
    }
}

/// Validate one `ports[]` entry; returns the named port (unnamed ports are checked, not kept).
fn parse_port(f: &mut Fields, p: &Value, path: &str) -> Option<(String, NamedPort)> {
    if !p.is_object() {
        f.error(
            path,
            format!("must be an object, got {}", crate::document::type_name(p)),
        );
        return None;
    }
    let before = f.errors.len();
    let port_path = format!("{path}.containerPort");
    let port = match Fields::get(p, "containerPort") {
        None => {
            f.error(&port_path, "required");
            None
        }
        some => f.int(some, &port_path, 1, 65535),
    };
    let protocol = match f
        .string(Fields::get(p, "protocol"), &format!("{path}.protocol"))
        .as_deref()
    {
        None | Some("TCP") => Some(Protocol::Tcp),
        Some("UDP") => Some(Protocol::Udp),
        Some("SCTP") => Some(Protocol::Sctp),
        Some(other) => {
            f.error(
                format!("{path}.protocol"),
                format!("must be TCP, UDP or SCTP, got {other:?}"),
            );
            None
        }
    };
    let name = f.string(Fields::get(p, "name"), &format!("{path}.name"));
    if let Some(n) = &name
        && let Err(r) = validate_port_name(n)
    {
        f.error(format!("{path}.name"), r);
    }
    if f.errors.len() != before {
        return None;
    }
    let port = u16::try_from(port?).ok()?;
    Some((
        name?,
        NamedPort {
            port,
            protocol: protocol?,
        },
    ))
}
