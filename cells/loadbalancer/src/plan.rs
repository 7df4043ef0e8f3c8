//! The pure part of the writer: from one Service, its EndpointSlices and the node, the
//! frontends with their final backend selection.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::kinds::{ClusterIpSpec, EndpointSlice, ServiceObj, SliceEndpoint, TargetRef};
use crate::model::{
    BackendCondition, BackendState, FrontendKind, L3n4Addr, L4Proto, ResolvedPort, TargetPort,
};

/// What the writer knows about this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name (`endpoints[].nodeName` equal to it means local).
    pub name: String,
    /// The node addresses NodePort frontends are created on.
    pub addresses: Vec<Ipv4Addr>,
}

/// A backend of the service with its condition, before selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBackend {
    /// `address:port/protocol` (the port resolved for the service port).
    pub addr: L3n4Addr,
    /// The service port name it serves.
    pub port_name: String,
    /// Its condition.
    pub condition: BackendCondition,
    /// `nodeName`.
    pub node_name: String,
    /// `namespace/name` of the target pod, or empty.
    pub pod: String,
    /// On this node (by node name or local endpoint address).
    pub local: bool,
}

/// A frontend with its final selection (ids are assigned by the writer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFrontend {
    /// `address:port/protocol`.
    pub addr: L3n4Addr,
    /// Kind.
    pub kind: FrontendKind,
    /// Service port name.
    pub port_name: String,
    /// Selected backends, sorted by address.
    pub backends: Vec<(L3n4Addr, BackendState)>,
    /// Clients on this node, when they get other backends than `backends`: the cluster-wide
    /// selection of an external frontend under `externalTrafficPolicy: Local` (kube-proxy
    /// sends pods and the node's own processes there to every endpoint).
    pub internal_backends: Option<Vec<(L3n4Addr, BackendState)>>,
}

/// The plan of one service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Frontends, in port order then kind order.
    pub frontends: Vec<PlannedFrontend>,
    /// Every backend of every port, whatever its condition.
    pub backends: Vec<PlannedBackend>,
}

/// The condition of an endpoint: active when ready, terminating when terminating and
/// serving, otherwise not ready; every endpoint is active with publishNotReadyAddresses.
pub fn condition(ep: &SliceEndpoint, publish_not_ready: bool) -> BackendCondition {
    if publish_not_ready || (ep.ready && !ep.terminating) {
        BackendCondition::Active
    } else if ep.terminating && ep.serving {
        BackendCondition::Terminating
    } else {
        BackendCondition::NotReady
    }
}

/// The backend port for service port `sp` of an endpoint in `slice`:
/// 1. the slice port named like the service port (what Kubernetes' controller writes);
/// 2. for a named targetPort, the slice port of that name, else the target pod's named
///    container port (`named_port`);
/// 3. for a numeric targetPort, that number when the slice lists no ports, or the slice's
///    only port of the protocol when the service has a single port.
pub fn backend_port(
    sp: &ResolvedPort,
    single_port_service: bool,
    slice: &EndpointSlice,
    ep: &SliceEndpoint,
    named_port: &mut dyn FnMut(&TargetRef, &str, L4Proto) -> Option<u16>,
) -> Option<u16> {
    let by_name = |n: &str| {
        slice
            .ports
            .iter()
            .find(|p| p.name == n && p.protocol == sp.protocol)
            .map(|p| p.port)
    };
    if let Some(p) = by_name(&sp.name) {
        return Some(p);
    }
    match &sp.target_port {
        TargetPort::Name(n) => by_name(n).or_else(|| {
            ep.target_ref
                .as_ref()
                .filter(|r| r.kind == "Pod")
                .and_then(|r| named_port(r, n, sp.protocol))
        }),
        TargetPort::Number(n) => {
            if slice.ports.is_empty() {
                return Some(*n);
            }
            let mut same_proto = slice.ports.iter().filter(|p| p.protocol == sp.protocol);
            match (single_port_service, same_proto.next(), same_proto.next()) {
                (true, Some(p), None) => Some(p.port),
                _ => None,
            }
        }
    }
}

/// Keep only what a frontend may use: traffic policy Local keeps local backends; not-ready
/// backends never count; the active ones are used, or the terminating ones when none is
/// active.
pub fn select(candidates: &[&PlannedBackend], local_only: bool) -> Vec<(L3n4Addr, BackendState)> {
    let usable = || {
        candidates
            .iter()
            .filter(move |b| !local_only || b.local)
            .filter(|b| b.condition != BackendCondition::NotReady)
    };
    let state = if usable().any(|b| b.condition == BackendCondition::Active) {
        BackendState::Active
    } else {
        BackendState::Terminating
    };
    let want = match state {
        BackendState::Active => BackendCondition::Active,
        BackendState::Terminating => BackendCondition::Terminating,
    };
    let mut out: Vec<(L3n4Addr, BackendState)> = usable()
        .filter(|b| b.condition == want)
        .map(|b| (b.addr, state))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Plan the frontends of `svc` with cluster IP `cluster_ip` (None when headless) and ports
/// `ports` (node ports filled in), from its slices.
pub fn plan_service(
    svc: &ServiceObj,
    cluster_ip: Option<Ipv4Addr>,
    ports: &[ResolvedPort],
    slices: &[Arc<EndpointSlice>],
    node: &NodeInfo,
    named_port: &mut dyn FnMut(&TargetRef, &str, L4Proto) -> Option<u16>,
    is_local_ip: &dyn Fn(Ipv4Addr) -> bool,
) -> Plan {
    let mut plan = Plan::default();
    if svc.cluster_ip == ClusterIpSpec::Headless {
        return plan;
    }
    let single = ports.len() == 1;
    for sp in ports {
        // Backends of this port; the best condition wins when an address appears twice.
        let mut by_addr: HashMap<L3n4Addr, PlannedBackend> = HashMap::new();
        for slice in slices {
            for ep in &slice.endpoints {
                let Some(port) = backend_port(sp, single, slice, ep, named_port) else {
                    continue;
                };
                let cond = condition(ep, svc.publish_not_ready);
                let pod = ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind == "Pod")
                    .map(|r| format!("{}/{}", r.namespace, r.name))
                    .unwrap_or_default();
                for a in &ep.addresses {
                    let addr = L3n4Addr::new(*a, port, sp.protocol);
                    let local =
                        (!ep.node_name.is_empty() && ep.node_name == node.name) || is_local_ip(*a);
                    let b = PlannedBackend {
                        addr,
                        port_name: sp.name.clone(),
                        condition: cond,
                        node_name: ep.node_name.clone(),
                        pod: pod.clone(),
                        local,
                    };
                    match by_addr.get(&addr) {
                        Some(old) if old.condition <= cond => {}
                        _ => {
                            by_addr.insert(addr, b);
                        }
                    }
                }
            }
        }
        let mut cands: Vec<PlannedBackend> = by_addr.into_values().collect();
        cands.sort_by_key(|b| b.addr);
        let refs: Vec<&PlannedBackend> = cands.iter().collect();
        let mut fronts: Vec<(L3n4Addr, FrontendKind)> = Vec::new();
        if let Some(ip) = cluster_ip {
            fronts.push((
                L3n4Addr::new(ip, sp.port, sp.protocol),
                FrontendKind::ClusterIp,
            ));
        }
        for ip in &svc.external_ips {
            fronts.push((
                L3n4Addr::new(*ip, sp.port, sp.protocol),
                FrontendKind::ExternalIp,
            ));
        }
        if svc.service_type.has_node_ports() && sp.node_port != 0 {
            for ip in &node.addresses {
                fronts.push((
                    L3n4Addr::new(*ip, sp.node_port, sp.protocol),
                    FrontendKind::NodePort,
                ));
            }
        }
        if svc.service_type == crate::model::ServiceType::LoadBalancer {
            for ip in &svc.lb_ingress_ips {
                fronts.push((
                    L3n4Addr::new(*ip, sp.port, sp.protocol),
                    FrontendKind::LoadBalancer,
                ));
            }
        }
        for (addr, kind) in fronts {
            if plan.frontends.iter().any(|f| f.addr == addr) {
                continue;
            }
            let external_local = kind.is_external() && svc.ext_traffic_local;
            let local_only = if kind.is_external() {
                svc.ext_traffic_local
            } else {
                svc.int_traffic_local
            };
            let backends = select(&refs, local_only);
            let internal_backends = external_local
                .then(|| select(&refs, false))
                .filter(|all| *all != backends);
            plan.frontends.push(PlannedFrontend {
                addr,
                kind,
                port_name: sp.name.clone(),
                backends,
                internal_backends,
            });
        }
        plan.backends.extend(cands);
    }
    plan
}
