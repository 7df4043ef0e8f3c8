//! Routes: `POST /v1/apply`, `POST /v1/delete`, `GET /v1/resources/{kind}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use bytes::Bytes;
use cilium_api::ApiError;
use cilium_api::models::ResourceChange;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Resources;

/// The resources router with its state applied.
pub fn router(resources: Arc<Resources>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(apply))
        .routes(routes!(delete))
        .routes(routes!(list))
        .with_state(resources)
}

fn text(body: &Bytes) -> Result<String, ApiError> {
    String::from_utf8(body.to_vec())
        .map_err(|e| ApiError::bad_request(format!("the file is not UTF-8 text: {e}")))
}

/// Apply a YAML or JSON file (any content type): every document or none.
/// Query of `POST /v1/apply`.
#[derive(Debug, Default, Deserialize, IntoParams)]
struct ApplyQuery {
    /// Return only once every applied object is in the datapath (the load-balancer tables
    /// and BPF maps, ...), or fail with 503 naming the stage that has not caught up.
    wait: Option<bool>,
    /// Seconds `wait` may take (default 60).
    timeout: Option<f64>,
}

/// Default of `timeout` for `wait=true`.
const DEFAULT_WAIT_SECS: f64 = 60.0;

#[utoipa::path(post, path = "/v1/apply", tag = "resources",
    params(ApplyQuery),
    request_body(content = String, description = "Multi-document YAML, a JSON object, or a JSON `kind: List`",
        content_type = "text/yaml"),
    responses(
        (status = 200, description = "What happened to each object, in file order", body = [ResourceChange]),
        (status = 400, description = "Not YAML/JSON, or empty, or a bad query", body = cilium_api::ErrorBody),
        (status = 422, description = "Invalid documents; details.errors names document, field and reason; nothing was applied",
            body = cilium_api::ErrorBody),
        (status = 503, description = "wait=true: applied, but a stage (details.stage) did not catch up within the timeout",
            body = cilium_api::ErrorBody)))]
async fn apply(
    State(r): State<Arc<Resources>>,
    query: Result<Query<ApplyQuery>, QueryRejection>,
    body: Bytes,
) -> Result<Json<Vec<ResourceChange>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("bad query: {e}")))?;
    let timeout = q.timeout.unwrap_or(DEFAULT_WAIT_SECS);
    if !(timeout.is_finite() && timeout > 0.0 && timeout <= 3600.0) {
        return Err(ApiError::bad_request(format!(
            "timeout={timeout}: give seconds between 0 and 3600"
        )));
    }
    let text = text(&body)?;
    let started = std::time::Instant::now();
    let applier = r.clone();
    let changes = tokio::task::spawn_blocking(move || applier.apply(&text))
        .await
        .map_err(|e| ApiError::internal(format!("apply task failed: {e}")))?
        .map_err(ApiError::from)?;
    if q.wait.unwrap_or(false) {
        let stages = r
            .wait_synced(std::time::Duration::from_secs_f64(timeout))
            .await
            .map_err(ApiError::from)?;
        let stages: Vec<String> = stages
            .iter()
            .map(|(n, d)| format!("{n}={:.1}ms", d.as_secs_f64() * 1e3))
            .collect();
        tracing::info!(objects = changes.len(), took_ms = started.elapsed().as_millis(),
            stages = %stages.join(" "), "applied objects are in the datapath");
    }
    Ok(Json(changes))
}

#[utoipa::path(post, path = "/v1/delete", tag = "resources",
    request_body(content = String, description = "Multi-document YAML or JSON naming the objects",
        content_type = "text/yaml"),
    responses(
        (status = 200, description = "What happened to each object, in file order", body = [ResourceChange]),
        (status = 400, description = "Not YAML/JSON, or empty", body = cilium_api::ErrorBody),
        (status = 422, description = "A document names no known kind or no name", body = cilium_api::ErrorBody)))]
async fn delete(
    State(r): State<Arc<Resources>>,
    body: Bytes,
) -> Result<Json<Vec<ResourceChange>>, ApiError> {
    let text = text(&body)?;
    tokio::task::spawn_blocking(move || r.delete(&text))
        .await
        .map_err(|e| ApiError::internal(format!("delete task failed: {e}")))?
        .map(Json)
        .map_err(ApiError::from)
}

/// Filters of `GET /v1/resources/{kind}`.
#[derive(Debug, Default, Deserialize, IntoParams)]
struct ListQuery {
    /// Only objects in this namespace.
    namespace: Option<String>,
    /// Only the object with this name.
    name: Option<String>,
}

/// The stored objects of a kind (`pods`, `pod`, `Namespace`, `ns`, ...).
#[utoipa::path(get, path = "/v1/resources/{kind}", tag = "resources",
    params(("kind" = String, Path, description = "Kind, case-insensitive, singular, plural or short"), ListQuery),
    responses(
        (status = 200, description = "The objects", body = [Object]),
        (status = 404, description = "Unknown kind; the message lists the known ones", body = cilium_api::ErrorBody)))]
async fn list(
    State(r): State<Arc<Resources>>,
    kind: Result<Path<String>, PathRejection>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let Path(kind) = kind?;
    let Query(q) = query?;
    let objects = r.list(
        &kind,
        q.namespace.as_deref().filter(|s| !s.is_empty()),
        q.name.as_deref().filter(|s| !s.is_empty()),
    )?;
    Ok(Json(objects))
}
