//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can fail in the datapath crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bpf root is not on a mounted bpf filesystem.
    #[error(
        "bpf root {path}: not on a bpf filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf` \
         or point --bpf-root below a bpffs mount"
    )]
    BpffsNotMounted {
        /// The configured bpf root.
        path: PathBuf,
    },
    /// A filesystem operation on a pin path or the bpf root failed.
    #[error("{op} {path} failed: {source}")]
    Io {
        /// What was being done ("creating", "removing", ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Opening, pinning or loading the BPF object failed.
    #[error(
        "loading the datapath ({stage}) failed: {source}; a pinned map with an older layout under \
         the bpf root must be removed, and the kernel needs BTF and BPF_MAP_TYPE_RINGBUF"
    )]
    Load {
        /// Which step: "open", "pin path", "load".
        stage: &'static str,
        /// libbpf's error.
        #[source]
        source: libbpf_rs::Error,
    },
    /// A map operation failed.
    #[error("map {map}: {op} failed: {source}")]
    Map {
        /// Map name, e.g. `cilium_lxc_v1`.
        map: &'static str,
        /// Operation: "update", "lookup", "delete", "iterate", ...
        op: &'static str,
        /// libbpf's error.
        #[source]
        source: libbpf_rs::Error,
    },
    /// A map value had an unexpected size (map created with another layout).
    #[error(
        "map {map}: {what} is {got} bytes, expected {expected}; the pinned map has another layout"
    )]
    Layout {
        /// Map name.
        map: &'static str,
        /// "key" or "value".
        what: &'static str,
        /// Size found.
        got: usize,
        /// Size expected by this crate.
        expected: usize,
    },
    /// Attaching or detaching a program on an interface failed.
    #[error(
        "{op} {program} on {ifname} (ifindex {ifindex}) via {mode} failed: {source}; \
         is the device gone (pod deleted) or in another network namespace?"
    )]
    Attach {
        /// "attaching" or "detaching".
        op: &'static str,
        /// Program name.
        program: &'static str,
        /// Interface name.
        ifname: String,
        /// Interface index.
        ifindex: u32,
        /// "tcx" or "tc".
        mode: &'static str,
        /// libbpf's error.
        #[source]
        source: libbpf_rs::Error,
    },
    /// Attaching or detaching a socket load-balancing program on a cgroup failed.
    #[error(
        "{op} {program} on cgroup {cgroup} failed: {source}; is --cgroup-root a cgroup v2 \
         directory (mount -t cgroup2 none /sys/fs/cgroup)?"
    )]
    CgroupAttach {
        /// "attaching", "updating" or "detaching".
        op: &'static str,
        /// Program name.
        program: &'static str,
        /// The cgroup directory.
        cgroup: PathBuf,
        /// libbpf's error.
        #[source]
        source: libbpf_rs::Error,
    },
    /// A ring-buffer record could not be decoded.
    #[error("event decode failed: {reason} (record of {len} bytes)")]
    EventDecode {
        /// Why.
        reason: &'static str,
        /// Record length.
        len: usize,
    },
    /// Setting up or polling the events ring buffer failed.
    #[error("events ring buffer: {op} failed: {source}")]
    RingBuffer {
        /// Operation.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: libbpf_rs::Error,
    },
    /// Registering the ring buffer with tokio failed.
    #[error(
        "events ring buffer: registering the epoll fd with tokio failed: {0}; is a tokio runtime running?"
    )]
    Async(#[source] std::io::Error),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
