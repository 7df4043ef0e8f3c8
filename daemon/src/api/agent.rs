//! Agent-wide routes: health, status, configuration, statedb tables, the OpenAPI document.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use cilium_api::ApiError;
use cilium_api::models::{
    CellHealth, DatapathStatus, HealthLevel, Healthz, Status, TableDump, TableSummary,
};
use hive::{ConfigDump, HealthView, Level};
use statedb::Db;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AgentInfo;
use crate::logging::LogControl;

use super::ApiRoutes;

/// What the agent routes read.
#[derive(Clone)]
pub(crate) struct AgentState {
    db: Arc<Db>,
    health: Arc<HealthView>,
    config: Arc<ConfigDump>,
    info: Arc<AgentInfo>,
    log: Arc<LogControl>,
    datapath: Option<Arc<DatapathStatus>>,
}

/// Register the agent routes.
pub(crate) fn register(
    routes: Arc<ApiRoutes>,
    db: Arc<Db>,
    health: Arc<HealthView>,
    config: Arc<ConfigDump>,
    info: Arc<AgentInfo>,
    log: Arc<LogControl>,
    datapath: Option<Arc<DatapathStatus>>,
) -> hive::anyhow::Result<()> {
    let state = AgentState {
        db,
        health,
        config,
        info,
        log,
        datapath,
    };
    routes.add(
        OpenApiRouter::new()
            .routes(routes!(healthz))
            .routes(routes!(status))
            .routes(routes!(get_config, patch_config))
            .routes(routes!(db_table))
            .with_state(state),
    );
    Ok(())
}

fn level(l: Level) -> HealthLevel {
    match l {
        Level::Unknown => HealthLevel::Unknown,
        Level::Ok => HealthLevel::Ok,
        Level::Degraded => HealthLevel::Degraded,
        Level::Stopped => HealthLevel::Stopped,
    }
}

fn cells(health: &HealthView) -> Vec<CellHealth> {
    health
        .all()
        .into_iter()
        .map(|s| CellHealth {
            id: s.id,
            level: level(s.level),
            message: s.message,
            error: s.error,
            updated_at: humantime::format_rfc3339_seconds(s.updated_at).to_string(),
            count: s.count,
        })
        .collect()
}

fn overall(cells: &[CellHealth]) -> &'static str {
    if cells.iter().any(|c| c.level == HealthLevel::Degraded) {
        "degraded"
    } else {
        "ok"
    }
}

/// Liveness and readiness of the agent.
#[utoipa::path(get, path = "/v1/healthz", tag = "agent",
    responses((status = 200, description = "The agent is up", body = Healthz)))]
async fn healthz(State(s): State<AgentState>) -> Json<Healthz> {
    let c = cells(&s.health);
    Json(Healthz {
        status: overall(&c).to_string(),
        uptime_seconds: s.info.uptime_seconds(),
    })
}

/// The agent's state: every cell's health and every table's size.
#[utoipa::path(get, path = "/v1/status", tag = "agent",
    responses((status = 200, description = "Agent status", body = Status)))]
async fn status(State(s): State<AgentState>) -> Json<Status> {
    let c = cells(&s.health);
    let txn = s.db.read_txn();
    let tables =
        s.db.table_info(&txn)
            .into_iter()
            .map(|t| TableSummary {
                name: t.name,
                objects: t.objects as u64,
                revision: t.revision,
            })
            .collect();
    Json(Status {
        version: s.info.version.to_string(),
        uptime_seconds: s.info.uptime_seconds(),
        state: overall(&c).to_string(),
        cells: c,
        tables,
        datapath: s.datapath.as_deref().cloned(),
    })
}

/// The effective configuration of every cell (defaults < YAML < env < flags).
#[utoipa::path(get, path = "/v1/config", tag = "agent",
    responses((status = 200, description = "Configuration per module", body = Object)))]
async fn get_config(State(s): State<AgentState>) -> Json<serde_json::Value> {
    let mut v = serde_json::to_value(&s.config.0).unwrap_or_default();
    if let Some(map) = v.as_object_mut() {
        map.insert(
            "runtime".to_string(),
            serde_json::json!({ "log-level": s.log.current() }),
        );
    }
    Json(v)
}

/// Change run-time settings; today only `log-level`.
#[utoipa::path(patch, path = "/v1/config", tag = "agent",
    request_body(content = Object, description = r#"{"log-level": "debug"}"#),
    responses((status = 200, description = "Applied", body = Object),
        (status = 400, description = "Unknown key or bad value", body = cilium_api::ErrorBody)))]
async fn patch_config(
    State(s): State<AgentState>,
    body: Result<
        Json<serde_json::Map<String, serde_json::Value>>,
        axum::extract::rejection::JsonRejection,
    >,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(body) = body?;
    // Validate everything before applying anything.
    let mut level = None;
    for (k, v) in &body {
        match (k.as_str(), v) {
            ("log-level", serde_json::Value::String(l)) => level = Some(l.clone()),
            ("log-level", other) => {
                return Err(ApiError::bad_request(format!(
                    "log-level must be a string, got {other}"
                )));
            }
            (other, _) => {
                return Err(ApiError::bad_request(format!(
                    "{other:?} cannot be changed at run time; only \"log-level\" can"
                )));
            }
        }
    }
    if let Some(l) = level {
        s.log.set(&l).map_err(ApiError::bad_request)?;
        tracing::info!(level = %l, "log level changed");
    }
    Ok(Json(serde_json::json!({ "log-level": s.log.current() })))
}

/// Any statedb table, each object with its revision and reconcile status.
#[utoipa::path(get, path = "/v1/db/{table}", tag = "agent",
    params(("table" = String, Path, description = "Table name")),
    responses((status = 200, description = "The table", body = TableDump),
        (status = 404, description = "No such table", body = cilium_api::ErrorBody)))]
async fn db_table(
    State(s): State<AgentState>,
    Path(table): Path<String>,
) -> Result<Json<TableDump>, ApiError> {
    let txn = s.db.read_txn();
    let objects = s.db.dump_table(&txn, &table).map_err(|_| {
        ApiError::not_found(format!(
            "no table named {table:?}; tables: {}",
            s.db.table_names().join(", ")
        ))
    })?;
    let revision =
        s.db.table_info(&txn)
            .into_iter()
            .find(|t| t.name == table)
            .map(|t| t.revision)
            .unwrap_or_default();
    Ok(Json(TableDump {
        table,
        revision,
        objects,
    }))
}
