//! The REST API server: every route on the unix socket (`--socket-path`, mode 0660) and,
//! with `--api-listen`, a read-only copy on TCP (mutations answer 403 unless `--api-token` is
//! set and sent in the `x-cilium-token` header). Cells add their routes to [`ApiRoutes`]
//! during construction; the server assembles them and the OpenAPI document when it starts.

mod agent;
mod metrics;
mod server;

use std::path::PathBuf;
use std::sync::Arc;

use hive::{BoxCell, Config, Invoke, Provide};
use serde::Serialize;

pub use cilium_api::routes::ApiRoutes;
pub use server::ApiServer;

/// API server flags.
#[derive(Debug, Clone, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ApiConfig {
    /// Unix socket serving the whole API.
    #[arg(long = "socket-path", default_value = cilium_api::DEFAULT_SOCKET_PATH)]
    pub socket_path: PathBuf,
    /// TCP address (host:port) serving a read-only copy of the API; off when empty.
    #[arg(long = "api-listen", default_value = "")]
    pub api_listen: String,
    /// Token that allows mutations on the TCP listener (sent as `x-cilium-token`).
    #[arg(long = "api-token", default_value = "", hide_default_value = true)]
    #[serde(skip_serializing)]
    pub api_token: String,
}

/// The API cell: config, the route registry, the agent routes and the server.
pub fn cell() -> BoxCell {
    hive::Module::new(
        "api",
        "REST API server",
        vec![
            Config::<ApiConfig>::new(),
            Provide::new(|| Ok::<_, hive::anyhow::Error>(ApiRoutes::default())),
            Provide::new(metrics::ApiMetrics::new),
            Invoke::new(agent::register),
            Provide::new(server::ApiServer::new),
            Invoke::new(|_server: Arc<ApiServer>| Ok::<_, hive::anyhow::Error>(())),
        ],
    )
}
