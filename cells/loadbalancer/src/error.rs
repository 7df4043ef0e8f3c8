//! Errors of the loadbalancer cell.

/// What went wrong in the load-balancing control plane.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// Reading or writing `<state-dir>/lb.json` failed.
    #[error("load-balancer state (lb.json): {0}; check the state directory (--state-dir)")]
    State(#[from] cilium_node::Error),
    /// A table operation failed.
    #[error("load-balancer tables: {0}")]
    Db(#[from] statedb::Error),
    /// Registering the Service or EndpointSlice kind failed.
    #[error("registering kind {kind}: {reason}")]
    Register {
        /// The kind.
        kind: &'static str,
        /// Why.
        reason: String,
    },
    /// A flag value is unusable.
    #[error("flag {flag}: {reason}")]
    Config {
        /// The flag.
        flag: &'static str,
        /// Why.
        reason: String,
    },
    /// The persisted state holds an entry that cannot be read.
    #[error(
        "state file {path}: entry {entry:?} cannot be decoded: {reason}; move the file away to start from scratch"
    )]
    CorruptState {
        /// The file.
        path: String,
        /// The entry's key.
        entry: String,
        /// Why.
        reason: String,
    },
}
