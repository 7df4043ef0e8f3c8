//! Loading the datapath once: mount bpffs if needed, load, describe it for `/v1/status`.

use std::collections::BTreeMap;
use std::path::Path;

use cilium_api::models::DatapathStatus;
use cilium_bpf::Datapath;

use crate::config::{DatapathFlags, DatapathMode};
use crate::error::Error;

/// Where bpffs is expected.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| i64::from(s.filesystem_type().0 as u32) == BPF_FS_MAGIC)
}

/// Mounts bpffs at `/sys/fs/bpf` when `bpf_root` lies below it and it is not mounted yet.
pub fn ensure_bpffs(bpf_root: &Path) -> Result<(), Error> {
    let mount = Path::new(BPFFS_MOUNT);
    if !bpf_root.starts_with(mount) || is_bpffs(mount) {
        return Ok(());
    }
    let map = |source| Error::Mount {
        path: mount.to_path_buf(),
        source,
    };
    nix::unistd::mkdir(mount, nix::sys::stat::Mode::from_bits_truncate(0o755))
        .or_else(|e| {
            if e == nix::Error::EEXIST {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(map)?;
    nix::mount::mount(
        Some("bpf"),
        mount,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(map)?;
    tracing::info!(path = BPFFS_MOUNT, "mounted bpffs");
    Ok(())
}

/// Checks the mode, mounts bpffs if needed and loads the datapath (once per agent).
pub fn load(flags: &DatapathFlags) -> Result<Datapath, Error> {
    if flags.datapath_mode != DatapathMode::Veth {
        let why = if cilium_bpf::probe_features().netkit {
            "the agent does not support netkit devices yet".to_string()
        } else {
            "this kernel has no netkit driver (CONFIG_NETKIT, kernel 6.7+), and the agent \
             does not support netkit devices yet"
                .to_string()
        };
        return Err(Error::UnsupportedMode {
            mode: flags.datapath_mode.name().to_string(),
            why,
        });
    }
    ensure_bpffs(&flags.bpf_root)?;
    Datapath::load(&flags.loader_config()).map_err(|source| Error::Load {
        root: flags.bpf_root.clone(),
        source,
    })
}

/// The `datapath` part of `GET /v1/status`.
pub fn status(dp: &Datapath, mode: DatapathMode) -> DatapathStatus {
    let f = dp.features();
    let features = BTreeMap::from([
        ("tcx".to_string(), f.tcx),
        ("netkit".to_string(), f.netkit),
        ("ringbuf".to_string(), f.ringbuf),
        ("btf".to_string(), f.btf),
    ]);
    DatapathStatus {
        mode: mode.name().to_string(),
        attach: dp.attach_mode().name().to_string(),
        features,
        bpf_root: dp.bpf_root().display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netkit_is_refused_clearly_before_touching_the_kernel() {
        let flags = DatapathFlags {
            datapath_mode: DatapathMode::Netkit,
            bpf_root: "/nonexistent/bpf".into(),
            ..Default::default()
        };
        let err = load(&flags).unwrap_err().to_string();
        assert!(err.contains("does not support netkit devices yet"), "{err}");
        assert!(err.contains("--datapath-mode veth"), "{err}");
    }

    #[test]
    fn roots_outside_sys_fs_bpf_are_not_mounted() {
        assert!(ensure_bpffs(Path::new("/tmp/not-bpf")).is_ok());
    }
}
