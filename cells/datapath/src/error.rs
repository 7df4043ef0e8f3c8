//! The crate's one error type.

use std::path::PathBuf;

/// What can fail in the datapath cell.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--datapath-mode` names a mode this agent cannot run.
    #[error("--datapath-mode {mode:?} cannot run: {why}; use --datapath-mode veth")]
    UnsupportedMode {
        /// The configured mode.
        mode: String,
        /// Why: what the kernel lacks, or that the agent does not support it yet.
        why: String,
    },
    /// A duration flag could not be parsed or is out of range.
    #[error("{flag}: {reason}")]
    InvalidFlag {
        /// The flag, e.g. `--conntrack-gc-min-interval`.
        flag: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// Mounting bpffs at /sys/fs/bpf failed.
    #[error(
        "mounting bpffs at {path} failed: {source}; mount it yourself with \
         `mount -t bpf bpf {path}` (the agent needs root / CAP_SYS_ADMIN)"
    )]
    Mount {
        /// Mount point.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
    /// Loading the BPF datapath failed.
    #[error("loading the datapath under --bpf-root {root} failed: {source}")]
    Load {
        /// The bpf root.
        root: PathBuf,
        /// The loader's error.
        #[source]
        source: cilium_bpf::Error,
    },
    /// Reading or writing a BPF map failed.
    #[error(transparent)]
    Bpf(#[from] cilium_bpf::Error),
    /// Registering a metric failed (name clash in the registry).
    #[error("registering datapath metrics failed: {0}")]
    Metrics(#[from] prometheus::Error),
}
