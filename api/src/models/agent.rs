//! Agent-wide models: health, status, config, statedb tables.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Answer of `GET /v1/healthz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Healthz {
    /// "ok" when every cell is healthy, "degraded" otherwise.
    pub status: String,
    /// Seconds since the agent started.
    pub uptime_seconds: u64,
}

/// Health level of one cell or sub-scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthLevel {
    /// Not reported yet.
    Unknown,
    /// Working.
    Ok,
    /// Working with problems (see message/error).
    Degraded,
    /// Stopped.
    Stopped,
}

/// One row of the `health` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CellHealth {
    /// Module path plus scope, e.g. `agent.datapath.loader`.
    pub id: String,
    /// Level.
    pub level: HealthLevel,
    /// Last message.
    pub message: String,
    /// Last error, when degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the level or message last changed (RFC 3339).
    pub updated_at: String,
    /// How many times this status was reported.
    pub count: u64,
}

/// Object count and revision of one statedb table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TableSummary {
    /// Table name.
    pub name: String,
    /// Number of objects.
    pub objects: u64,
    /// Current revision.
    pub revision: u64,
}

/// Answer of `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// Agent version.
    pub version: String,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Overall state: "ok" or "degraded".
    pub state: String,
    /// Health of every cell and sub-scope.
    pub cells: Vec<CellHealth>,
    /// Every statedb table with its size.
    pub tables: Vec<TableSummary>,
    /// Datapath mode and kernel features, when a datapath is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath: Option<DatapathStatus>,
}

/// The datapath part of the status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DatapathStatus {
    /// `veth` or `netkit`.
    pub mode: String,
    /// How programs are attached: `tcx` or `tc` (clsact).
    pub attach: String,
    /// Kernel features probed at start (name -> available).
    pub features: std::collections::BTreeMap<String, bool>,
    /// BPF root directory where maps are pinned.
    pub bpf_root: String,
}

/// Answer of `GET /v1/db/{table}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TableDump {
    /// Table name.
    pub table: String,
    /// Table revision at the time of the dump.
    pub revision: u64,
    /// The objects, each with its revision and (for reconciled tables) its status.
    #[schema(value_type = Vec<Object>)]
    pub objects: Vec<serde_json::Value>,
}
