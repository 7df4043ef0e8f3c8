//! Request and response bodies of the `/v1` API.

mod agent;
mod bpf;
mod endpoint;
mod ipam;
mod monitor;
mod resources;

pub use agent::*;
pub use bpf::*;
pub use endpoint::*;
pub use ipam::*;
pub use monitor::*;
pub use resources::*;
