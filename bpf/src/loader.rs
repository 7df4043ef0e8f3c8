//! Loading the datapath once and attaching it to endpoints.
//!
//! The object is opened, its maps pointed at pins under the bpf root (existing compatible
//! pins are reused, so a restarted agent keeps endpoints, conntrack and counters), and
//! loaded once. Attaching an endpoint only creates (or updates) two tcx links; it never
//! loads or verifies a program.
//!
//! Skeleton storage: libbpf-rs skeletons borrow their `OpenObject` storage. The datapath
//! is a daemon singleton, so [`Datapath::load`] leaks one small `MaybeUninit<OpenObject>`
//! box per call (`Box::leak`) to get a `'static` skeleton that the struct can own. The
//! BPF object itself is still freed when the `Datapath` is dropped; only the storage box
//! (a pointer-sized struct) stays. Loading repeatedly in one process (tests) leaks one box
//! each time.

use std::fs;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libbpf_rs::query::LinkTypeInfo;
use libbpf_rs::skel::{OpenSkel as _, SkelBuilder as _};
use libbpf_rs::{
    Link, MapHandle, MapType, OpenObject, Program, TC_EGRESS, TC_INGRESS, TcHookBuilder,
};

use crate::error::{Error, Result};
use crate::events::EventReader;
use crate::maps::{
    ConfigMap, ConntrackMaps, EndpointMap, IpcacheMap, LbMaps, Maps, MetricsMap, PolicyMaps,
    TypedMap, names,
};
use crate::skel::{DatapathSkel, DatapathSkelBuilder};
use crate::sys;
use crate::types::DpConfig;

/// Default bpf root (`--bpf-root`).
pub const DEFAULT_BPF_ROOT: &str = "/sys/fs/bpf/cilium";

/// Conntrack lifetimes (whole seconds are used).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtLifetimes {
    /// TCP until ACK was seen both ways (default 60 s).
    pub tcp_syn: Duration,
    /// Established TCP (default 6 h).
    pub tcp: Duration,
    /// TCP after RST or FIN both ways (default 10 s).
    pub tcp_close: Duration,
    /// Non-TCP (default 60 s).
    pub any: Duration,
}

impl Default for CtLifetimes {
    fn default() -> Self {
        Self {
            tcp_syn: Duration::from_secs(60),
            tcp: Duration::from_secs(6 * 3600),
            tcp_close: Duration::from_secs(10),
            any: Duration::from_secs(60),
        }
    }
}

/// Which events the datapath emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventConfig {
    /// Drop events (default on).
    pub drop: bool,
    /// Trace events for new connections and TCP SYN/FIN/RST (default on).
    pub trace: bool,
    /// Policy-verdict events on new connections towards pods (default on).
    pub policy_verdict: bool,
    /// Trace every packet instead (default off; expensive).
    pub trace_all: bool,
}

impl Default for EventConfig {
    fn default() -> Self {
        Self {
            drop: true,
            trace: true,
            policy_verdict: true,
            trace_all: false,
        }
    }
}

/// Loader configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Directory on bpffs holding map pins and `links/` (created if missing).
    pub bpf_root: PathBuf,
    /// Conntrack lifetimes.
    pub ct: CtLifetimes,
    /// Event switches.
    pub events: EventConfig,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            bpf_root: PathBuf::from(DEFAULT_BPF_ROOT),
            ct: CtLifetimes::default(),
            events: EventConfig::default(),
        }
    }
}

impl DatapathConfig {
    /// The `cilium_config_v1` value for this configuration.
    pub fn dp_config(&self) -> DpConfig {
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX).max(1);
        let e = &self.events;
        let flags = u32::from(e.drop)
            | (u32::from(e.trace) << 1)
            | (u32::from(e.policy_verdict) << 2)
            | (u32::from(e.trace_all) << 3);
        DpConfig {
            ct_lifetime_tcp_syn: secs(self.ct.tcp_syn),
            ct_lifetime_tcp: secs(self.ct.tcp),
            ct_lifetime_tcp_close: secs(self.ct.tcp_close),
            ct_lifetime_any: secs(self.ct.any),
            event_flags: flags,
            pad: 0,
        }
    }
}

/// Kernel features relevant to the datapath, for `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// tcx (bpf_link based tc, kernel 6.6+).
    pub tcx: bool,
    /// netkit devices (kernel 6.7+, module or built in).
    pub netkit: bool,
    /// BPF ring buffer maps.
    pub ringbuf: bool,
    /// Kernel BTF at /sys/kernel/btf/vmlinux.
    pub btf: bool,
}

/// Probes the running kernel (in the calling thread's network namespace).
pub fn probe_features() -> Features {
    let netkit = Path::new("/sys/module/netkit").exists()
        || Path::new("/sys/kernel/btf/netkit").exists()
        || libbpf_rs::btf::Btf::from_vmlinux().is_ok_and(|btf| {
            btf.type_by_name::<libbpf_rs::btf::types::Struct<'_>>("netkit")
                .is_some()
        });
    Features {
        tcx: sys::probe_tcx(),
        netkit,
        ringbuf: MapType::RingBuf.is_supported().unwrap_or(false),
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
    }
}

/// How programs are attached to endpoint devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// tcx links pinned under `<bpf root>/links/`.
    Tcx,
    /// Legacy clsact qdisc + cls_bpf filters (handle 1, priority 1).
    Tc,
}

impl AttachMode {
    /// "tcx" / "tc".
    pub fn name(&self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Tc => "tc",
        }
    }
}

/// Direction of an attachment on the host-side device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// tc ingress: packets leaving the pod (`cil_from_container`).
    Ingress,
    /// tc egress: packets going into the pod (`cil_to_container`).
    Egress,
}

impl Direction {
    /// "ingress" / "egress".
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

/// What [`Datapath::attach_endpoint`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    /// tcx or tc.
    pub mode: AttachMode,
    /// True when existing pinned links were updated in place to the new programs (restart)
    /// instead of being created.
    pub replaced_existing: bool,
}

/// A pinned endpoint link found under `<bpf root>/links/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedLink {
    /// Interface index from the pin name.
    pub ifindex: u32,
    /// Direction from the pin name.
    pub direction: Direction,
    /// Pin path.
    pub path: PathBuf,
}

/// The loaded datapath: programs, maps and the attach logic. One per agent.
pub struct Datapath {
    skel: DatapathSkel<'static>,
    maps: Maps,
    root: PathBuf,
    mode: AttachMode,
    features: Features,
    config: DatapathConfig,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("root", &self.root)
            .field("mode", &self.mode)
            .field("features", &self.features)
            .finish_non_exhaustive()
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A pin left by an agent whose map layout differs (type, key or value size, capacity) cannot
/// be reused: libbpf would refuse to load. Such a pin is removed so the map is re-created with
/// the new layout; its contents are lost on purpose (the reconcilers rewrite the maps from
/// their tables, conntrack refills). The change is logged with both layouts.
fn replace_incompatible_pin(map: &libbpf_rs::OpenMapMut<'_>, pin: &Path) {
    use libbpf_rs::MapCore as _;
    let Ok(old) = MapHandle::from_pinned_path(pin) else {
        return;
    };
    let want = (
        map.map_type(),
        map.key_size(),
        map.value_size(),
        map.max_entries(),
    );
    let have = (
        old.map_type(),
        old.key_size(),
        old.value_size(),
        old.max_entries(),
    );
    if want == have {
        return;
    }
    drop(old);
    match fs::remove_file(pin) {
        Ok(()) => tracing::warn!(
            pin = %pin.display(),
            old = ?have,
            new = ?want,
            "pinned map has another layout (type, key size, value size, max entries): re-created"
        ),
        Err(e) => tracing::warn!(pin = %pin.display(), error = %e,
            "pinned map has another layout and its pin cannot be removed; loading will fail"),
    }
}

/// Checks that `root` (or its nearest existing ancestor) is on bpffs and creates it.
fn prepare_root(root: &Path) -> Result<()> {
    let mut probe = root;
    while !probe.exists() {
        probe = match probe.parent() {
            Some(p) => p,
            None => break,
        };
    }
    let on_bpffs = sys::is_bpffs(probe).map_err(io_err("checking the filesystem of", probe))?;
    if !on_bpffs {
        return Err(Error::BpffsNotMounted {
            path: root.to_path_buf(),
        });
    }
    let links = root.join("links");
    fs::create_dir_all(&links).map_err(io_err("creating", &links))
}

impl Datapath {
    /// Checks bpffs, creates the bpf root, opens the skeleton, pins/reuses the maps, loads
    /// the programs once and writes the runtime config.
    pub fn load(config: &DatapathConfig) -> Result<Self> {
        let root = config.bpf_root.clone();
        prepare_root(&root)?;
        let features = probe_features();
        let mode = if features.tcx {
            AttachMode::Tcx
        } else {
            AttachMode::Tc
        };

        // See the module docs: one leaked storage box per load gives a 'static skeleton.
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = DatapathSkelBuilder::default()
            .open(storage)
            .map_err(|source| Error::Load {
                stage: "open",
                source,
            })?;
        let m = &mut open.maps;
        for (map, name) in [
            (&mut m.cilium_lxc_v1, names::LXC),
            (&mut m.cilium_ipcache_v1, names::IPCACHE),
            (&mut m.cilium_ct4_v1, names::CT4),
            (&mut m.cilium_ct_any4_v1, names::CT_ANY4),
            (&mut m.cilium_metrics_v1, names::METRICS),
            (&mut m.cilium_events_v1, names::EVENTS),
            (&mut m.cilium_config_v1, names::CONFIG),
            (&mut m.cilium_policy_v1, names::POLICY),
            (&mut m.cilium_policy_cfg_v1, names::POLICY_CFG),
            (&mut m.cilium_policy_stats_v1, names::POLICY_STATS),
            (&mut m.cilium_lb4_services_v1, names::LB_SERVICES),
            (&mut m.cilium_lb4_backends_v1, names::LB_BACKENDS),
            (&mut m.cilium_lb4_reverse_nat_v1, names::LB_REVNAT),
            (&mut m.cilium_lb4_affinity_v1, names::LB_AFFINITY),
            (&mut m.cilium_lb4_maglev_v1, names::LB_MAGLEV),
            (&mut m.cilium_lb4_sk_v1, names::LB_SK),
            (&mut m.cilium_lb4_sk_fwd_v1, names::LB_SK_FWD),
            (&mut m.cilium_snat4_v1, names::SNAT4),
            (&mut m.cilium_lb4_source_range_v1, names::LB_SRC_RANGE),
            (&mut m.cilium_lb_config_v1, names::LB_CONFIG),
        ] {
            replace_incompatible_pin(map, &root.join(name));
            map.set_pin_path(root.join(name))
                .map_err(|source| Error::Load {
                    stage: "pin path",
                    source,
                })?;
        }
        let skel = open.load().map_err(|source| Error::Load {
            stage: "load",
            source,
        })?;

        let dup = |map: &libbpf_rs::Map<'_>, name: &'static str| {
            MapHandle::try_from(map).map_err(|source| Error::Map {
                map: name,
                op: "dup fd",
                source,
            })
        };
        let sm = &skel.maps;
        let maps = Maps {
            endpoints: EndpointMap(TypedMap::new(
                names::LXC,
                dup(&sm.cilium_lxc_v1, names::LXC)?,
            )?),
            ipcache: IpcacheMap(TypedMap::new(
                names::IPCACHE,
                dup(&sm.cilium_ipcache_v1, names::IPCACHE)?,
            )?),
            conntrack: ConntrackMaps {
                tcp: TypedMap::new(names::CT4, dup(&sm.cilium_ct4_v1, names::CT4)?)?,
                any: TypedMap::new(names::CT_ANY4, dup(&sm.cilium_ct_any4_v1, names::CT_ANY4)?)?,
            },
            metrics: MetricsMap(dup(&sm.cilium_metrics_v1, names::METRICS)?),
            config: ConfigMap(TypedMap::new(
                names::CONFIG,
                dup(&sm.cilium_config_v1, names::CONFIG)?,
            )?),
            events: dup(&sm.cilium_events_v1, names::EVENTS)?,
            policy: PolicyMaps::new(
                TypedMap::new(names::POLICY, dup(&sm.cilium_policy_v1, names::POLICY)?)?,
                TypedMap::new(
                    names::POLICY_CFG,
                    dup(&sm.cilium_policy_cfg_v1, names::POLICY_CFG)?,
                )?,
                dup(&sm.cilium_policy_stats_v1, names::POLICY_STATS)?,
            )?,
            lb: LbMaps {
                services: TypedMap::new(
                    names::LB_SERVICES,
                    dup(&sm.cilium_lb4_services_v1, names::LB_SERVICES)?,
                )?,
                backends: TypedMap::new(
                    names::LB_BACKENDS,
                    dup(&sm.cilium_lb4_backends_v1, names::LB_BACKENDS)?,
                )?,
                revnat: TypedMap::new(
                    names::LB_REVNAT,
                    dup(&sm.cilium_lb4_reverse_nat_v1, names::LB_REVNAT)?,
                )?,
                affinity: TypedMap::new(
                    names::LB_AFFINITY,
                    dup(&sm.cilium_lb4_affinity_v1, names::LB_AFFINITY)?,
                )?,
                maglev: dup(&sm.cilium_lb4_maglev_v1, names::LB_MAGLEV)?,
                sk: TypedMap::new(names::LB_SK, dup(&sm.cilium_lb4_sk_v1, names::LB_SK)?)?,
                sk_fwd: TypedMap::new(
                    names::LB_SK_FWD,
                    dup(&sm.cilium_lb4_sk_fwd_v1, names::LB_SK_FWD)?,
                )?,
                snat: TypedMap::new(names::SNAT4, dup(&sm.cilium_snat4_v1, names::SNAT4)?)?,
                src_range: TypedMap::new(
                    names::LB_SRC_RANGE,
                    dup(&sm.cilium_lb4_source_range_v1, names::LB_SRC_RANGE)?,
                )?,
                config: TypedMap::new(
                    names::LB_CONFIG,
                    dup(&sm.cilium_lb_config_v1, names::LB_CONFIG)?,
                )?,
            },
        };
        maps.config.set(&config.dp_config())?;
        tracing::info!(bpf_root = %root.display(), mode = mode.name(), ?features, "datapath loaded");
        Ok(Self {
            skel,
            maps,
            root,
            mode,
            features,
            config: config.clone(),
        })
    }

    /// The typed maps.
    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    /// Probed kernel features.
    pub fn features(&self) -> Features {
        self.features
    }

    /// tcx or tc.
    pub fn attach_mode(&self) -> AttachMode {
        self.mode
    }

    /// The bpf root.
    pub fn bpf_root(&self) -> &Path {
        &self.root
    }

    /// The configuration the datapath was loaded with (with later [`Self::set_config`]s).
    pub fn config(&self) -> &DatapathConfig {
        &self.config
    }

    /// Changes lifetimes/event switches at run time (programs read the map per packet).
    pub fn set_config(&mut self, config: &DatapathConfig) -> Result<()> {
        self.maps.config.set(&config.dp_config())?;
        self.config.ct = config.ct;
        self.config.events = config.events;
        Ok(())
    }

    /// A new reader on the events ring buffer.
    pub fn event_reader(&self) -> Result<EventReader> {
        let handle = MapHandle::try_from(&self.maps.events).map_err(|source| Error::Map {
            map: names::EVENTS,
            op: "dup fd",
            source,
        })?;
        EventReader::new(handle)
    }

    /// Pin path of an endpoint link: `<root>/links/<ifindex>_<ingress|egress>`.
    pub fn link_pin_path(&self, ifindex: u32, dir: Direction) -> PathBuf {
        self.root
            .join("links")
            .join(format!("{ifindex}_{}", dir.name()))
    }

    fn program(&self, dir: Direction) -> (&Program<'static>, &'static str) {
        match dir {
            Direction::Ingress => (&self.skel.progs.cil_from_container, "cil_from_container"),
            Direction::Egress => (&self.skel.progs.cil_to_container, "cil_to_container"),
        }
    }

    /// Attaches `cil_from_container` (ingress) and `cil_to_container` (egress) to the
    /// host-side device `ifindex` in the calling thread's network namespace.
    ///
    /// tcx: links are pinned, so they outlive the agent; an existing pinned link on the
    /// same device is updated in place to the current programs (no traffic gap).
    /// Idempotent. The endpoint's map entries are written separately (see [`Maps`]).
    pub fn attach_endpoint(&self, ifindex: u32, ifname: &str) -> Result<Attached> {
        let mut replaced = false;
        for dir in [Direction::Ingress, Direction::Egress] {
            replaced |= match self.mode {
                AttachMode::Tcx => self.attach_tcx(ifindex, ifname, dir)?,
                AttachMode::Tc => self.attach_tc(ifindex, ifname, dir)?,
            };
        }
        tracing::debug!(
            ifindex,
            ifname,
            mode = self.mode.name(),
            replaced,
            "endpoint attached"
        );
        Ok(Attached {
            mode: self.mode,
            replaced_existing: replaced,
        })
    }

    fn attach_tcx(&self, ifindex: u32, ifname: &str, dir: Direction) -> Result<bool> {
        let (prog, prog_name) = self.program(dir);
        attach_tcx_pinned(
            prog,
            prog_name,
            &self.link_pin_path(ifindex, dir),
            ifindex,
            ifname,
        )
    }

    fn attach_tc(&self, ifindex: u32, ifname: &str, dir: Direction) -> Result<bool> {
        let (prog, prog_name) = self.program(dir);
        let attach_err = |source| Error::Attach {
            op: "attaching",
            program: prog_name,
            ifname: ifname.to_string(),
            ifindex,
            mode: "tc",
            source,
        };
        let idx = i32::try_from(ifindex).unwrap_or(i32::MAX);
        let point = match dir {
            Direction::Ingress => TC_INGRESS,
            Direction::Egress => TC_EGRESS,
        };
        let mut hook = TcHookBuilder::new(prog.as_fd())
            .ifindex(idx)
            .replace(true)
            .handle(1)
            .priority(1)
            .hook(point);
        hook.create().map_err(attach_err)?;
        hook.attach().map_err(attach_err)?;
        Ok(false)
    }

    /// Detaches both programs from `ifindex` and removes the link pins. Succeeds when
    /// nothing is attached (or the device is already gone).
    pub fn detach_endpoint(&self, ifindex: u32, ifname: &str) -> Result<()> {
        for dir in [Direction::Ingress, Direction::Egress] {
            let pin = self.link_pin_path(ifindex, dir);
            if pin.exists() {
                if let Ok(link) = Link::open(&pin) {
                    // A link whose device is gone is already defunct; detach may fail then.
                    if let Err(error) = link.detach() {
                        tracing::debug!(%error, ifindex, ifname, "tcx link detach (device gone?)");
                    }
                }
                fs::remove_file(&pin).map_err(io_err("removing link pin", &pin))?;
            }
            if self.mode == AttachMode::Tc {
                let (prog, prog_name) = self.program(dir);
                let point = match dir {
                    Direction::Ingress => TC_INGRESS,
                    Direction::Egress => TC_EGRESS,
                };
                let mut hook = TcHookBuilder::new(prog.as_fd())
                    .ifindex(i32::try_from(ifindex).unwrap_or(i32::MAX))
                    .handle(1)
                    .priority(1)
                    .hook(point);
                match hook.detach() {
                    Ok(()) => {}
                    Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(Error::Attach {
                            op: "detaching",
                            program: prog_name,
                            ifname: ifname.to_string(),
                            ifindex,
                            mode: "tc",
                            source,
                        });
                    }
                }
            }
        }
        tracing::debug!(ifindex, ifname, "endpoint detached");
        Ok(())
    }

    /// Endpoint links pinned under `<root>/links/` (for pruning after a restart).
    pub fn pinned_links(&self) -> Result<Vec<PinnedLink>> {
        let dir = self.root.join("links");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let entry = entry.map_err(io_err("listing", &dir))?;
            let name = entry.file_name();
            let Some((idx, d)) = name.to_str().and_then(|n| n.split_once('_')) else {
                continue;
            };
            let direction = match d {
                "ingress" => Direction::Ingress,
                "egress" => Direction::Egress,
                _ => continue,
            };
            if let Ok(ifindex) = idx.parse() {
                out.push(PinnedLink {
                    ifindex,
                    direction,
                    path: entry.path(),
                });
            }
        }
        out.sort_by_key(|l| (l.ifindex, l.direction.name()));
        Ok(out)
    }
}

/// The socket load-balancing hooks, in attach order.
pub const SOCK_HOOKS: &[&str] = &[
    "connect4",
    "sendmsg4",
    "recvmsg4",
    "getpeername4",
    "sock_release",
];

/// What [`Datapath::attach_cgroup`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupAttached {
    /// The cgroup directory.
    pub cgroup: PathBuf,
    /// Hooks whose pinned link was updated in place (restart), by name.
    pub updated: Vec<&'static str>,
    /// Hooks attached anew.
    pub created: Vec<&'static str>,
}

/// Inode number of a cgroup v2 directory = its cgroup id.
fn cgroup_id(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(path)
        .map(|m| m.ino())
        .map_err(io_err("reading", path))
}

impl Datapath {
    /// `<root>/lb/links`: pins of the socket-LB cgroup links and NodePort device links.
    pub fn lb_links_dir(&self) -> PathBuf {
        self.root.join("lb").join("links")
    }

    fn sock_program(&self, hook: &str) -> Option<(&Program<'static>, &'static str)> {
        let p = &self.skel.progs;
        match hook {
            "connect4" => Some((&p.cil_sock4_connect, "cil_sock4_connect")),
            "sendmsg4" => Some((&p.cil_sock4_sendmsg, "cil_sock4_sendmsg")),
            "recvmsg4" => Some((&p.cil_sock4_recvmsg, "cil_sock4_recvmsg")),
            "getpeername4" => Some((&p.cil_sock4_getpeername, "cil_sock4_getpeername")),
            "sock_release" => Some((&p.cil_sock4_release, "cil_sock4_release")),
            _ => None,
        }
    }

    /// Attaches the socket load-balancing programs (connect4, sendmsg4, recvmsg4,
    /// getpeername4, and sock_release, which drops a socket's reverse entry) to the cgroup v2 directory `cgroup` with bpf_links pinned at
    /// `<root>/lb/links/cgroup_<hook>`, so they outlive the agent. A pinned link of an
    /// earlier run on the same cgroup is updated in place to the loaded program (no
    /// window without translation); one on another cgroup is detached and replaced.
    pub fn attach_cgroup(&self, cgroup: &Path) -> Result<CgroupAttached> {
        let dir = self.lb_links_dir();
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let id = cgroup_id(cgroup)?;
        let mut out = CgroupAttached {
            cgroup: cgroup.to_path_buf(),
            updated: Vec::new(),
            created: Vec::new(),
        };
        let file = fs::File::open(cgroup).map_err(io_err("opening cgroup", cgroup))?;
        for hook in SOCK_HOOKS {
            let Some((prog, name)) = self.sock_program(hook) else {
                continue;
            };
            let err = |op: &'static str| {
                move |source| Error::CgroupAttach {
                    op,
                    program: name,
                    cgroup: cgroup.to_path_buf(),
                    source,
                }
            };
            let pin = dir.join(format!("cgroup_{hook}"));
            if pin.exists() {
                if let Ok(mut link) = Link::open(&pin) {
                    let same = matches!(
                        link.info().map(|i| i.info),
                        Ok(LinkTypeInfo::Cgroup(c)) if c.cgroup_id == id
                    );
                    if same {
                        link.update_prog(prog).map_err(err("updating"))?;
                        out.updated.push(hook);
                        continue;
                    }
                    let _ = link.detach();
                }
                fs::remove_file(&pin).map_err(io_err("removing stale link pin", &pin))?;
            }
            let mut link = sys::attach_cgroup(prog, &file).map_err(err("attaching"))?;
            link.pin(&pin).map_err(err("pinning"))?;
            out.created.push(hook);
        }
        tracing::info!(cgroup = %cgroup.display(), updated = ?out.updated, created = ?out.created,
            "socket load balancing attached");
        Ok(out)
    }

    /// Detaches the socket load-balancing programs and removes their pins (nothing
    /// attached is fine).
    pub fn detach_cgroup(&self) -> Result<()> {
        let dir = self.lb_links_dir();
        for hook in SOCK_HOOKS {
            let pin = dir.join(format!("cgroup_{hook}"));
            if pin.exists() {
                if let Ok(link) = Link::open(&pin)
                    && let Err(error) = link.detach()
                {
                    tracing::debug!(%error, hook, "cgroup link detach");
                }
                fs::remove_file(&pin).map_err(io_err("removing link pin", &pin))?;
            }
        }
        Ok(())
    }

    /// Hooks with a pinned cgroup link.
    pub fn cgroup_links(&self) -> Vec<&'static str> {
        let dir = self.lb_links_dir();
        SOCK_HOOKS
            .iter()
            .copied()
            .filter(|h| dir.join(format!("cgroup_{h}")).exists())
            .collect()
    }

    /// Attaches `cil_from_netdev` (NodePort, tcx ingress) and `cil_to_netdev` (replies of
    /// host backends, tcx egress) to host device `ifindex`, links pinned at
    /// `<root>/lb/links/netdev_<ifindex>` and `netdev_<ifindex>_egress`; pins of an earlier
    /// run on the same device are updated in place (then `true`). Needs tcx.
    pub fn attach_netdev(&self, ifindex: u32, ifname: &str) -> Result<bool> {
        let dir = self.lb_links_dir();
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let progs = &self.skel.progs;
        let mut updated = true;
        for (prog, name, pin) in [
            (
                &progs.cil_from_netdev,
                "cil_from_netdev",
                netdev_pin(&dir, ifindex, false),
            ),
            (
                &progs.cil_to_netdev,
                "cil_to_netdev",
                netdev_pin(&dir, ifindex, true),
            ),
        ] {
            updated &= attach_tcx_pinned(prog, name, &pin, ifindex, ifname)?;
        }
        Ok(updated)
    }

    /// Detaches both NodePort programs from `ifindex` and removes their pins.
    pub fn detach_netdev(&self, ifindex: u32) -> Result<()> {
        let dir = self.lb_links_dir();
        for pin in [
            netdev_pin(&dir, ifindex, false),
            netdev_pin(&dir, ifindex, true),
        ] {
            if pin.exists() {
                if let Ok(link) = Link::open(&pin) {
                    let _ = link.detach();
                }
                fs::remove_file(&pin).map_err(io_err("removing link pin", &pin))?;
            }
        }
        Ok(())
    }

    /// Devices with a pinned NodePort link (ifindexes, sorted).
    pub fn netdev_links(&self) -> Vec<u32> {
        let mut v: Vec<u32> = fs::read_dir(self.lb_links_dir())
            .map(|rd| {
                rd.filter_map(|e| {
                    e.ok()?
                        .file_name()
                        .to_str()?
                        .strip_prefix("netdev_")?
                        .parse()
                        .ok()
                })
                .collect()
            })
            .unwrap_or_default();
        v.sort_unstable();
        v
    }
}

/// Pin of a NodePort program's link on `ifindex` (ingress or egress).
fn netdev_pin(dir: &Path, ifindex: u32, egress: bool) -> PathBuf {
    dir.join(if egress {
        format!("netdev_{ifindex}_egress")
    } else {
        format!("netdev_{ifindex}")
    })
}

/// Attaches `prog` to `ifindex` with tcx, the link pinned at `pin`. A pin of an earlier run
/// on the same device is updated in place (then `true`); a stale one (device gone, index
/// reused) is replaced.
fn attach_tcx_pinned(
    prog: &libbpf_rs::Program<'_>,
    name: &'static str,
    pin: &Path,
    ifindex: u32,
    ifname: &str,
) -> Result<bool> {
    let attach_err = |source| Error::Attach {
        op: "attaching",
        program: name,
        ifname: ifname.to_string(),
        ifindex,
        mode: "tcx",
        source,
    };
    if pin.exists() {
        if let Ok(mut link) = Link::open(pin) {
            let same_device = matches!(
                link.info().map(|i| i.info),
                Ok(LinkTypeInfo::Tcx(t)) if t.ifindex == ifindex
            );
            if same_device {
                link.update_prog(prog).map_err(attach_err)?;
                return Ok(true);
            }
        }
        tracing::info!(pin = %pin.display(), "removing stale link pin");
        fs::remove_file(pin).map_err(io_err("removing stale link pin", pin))?;
    }
    let mut link = sys::attach_tcx(prog, ifindex).map_err(attach_err)?;
    link.pin(pin).map_err(attach_err)?;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}

    #[test]
    fn daemon_types_can_cross_threads() {
        send_sync::<Datapath>();
        send_sync::<Maps>();
        send::<EventReader>();
        send::<crate::events::AsyncEventReader>();
    }

    #[test]
    fn dp_config_encodes_lifetimes_and_flags() {
        let cfg = DatapathConfig {
            ct: CtLifetimes {
                tcp: Duration::from_secs(8000),
                ..Default::default()
            },
            events: EventConfig {
                trace: false,
                trace_all: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let dp = cfg.dp_config();
        assert_eq!(dp.ct_lifetime_tcp, 8000);
        assert_eq!(dp.ct_lifetime_tcp_syn, 60);
        assert_eq!(dp.ct_lifetime_tcp_close, 10);
        assert_eq!(dp.ct_lifetime_any, 60);
        assert_eq!(dp.event_flags, 0b1101);
    }
}
