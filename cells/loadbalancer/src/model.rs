//! The load-balancing tables: `services`, `frontends` and `backends`, written only by the
//! [`crate::Writer`], and their key helpers.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use statedb::reconciler::{Reconcilable, Status};
use statedb::{Db, Index, Key, Query, Table, TableDef, key_from_str};

/// Name of the table of resolved services.
pub const SERVICES_TABLE: &str = "services";
/// Name of the table of frontends (what the lbmap cell reconciles into BPF maps).
pub const FRONTENDS_TABLE: &str = "frontends";
/// Name of the table of backends.
pub const BACKENDS_TABLE: &str = "backends";
/// Secondary index of the frontends table by service (`namespace/name`).
pub const FRONTEND_SERVICE_INDEX: &str = "service";

/// The name of a service: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ServiceName {
    /// A service name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Its key in the `services` table and the frontends' `service` index: `namespace/name`.
    pub fn key(&self) -> Key {
        key_from_str(&self.to_string())
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An L4 protocol of a frontend or backend; the discriminant is the IP protocol number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[repr(u8)]
pub enum L4Proto {
    /// TCP (6).
    Tcp = 6,
    /// UDP (17).
    Udp = 17,
    /// SCTP (132).
    Sctp = 132,
}

impl L4Proto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// `TCP`, `UDP` or `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            L4Proto::Tcp => "TCP",
            L4Proto::Udp => "UDP",
            L4Proto::Sctp => "SCTP",
        }
    }

    /// Parse the Kubernetes spelling (`TCP`, `UDP`, `SCTP`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(L4Proto::Tcp),
            "UDP" => Some(L4Proto::Udp),
            "SCTP" => Some(L4Proto::Sctp),
            _ => None,
        }
    }

    /// From an IP protocol number.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(L4Proto::Tcp),
            17 => Some(L4Proto::Udp),
            132 => Some(L4Proto::Sctp),
            _ => None,
        }
    }
}

impl std::fmt::Display for L4Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `address:port/protocol` triple: the identity of a frontend or a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct L3n4Addr {
    /// Address.
    pub address: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// Protocol.
    pub protocol: L4Proto,
}

impl L3n4Addr {
    /// A triple.
    pub fn new(address: Ipv4Addr, port: u16, protocol: L4Proto) -> Self {
        Self {
            address,
            port,
            protocol,
        }
    }

    /// Its table key: 4 address bytes, 2 port bytes (big-endian), 1 protocol byte; sorts
    /// by address, then port, then protocol.
    pub fn key(&self) -> Key {
        addr_key(self.address, self.port, self.protocol)
    }
}

impl std::fmt::Display for L3n4Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.address, self.port, self.protocol)
    }
}

impl std::str::FromStr for L3n4Addr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not ADDRESS:PORT/PROTOCOL");
        let (hp, proto) = s.rsplit_once('/').ok_or_else(bad)?;
        let (h, p) = hp.rsplit_once(':').ok_or_else(bad)?;
        Ok(Self {
            address: h.parse().map_err(|_| bad())?,
            port: p.parse().map_err(|_| bad())?,
            protocol: L4Proto::parse(proto).ok_or_else(bad)?,
        })
    }
}

/// Key of `address:port/protocol` in the frontends and backends tables.
pub fn addr_key(address: Ipv4Addr, port: u16, protocol: L4Proto) -> Key {
    let mut k = Key::new();
    k.extend_from_slice(&address.octets());
    k.extend_from_slice(&port.to_be_bytes());
    k.push(protocol.number());
    k
}

/// The kind of a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FrontendKind {
    /// `spec.clusterIP:port`.
    ClusterIp,
    /// `node-address:nodePort`, one per node address.
    NodePort,
    /// `spec.externalIPs[]:port`.
    ExternalIp,
    /// `status.loadBalancer.ingress[].ip:port` (type LoadBalancer only).
    LoadBalancer,
}

impl FrontendKind {
    /// `ClusterIP`, `NodePort`, `ExternalIP`, `LoadBalancer`.
    pub fn as_str(self) -> &'static str {
        match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::ExternalIp => "ExternalIP",
            FrontendKind::LoadBalancer => "LoadBalancer",
        }
    }

    /// True for the kinds `externalTrafficPolicy` applies to (all but ClusterIP).
    pub fn is_external(self) -> bool {
        self != FrontendKind::ClusterIp
    }
}

/// The state of a selected backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BackendState {
    /// Ready: takes new connections.
    Active,
    /// Terminating but still serving; only selected when no backend is active.
    Terminating,
}

impl BackendState {
    /// `active` / `terminating`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Active => "active",
            BackendState::Terminating => "terminating",
        }
    }
}

/// One backend of a frontend's final selection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendBackend {
    /// Backend id (> 0), stable per `address:port/protocol` across restarts.
    pub id: u32,
    /// Backend address.
    pub address: Ipv4Addr,
    /// Backend port (the resolved target port).
    pub port: u16,
    /// Its state.
    pub state: BackendState,
}

/// A frontend: what the lbmap cell writes into the BPF service maps. Primary key
/// `(address, port, protocol)`; secondary index [`FRONTEND_SERVICE_INDEX`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontend {
    /// Frontend address.
    pub address: Ipv4Addr,
    /// Frontend port.
    pub port: u16,
    /// Protocol.
    pub protocol: L4Proto,
    /// How the frontend arises from the service.
    pub kind: FrontendKind,
    /// The service.
    pub service: ServiceName,
    /// Reverse-NAT index (> 0): unique per frontend, stable across restarts.
    pub service_id: u16,
    /// Name of the service port (may be empty).
    #[serde(default)]
    pub port_name: String,
    /// The final selection: after traffic policy Local, the terminating fallback and
    /// publishNotReadyAddresses; all active, or (when no backend is active) all
    /// terminating. Sorted by address and port. Empty = refuse connections.
    pub backends: Vec<FrontendBackend>,
    /// What clients on this node (pods, host processes) use instead of `backends`, when it
    /// differs: the service's every usable backend, for a NodePort, ExternalIP or
    /// LoadBalancer frontend of an `externalTrafficPolicy: Local` service (`backends` keeps
    /// the local ones for outside clients). None: `backends` serves every client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_backends: Option<Vec<FrontendBackend>>,
    /// ClientIP session affinity timeout in seconds; 0 = no affinity.
    pub affinity_timeout_secs: u32,
    /// `loadBalancerSourceRanges` (LoadBalancer frontends only): when not empty, only
    /// clients in one of them reach this frontend.
    #[serde(default)]
    pub source_ranges: Vec<Ipv4Net>,
    /// `service.cilium.io/src-ranges-policy: deny`: `source_ranges` are the clients refused.
    #[serde(default)]
    pub source_ranges_deny: bool,
    /// `externalTrafficPolicy: Local` (informative; already applied to `backends`).
    pub ext_traffic_local: bool,
    /// `internalTrafficPolicy: Local` (informative; already applied to `backends`).
    pub int_traffic_local: bool,
    /// Reconcile status (the writer sets pending).
    pub status: Status,
}

impl Frontend {
    /// The frontend's `address:port/protocol`.
    pub fn addr(&self) -> L3n4Addr {
        L3n4Addr::new(self.address, self.port, self.protocol)
    }

    /// Equal apart from the reconcile status.
    pub fn same_desired(&self, other: &Frontend) -> bool {
        self.address == other.address
            && self.port == other.port
            && self.protocol == other.protocol
            && self.kind == other.kind
            && self.service == other.service
            && self.service_id == other.service_id
            && self.port_name == other.port_name
            && self.backends == other.backends
            && self.internal_backends == other.internal_backends
            && self.affinity_timeout_secs == other.affinity_timeout_secs
            && self.source_ranges == other.source_ranges
            && self.source_ranges_deny == other.source_ranges_deny
            && self.ext_traffic_local == other.ext_traffic_local
            && self.int_traffic_local == other.int_traffic_local
    }
}

impl Reconcilable for Frontend {
    fn status(&self) -> &Status {
        &self.status
    }
    fn set_status(&mut self, status: Status) {
        self.status = status;
    }
}

/// The condition of a backend for one service, before selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BackendCondition {
    /// `ready` (or any condition with publishNotReadyAddresses).
    Active,
    /// `terminating` and `serving`.
    Terminating,
    /// Neither: never selected.
    NotReady,
}

impl BackendCondition {
    /// `active`, `terminating`, `not-ready`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendCondition::Active => "active",
            BackendCondition::Terminating => "terminating",
            BackendCondition::NotReady => "not-ready",
        }
    }
}

/// One use of a backend by a service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BackendInstance {
    /// The service.
    pub service: ServiceName,
    /// The service port name it serves (may be empty).
    pub port_name: String,
    /// Its condition for that service.
    pub condition: BackendCondition,
}

/// A backend: one `address:port/protocol`, shared by every service that uses it. Primary
/// key `(address, port, protocol)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// Backend id (> 0), stable across restarts while the backend is used.
    pub id: u32,
    /// Address.
    pub address: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// Protocol.
    pub protocol: L4Proto,
    /// `endpoints[].nodeName` (empty when not given).
    #[serde(default)]
    pub node_name: String,
    /// `namespace/name` of the pod (`targetRef`), when given.
    #[serde(default)]
    pub pod: String,
    /// Every service port using it, sorted.
    pub instances: Vec<BackendInstance>,
}

impl Backend {
    /// The backend's `address:port/protocol`.
    pub fn addr(&self) -> L3n4Addr {
        L3n4Addr::new(self.address, self.port, self.protocol)
    }
}

/// The type of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ServiceType {
    /// Reachable on its cluster IP (and external IPs).
    ClusterIP,
    /// Also on every node address at its node ports.
    NodePort,
    /// Also on its load balancer ingress IPs.
    LoadBalancer,
    /// A DNS alias (`spec.externalName`): no cluster IP, nothing to load-balance.
    ExternalName,
}

impl ServiceType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::ExternalName => "ExternalName",
        }
    }

    /// True for NodePort and LoadBalancer (which get node ports).
    pub fn has_node_ports(self) -> bool {
        matches!(self, ServiceType::NodePort | ServiceType::LoadBalancer)
    }
}

/// `targetPort`: a number or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A named port, resolved per backend.
    Name(String),
}

impl std::fmt::Display for TargetPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Name(s) => f.write_str(s),
        }
    }
}

/// A resolved service port: the node port is filled in (allocated when not given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedPort {
    /// Port name (may be empty for a single-port service).
    pub name: String,
    /// Service port.
    pub port: u16,
    /// Target port.
    pub target_port: TargetPort,
    /// Node port (0 for ClusterIP services).
    pub node_port: u16,
    /// Protocol.
    pub protocol: L4Proto,
}

/// A resolved service: a row of the `services` table, keyed by `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Namespace and name.
    pub name: ServiceName,
    /// Type.
    pub service_type: ServiceType,
    /// The cluster IP (given or allocated from `--service-cidr`); `None` when headless.
    pub cluster_ip: Option<Ipv4Addr>,
    /// True when the cluster IP was allocated by the agent.
    pub cluster_ip_allocated: bool,
    /// Ports with their node ports.
    pub ports: Vec<ResolvedPort>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[].ip` (used for type LoadBalancer).
    pub lb_ingress_ips: Vec<Ipv4Addr>,
    /// ClientIP affinity timeout in seconds; 0 = none.
    pub affinity_timeout_secs: u32,
    /// `loadBalancerSourceRanges` (applied to the LoadBalancer frontends).
    #[serde(default)]
    pub source_ranges: Vec<Ipv4Net>,
    /// `service.cilium.io/src-ranges-policy: deny`: `source_ranges` are the clients refused.
    #[serde(default)]
    pub source_ranges_deny: bool,
    /// `externalTrafficPolicy: Local`.
    pub ext_traffic_local: bool,
    /// The node port where this node answers health checks of the service (given or
    /// allocated; type LoadBalancer with `externalTrafficPolicy: Local`), 0 = none.
    #[serde(default)]
    pub health_check_node_port: u16,
    /// `internalTrafficPolicy: Local`.
    pub int_traffic_local: bool,
    /// `publishNotReadyAddresses`.
    pub publish_not_ready: bool,
    /// The service's frontends (`address:port/protocol`), sorted.
    pub frontends: Vec<L3n4Addr>,
    /// Why the service has no frontends although it should (a conflict, ids exhausted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why this agent leaves the service alone (no cluster IP, node ports or frontends), as
    /// kube-proxy does: type ExternalName, the label `service.kubernetes.io/headless`, or a
    /// `service.kubernetes.io/service-proxy-name` label for another proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
    /// `spec.externalName` (type ExternalName).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub external_name: String,
}

/// Register the `services` table (primary index `name` = `namespace/name`).
pub fn new_services_table(db: &Db) -> Result<Table<Service>, statedb::Error> {
    db.register_table(TableDef::new(
        SERVICES_TABLE,
        Index::primary("name", |s: &Service| s.name.key()),
    ))
}

/// Register the `frontends` table (primary index `address` = [`addr_key`], secondary
/// non-unique [`FRONTEND_SERVICE_INDEX`]).
pub fn new_frontends_table(db: &Db) -> Result<Table<Frontend>, statedb::Error> {
    db.register_table(
        TableDef::new(
            FRONTENDS_TABLE,
            Index::primary("address", |f: &Frontend| {
                addr_key(f.address, f.port, f.protocol)
            }),
        )
        .with_index(Index::non_unique(FRONTEND_SERVICE_INDEX, |f: &Frontend| {
            std::iter::once(f.service.key()).collect()
        })),
    )
}

/// Register the `backends` table (primary index `address` = [`addr_key`]).
pub fn new_backends_table(db: &Db) -> Result<Table<Backend>, statedb::Error> {
    db.register_table(TableDef::new(
        BACKENDS_TABLE,
        Index::primary("address", |b: &Backend| {
            addr_key(b.address, b.port, b.protocol)
        }),
    ))
}

/// Query for the frontend at `addr`.
pub fn frontend_query(addr: &L3n4Addr) -> Query {
    Query::new("address", addr.key())
}

/// Query for every frontend of `service`.
pub fn frontends_of(service: &ServiceName) -> Query {
    Query::new(FRONTEND_SERVICE_INDEX, service.key())
}

/// Query for the service `name` in the services table.
pub fn service_query(name: &ServiceName) -> Query {
    Query::new("name", name.key())
}

/// Query for the backend at `addr`.
pub fn backend_query(addr: &L3n4Addr) -> Query {
    Query::new("address", addr.key())
}
