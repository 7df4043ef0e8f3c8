//! The crate's one error type.

/// What can fail in the ipcache cell.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing or deleting an entry of the BPF ipcache map failed.
    #[error(
        "ipcache map: {op} {prefix} failed: {source}; is the pinned map full or of another layout?"
    )]
    Map {
        /// "updating", "deleting" or "listing".
        op: &'static str,
        /// The prefix concerned ("*" for the whole map).
        prefix: String,
        /// The datapath error.
        #[source]
        source: Box<cilium_bpf::Error>,
    },
    /// Registering the `ipcache` table failed.
    #[error("registering the ipcache table failed: {0}")]
    Table(#[from] statedb::Error),
}
