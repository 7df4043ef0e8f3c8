//! Request and response bodies of the `/v1` API.

mod agent;
mod endpoint;
mod ipam;

pub use agent::*;
pub use endpoint::*;
pub use ipam::*;
