//! The kinds `Service` (v1) and `EndpointSlice` (discovery.k8s.io/v1) as [`ResourceKind`]s of
//! the resources registry, with their tables `k8s-services` and `endpointslices`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cilium_resources::{
    Document, FieldError, Fields, ObjectId, ResourceKind, type_name, validate_dns_subdomain,
    validate_port_name,
};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use statedb::{Db, Index, Key, Query, Table, TableDef, key_from_str};

use crate::claims::Claims;
use crate::model::{L3n4Addr, L4Proto, ServiceName, ServiceType, TargetPort};

/// Table of applied Service objects.
pub const SERVICE_OBJECTS_TABLE: &str = "k8s-services";
/// Table of applied EndpointSlice objects.
pub const ENDPOINT_SLICES_TABLE: &str = "endpointslices";
/// Secondary index of the endpointslices table by service (`namespace/service-name`).
pub const SLICE_SERVICE_INDEX: &str = "service";
/// The label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Service label naming the proxy that handles the service: kube-proxy leaves every service
/// that has it alone; this agent handles only those whose value is its
/// `--k8s-service-proxy-name` (none when that is empty), as Cilium does.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Service label that makes proxies treat the service as headless.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Default ClientIP affinity timeout (3 hours), as Kubernetes.
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10800;
/// Node port range (inclusive), as Kubernetes' default.
pub const NODE_PORT_RANGE: (u16, u16) = (30000, 32767);

/// `spec.clusterIP` as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterIpSpec {
    /// Absent or empty: the agent allocates one from `--service-cidr`.
    Auto,
    /// `None`: headless, no frontends.
    Headless,
    /// A given address.
    Address(Ipv4Addr),
}

/// One `spec.ports[]` entry as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePortSpec {
    /// Name (required when the service has several ports).
    pub name: String,
    /// Service port.
    pub port: u16,
    /// Target port (default: the service port).
    pub target_port: TargetPort,
    /// Node port when given.
    pub node_port: Option<u16>,
    /// Protocol (default TCP).
    pub protocol: L4Proto,
}

impl ServicePortSpec {
    /// How node port allocations of this port are keyed: its name, else `port/PROTO`.
    pub fn alloc_key(&self) -> String {
        if self.name.is_empty() {
            format!("{}/{}", self.port, self.protocol)
        } else {
            self.name.clone()
        }
    }
}

/// An applied Service (`kind: Service`, `apiVersion: v1`). Primary key `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceObj {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.labels`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `spec.type`.
    pub service_type: ServiceType,
    /// `spec.externalName` (type ExternalName only).
    #[serde(default)]
    pub external_name: String,
    /// `spec.clusterIP`.
    pub cluster_ip: ClusterIpSpec,
    /// `spec.ports`.
    pub ports: Vec<ServicePortSpec>,
    /// `spec.externalIPs`.
    #[serde(default)]
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[].ip`.
    #[serde(default)]
    pub lb_ingress_ips: Vec<Ipv4Addr>,
    /// ClientIP affinity timeout in seconds; 0 = `sessionAffinity: None`.
    pub affinity_timeout_secs: u32,
    /// `spec.loadBalancerSourceRanges` (else the annotation
    /// `service.beta.kubernetes.io/load-balancer-source-ranges`), host bits cleared, sorted.
    #[serde(default)]
    pub source_ranges: Vec<Ipv4Net>,
    /// `service.cilium.io/src-ranges-policy: deny`: the source ranges are the clients
    /// refused instead of the only ones admitted.
    #[serde(default)]
    pub source_ranges_deny: bool,
    /// `externalTrafficPolicy: Local`.
    pub ext_traffic_local: bool,
    /// `spec.healthCheckNodePort` when given (type LoadBalancer with
    /// `externalTrafficPolicy: Local` gets one allocated otherwise).
    #[serde(default)]
    pub health_check_node_port: Option<u16>,
    /// `internalTrafficPolicy: Local`.
    pub int_traffic_local: bool,
    /// `publishNotReadyAddresses`.
    pub publish_not_ready: bool,
    /// `spec.allocateLoadBalancerNodePorts` (type LoadBalancer; default true): false leaves
    /// ports without a given `nodePort` without one (no NodePort frontend).
    #[serde(default = "yes")]
    pub allocate_lb_node_ports: bool,
    /// `spec.selector`: stored only; standalone mode does not derive EndpointSlices.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Creation order (kept while re-applied): the older service wins a conflict.
    pub created: u64,
}

fn yes() -> bool {
    true
}

impl ServiceObj {
    /// Its service name.
    pub fn service_name(&self) -> ServiceName {
        ServiceName::new(&self.namespace, &self.name)
    }

    /// Why an agent whose `--k8s-service-proxy-name` is `proxy_name` leaves this service
    /// alone (no cluster IP, node ports or frontends; no conflicts checked), or None when it
    /// load-balances it. kube-proxy skips the same services.
    pub fn ignored(&self, proxy_name: &str) -> Option<String> {
        if self.service_type == ServiceType::ExternalName {
            return Some(format!(
                "type ExternalName ({}): a DNS alias, nothing to load-balance",
                self.external_name
            ));
        }
        if self.labels.contains_key(HEADLESS_LABEL) {
            return Some(format!("label {HEADLESS_LABEL}: headless"));
        }
        match self.labels.get(SERVICE_PROXY_NAME_LABEL) {
            Some(l) if !proxy_name.is_empty() && l == proxy_name => None,
            Some(l) if proxy_name.is_empty() => Some(format!(
                "label {SERVICE_PROXY_NAME_LABEL}={l}: another proxy handles it (this agent's \
                 --k8s-service-proxy-name is empty)"
            )),
            Some(l) => Some(format!(
                "label {SERVICE_PROXY_NAME_LABEL}={l}: another proxy handles it (this agent's \
                 --k8s-service-proxy-name is {proxy_name})"
            )),
            None if proxy_name.is_empty() => None,
            None => Some(format!(
                "no label {SERVICE_PROXY_NAME_LABEL}={proxy_name}: this agent handles only \
                 services with it (--k8s-service-proxy-name)"
            )),
        }
    }
}

/// `targetRef` of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRef {
    /// Kind (`Pod`).
    pub kind: String,
    /// Namespace (defaults to the slice's).
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// One `endpoints[]` entry of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceEndpoint {
    /// Addresses.
    pub addresses: Vec<Ipv4Addr>,
    /// `conditions.ready` (absent = true).
    pub ready: bool,
    /// `conditions.serving` (absent = ready).
    pub serving: bool,
    /// `conditions.terminating` (absent = false).
    pub terminating: bool,
    /// `nodeName` (empty when absent).
    #[serde(default)]
    pub node_name: String,
    /// `targetRef`.
    #[serde(default)]
    pub target_ref: Option<TargetRef>,
}

/// One `ports[]` entry of an EndpointSlice: the resolved target port for the service port
/// of the same name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlicePort {
    /// Name (matches the service port name, or a named targetPort).
    pub name: String,
    /// Port.
    pub port: u16,
    /// Protocol (default TCP).
    pub protocol: L4Proto,
}

/// An applied EndpointSlice (`kind: EndpointSlice`, `apiVersion: discovery.k8s.io/v1`).
/// Primary key `namespace/name`; secondary index [`SLICE_SERVICE_INDEX`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSlice {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The service it belongs to (label `kubernetes.io/service-name`).
    pub service: String,
    /// `metadata.labels`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `endpoints`.
    pub endpoints: Vec<SliceEndpoint>,
    /// `ports`.
    pub ports: Vec<SlicePort>,
}

impl EndpointSlice {
    /// The service it belongs to.
    pub fn service_name(&self) -> ServiceName {
        ServiceName::new(&self.namespace, &self.service)
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Primary key of a namespaced object: `namespace/name`.
pub fn object_key(namespace: &str, name: &str) -> Key {
    key_from_str(&format!("{namespace}/{name}"))
}

/// Query for the Service object of `name`.
pub fn service_object_query(name: &ServiceName) -> Query {
    Query::new("key", name.key())
}

/// Query for every EndpointSlice of `service`.
pub fn slices_of(service: &ServiceName) -> Query {
    Query::new(SLICE_SERVICE_INDEX, service.key())
}

/// Register the `k8s-services` table (primary index `key` = `namespace/name`).
pub fn new_service_objects_table(db: &Db) -> Result<Table<ServiceObj>, statedb::Error> {
    db.register_table(TableDef::new(
        SERVICE_OBJECTS_TABLE,
        Index::primary("key", |s: &ServiceObj| object_key(&s.namespace, &s.name)),
    ))
}

/// Register the `endpointslices` table (primary index `key` = `namespace/name`, secondary
/// [`SLICE_SERVICE_INDEX`]).
pub fn new_endpoint_slices_table(db: &Db) -> Result<Table<EndpointSlice>, statedb::Error> {
    db.register_table(
        TableDef::new(
            ENDPOINT_SLICES_TABLE,
            Index::primary("key", |s: &EndpointSlice| object_key(&s.namespace, &s.name)),
        )
        .with_index(Index::non_unique(
            SLICE_SERVICE_INDEX,
            |s: &EndpointSlice| std::iter::once(s.service_name().key()).collect(),
        )),
    )
}

fn next_created() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    // Seeded from the wall clock so that objects created after a restart sort after the
    // restored ones.
    if SEQ.load(Ordering::Relaxed) == 0 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let _ = SEQ.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }
    SEQ.fetch_add(1, Ordering::Relaxed)
}

fn ipv4(f: &mut Fields, v: &Value, path: &str) -> Option<Ipv4Addr> {
    match v {
        Value::String(s) => match s.parse::<Ipv4Addr>() {
            Ok(ip) if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() => {
                f.error(path, format!("{s} cannot be a service address"));
                None
            }
            Ok(ip) => Some(ip),
            Err(_) => {
                f.error(path, format!("must be an IPv4 address, got {s:?}"));
                None
            }
        },
        other => {
            f.error(
                path,
                format!("must be an IPv4 address string, got {}", type_name(other)),
            );
            None
        }
    }
}

fn protocol(f: &mut Fields, v: Option<&Value>, path: &str) -> Option<L4Proto> {
    match f.string(v, path).as_deref() {
        None | Some("") => Some(L4Proto::Tcp),
        Some(s) => match L4Proto::parse(s) {
            Some(p) => Some(p),
            None => {
                f.error(path, format!("must be TCP, UDP or SCTP, got {s:?}"));
                None
            }
        },
    }
}

fn bool_field(f: &mut Fields, v: Option<&Value>, path: &str) -> Option<bool> {
    match v {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            f.error(
                path,
                format!("must be true or false, got {}", type_name(other)),
            );
            None
        }
    }
}

fn policy(f: &mut Fields, v: Option<&Value>, path: &str) -> bool {
    match f.string(v, path).as_deref() {
        None | Some("") | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            f.error(path, format!("must be Cluster or Local, got {other:?}"));
            false
        }
    }
}

/// Validate a Service document (fields only; conflicts with other services are checked by
/// [`ServiceKind`] against the committed claims and by the writer).
pub fn parse_service(doc: &Document) -> Result<ServiceObj, Vec<FieldError>> {
    let mut f = Fields::default();
    let labels = f.labels(Fields::get(doc.metadata(), "labels"), "metadata.labels");
    let spec = f.object(Fields::get(&doc.value, "spec"), "spec");
    let field = |k: &str| spec.and_then(|s| s.get(k)).filter(|v| !v.is_null());
    let service_type = match f.string(field("type"), "spec.type").as_deref() {
        None | Some("") | Some("ClusterIP") => ServiceType::ClusterIP,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        Some(other) => {
            f.error(
                "spec.type",
                format!("must be ClusterIP, NodePort, LoadBalancer or ExternalName, got {other:?}"),
            );
            ServiceType::ClusterIP
        }
    };
    let external = service_type == ServiceType::ExternalName;
    let external_name = f
        .string(field("externalName"), "spec.externalName")
        .unwrap_or_default();
    if external {
        // A DNS name, as Kubernetes validates it (a trailing dot is allowed).
        let name = external_name.strip_suffix('.').unwrap_or(&external_name);
        if external_name.is_empty() {
            f.error(
                "spec.externalName",
                "required for type ExternalName (the DNS name the service stands for)",
            );
        } else if let Err(r) = validate_dns_subdomain(name) {
            f.error("spec.externalName", r);
        }
        if field("clusterIP").is_some_and(|v| v.as_str() != Some("")) {
            f.error(
                "spec.clusterIP",
                "must be empty for type ExternalName (it has no cluster IP)",
            );
        }
    }
    let cluster_ip = match field("clusterIP") {
        _ if external => ClusterIpSpec::Auto,
        None => ClusterIpSpec::Auto,
        Some(Value::String(s)) if s.is_empty() => ClusterIpSpec::Auto,
        Some(Value::String(s)) if s == "None" => {
            if service_type != ServiceType::ClusterIP {
                f.error(
                    "spec.clusterIP",
                    format!(
                        "None (headless) needs type ClusterIP, got {}",
                        service_type.as_str()
                    ),
                );
            }
            ClusterIpSpec::Headless
        }
        Some(v) => match ipv4(&mut f, v, "spec.clusterIP") {
            Some(ip) if ip.is_loopback() => {
                f.error("spec.clusterIP", format!("{ip} is a loopback address"));
                ClusterIpSpec::Auto
            }
            Some(ip) => ClusterIpSpec::Address(ip),
            None => ClusterIpSpec::Auto,
        },
    };
    let raw_ports = f.list(field("ports"), "spec.ports");
    let ports_optional = cluster_ip == ClusterIpSpec::Headless || external;
    if raw_ports.is_empty() && !ports_optional && field("ports").is_some() {
        f.error("spec.ports", "needs at least one port");
    } else if field("ports").is_none() && !ports_optional {
        f.error("spec.ports", "required (at least one port)");
    }
    let mut ports = Vec::new();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut port_protos: BTreeMap<(u16, L4Proto), String> = BTreeMap::new();
    let mut node_ports: BTreeMap<(u16, L4Proto), String> = BTreeMap::new();
    for (i, p) in raw_ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        if !p.is_object() {
            f.error(&path, format!("must be an object, got {}", type_name(p)));
            continue;
        }
        let before = f.errors.len();
        let name = f
            .string(Fields::get(p, "name"), &format!("{path}.name"))
            .unwrap_or_default();
        if !name.is_empty()
            && let Err(r) = validate_port_name(&name)
        {
            f.error(format!("{path}.name"), r);
        }
        if name.is_empty() && raw_ports.len() > 1 {
            f.error(
                format!("{path}.name"),
                "required when the service has more than one port",
            );
        }
        if !name.is_empty()
            && let Some(first) = names.insert(name.clone(), path.clone())
        {
            f.error(
                format!("{path}.name"),
                format!("port name {name:?} is already used by {first}"),
            );
        }
        let port = match Fields::get(p, "port") {
            None => {
                f.error(format!("{path}.port"), "required");
                None
            }
            v => f.int(v, &format!("{path}.port"), 1, 65535),
        };
        let proto = protocol(
            &mut f,
            Fields::get(p, "protocol"),
            &format!("{path}.protocol"),
        );
        let target_port = match Fields::get(p, "targetPort") {
            None => port.map(|n| TargetPort::Number(n as u16)),
            Some(Value::String(s)) => match s.parse::<u16>() {
                Ok(n) if n > 0 => Some(TargetPort::Number(n)),
                _ => match validate_port_name(s) {
                    Ok(()) => Some(TargetPort::Name(s.clone())),
                    Err(r) => {
                        f.error(
                            format!("{path}.targetPort"),
                            format!("must be a port number or a port name: {r}"),
                        );
                        None
                    }
                },
            },
            v @ Some(Value::Number(_)) => f
                .int(v, &format!("{path}.targetPort"), 1, 65535)
                .map(|n| TargetPort::Number(n as u16)),
            Some(other) => {
                f.error(
                    format!("{path}.targetPort"),
                    format!(
                        "must be a port number or a port name, got {}",
                        type_name(other)
                    ),
                );
                None
            }
        };
        let node_port = match Fields::get(p, "nodePort") {
            None => None,
            Some(Value::Number(n)) if n.as_i64() == Some(0) => None,
            v => {
                let np = f.int(
                    v,
                    &format!("{path}.nodePort"),
                    i64::from(NODE_PORT_RANGE.0),
                    i64::from(NODE_PORT_RANGE.1),
                );
                if np.is_some() && !service_type.has_node_ports() {
                    f.error(
                        format!("{path}.nodePort"),
                        format!(
                            "only allowed for type NodePort or LoadBalancer, not {}",
                            service_type.as_str()
                        ),
                    );
                }
                np.map(|n| n as u16)
            }
        };
        if f.errors.len() != before {
            continue;
        }
        let (Some(port), Some(protocol), Some(target_port)) = (port, proto, target_port) else {
            continue;
        };
        let port = port as u16;
        if let Some(first) = port_protos.insert((port, protocol), path.clone()) {
            f.error(
                format!("{path}.port"),
                format!("port {port}/{protocol} is already used by {first}"),
            );
            continue;
        }
        if let Some(np) = node_port
            && let Some(first) = node_ports.insert((np, protocol), path.clone())
        {
            f.error(
                format!("{path}.nodePort"),
                format!("nodePort {np}/{protocol} is already used by {first}"),
            );
            continue;
        }
        ports.push(ServicePortSpec {
            name,
            port,
            target_port,
            node_port,
            protocol,
        });
    }
    let mut external_ips = Vec::new();
    for (i, v) in f
        .list(field("externalIPs"), "spec.externalIPs")
        .iter()
        .enumerate()
    {
        if let Some(ip) = ipv4(&mut f, v, &format!("spec.externalIPs[{i}]"))
            && !external_ips.contains(&ip)
        {
            external_ips.push(ip);
        }
    }
    let source_ranges = source_ranges(&mut f, doc, field("loadBalancerSourceRanges"), service_type);
    let source_ranges_deny = source_ranges_deny(&mut f, doc);
    let affinity = f.string(field("sessionAffinity"), "spec.sessionAffinity");
    let client_ip = match affinity.as_deref() {
        None | Some("") | Some("None") => false,
        Some("ClientIP") => true,
        Some(other) => {
            f.error(
                "spec.sessionAffinity",
                format!("must be None or ClientIP, got {other:?}"),
            );
            false
        }
    };
    let mut timeout = DEFAULT_AFFINITY_TIMEOUT_SECS;
    if let Some(cfg) = f.object(field("sessionAffinityConfig"), "spec.sessionAffinityConfig")
        && let Some(cip) = f.object(
            cfg.get("clientIP").filter(|v| !v.is_null()),
            "spec.sessionAffinityConfig.clientIP",
        )
    {
        let path = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
        if let Some(t) = f.int(cip.get("timeoutSeconds"), path, 1, 86400) {
            timeout = t as u32;
        }
        if !client_ip {
            f.error(
                "spec.sessionAffinityConfig",
                "only allowed with sessionAffinity: ClientIP",
            );
        }
    }
    let ext_traffic_local = policy(
        &mut f,
        field("externalTrafficPolicy"),
        "spec.externalTrafficPolicy",
    );
    let mut health_check_node_port = None;
    // 0 means "allocate one", as in Kubernetes.
    if field("healthCheckNodePort").is_some_and(|v| v.as_i64() != Some(0)) {
        let path = "spec.healthCheckNodePort";
        let (lo, hi) = NODE_PORT_RANGE;
        if let Some(p) = f.int(
            field("healthCheckNodePort"),
            path,
            i64::from(lo),
            i64::from(hi),
        ) {
            health_check_node_port = u16::try_from(p).ok();
        }
        if service_type != ServiceType::LoadBalancer || !ext_traffic_local {
            f.error(
                path,
                "only allowed for type LoadBalancer with externalTrafficPolicy: Local",
            );
        }
        if let Some(hc) = health_check_node_port
            && let Some(i) = ports.iter().position(|p| p.node_port == Some(hc))
        {
            f.error(
                path,
                format!("{hc} is already used by spec.ports[{i}].nodePort"),
            );
        }
    }
    let int_traffic_local = policy(
        &mut f,
        field("internalTrafficPolicy"),
        "spec.internalTrafficPolicy",
    );
    let publish_not_ready = bool_field(
        &mut f,
        field("publishNotReadyAddresses"),
        "spec.publishNotReadyAddresses",
    )
    .unwrap_or(false);
    let allocate_lb_node_ports = match field("allocateLoadBalancerNodePorts") {
        None => true,
        v => {
            let path = "spec.allocateLoadBalancerNodePorts";
            if service_type != ServiceType::LoadBalancer {
                f.error(path, "may only be given when spec.type is LoadBalancer");
            }
            bool_field(&mut f, v, path).unwrap_or(true)
        }
    };
    let mut selector = BTreeMap::new();
    if let Some(sel) = f.object(field("selector"), "spec.selector") {
        for (k, v) in sel {
            match v {
                Value::String(s) => {
                    selector.insert(k.clone(), s.clone());
                }
                other => f.error(
                    format!("spec.selector[{k}]"),
                    format!("must be a string, got {}", type_name(other)),
                ),
            }
        }
    }
    let mut lb_ingress_ips = Vec::new();
    let status = f.object(Fields::get(&doc.value, "status"), "status");
    let lb = f.object(
        status
            .and_then(|s| s.get("loadBalancer"))
            .filter(|v| !v.is_null()),
        "status.loadBalancer",
    );
    let ingress = f.list(
        lb.and_then(|l| l.get("ingress")),
        "status.loadBalancer.ingress",
    );
    for (i, ing) in ingress.iter().enumerate() {
        let path = format!("status.loadBalancer.ingress[{i}]");
        let Some(obj) = f.object(Some(ing), &path) else {
            continue;
        };
        // ipMode Proxy: the load balancer proxies to the nodes itself, so its address is not
        // a frontend here (clients on the node go through the load balancer too).
        let proxied = match f
            .string(
                obj.get("ipMode").filter(|v| !v.is_null()),
                &format!("{path}.ipMode"),
            )
            .as_deref()
        {
            None | Some("VIP") => false,
            Some("Proxy") => true,
            Some(other) => {
                f.error(
                    format!("{path}.ipMode"),
                    format!("must be VIP or Proxy, got {other:?}"),
                );
                false
            }
        };
        match obj.get("ip").filter(|v| !v.is_null()) {
            Some(v) => {
                if let Some(ip) = ipv4(&mut f, v, &format!("{path}.ip"))
                    && !proxied
                    && !lb_ingress_ips.contains(&ip)
                {
                    lb_ingress_ips.push(ip);
                }
            }
            None if obj.contains_key("hostname") => {}
            None => f.error(format!("{path}.ip"), "required"),
        }
    }
    if !f.errors.is_empty() {
        return Err(f.errors);
    }
    Ok(ServiceObj {
        namespace: doc.namespace.clone().unwrap_or_default(),
        name: doc.name.clone(),
        labels,
        service_type,
        external_name: if external {
            external_name
        } else {
            String::new()
        },
        cluster_ip,
        ports,
        external_ips,
        lb_ingress_ips,
        affinity_timeout_secs: if client_ip { timeout } else { 0 },
        source_ranges,
        source_ranges_deny,
        ext_traffic_local,
        health_check_node_port,
        int_traffic_local,
        publish_not_ready,
        allocate_lb_node_ports,
        selector,
        created: next_created(),
    })
}

/// The annotation giving source ranges when `spec.loadBalancerSourceRanges` is empty.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// The annotation choosing what the source ranges are: `allow` (the default, the only
/// clients admitted) or `deny` (the clients refused), as in Cilium.
pub const SOURCE_RANGES_POLICY_ANNOTATION: &str = "service.cilium.io/src-ranges-policy";

/// [`SOURCE_RANGES_POLICY_ANNOTATION`]: true for `deny`; anything but `allow`, `deny` or
/// empty is an error naming the annotation.
fn source_ranges_deny(f: &mut Fields, doc: &Document) -> bool {
    let annotations = Fields::get(doc.metadata(), "annotations");
    let path = format!("metadata.annotations[{SOURCE_RANGES_POLICY_ANNOTATION}]");
    match annotations.and_then(|a| a.get(SOURCE_RANGES_POLICY_ANNOTATION)) {
        None => false,
        Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "" | "allow" => false,
            "deny" => true,
            _ => {
                f.error(path, format!("must be \"allow\" or \"deny\", got {s:?}"));
                false
            }
        },
        Some(other) => {
            f.error(
                path,
                format!(
                    "must be the string \"allow\" or \"deny\", got {}",
                    type_name(other)
                ),
            );
            false
        }
    }
}

/// `spec.loadBalancerSourceRanges` (a list of CIDRs), else the comma-separated annotation,
/// as Kubernetes reads them: spaces trimmed, host bits allowed (and cleared). Only for
/// type LoadBalancer.
fn source_ranges(
    f: &mut Fields,
    doc: &Document,
    spec_field: Option<&Value>,
    service_type: ServiceType,
) -> Vec<Ipv4Net> {
    let mut raw: Vec<(String, String)> = Vec::new();
    for (i, v) in f
        .list(spec_field, "spec.loadBalancerSourceRanges")
        .iter()
        .enumerate()
    {
        let path = format!("spec.loadBalancerSourceRanges[{i}]");
        match v {
            Value::String(s) => raw.push((path, s.clone())),
            other => f.error(
                path,
                format!("must be a CIDR string, got {}", type_name(other)),
            ),
        }
    }
    if raw.is_empty() {
        let annotations = Fields::get(doc.metadata(), "annotations");
        if let Some(Value::String(s)) = annotations.and_then(|a| a.get(SOURCE_RANGES_ANNOTATION)) {
            let path = format!("metadata.annotations[{SOURCE_RANGES_ANNOTATION}]");
            raw.extend(
                s.split(',')
                    .filter(|p| !p.trim().is_empty())
                    .map(|p| (path.clone(), p.to_string())),
            );
        }
    }
    if raw.is_empty() {
        return Vec::new();
    }
    if service_type != ServiceType::LoadBalancer {
        f.error(
            &raw[0].0,
            "source ranges may only be given when spec.type is LoadBalancer",
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    for (path, s) in raw {
        let t = s.trim();
        match t.parse::<Ipv4Net>() {
            Ok(net) => out.push(net.trunc()),
            Err(_) if t.contains(':') => f.error(
                path,
                format!("{t:?}: IPv6 ranges are not supported (services are IPv4 only)"),
            ),
            Err(_) => f.error(
                path,
                format!("must be an IPv4 CIDR like 192.0.2.0/24, got {t:?}"),
            ),
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Validate an EndpointSlice document.
pub fn parse_endpoint_slice(doc: &Document) -> Result<EndpointSlice, Vec<FieldError>> {
    let mut f = Fields::default();
    let namespace = doc.namespace.clone().unwrap_or_default();
    let labels = f.labels(Fields::get(doc.metadata(), "labels"), "metadata.labels");
    let label_path = format!("metadata.labels[{SERVICE_NAME_LABEL}]");
    let service = match labels.get(SERVICE_NAME_LABEL) {
        Some(s) if !s.is_empty() => {
            if let Err(r) = validate_dns_subdomain(s) {
                f.error(&label_path, r);
            }
            s.clone()
        }
        _ => {
            if !f.errors.iter().any(|e| e.field == label_path) {
                f.error(
                    &label_path,
                    "required: the name of the Service this slice belongs to",
                );
            }
            String::new()
        }
    };
    match f
        .string(Fields::get(&doc.value, "addressType"), "addressType")
        .as_deref()
    {
        None | Some("IPv4") => {}
        Some(other) => f.error(
            "addressType",
            format!("only IPv4 is supported, got {other:?}"),
        ),
    }
    let mut endpoints = Vec::new();
    for (i, e) in f
        .list(Fields::get(&doc.value, "endpoints"), "endpoints")
        .iter()
        .enumerate()
    {
        let path = format!("endpoints[{i}]");
        if !e.is_object() {
            f.error(&path, format!("must be an object, got {}", type_name(e)));
            continue;
        }
        let mut addresses = Vec::new();
        let addrs = f.list(Fields::get(e, "addresses"), &format!("{path}.addresses"));
        if addrs.is_empty() {
            f.error(format!("{path}.addresses"), "needs at least one address");
        }
        for (j, a) in addrs.iter().enumerate() {
            let apath = format!("{path}.addresses[{j}]");
            match a {
                Value::String(s) => match s.parse::<Ipv4Addr>() {
                    Ok(ip) if !ip.is_unspecified() && !ip.is_broadcast() && !ip.is_multicast() => {
                        if !addresses.contains(&ip) {
                            addresses.push(ip);
                        }
                    }
                    Ok(ip) => f.error(&apath, format!("{ip} cannot be a backend address")),
                    Err(_) => f.error(&apath, format!("must be an IPv4 address, got {s:?}")),
                },
                other => f.error(
                    &apath,
                    format!("must be an IPv4 address string, got {}", type_name(other)),
                ),
            }
        }
        let cpath = format!("{path}.conditions");
        let cond = f.object(Fields::get(e, "conditions"), &cpath);
        let c = |k: &str| cond.and_then(|c| c.get(k)).filter(|v| !v.is_null());
        let ready = bool_field(&mut f, c("ready"), &format!("{cpath}.ready"));
        let serving = bool_field(&mut f, c("serving"), &format!("{cpath}.serving"));
        let terminating = bool_field(&mut f, c("terminating"), &format!("{cpath}.terminating"));
        let node_name = f
            .string(Fields::get(e, "nodeName"), &format!("{path}.nodeName"))
            .unwrap_or_default();
        let rpath = format!("{path}.targetRef");
        let target_ref = f.object(Fields::get(e, "targetRef"), &rpath).map(|r| {
            let s = |k: &str| {
                r.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let kind = s("kind");
            let ns = s("namespace");
            TargetRef {
                kind: if kind.is_empty() { "Pod".into() } else { kind },
                namespace: if ns.is_empty() { namespace.clone() } else { ns },
                name: s("name"),
            }
        });
        if let Some(r) = &target_ref
            && r.name.is_empty()
        {
            f.error(format!("{rpath}.name"), "required");
        }
        let ready = ready.unwrap_or(true);
        endpoints.push(SliceEndpoint {
            addresses,
            ready,
            serving: serving.unwrap_or(ready),
            terminating: terminating.unwrap_or(false),
            node_name,
            target_ref,
        });
    }
    let mut ports = Vec::new();
    let mut seen: BTreeSet<(String, L4Proto)> = BTreeSet::new();
    for (i, p) in f
        .list(Fields::get(&doc.value, "ports"), "ports")
        .iter()
        .enumerate()
    {
        let path = format!("ports[{i}]");
        if !p.is_object() {
            f.error(&path, format!("must be an object, got {}", type_name(p)));
            continue;
        }
        let name = f
            .string(Fields::get(p, "name"), &format!("{path}.name"))
            .unwrap_or_default();
        if !name.is_empty()
            && let Err(r) = validate_port_name(&name)
        {
            f.error(format!("{path}.name"), r);
        }
        let port = match Fields::get(p, "port") {
            None => {
                f.error(format!("{path}.port"), "required");
                None
            }
            v => f.int(v, &format!("{path}.port"), 1, 65535),
        };
        let proto = protocol(
            &mut f,
            Fields::get(p, "protocol"),
            &format!("{path}.protocol"),
        );
        if let (Some(port), Some(protocol)) = (port, proto) {
            if !seen.insert((name.clone(), protocol)) {
                f.error(
                    format!("{path}.name"),
                    format!("port name {name:?}/{protocol} appears twice"),
                );
                continue;
            }
            ports.push(SlicePort {
                name,
                port: port as u16,
                protocol,
            });
        }
    }
    if !f.errors.is_empty() {
        return Err(f.errors);
    }
    Ok(EndpointSlice {
        namespace,
        name: doc.name.clone(),
        service,
        labels,
        endpoints,
        ports,
    })
}

/// The `Service` kind.
#[derive(Debug, Clone)]
pub struct ServiceKind {
    /// Its table.
    pub table: Table<ServiceObj>,
    /// What committed services hold, to reject conflicting requests at apply time.
    pub claims: Arc<Claims>,
    /// `--k8s-service-proxy-name`: services this agent leaves alone claim nothing.
    pub proxy_name: String,
}

impl ResourceKind for ServiceKind {
    type Object = ServiceObj;

    fn kind(&self) -> &'static str {
        "Service"
    }
    fn api_versions(&self) -> &'static [&'static str] {
        &["v1"]
    }
    fn names(&self) -> &'static [&'static str] {
        &["service", "services", "svc"]
    }
    fn namespaced(&self) -> bool {
        true
    }
    fn table(&self) -> &Table<ServiceObj> {
        &self.table
    }
    fn key(&self, id: &ObjectId) -> Key {
        object_key(&id.namespace, &id.name)
    }
    fn id_of(&self, obj: &ServiceObj) -> ObjectId {
        ObjectId {
            namespace: obj.namespace.clone(),
            name: obj.name.clone(),
        }
    }
    fn parse(&self, doc: &Document) -> Result<ServiceObj, Vec<FieldError>> {
        let svc = parse_service(doc)?;
        if svc.ignored(&self.proxy_name).is_some() {
            return Ok(svc);
        }
        let errors = conflicts(&svc, &self.claims);
        if errors.is_empty() {
            Ok(svc)
        } else {
            Err(errors)
        }
    }
    fn carry_over(&self, mut new: ServiceObj, old: &ServiceObj) -> ServiceObj {
        new.created = old.created;
        new
    }
}

/// Requests of `svc` that committed services of another name already hold.
pub fn conflicts(svc: &ServiceObj, claims: &Claims) -> Vec<FieldError> {
    let me = svc.service_name();
    let mut errors = Vec::new();
    for (i, p) in svc.ports.iter().enumerate() {
        if let ClusterIpSpec::Address(ip) = svc.cluster_ip {
            let a = L3n4Addr::new(ip, p.port, p.protocol);
            if let Some(owner) = claims.frontend_owner(&a).filter(|o| *o != me) {
                errors.push(FieldError::new(
                    "spec.clusterIP",
                    format!("{a} is already used by service {owner}"),
                ));
            }
        }
        for (j, ip) in svc.external_ips.iter().enumerate() {
            let a = L3n4Addr::new(*ip, p.port, p.protocol);
            if let Some(owner) = claims.frontend_owner(&a).filter(|o| *o != me) {
                errors.push(FieldError::new(
                    format!("spec.externalIPs[{j}]"),
                    format!("{a} is already used by service {owner}"),
                ));
            }
        }
        if let Some(np) = p.node_port
            && let Some(owner) = claims.node_port_owner(np, p.protocol).filter(|o| *o != me)
        {
            errors.push(FieldError::new(
                format!("spec.ports[{i}].nodePort"),
                format!(
                    "nodePort {np}/{} is already used by service {owner}",
                    p.protocol
                ),
            ));
        }
    }
    if let Some(hc) = svc.health_check_node_port
        && let Some(owner) = claims
            .node_port_owner(hc, L4Proto::Tcp)
            .filter(|o| *o != me)
    {
        errors.push(FieldError::new(
            "spec.healthCheckNodePort",
            format!("{hc}/TCP is already used by service {owner}"),
        ));
    }
    errors
}

/// The `EndpointSlice` kind.
#[derive(Debug, Clone)]
pub struct EndpointSliceKind {
    /// Its table.
    pub table: Table<EndpointSlice>,
}

impl ResourceKind for EndpointSliceKind {
    type Object = EndpointSlice;

    fn kind(&self) -> &'static str {
        "EndpointSlice"
    }
    fn api_versions(&self) -> &'static [&'static str] {
        &["discovery.k8s.io/v1"]
    }
    fn names(&self) -> &'static [&'static str] {
        &["endpointslice", "endpointslices", "eps"]
    }
    fn namespaced(&self) -> bool {
        true
    }
    fn table(&self) -> &Table<EndpointSlice> {
        &self.table
    }
    fn key(&self, id: &ObjectId) -> Key {
        object_key(&id.namespace, &id.name)
    }
    fn id_of(&self, obj: &EndpointSlice) -> ObjectId {
        ObjectId {
            namespace: obj.namespace.clone(),
            name: obj.name.clone(),
        }
    }
    fn parse(&self, doc: &Document) -> Result<EndpointSlice, Vec<FieldError>> {
        parse_endpoint_slice(doc)
    }
}
