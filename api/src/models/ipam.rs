//! IPAM models.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `POST /v1/ipam`: allocate an address from the node's pod range.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IpamAllocateRequest {
    /// Who owns the address (e.g. `cni:<container-id>:<ifname>`).
    pub owner: String,
    /// A specific address to allocate (CNI `IP=`); any free one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub ip: Option<Ipv4Addr>,
}

/// An allocated address with the routing information a pod needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IpamAllocation {
    /// The address.
    #[schema(value_type = String)]
    pub ip: Ipv4Addr,
    /// Owner given at allocation.
    pub owner: String,
    /// The pod range, e.g. `10.200.0.0/16`.
    pub cidr: String,
    /// The gateway pods route through.
    #[schema(value_type = String)]
    pub gateway: Ipv4Addr,
}

/// Answer of `GET /v1/ipam`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IpamStatus {
    /// The pod range.
    pub cidr: String,
    /// The gateway (router) address.
    #[schema(value_type = String)]
    pub gateway: Ipv4Addr,
    /// Total usable addresses.
    pub capacity: u64,
    /// Current allocations.
    pub allocations: Vec<IpamAllocation>,
}
