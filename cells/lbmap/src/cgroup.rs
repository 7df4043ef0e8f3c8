//! Where the socket and NodePort programs attach: the cgroup v2 root, the agent's netns
//! cookie, the host devices.
#![allow(
    unsafe_code,
    reason = "getsockopt(SO_NETNS_COOKIE) has no safe wrapper"
)]

use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use cilium_bpf::Datapath;

/// `CGROUP2_SUPER_MAGIC` from linux/magic.h.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Whether `path` is the root or a directory of a cgroup v2 hierarchy.
pub fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| i64::from(s.filesystem_type().0 as u32) == CGROUP2_SUPER_MAGIC)
}

/// The host's cgroup v2 mount: `/sys/fs/cgroup` when it is cgroup2 (unified hierarchy),
/// else `/sys/fs/cgroup/unified` (hybrid hosts); `None` when neither is.
pub fn default_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| is_cgroup2(p))
}

/// `SO_NETNS_COOKIE` (asm-generic/socket.h).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The netns cookie of the calling thread's network namespace (what
/// `bpf_get_netns_cookie` returns there); `None` on kernels without `SO_NETNS_COOKIE`.
pub fn own_netns_cookie() -> Option<u64> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, out pointer and length for a u64 option.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    (rc == 0).then_some(cookie)
}

/// Attaches the NodePort program to each named device (missing devices are skipped with
/// a warning) and detaches it from pinned devices no longer named. Returns the devices
/// attached.
pub fn attach_devices(dp: &Datapath, devices: &[String]) -> Result<Vec<String>, cilium_bpf::Error> {
    let mut wanted = Vec::new();
    let mut out = Vec::new();
    for dev in devices {
        match nix::net::if_::if_nametoindex(dev.as_str()) {
            Ok(ifindex) => {
                dp.attach_netdev(ifindex, dev)?;
                wanted.push(ifindex);
                out.push(dev.clone());
            }
            Err(error) => {
                tracing::warn!(device = %dev, %error, "NodePort device not found; not attached");
            }
        }
    }
    for ifindex in dp.netdev_links() {
        if !wanted.contains(&ifindex) {
            dp.detach_netdev(ifindex)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_root_is_cgroup2_when_found() {
        if let Some(p) = default_root() {
            assert!(is_cgroup2(&p));
        }
        assert!(!is_cgroup2(Path::new("/proc")));
    }

    #[test]
    fn netns_cookie_is_stable_in_one_namespace() {
        if let (Some(a), Some(b)) = (own_netns_cookie(), own_netns_cookie()) {
            assert_eq!(a, b);
        }
    }
}
