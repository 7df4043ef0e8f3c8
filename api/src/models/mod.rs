//! Request and response bodies of the `/v1` API.

mod agent;
mod bpf;
mod endpoint;
mod identity;
mod ipam;
mod lbmap;
mod loadbalancer;
mod monitor;
mod policy;
mod policymap;
mod resources;

pub use agent::*;
pub use bpf::*;
pub use endpoint::*;
pub use identity::*;
pub use ipam::*;
pub use lbmap::*;
pub use loadbalancer::*;
pub use monitor::*;
pub use policy::*;
pub use policymap::*;
pub use resources::*;
