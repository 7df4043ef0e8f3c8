//! REST routes: `PUT/GET/DELETE /v1/endpoint/{id-or-key}`, `GET /v1/endpoints`,
//! `POST /v1/endpoints/gc`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use cilium_api::ApiError;
use cilium_api::models::{
    Endpoint, EndpointChangeRequest, EndpointGcRequest, EndpointGcResult, PolicyEnforcement,
};
use cilium_api::routes::ApiRoutes;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{EndpointManager, EndpointObj, EnforcementLookup};

/// What the handlers share.
#[derive(Clone)]
struct ApiState {
    mgr: Arc<EndpointManager>,
    enforcement: Option<Arc<EnforcementLookup>>,
}

impl ApiState {
    /// The API form of `obj` with its policy enforcement state.
    fn endpoint(&self, obj: &EndpointObj) -> Endpoint {
        self.fill(obj.to_api())
    }

    /// `ep` with its policy enforcement state.
    fn fill(&self, mut ep: Endpoint) -> Endpoint {
        if let Some(l) = &self.enforcement {
            let (ingress, egress) = l.lookup(ep.id);
            ep.policy_enforcement = PolicyEnforcement { ingress, egress };
        }
        ep
    }
}

/// Registers the endpoint routes; `enforcement` (from the policy cell, when present) fills
/// `policy_enforcement`, which is false/false without it.
pub fn register(
    routes: &ApiRoutes,
    mgr: Arc<EndpointManager>,
    enforcement: Option<Arc<EnforcementLookup>>,
) {
    routes.add(
        OpenApiRouter::new()
            .routes(routes!(put_endpoint, get_endpoint, delete_endpoint))
            .routes(routes!(list_endpoints))
            .routes(routes!(gc_endpoints))
            .with_state(ApiState { mgr, enforcement }),
    );
}

/// Create (idempotently) the endpoint of one CNI attachment.
#[utoipa::path(put, path = "/v1/endpoint/{id}", tag = "endpoint",
    params(("id" = String, Path, description = "attachment key cni:<container-id>:<ifname>")),
    request_body = EndpointChangeRequest,
    responses(
        (status = 201, description = "Created", body = Endpoint),
        (status = 200, description = "Already existed with the same netns", body = Endpoint),
        (status = 400, description = "Malformed request", body = cilium_api::ErrorBody),
        (status = 409, description = "The key exists with another netns, or the address is taken", body = cilium_api::ErrorBody),
        (status = 422, description = "Invalid netns, ifname, MTU or address", body = cilium_api::ErrorBody),
        (status = 507, description = "Pod range or endpoint ids exhausted", body = cilium_api::ErrorBody),
        (status = 500, description = "A plumbing step failed; everything was undone", body = cilium_api::ErrorBody)))]
async fn put_endpoint(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<EndpointChangeRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Endpoint>), ApiError> {
    let Json(req) = body?;
    let (ep, created) = st.mgr.create_tracked(&id, &req).await?;
    let ep = st.fill(ep);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(ep)))
}

/// Options of `GET /v1/endpoint/{id}`.
#[derive(Debug, Default, Deserialize, IntoParams)]
struct GetQuery {
    /// Check the live state of the endpoint (pod interface up with its address, route to the
    /// gateway and default route in the pod's namespace; host veth with the recorded ifindex;
    /// BPF endpoint map entry) before answering; differences are a 409.
    #[serde(default)]
    verify: bool,
}

/// One endpoint by numeric id or attachment key; with `?verify=true` only after checking that
/// its live state still matches (what CNI CHECK asks).
#[utoipa::path(get, path = "/v1/endpoint/{id}", tag = "endpoint",
    params(("id" = String, Path, description = "endpoint id or attachment key"), GetQuery),
    responses(
        (status = 200, description = "The endpoint (verified when asked)", body = Endpoint),
        (status = 400, description = "Malformed query, e.g. verify=maybe", body = cilium_api::ErrorBody),
        (status = 404, description = "Unknown", body = cilium_api::ErrorBody),
        (status = 409, description = "verify=true: the live state differs; the message names every difference, e.g. \
            \"endpoint 3 (cni:x:eth0): address 10.215.0.2/32 is missing on eth0 in /var/run/netns/pod1; ...\"",
            body = cilium_api::ErrorBody),
        (status = 500, description = "verify=true: the check itself failed (netns not enterable, map unreadable)",
            body = cilium_api::ErrorBody)))]
async fn get_endpoint(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    query: Result<Query<GetQuery>, QueryRejection>,
) -> Result<Json<Endpoint>, ApiError> {
    let Query(q) = query?;
    if q.verify {
        return Ok(Json(st.fill(st.mgr.verify(&id).await?)));
    }
    st.mgr
        .get(&id)
        .map(|o| Json(st.endpoint(&o)))
        .ok_or_else(|| crate::EndpointError::NotFound(id).into())
}

/// Delete an endpoint (veth, programs, map entry, ipcache row, address, state).
#[utoipa::path(delete, path = "/v1/endpoint/{id}", tag = "endpoint",
    params(("id" = String, Path, description = "endpoint id or attachment key")),
    responses(
        (status = 200, description = "Deleted; the endpoint as it was", body = Endpoint),
        (status = 404, description = "Unknown: nothing to undo", body = cilium_api::ErrorBody),
        (status = 500, description = "A teardown step failed; retry", body = cilium_api::ErrorBody)))]
async fn delete_endpoint(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, ApiError> {
    Ok(Json(st.fill(st.mgr.delete(&id).await?)))
}

/// Every endpoint.
#[utoipa::path(get, path = "/v1/endpoints", tag = "endpoint",
    responses((status = 200, description = "All endpoints", body = Vec<Endpoint>)))]
async fn list_endpoints(State(st): State<ApiState>) -> Json<Vec<Endpoint>> {
    let mut eps: Vec<Endpoint> = st.mgr.list().iter().map(|o| st.endpoint(o)).collect();
    eps.sort_by_key(|e| e.id);
    Json(eps)
}

/// CNI GC: remove every CNI endpoint not in `keep`.
#[utoipa::path(post, path = "/v1/endpoints/gc", tag = "endpoint",
    request_body = EndpointGcRequest,
    responses((status = 200, description = "Removed keys", body = EndpointGcResult)))]
async fn gc_endpoints(
    State(st): State<ApiState>,
    body: Result<Json<EndpointGcRequest>, JsonRejection>,
) -> Result<Json<EndpointGcResult>, ApiError> {
    let Json(req) = body?;
    let removed = st.mgr.gc(&req.keep).await?;
    Ok(Json(EndpointGcResult { removed }))
}
