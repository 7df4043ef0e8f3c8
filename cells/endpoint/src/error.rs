//! Errors of the endpoint cell and their API status codes.

use cilium_api::{ApiError, ErrorCode};

/// What went wrong with an endpoint operation.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The request is malformed (bad key, missing field).
    #[error("endpoint {key}: {reason}")]
    BadRequest {
        /// Endpoint key or id as given.
        key: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The request is well-formed but cannot be honoured (netns missing, name too long).
    #[error("endpoint {key}: {reason}")]
    Invalid {
        /// Endpoint key.
        key: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// No endpoint has this id or key.
    #[error("endpoint {0} not found; `ciliumctl endpoint list` shows the known ones")]
    NotFound(String),
    /// The key exists with different parameters.
    #[error("endpoint {key}: {reason}")]
    Conflict {
        /// Endpoint key.
        key: String,
        /// What conflicts.
        reason: String,
    },
    /// The live state of the endpoint (pod interface, address, routes, host veth, BPF entry)
    /// differs from what the agent created; served as 409 Conflict: the request is fine, the
    /// kernel state conflicts with the stored endpoint.
    #[error(
        "endpoint {endpoint}: {}; delete and re-create the attachment (CNI DEL, then ADD) to repair it",
        .problems.join("; ")
    )]
    Mismatch {
        /// `ID (KEY)`.
        endpoint: String,
        /// One sentence per difference, e.g. "address 10.215.0.2/32 is missing on eth0 in
        /// /var/run/netns/pod1".
        problems: Vec<String>,
    },
    /// All 65535 endpoint ids are in use.
    #[error("endpoint {0}: no free endpoint id left; delete unused endpoints")]
    IdsExhausted(String),
    /// IPAM refused the allocation.
    #[error("endpoint {endpoint}: allocating an IPv4 address failed: {source}")]
    Ipam {
        /// `endpoint ID (KEY)`.
        endpoint: String,
        /// The IPAM error.
        source: cilium_ipam::IpamError,
    },
    /// A plumbing step (netlink, BPF map, attach, state) failed; everything done before it
    /// was undone.
    #[error("endpoint {endpoint}: {step} failed: {error}")]
    Step {
        /// `endpoint ID (KEY)`.
        endpoint: String,
        /// The step, e.g. "creating veth lxc3f2a with peer eth0 in /var/run/netns/x".
        step: String,
        /// The underlying error.
        error: String,
    },
    /// Writing or reading `endpoints.json` failed.
    #[error("endpoint state: {0}")]
    State(#[from] cilium_node::Error),
    /// A statedb operation failed (a bug).
    #[error("endpoint table: {0}")]
    Db(#[from] statedb::Error),
}

impl EndpointError {
    /// The API error class of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest { .. } => ErrorCode::BadRequest,
            Self::Invalid { .. } => ErrorCode::Invalid,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Conflict { .. } | Self::Mismatch { .. } => ErrorCode::Conflict,
            Self::IdsExhausted(_) => ErrorCode::Exhausted,
            Self::Ipam { source, .. } => ipam_code(source),
            Self::Step { .. } | Self::State(_) | Self::Db(_) => ErrorCode::Internal,
        }
    }
}

fn ipam_code(e: &cilium_ipam::IpamError) -> ErrorCode {
    use cilium_ipam::IpamError as E;
    match e {
        E::Exhausted { .. } => ErrorCode::Exhausted,
        E::InUse { .. } | E::OwnerHoldsOther { .. } => ErrorCode::Conflict,
        E::State(_) | E::Db(_) => ErrorCode::Internal,
        _ => ErrorCode::Invalid,
    }
}

impl From<EndpointError> for ApiError {
    fn from(e: EndpointError) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}
