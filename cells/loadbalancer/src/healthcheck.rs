//! `healthCheckNodePort`: for every LoadBalancer service with `externalTrafficPolicy: Local`,
//! an HTTP server on the service's health-check node port answers whether this node has a
//! ready local endpoint, so an external load balancer sends traffic only to such nodes
//! (kube-proxy's service health server).
//!
//! `GET` on any path: `200` with `localEndpoints` > 0, else `503`; body
//! `{"service":{"namespace":..,"name":..},"localEndpoints":N,"serviceProxyHealthy":true}`,
//! header `X-Load-Balancing-Endpoint-Weight: N`. The count is the number of distinct active
//! backends of the service's external frontends, which `externalTrafficPolicy: Local` already
//! limits to this node's endpoints; terminating endpoints do not count, so a node whose
//! endpoints are all terminating is drained.
//!
//! The servers follow the `services` and `frontends` tables: a port opens when a service gets
//! one, its answer changes with the next table change, and it closes when the service goes.
//! A port that cannot be bound (something else holds it) is retried on the next change and
//! reported in the cell's health.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hive::{CancellationToken, Health};
use parking_lot::Mutex;
use statedb::{ReadTxn, WatchSet};

use crate::model::{BackendState, ServiceName, frontends_of};
use crate::writer::Writer;

/// What one health-check port answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The service.
    pub service: ServiceName,
    /// Ready endpoints of the service on this node.
    pub local_endpoints: usize,
}

/// Every health-check port with its answer, from one snapshot of the tables.
pub fn desired(writer: &Writer, txn: &ReadTxn) -> BTreeMap<u16, HealthCheck> {
    let mut out = BTreeMap::new();
    for svc in writer.services().all(txn) {
        if svc.health_check_node_port == 0 || svc.error.is_some() {
            continue;
        }
        let mut local = BTreeSet::new();
        for f in writer.frontends().list(txn, &frontends_of(&svc.name)) {
            if f.kind.is_external() {
                local.extend(
                    f.backends
                        .iter()
                        .filter(|b| b.state == BackendState::Active)
                        .map(|b| b.address),
                );
            }
        }
        out.insert(
            svc.health_check_node_port,
            HealthCheck {
                service: svc.name.clone(),
                local_endpoints: local.len(),
            },
        );
    }
    out
}

/// The answer of one health check.
pub fn answer(hc: &HealthCheck) -> (StatusCode, String) {
    let body = serde_json::json!({
        "service": { "namespace": hc.service.namespace, "name": hc.service.name },
        "localEndpoints": hc.local_endpoints,
        "serviceProxyHealthy": true,
    });
    let status = if hc.local_endpoints > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body.to_string())
}

/// A JSON answer of a health endpoint, with the headers kube-proxy sends.
pub(crate) fn json_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

type Shared = Arc<Mutex<Option<HealthCheck>>>;

async fn handle(State(state): State<Shared>) -> Response {
    let Some(hc) = state.lock().clone() else {
        return (StatusCode::NOT_FOUND, "no service on this port\n").into_response();
    };
    let (status, body) = answer(&hc);
    let mut r = json_response(status, body);
    if let Ok(v) = HeaderValue::from_str(&hc.local_endpoints.to_string()) {
        r.headers_mut()
            .insert("X-Load-Balancing-Endpoint-Weight", v);
    }
    r
}

/// One open port: its answer and its server task.
struct Server {
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn open(port: u16, hc: HealthCheck) -> std::io::Result<Server> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
    let state: Shared = Arc::new(Mutex::new(Some(hc)));
    let app = Router::new().fallback(handle).with_state(state.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(port, error = %e, "health check server stopped");
        }
    });
    Ok(Server { state, task })
}

/// Runs the health-check servers until `cancel`.
pub async fn run(
    writer: Arc<Writer>,
    cancel: CancellationToken,
    health: Health,
) -> hive::anyhow::Result<()> {
    let mut servers: BTreeMap<u16, Server> = BTreeMap::new();
    loop {
        let mut ws = WatchSet::new();
        let want = {
            let txn = writer.read_txn();
            ws.add(writer.services().all_watch(&txn).1);
            ws.add(writer.frontends().all_watch(&txn).1);
            desired(&writer, &txn)
        };
        servers.retain(|port, _| want.contains_key(port));
        let mut failed = Vec::new();
        for (port, hc) in &want {
            if let Some(s) = servers.get(port) {
                *s.state.lock() = Some(hc.clone());
                continue;
            }
            match open(*port, hc.clone()).await {
                Ok(s) => {
                    tracing::info!(port, service = %hc.service, "health check node port open");
                    servers.insert(*port, s);
                }
                Err(e) => {
                    tracing::warn!(port, service = %hc.service, error = %e, "cannot open the health check node port");
                    failed.push(format!("{port} ({}): {e}", hc.service));
                }
            }
        }
        if failed.is_empty() {
            health.ok(format!("{} health check node ports", servers.len()));
        } else {
            health.degraded("health check node ports not open", failed.join("; "));
        }
        // A port that failed to bind is retried after a while even without a table change.
        let retry = if failed.is_empty() {
            Duration::from_secs(3600)
        } else {
            Duration::from_secs(5)
        };
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = ws.wait() => {}
            _ = tokio::time::sleep(retry) => {}
        }
    }
}
