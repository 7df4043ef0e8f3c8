//! REST routes: `PUT/GET/DELETE /v1/endpoint/{id-or-key}`, `GET /v1/endpoints`,
//! `POST /v1/endpoints/gc`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use cilium_api::ApiError;
use cilium_api::models::{Endpoint, EndpointChangeRequest, EndpointGcRequest, EndpointGcResult};
use cilium_api::routes::ApiRoutes;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::EndpointManager;

/// Registers the endpoint routes.
pub fn register(routes: &ApiRoutes, mgr: Arc<EndpointManager>) {
    routes.add(
        OpenApiRouter::new()
            .routes(routes!(put_endpoint, get_endpoint, delete_endpoint))
            .routes(routes!(list_endpoints))
            .routes(routes!(gc_endpoints))
            .with_state(mgr),
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
    State(mgr): State<Arc<EndpointManager>>,
    Path(id): Path<String>,
    body: Result<Json<EndpointChangeRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Endpoint>), ApiError> {
    let Json(req) = body?;
    let (ep, created) = mgr.create_tracked(&id, &req).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(ep)))
}

/// One endpoint by numeric id or attachment key.
#[utoipa::path(get, path = "/v1/endpoint/{id}", tag = "endpoint",
    params(("id" = String, Path, description = "endpoint id or attachment key")),
    responses(
        (status = 200, description = "The endpoint", body = Endpoint),
        (status = 404, description = "Unknown", body = cilium_api::ErrorBody)))]
async fn get_endpoint(
    State(mgr): State<Arc<EndpointManager>>,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, ApiError> {
    mgr.get(&id)
        .map(|o| Json(o.to_api()))
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
    State(mgr): State<Arc<EndpointManager>>,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, ApiError> {
    Ok(Json(mgr.delete(&id).await?))
}

/// Every endpoint.
#[utoipa::path(get, path = "/v1/endpoints", tag = "endpoint",
    responses((status = 200, description = "All endpoints", body = Vec<Endpoint>)))]
async fn list_endpoints(State(mgr): State<Arc<EndpointManager>>) -> Json<Vec<Endpoint>> {
    let mut eps: Vec<Endpoint> = mgr.list().iter().map(|o| o.to_api()).collect();
    eps.sort_by_key(|e| e.id);
    Json(eps)
}

/// CNI GC: remove every CNI endpoint not in `keep`.
#[utoipa::path(post, path = "/v1/endpoints/gc", tag = "endpoint",
    request_body = EndpointGcRequest,
    responses((status = 200, description = "Removed keys", body = EndpointGcResult)))]
async fn gc_endpoints(
    State(mgr): State<Arc<EndpointManager>>,
    body: Result<Json<EndpointGcRequest>, JsonRejection>,
) -> Result<Json<EndpointGcResult>, ApiError> {
    let Json(req) = body?;
    let removed = mgr.gc(&req.keep).await?;
    Ok(Json(EndpointGcResult { removed }))
}
