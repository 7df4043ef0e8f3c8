//! Errors of the IPAM cell.

use std::net::Ipv4Addr;

use cilium_api::{ApiError, ErrorCode};

/// What went wrong allocating or releasing a pod address.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every usable address of the pod range is allocated.
    #[error(
        "pod range {cidr} is exhausted ({capacity} addresses in use); release addresses or widen --ipv4-pod-cidr"
    )]
    Exhausted {
        /// The pod range.
        cidr: String,
        /// Usable addresses in the range.
        capacity: u64,
    },
    /// A requested address is outside the pod range.
    #[error("address {ip} is outside the pod range {cidr}; request an address inside it")]
    OutOfRange {
        /// The requested address.
        ip: Ipv4Addr,
        /// The pod range.
        cidr: String,
    },
    /// A requested address is the network, gateway or broadcast address.
    #[error("address {ip} is the {what} address of {cidr} and cannot be allocated")]
    Reserved {
        /// The requested address.
        ip: Ipv4Addr,
        /// network, gateway or broadcast.
        what: &'static str,
        /// The pod range.
        cidr: String,
    },
    /// A requested address belongs to another owner.
    #[error("address {ip} is already allocated to {owner:?}; release it first or request another")]
    InUse {
        /// The requested address.
        ip: Ipv4Addr,
        /// Its current owner.
        owner: String,
    },
    /// The owner already holds a different address than the one requested.
    #[error(
        "owner {owner:?} already holds {held}, not the requested {requested}; release it first"
    )]
    OwnerHoldsOther {
        /// The owner.
        owner: String,
        /// The address it holds.
        held: Ipv4Addr,
        /// The address it asked for.
        requested: Ipv4Addr,
    },
    /// The owner string is empty or too long.
    #[error("invalid owner {owner:?}: {reason}")]
    InvalidOwner {
        /// The owner given.
        owner: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// The configured pod range cannot hold any pod.
    #[error("--ipv4-pod-cidr {cidr}: {reason}")]
    InvalidCidr {
        /// The configured range.
        cidr: String,
        /// Why it is unusable.
        reason: String,
    },
    /// Reading or writing `ipam.json` failed.
    #[error("IPAM state: {0}")]
    State(#[from] cilium_node::Error),
    /// Writing the `ipam` table failed.
    #[error("IPAM table: {0}")]
    Db(#[from] statedb::Error),
}

impl From<IpamError> for ApiError {
    fn from(e: IpamError) -> Self {
        let code = match &e {
            IpamError::Exhausted { .. } => ErrorCode::Exhausted,
            IpamError::OutOfRange { .. }
            | IpamError::Reserved { .. }
            | IpamError::InvalidOwner { .. }
            | IpamError::InvalidCidr { .. } => ErrorCode::Invalid,
            IpamError::InUse { .. } | IpamError::OwnerHoldsOther { .. } => ErrorCode::Conflict,
            IpamError::State(_) | IpamError::Db(_) => ErrorCode::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}
