//! The few raw kernel calls libbpf-rs 0.27 does not wrap: tcx attach, tcx probe,
//! statfs for the bpffs check, CLOCK_BOOTTIME.
#![allow(
    unsafe_code,
    reason = "FFI to libbpf-sys and libc at the kernel boundary"
)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::ptr::NonNull;

use libbpf_rs::{AsRawLibbpf as _, Link, Program};

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` is on a bpf filesystem.
pub(crate) fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: zeroed statfs is a valid out-parameter; `c` is a valid NUL-terminated string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // f_type is i64 on x86_64 but another width on some arches; compare as i128.
    Ok(i128::from(st.f_type) == i128::from(BPF_FS_MAGIC))
}

/// Seconds of CLOCK_BOOTTIME, the clock conntrack lifetimes use.
pub fn boot_time_secs() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter; CLOCK_BOOTTIME always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u32::try_from(ts.tv_sec).unwrap_or(u32::MAX)
}

/// Attaches `prog` to `ifindex` through tcx; the direction comes from the program's
/// expected attach type (its `SEC("tcx/ingress")` / `SEC("tcx/egress")`).
pub(crate) fn attach_tcx(prog: &Program<'_>, ifindex: u32) -> Result<Link, libbpf_rs::Error> {
    let opts = libbpf_sys::bpf_tcx_opts {
        sz: size_of::<libbpf_sys::bpf_tcx_opts>() as libbpf_sys::size_t,
        ..Default::default()
    };
    let ifindex = i32::try_from(ifindex)
        .map_err(|_| libbpf_rs::Error::from(io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: the program pointer comes from a loaded skeleton that outlives the call;
    // opts is initialised with its size as libbpf requires.
    let ptr = unsafe {
        libbpf_sys::bpf_program__attach_tcx(prog.as_libbpf_object().as_ptr(), ifindex, &opts)
    };
    let ptr =
        NonNull::new(ptr).ok_or_else(|| libbpf_rs::Error::from(io::Error::last_os_error()))?;
    // SAFETY: a non-NULL pointer from bpf_program__attach_tcx is an owned bpf_link.
    Ok(unsafe { Link::from_ptr(ptr) })
}

/// Attaches a cgroup program (`SEC("cgroup/...")`) to the cgroup directory `cgroup` as a
/// bpf_link.
pub(crate) fn attach_cgroup(
    prog: &Program<'_>,
    cgroup: &std::fs::File,
) -> Result<Link, libbpf_rs::Error> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: the program pointer comes from a loaded skeleton that outlives the call; the
    // cgroup fd is open for the duration of the call.
    let ptr = unsafe {
        libbpf_sys::bpf_program__attach_cgroup(prog.as_libbpf_object().as_ptr(), cgroup.as_raw_fd())
    };
    let ptr =
        NonNull::new(ptr).ok_or_else(|| libbpf_rs::Error::from(io::Error::last_os_error()))?;
    // SAFETY: a non-NULL pointer from bpf_program__attach_cgroup is an owned bpf_link.
    Ok(unsafe { Link::from_ptr(ptr) })
}

/// Whether the kernel supports tcx: query the tcx ingress chain of `lo` (ifindex 1).
pub(crate) fn probe_tcx() -> bool {
    // SAFETY: an all-zero bpf_prog_query_opts (NULL arrays) is valid; sz is set below.
    let mut opts: libbpf_sys::bpf_prog_query_opts = unsafe { std::mem::zeroed() };
    opts.sz = size_of::<libbpf_sys::bpf_prog_query_opts>() as libbpf_sys::size_t;
    // SAFETY: opts is valid and has no output arrays, so only counts are written.
    let rc = unsafe { libbpf_sys::bpf_prog_query_opts(1, libbpf_sys::BPF_TCX_INGRESS, &mut opts) };
    rc == 0
}
