//! The crate's one error type.

/// What can fail in the policy map cell.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A BPF policy map operation failed.
    #[error(
        "policy maps: {op} endpoint {endpoint} failed: {source}; is cilium_policy_v1 full \
         (524288 entries) or a pinned map of another layout under the bpf root?"
    )]
    Map {
        /// What was being done, e.g. "writing entries of".
        op: &'static str,
        /// The endpoint concerned (0 for the whole map).
        endpoint: u16,
        /// The datapath error.
        #[source]
        source: Box<cilium_bpf::Error>,
    },
    /// An invariant of this crate was broken (a bug).
    #[error("policy map reconciler: internal error: {0}; please report it")]
    Internal(&'static str),
}
