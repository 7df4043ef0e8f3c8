//! The crate's one error type.

/// What can fail in the load-balancer map cell.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A BPF load-balancer map operation failed.
    #[error(
        "lb maps: {op} frontend {frontend} failed: {source}; is a cilium_lb4_* map full or a \
         pinned map of another layout under the bpf root?"
    )]
    Map {
        /// What was being done, e.g. "writing backends of".
        op: &'static str,
        /// The frontend concerned (`addr:port/proto`, or `-`).
        frontend: String,
        /// The datapath error.
        #[source]
        source: Box<cilium_bpf::Error>,
    },
    /// A flag value is invalid.
    #[error("invalid flag --{flag}={value}: {reason}")]
    Flag {
        /// Flag name.
        flag: &'static str,
        /// The value given.
        value: String,
        /// What is wrong and what to use instead.
        reason: String,
    },
    /// The end-of-batch flush of removed backends failed (the batch's frontends are retried).
    #[error("lb maps: flushing the flows of removed backends failed: {reason}")]
    Deferred {
        /// The underlying error.
        reason: String,
    },
    /// No cgroup v2 hierarchy was found for the socket load-balancing programs.
    #[error(
        "no cgroup v2 mount found at /sys/fs/cgroup or /sys/fs/cgroup/unified; mount one \
         (mount -t cgroup2 none /sys/fs/cgroup/unified) or pass --cgroup-root"
    )]
    NoCgroup2,
}
