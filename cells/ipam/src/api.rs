//! The IPAM routes: `POST /v1/ipam`, `GET /v1/ipam`, `DELETE /v1/ipam/{ip}`.

use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use cilium_api::ApiError;
use cilium_api::models::{IpamAllocateRequest, IpamAllocation, IpamStatus};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{Ipam, IpamError};

/// The IPAM router with its state applied.
pub(crate) fn router(ipam: Arc<Ipam>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(allocate, status))
        .routes(routes!(release))
        .with_state(ipam)
}

/// Run a blocking IPAM operation (it fsyncs the state file) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, IpamError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("IPAM task failed: {e}")))?
        .map_err(ApiError::from)
}

/// Allocate a pod address (a specific one with `ip`); idempotent per owner.
#[utoipa::path(post, path = "/v1/ipam", tag = "ipam",
    request_body = IpamAllocateRequest,
    responses(
        (status = 201, description = "A new allocation", body = IpamAllocation),
        (status = 200, description = "The owner's existing allocation", body = IpamAllocation),
        (status = 400, description = "Malformed body", body = cilium_api::ErrorBody),
        (status = 409, description = "Address in use by another owner", body = cilium_api::ErrorBody),
        (status = 422, description = "Address outside the range or reserved", body = cilium_api::ErrorBody),
        (status = 507, description = "Pod range exhausted", body = cilium_api::ErrorBody)))]
async fn allocate(
    State(ipam): State<Arc<Ipam>>,
    body: Result<Json<IpamAllocateRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<IpamAllocation>), ApiError> {
    let Json(req) = body?;
    let (alloc, created) = blocking(move || ipam.allocate_tracked(&req.owner, req.ip)).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(alloc)))
}

/// The pod range, its gateway and capacity, and every allocation.
#[utoipa::path(get, path = "/v1/ipam", tag = "ipam",
    responses((status = 200, description = "IPAM status", body = IpamStatus)))]
async fn status(State(ipam): State<Arc<Ipam>>) -> Json<IpamStatus> {
    Json(IpamStatus {
        cidr: ipam.cidr().to_string(),
        gateway: ipam.gateway(),
        capacity: ipam.capacity(),
        allocations: ipam.allocations(),
    })
}

/// Release an allocated address.
#[utoipa::path(delete, path = "/v1/ipam/{ip}", tag = "ipam",
    params(("ip" = String, Path, description = "The allocated IPv4 address")),
    responses(
        (status = 204, description = "Released"),
        (status = 400, description = "Not an IPv4 address", body = cilium_api::ErrorBody),
        (status = 404, description = "The address is not allocated", body = cilium_api::ErrorBody)))]
async fn release(
    State(ipam): State<Arc<Ipam>>,
    ip: Result<Path<Ipv4Addr>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(ip) = ip?;
    if blocking(move || ipam.release(ip)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "address {ip} is not allocated; `ciliumctl db ipam` lists the allocations"
        )))
    }
}
