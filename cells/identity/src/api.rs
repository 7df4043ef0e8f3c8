//! REST routes: `GET /v1/identities`, `GET /v1/identity/{id}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use cilium_api::ApiError;
use cilium_api::models::IdentityInfo;
use cilium_api::routes::ApiRoutes;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{Identity, IdentityAllocator, IdentityError};

/// Registers the identity routes.
pub fn register(routes: &ApiRoutes, alloc: Arc<IdentityAllocator>) {
    routes.add(
        OpenApiRouter::new()
            .routes(routes!(list_identities))
            .routes(routes!(get_identity))
            .with_state(alloc),
    );
}

/// Every security identity (reserved, endpoint and CIDR), by id.
#[utoipa::path(get, path = "/v1/identities", tag = "identity",
    responses((status = 200, description = "All identities", body = Vec<IdentityInfo>)))]
async fn list_identities(State(alloc): State<Arc<IdentityAllocator>>) -> Json<Vec<IdentityInfo>> {
    Json(alloc.list().iter().map(|o| o.to_api()).collect())
}

/// One identity by numeric id.
#[utoipa::path(get, path = "/v1/identity/{id}", tag = "identity",
    params(("id" = u32, Path, description = "numeric identity, e.g. 1 (host) or 256")),
    responses(
        (status = 200, description = "The identity", body = IdentityInfo),
        (status = 400, description = "Not a number", body = cilium_api::ErrorBody),
        (status = 404, description = "Unknown identity", body = cilium_api::ErrorBody)))]
async fn get_identity(
    State(alloc): State<Arc<IdentityAllocator>>,
    Path(id): Path<String>,
) -> Result<Json<IdentityInfo>, ApiError> {
    let n: u32 = id.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "identity {id:?} is not a number; give the numeric id, e.g. 256"
        ))
    })?;
    alloc
        .get(Identity(n))
        .map(|o| Json(o.to_api()))
        .ok_or_else(|| IdentityError::NotFound(n).into())
}
