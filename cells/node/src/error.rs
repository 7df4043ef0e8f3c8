//! Errors of the node cell and state files.

use std::path::PathBuf;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system operation failed.
    #[error("cannot {what} at {}: {source}", .path.display())]
    Io {
        /// What was being done.
        what: String,
        /// On which path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A state file holds something that cannot be decoded.
    #[error("state file {} is corrupt: {source}; move it away to start from scratch", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The decoder error.
        source: serde_json::Error,
    },
    /// A setting is invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// The flag or field.
        field: String,
        /// Why.
        reason: String,
    },
}
