//! Errors of the policy cell.

use cilium_api::{ApiError, ErrorCode};

/// What can go wrong in the policy cell.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A statedb operation failed.
    #[error("policy state database operation failed: {0}")]
    Db(#[from] statedb::Error),
    /// Registering a policy kind with the resources registry failed.
    #[error("registering policy kind {kind} failed: {reason}")]
    Register {
        /// The kind.
        kind: &'static str,
        /// Why.
        reason: String,
    },
    /// `explain` or a route named a pod that has no endpoint on this node.
    #[error("pod {pod} has no endpoint on this node; check `ciliumctl endpoint list`")]
    UnknownPod {
        /// `namespace/name`.
        pod: String,
    },
    /// A route named an endpoint id that does not exist.
    #[error("endpoint {id} not found; check `ciliumctl endpoint list`")]
    UnknownEndpoint {
        /// The id.
        id: String,
    },
    /// A request argument is malformed.
    #[error("invalid {what}: {reason}")]
    BadArgument {
        /// Which argument.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> Self {
        let code = match &e {
            PolicyError::Db(_) | PolicyError::Register { .. } => ErrorCode::Internal,
            PolicyError::UnknownPod { .. } | PolicyError::UnknownEndpoint { .. } => {
                ErrorCode::NotFound
            }
            PolicyError::BadArgument { .. } => ErrorCode::BadRequest,
        };
        ApiError::new(code, e.to_string())
    }
}
