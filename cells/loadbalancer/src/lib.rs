//! cilium-loadbalancer: the service load-balancing control plane.
//!
//! It owns the kinds `Service` (v1) and `EndpointSlice` (discovery.k8s.io/v1), registered
//! with the resources registry (tables `k8s-services` and `endpointslices`, so
//! `ciliumctl apply/delete/get service|endpointslice` work all or nothing), and the tables
//! `services`, `frontends` and `backends`, written only by the [`Writer`]: it recomputes
//! the services affected by a change in one write transaction, so a frontend always
//! carries its final backend selection (traffic policy Local, terminating fallback,
//! publishNotReadyAddresses, named target ports resolved per slice or per pod). The lbmap
//! cell reconciles `Arc<Table<Frontend>>` into the BPF maps.
//!
//! Service ids (reverse-NAT index, one per frontend) and backend ids are stable across
//! restarts: they, the allocated cluster IPs (`--service-cidr`) and node ports
//! (30000-32767) are kept in `<state-dir>/lb.json`, written before the tables commit.
//! A service that asks for a frontend or node port another service holds gets no
//! frontends and an error naming the holder (apply rejects it at once when the holder is
//! already committed). `spec.selector` is stored but standalone mode does not derive
//! EndpointSlices from selectors: apply the slices.
//!
//! Flags: `--enable-lb` (default true; `Arc<LbConfig>` for lbmap) and `--service-cidr`.
//! Route: `GET /v1/services`.

pub mod api;
mod claims;
mod error;
pub mod healthcheck;
mod kinds;
mod model;
mod node_healthz;
mod plan;
mod writer;

use std::net::Ipv4Addr;
use std::sync::Arc;

use cilium_api::routes::ApiRoutes;
use cilium_ipam::IpamEntry;
use cilium_node::Node;
use cilium_resources::{Pod, Resources};
use hive::{BoxCell, Config, Health, HealthView, Invoke, Job, JobGroup, Module, Provide};
use ipnet::Ipv4Net;
use serde::Serialize;
use statedb::{Db, Table};

pub use claims::Claims;
pub use error::LbError;
pub use kinds::{
    ClusterIpSpec, DEFAULT_AFFINITY_TIMEOUT_SECS, ENDPOINT_SLICES_TABLE, EndpointSlice,
    EndpointSliceKind, NODE_PORT_RANGE, SERVICE_NAME_LABEL, SERVICE_OBJECTS_TABLE,
    SLICE_SERVICE_INDEX, SOURCE_RANGES_ANNOTATION, SOURCE_RANGES_POLICY_ANNOTATION, ServiceKind,
    ServiceObj, ServicePortSpec, SliceEndpoint, SlicePort, TargetRef, conflicts,
    new_endpoint_slices_table, new_service_objects_table, object_key, parse_endpoint_slice,
    parse_service, service_object_query, slices_of,
};
pub use model::{
    BACKENDS_TABLE, Backend, BackendCondition, BackendInstance, BackendState,
    FRONTEND_SERVICE_INDEX, FRONTENDS_TABLE, Frontend, FrontendBackend, FrontendKind, L3n4Addr,
    L4Proto, ResolvedPort, SERVICES_TABLE, Service, ServiceName, ServiceType, TargetPort, addr_key,
    backend_query, frontend_query, frontends_of, new_backends_table, new_frontends_table,
    new_services_table, service_query,
};
pub use plan::{
    NodeInfo, Plan, PlannedBackend, PlannedFrontend, backend_port, condition, plan_service, select,
};
pub use writer::{SyncStats, Writer, WriterParams};

/// Name of the state file inside `--state-dir`.
pub const STATE_FILE: &str = "lb.json";
/// Default `--service-cidr`.
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/16";

/// Flags of the loadbalancer cell, injected as `Arc<LbConfig>`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct LbConfig {
    /// Load-balance services in BPF. With false the Service and EndpointSlice objects are
    /// still stored and the tables written, but lbmap writes no BPF entries and attaches
    /// no socket programs (the kube-proxy baseline).
    #[arg(long = "enable-lb", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_lb: bool,
    /// Range cluster IPs are allocated from when a Service gives none.
    #[arg(long = "service-cidr", default_value = DEFAULT_SERVICE_CIDR)]
    pub service_cidr: Ipv4Net,
    /// Address and port of the node's kube-proxy health endpoint (`GET /healthz`, probed by
    /// cloud load balancers; kube-proxy's is 0.0.0.0:10256); empty to disable. Not served
    /// with --enable-lb=false, where kube-proxy serves it.
    #[arg(
        long = "kube-proxy-replacement-healthz-bind-address",
        default_value = ""
    )]
    pub kpr_healthz_bind_address: String,
    /// Handle only the services labelled `service.kubernetes.io/service-proxy-name` with this
    /// value. Empty (the default): every service without that label, as kube-proxy.
    #[arg(long = "k8s-service-proxy-name", default_value = "")]
    pub service_proxy_name: String,
}

impl Default for LbConfig {
    fn default() -> Self {
        Self {
            enable_lb: true,
            service_cidr: Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 16).unwrap_or_default(),
            kpr_healthz_bind_address: String::new(),
            service_proxy_name: String::new(),
        }
    }
}

/// The node addresses NodePort frontends are created on, injected as
/// `Arc<NodeAddresses>`: the addresses of `--devices`, else `--node-ip`, else every
/// non-loopback IPv4 address of the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeAddresses(pub Vec<Ipv4Addr>);

impl NodeAddresses {
    /// Resolve the node addresses for `node` (reads the host's interfaces).
    pub fn detect(node: &Node) -> Self {
        let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
            return Self(node.ip.into_iter().collect());
        };
        let all: Vec<(String, Ipv4Addr)> = addrs
            .filter_map(|a| {
                let ip = a
                    .address
                    .and_then(|s| s.as_sockaddr_in().map(|sin| sin.ip()))?;
                Some((a.interface_name, ip))
            })
            .filter(|(_, ip)| !ip.is_loopback() && !ip.is_unspecified())
            .collect();
        let mut out: Vec<Ipv4Addr> = if !node.devices.is_empty() {
            all.iter()
                .filter(|(dev, _)| node.devices.contains(dev))
                .map(|(_, ip)| *ip)
                .collect()
        } else if let Some(ip) = node.ip {
            vec![ip]
        } else {
            all.iter().map(|(_, ip)| *ip).collect()
        };
        if out.is_empty()
            && let Some(ip) = node.ip
        {
            out.push(ip);
        }
        out.sort_unstable();
        out.dedup();
        Self(out)
    }
}

fn register_service_kind(
    db: Arc<Db>,
    cfg: Arc<LbConfig>,
    resources: Arc<Resources>,
    claims: Arc<Claims>,
) -> hive::anyhow::Result<Table<ServiceObj>> {
    let table = new_service_objects_table(&db)?;
    resources
        .register(ServiceKind {
            table: table.clone(),
            claims,
            proxy_name: cfg.service_proxy_name.clone(),
        })
        .map_err(|e| LbError::Register {
            kind: "Service",
            reason: e.to_string(),
        })?;
    Ok(table)
}

fn register_slice_kind(
    db: Arc<Db>,
    resources: Arc<Resources>,
) -> hive::anyhow::Result<Table<EndpointSlice>> {
    let table = new_endpoint_slices_table(&db)?;
    resources
        .register(EndpointSliceKind {
            table: table.clone(),
        })
        .map_err(|e| LbError::Register {
            kind: "EndpointSlice",
            reason: e.to_string(),
        })?;
    Ok(table)
}

#[expect(
    clippy::too_many_arguments,
    reason = "a hive constructor takes its dependencies as arguments"
)]
fn new_writer(
    db: Arc<Db>,
    cfg: Arc<LbConfig>,
    node: Arc<Node>,
    addrs: Arc<NodeAddresses>,
    service_objects: Arc<Table<ServiceObj>>,
    slices: Arc<Table<EndpointSlice>>,
    pods: Arc<Table<Pod>>,
    ipam: Arc<Table<IpamEntry>>,
    claims: Arc<Claims>,
    health: Health,
) -> hive::anyhow::Result<Writer> {
    Ok(Writer::new(WriterParams {
        db: (*db).clone(),
        node: NodeInfo {
            name: node.name.clone(),
            addresses: addrs.0.clone(),
        },
        service_cidr: cfg.service_cidr,
        proxy_name: cfg.service_proxy_name.clone(),
        state: node.state_file(STATE_FILE),
        service_objects: (*service_objects).clone(),
        slices: (*slices).clone(),
        pods: Some((*pods).clone()),
        ipam: Some((*ipam).clone()),
        services: new_services_table(&db)?,
        frontends: new_frontends_table(&db)?,
        backends: new_backends_table(&db)?,
        claims,
        health: Some(health),
    })?)
}

/// The loadbalancer cell: `Arc<LbConfig>`, `Arc<NodeAddresses>`, `Arc<Claims>`, the
/// Service and EndpointSlice kinds (`Arc<Table<ServiceObj>>`, `Arc<Table<EndpointSlice>>`),
/// the `Arc<Writer>` (which registers the `services`, `frontends` and `backends` tables)
/// with its job, `Arc<Table<Service>>`, `Arc<Table<Frontend>>`, `Arc<Table<Backend>>`, and
/// `GET /v1/services`.
pub fn cell() -> BoxCell {
    Module::new(
        "loadbalancer",
        "services and endpoint slices into frontends and backends",
        vec![
            Config::<LbConfig>::new(),
            Provide::new(|node: Arc<Node>| Ok(NodeAddresses::detect(&node))),
            Provide::new(|| Ok(Claims::default())),
            Provide::new(register_service_kind),
            Provide::new(register_slice_kind),
            Provide::new(new_writer),
            Provide::new(|w: Arc<Writer>| Ok(w.services().clone())),
            Provide::new(|w: Arc<Writer>| Ok(w.frontends().clone())),
            Provide::new(|w: Arc<Writer>| Ok(w.backends().clone())),
            Invoke::new(
                |routes: Arc<ApiRoutes>,
                 writer: Arc<Writer>,
                 resources: Arc<Resources>,
                 cfg: Arc<LbConfig>,
                 view: Arc<HealthView>,
                 jobs: JobGroup| {
                    routes.add(api::router(writer.clone()));
                    resources.add_sync_waiter(
                        "the load-balancer writer",
                        cilium_resources::RANK_TABLES,
                        writer.sync_waiter(),
                    );
                    let w = writer.clone();
                    jobs.add(Job::one_shot("lb-writer", move |cancel, _health| {
                        w.clone().run(cancel)
                    }));
                    // With --enable-lb=false kube-proxy serves the health checks itself.
                    if cfg.enable_lb && !cfg.kpr_healthz_bind_address.is_empty() {
                        let addr = cfg.kpr_healthz_bind_address.clone();
                        let w = writer.clone();
                        jobs.add(Job::one_shot("lb-node-healthz", move |cancel, health| {
                            node_healthz::run(addr.clone(), w.clone(), view.clone(), cancel, health)
                        }));
                    }
                    if cfg.enable_lb {
                        jobs.add(Job::one_shot(
                            "lb-health-check-ports",
                            move |cancel, health| healthcheck::run(writer.clone(), cancel, health),
                        ));
                    }
                    Ok(())
                },
            ),
        ],
    )
}

#[cfg(test)]
mod tests;
