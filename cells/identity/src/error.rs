//! Errors of the identity cell.

use cilium_api::{ApiError, ErrorCode};

/// What went wrong with an identity operation.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Every identity of a range is in use.
    #[error(
        "allocating an identity for {what} failed: all {kind} identities are in use; release unused ones"
    )]
    Exhausted {
        /// The labels or prefix being allocated for.
        what: String,
        /// `endpoint` or `cidr`.
        kind: &'static str,
    },
    /// An empty label set or owner was given.
    #[error("allocating an identity failed: {0}")]
    Invalid(String),
    /// No identity has this id.
    #[error("identity {0} not found; `ciliumctl identity list` shows the known ones")]
    NotFound(u32),
    /// Reading or writing `identities.json` failed.
    #[error("identity state: {0}")]
    State(#[from] cilium_node::Error),
    /// A statedb operation failed (a bug).
    #[error("identities table: {0}")]
    Db(#[from] statedb::Error),
}

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        let code = match &e {
            IdentityError::Exhausted { .. } => ErrorCode::Exhausted,
            IdentityError::Invalid(_) => ErrorCode::Invalid,
            IdentityError::NotFound(_) => ErrorCode::NotFound,
            IdentityError::State(_) | IdentityError::Db(_) => ErrorCode::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}
