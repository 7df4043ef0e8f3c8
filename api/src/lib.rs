//! The cilium-agent REST API contract: request/response models (serde + utoipa schemas), the
//! JSON error body and its mapping to HTTP status (`ApiError`), and the typed client used by
//! `ciliumctl` and `cilium-cni` over the agent's unix socket.

pub mod client;
mod client_datapath;
mod client_identity;
mod client_lbmap;
mod client_loadbalancer;
mod client_policy;
mod client_policymap;
mod client_resources;
pub mod error;
pub mod models;
pub mod routes;

pub use client::{Client, ClientError};
pub use error::{ApiError, ErrorBody, ErrorCode};

/// Default path of the agent's unix socket.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/cilium/cilium.sock";

/// Environment variable naming the agent socket for `ciliumctl` and `cilium-cni`.
pub const SOCKET_ENV: &str = "CILIUM_SOCKET";

/// Header carrying the API token on the TCP listener (mutations are refused without it).
pub const TOKEN_HEADER: &str = "x-cilium-token";
