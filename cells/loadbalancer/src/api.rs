//! The route `GET /v1/services`: every service with its frontends and backends.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use cilium_api::ApiError;
use cilium_api::models::{
    FrontendBackendInfo, FrontendInfo, ServiceBackendInfo, ServiceInfo, ServicePortInfo,
};
use statedb::reconciler::StatusKind;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::model::{Backend, Frontend, Service, frontends_of};
use crate::writer::Writer;

/// The router with its state applied.
pub(crate) fn router(writer: Arc<Writer>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list_services))
        .with_state(writer)
}

fn backend_infos(set: &[crate::model::FrontendBackend]) -> Vec<FrontendBackendInfo> {
    set.iter()
        .map(|b| FrontendBackendInfo {
            id: b.id,
            address: b.address.to_string(),
            port: b.port,
            state: b.state.as_str().to_string(),
        })
        .collect()
}

pub(crate) fn frontend_info(f: &Frontend) -> FrontendInfo {
    FrontendInfo {
        address: f.address.to_string(),
        port: f.port,
        protocol: f.protocol.to_string(),
        kind: f.kind.as_str().to_string(),
        service_id: f.service_id,
        port_name: f.port_name.clone(),
        backends: backend_infos(&f.backends),
        internal_backends: f.internal_backends.as_deref().map(backend_infos),
        source_ranges: f.source_ranges.iter().map(|n| n.to_string()).collect(),
        source_ranges_policy: ranges_policy(&f.source_ranges, f.source_ranges_deny),
        status: match (&f.status.kind, &f.status.error) {
            (StatusKind::Error, Some(e)) => format!("error: {e}"),
            (StatusKind::Pending, _) => "pending".into(),
            (StatusKind::Done, _) => "done".into(),
            (StatusKind::Error, None) => "error".into(),
        },
    }
}

/// The API view of a service row with its frontends and backends.
pub fn service_info(
    svc: &Service,
    frontends: &[Arc<Frontend>],
    backends: &[Arc<Backend>],
) -> ServiceInfo {
    let mut bs = Vec::new();
    for b in backends {
        for i in b.instances.iter().filter(|i| i.service == svc.name) {
            bs.push(ServiceBackendInfo {
                id: b.id,
                address: b.address.to_string(),
                port: b.port,
                protocol: b.protocol.to_string(),
                port_name: i.port_name.clone(),
                condition: i.condition.as_str().to_string(),
                node_name: b.node_name.clone(),
                pod: b.pod.clone(),
            });
        }
    }
    let policy = |local: bool| if local { "Local" } else { "Cluster" }.to_string();
    ServiceInfo {
        namespace: svc.name.namespace.clone(),
        name: svc.name.name.clone(),
        service_type: svc.service_type.as_str().to_string(),
        cluster_ip: svc
            .cluster_ip
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "None".into()),
        ports: svc
            .ports
            .iter()
            .map(|p| ServicePortInfo {
                name: p.name.clone(),
                port: p.port,
                target_port: p.target_port.to_string(),
                node_port: p.node_port,
                protocol: p.protocol.to_string(),
            })
            .collect(),
        external_ips: svc.external_ips.iter().map(|i| i.to_string()).collect(),
        lb_ingress_ips: svc.lb_ingress_ips.iter().map(|i| i.to_string()).collect(),
        session_affinity: if svc.affinity_timeout_secs > 0 {
            "ClientIP"
        } else {
            "None"
        }
        .to_string(),
        affinity_timeout_secs: svc.affinity_timeout_secs,
        load_balancer_source_ranges: svc.source_ranges.iter().map(|n| n.to_string()).collect(),
        source_ranges_policy: ranges_policy(&svc.source_ranges, svc.source_ranges_deny),
        external_traffic_policy: policy(svc.ext_traffic_local),
        health_check_node_port: svc.health_check_node_port,
        internal_traffic_policy: policy(svc.int_traffic_local),
        publish_not_ready_addresses: svc.publish_not_ready,
        frontends: frontends.iter().map(|f| frontend_info(f)).collect(),
        backends: bs,
        error: svc.error.clone(),
        ignored: svc.ignored.clone(),
        external_name: svc.external_name.clone(),
    }
}

/// Every service as the API shows it, sorted by namespace and name.
pub fn list(writer: &Writer) -> Vec<ServiceInfo> {
    let r = writer.read_txn();
    writer
        .services()
        .all(&r)
        .map(|svc| {
            let fronts: Vec<Arc<Frontend>> = writer
                .frontends()
                .list(&r, &frontends_of(&svc.name))
                .map(|f| f.object())
                .collect();
            let backends = writer.backends_of(&r, &svc.name);
            service_info(&svc, &fronts, &backends)
        })
        .collect()
}

/// Every service with its frontends (and their final backend selection) and backends.
#[utoipa::path(get, path = "/v1/services", tag = "loadbalancer",
    responses((status = 200, description = "Services", body = Vec<ServiceInfo>)))]
async fn list_services(
    State(writer): State<Arc<Writer>>,
) -> Result<Json<Vec<ServiceInfo>>, ApiError> {
    let out = tokio::task::spawn_blocking(move || list(&writer))
        .await
        .map_err(|e| ApiError::internal(format!("listing services failed: {e}")))?;
    Ok(Json(out))
}

/// `allow` or `deny` when there are source ranges, empty (not shown) otherwise.
fn ranges_policy(ranges: &[ipnet::Ipv4Net], deny: bool) -> String {
    match (ranges.is_empty(), deny) {
        (true, _) => String::new(),
        (false, false) => "allow".into(),
        (false, true) => "deny".into(),
    }
}
