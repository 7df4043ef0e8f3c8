//! A minimal stand-in for cilium-agent's CNI routes, on a unix socket in a temp dir.
//!
//! Test scaffolding only: it keeps endpoints in a map and records what the plugin sent. The
//! real agent (and the end-to-end tests against it) live elsewhere.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::routing::{get, post};
use cilium_api::ApiError;
use cilium_api::models::{
    Endpoint, EndpointChangeRequest, EndpointGcRequest, EndpointGcResult, Healthz,
};

/// What the stand-in holds and what it was asked.
#[derive(Default)]
pub struct AgentState {
    /// Endpoints by key.
    pub endpoints: BTreeMap<String, Endpoint>,
    /// Bodies of every PUT, in order.
    pub puts: Vec<EndpointChangeRequest>,
    /// Keep lists of every GC.
    pub gcs: Vec<Vec<String>>,
    /// Keys of every DELETE (found or not).
    pub deletes: Vec<String>,
    /// When set, PUT answers this error.
    pub put_error: Option<ApiError>,
    /// Keys of every `GET ...?verify=true`.
    pub verifies: Vec<String>,
    /// When set, `GET ...?verify=true` of a known endpoint answers this error (like the agent
    /// finding the live state different: 409 naming the difference).
    pub verify_error: Option<ApiError>,
    /// When false, healthz answers 503.
    pub not_ready: bool,
    next_id: u16,
}

type Shared = Arc<Mutex<AgentState>>;

/// The stand-in server; stops when dropped.
pub struct StandIn {
    /// Shared state, for assertions and fault injection.
    pub state: Shared,
    socket: PathBuf,
    _dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

/// Pod range of the stand-in: 10.200.0.0/16, gateway 10.200.0.1.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);

impl StandIn {
    /// Start serving on `<tempdir>/cilium.sock`.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("cilium.sock");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state: Shared = Arc::default();
        let app = Router::new()
            .route(
                "/v1/endpoint/{key}",
                get(get_endpoint).put(put_endpoint).delete(delete_endpoint),
            )
            .route("/v1/endpoints/gc", post(gc))
            .route("/v1/healthz", get(healthz))
            .with_state(state.clone());
        let listener = {
            let _guard = runtime.enter();
            tokio::net::UnixListener::bind(&socket).unwrap()
        };
        runtime.spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            state,
            socket,
            _dir: dir,
            _runtime: runtime,
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Lock the state.
    pub fn state(&self) -> std::sync::MutexGuard<'_, AgentState> {
        self.state.lock().unwrap()
    }
}

/// Query of `GET /v1/endpoint/{key}`.
#[derive(serde::Deserialize)]
struct GetQuery {
    #[serde(default)]
    verify: bool,
}

async fn get_endpoint(
    State(s): State<Shared>,
    UrlPath(key): UrlPath<String>,
    Query(q): Query<GetQuery>,
) -> Result<Json<Endpoint>, ApiError> {
    let mut s = s.lock().unwrap();
    if q.verify {
        s.verifies.push(key.clone());
    }
    let ep = s
        .endpoints
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("endpoint {key} not found")))?;
    match &s.verify_error {
        Some(e) if q.verify => Err(e.clone()),
        _ => Ok(Json(ep)),
    }
}

async fn put_endpoint(
    State(s): State<Shared>,
    UrlPath(key): UrlPath<String>,
    Json(req): Json<EndpointChangeRequest>,
) -> Result<Json<Endpoint>, ApiError> {
    let mut s = s.lock().unwrap();
    s.puts.push(req.clone());
    if let Some(e) = s.put_error.clone() {
        return Err(e);
    }
    if let Some(ep) = s.endpoints.get(&key) {
        return Ok(Json(ep.clone()));
    }
    s.next_id += 1;
    let id = s.next_id;
    let ipv4 = match req.requested_ipv4 {
        Some(ip) if ip.octets()[..2] == [10, 200] => ip,
        Some(ip) => {
            return Err(ApiError::invalid(format!(
                "requested IP {ip} is not in the pod range 10.200.0.0/16"
            )));
        }
        None => Ipv4Addr::new(10, 200, (id >> 8) as u8, (id & 0xff) as u8 + 1),
    };
    let ep = Endpoint {
        id,
        key: key.clone(),
        container_id: req.container_id.clone(),
        netns: req.netns.clone(),
        ifname: req.ifname.clone(),
        host_ifname: format!("lxc{id:04x}"),
        host_ifindex: 100 + u32::from(id),
        mac: format!("02:00:00:00:00:{:02x}", id & 0xff),
        host_mac: format!("02:00:00:00:01:{:02x}", id & 0xff),
        ipv4,
        gateway: GATEWAY,
        prefix_len: 16,
        pod: req
            .pod_namespace
            .as_ref()
            .zip(req.pod_name.as_ref())
            .map(|(n, p)| format!("{n}/{p}")),
        identity: 1000,
        labels: BTreeMap::new(),
        named_ports: BTreeMap::new(),
        state: "ready".into(),
        policy_enforcement: Default::default(),
    };
    s.endpoints.insert(key, ep.clone());
    Ok(Json(ep))
}

async fn delete_endpoint(
    State(s): State<Shared>,
    UrlPath(key): UrlPath<String>,
) -> Result<(), ApiError> {
    let mut s = s.lock().unwrap();
    s.deletes.push(key.clone());
    s.endpoints
        .remove(&key)
        .map(|_| ())
        .ok_or_else(|| ApiError::not_found(format!("endpoint {key} not found")))
}

async fn gc(State(s): State<Shared>, Json(req): Json<EndpointGcRequest>) -> Json<EndpointGcResult> {
    let mut s = s.lock().unwrap();
    let removed: Vec<String> = s
        .endpoints
        .keys()
        .filter(|k| !req.keep.contains(k))
        .cloned()
        .collect();
    for k in &removed {
        s.endpoints.remove(k);
    }
    s.gcs.push(req.keep);
    Json(EndpointGcResult { removed })
}

async fn healthz(State(s): State<Shared>) -> Result<Json<Healthz>, ApiError> {
    if s.lock().unwrap().not_ready {
        return Err(ApiError::unavailable("agent is starting"));
    }
    Ok(Json(Healthz {
        status: "ok".into(),
        uptime_seconds: 1,
    }))
}
