//! Netlink plumbing on one dedicated OS thread.
//!
//! Every request runs on a long-lived thread with its own current-thread tokio runtime. The
//! thread lives in the host network namespace; to configure a pod's side it enters the pod's
//! namespace with `setns` only long enough to open a netlink socket there (a socket stays bound
//! to the namespace it was created in) and switches back at once. No tokio worker thread of
//! the agent ever changes namespace.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use nix::sched::{CloneFlags, setns};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tokio::sync::{mpsc, oneshot};

/// Failure of one plumbing step: which step and the kernel's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    /// What was being done, e.g. "creating veth lxc3f2a".
    pub step: String,
    /// The underlying error text.
    pub error: String,
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.step, self.error)
    }
}

type StepResult<T> = Result<T, StepError>;

fn step_err(step: impl Into<String>) -> impl FnOnce(String) -> StepError {
    let step = step.into();
    move |error| StepError { step, error }
}

/// What a veth for one endpoint looks like.
#[derive(Debug, Clone)]
pub struct VethSpec {
    /// Host-side name (`lxc…`).
    pub host_ifname: String,
    /// Pod network namespace path.
    pub netns: PathBuf,
    /// Interface name inside the pod.
    pub ifname: String,
    /// MTU of both ends.
    pub mtu: u32,
    /// Pod address (installed as /32).
    pub ip: Ipv4Addr,
    /// Gateway (on-link route plus default route through it).
    pub gateway: Ipv4Addr,
}

/// What the kernel assigned to a new veth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VethInfo {
    /// Host-side ifindex.
    pub host_ifindex: u32,
    /// Host-side MAC.
    pub host_mac: [u8; 6],
    /// Pod-side MAC.
    pub pod_mac: [u8; 6],
}

/// Prefix length of the pod address installed on the pod interface.
pub const POD_PREFIX_LEN: u8 = 32;

/// What the live state of one endpoint should look like, for [`Netlink::verify`].
#[derive(Debug, Clone)]
pub struct VerifySpec {
    /// Pod network namespace path.
    pub netns: PathBuf,
    /// Interface name inside the pod.
    pub ifname: String,
    /// Pod-side MAC the endpoint recorded (`None`: not checked).
    pub mac: Option<[u8; 6]>,
    /// Pod address.
    pub ip: Ipv4Addr,
    /// Prefix length the address must carry.
    pub prefix_len: u8,
    /// Gateway: an on-link route to it and the default route through it.
    pub gateway: Ipv4Addr,
    /// Host-side veth name.
    pub host_ifname: String,
    /// Host-side ifindex the endpoint recorded.
    pub host_ifindex: u32,
}

/// A host link found by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLink {
    /// ifindex.
    pub ifindex: u32,
    /// MAC.
    pub mac: [u8; 6],
}

enum Request {
    EnsureHostDevice {
        name: String,
        addr: Ipv4Addr,
        reply: oneshot::Sender<StepResult<()>>,
    },
    CreateVeth {
        spec: VethSpec,
        reply: oneshot::Sender<StepResult<VethInfo>>,
    },
    DeleteLink {
        name: String,
        reply: oneshot::Sender<StepResult<bool>>,
    },
    LinkByName {
        name: String,
        reply: oneshot::Sender<StepResult<Option<HostLink>>>,
    },
    DelAddr {
        name: String,
        addr: Ipv4Addr,
        reply: oneshot::Sender<StepResult<()>>,
    },
    Verify {
        spec: VerifySpec,
        reply: oneshot::Sender<StepResult<Vec<String>>>,
    },
}

/// Handle to the netlink worker thread; cheap to clone. The thread ends when every handle is
/// dropped.
#[derive(Debug, Clone)]
pub struct Netlink {
    tx: mpsc::UnboundedSender<Request>,
}

impl Netlink {
    /// Starts the worker thread (opens a netlink socket in the current namespace).
    pub fn start() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("endpoint-netlink".into())
            .spawn(move || worker(rx, ready_tx))?;
        ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("netlink worker thread died at start"))??;
        Ok(Self { tx })
    }

    async fn call<T>(
        &self,
        what: &str,
        make: impl FnOnce(oneshot::Sender<StepResult<T>>) -> Request,
    ) -> StepResult<T> {
        let (reply, rx) = oneshot::channel();
        let gone = || StepError {
            step: what.to_string(),
            error: "the netlink worker thread is gone; restart the agent".into(),
        };
        self.tx.send(make(reply)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Creates the host device `name` (a veth pair with peer `cilium_net`-style name, if
    /// absent), adds `addr/32` (if absent) and brings both ends up.
    pub async fn ensure_host_device(&self, name: &str, addr: Ipv4Addr) -> StepResult<()> {
        let name = name.to_string();
        self.call("creating the host device", |reply| {
            Request::EnsureHostDevice { name, addr, reply }
        })
        .await
    }

    /// Removes `addr/32` from device `name` (absent is fine).
    pub async fn del_addr(&self, name: &str, addr: Ipv4Addr) -> StepResult<()> {
        let name = name.to_string();
        self.call("removing an address", |reply| Request::DelAddr {
            name,
            addr,
            reply,
        })
        .await
    }

    /// Creates and configures the veth pair of one endpoint; on failure nothing is left.
    pub async fn create_veth(&self, spec: VethSpec) -> StepResult<VethInfo> {
        self.call("creating the veth pair", |reply| Request::CreateVeth {
            spec,
            reply,
        })
        .await
    }

    /// Deletes host link `name` (its veth peer goes with it). `Ok(false)` when absent.
    pub async fn delete_link(&self, name: &str) -> StepResult<bool> {
        let name = name.to_string();
        self.call("deleting a link", |reply| Request::DeleteLink {
            name,
            reply,
        })
        .await
    }

    /// Compares the live state of one endpoint with `spec`: inside the pod namespace the
    /// interface (present, up, MAC), its address, the gateway route and the default route; on
    /// the host the veth (present, up, ifindex). Returns one sentence per difference (empty
    /// when everything matches); `Err` only when the check itself could not run.
    pub async fn verify(&self, spec: VerifySpec) -> StepResult<Vec<String>> {
        self.call("verifying an endpoint", |reply| Request::Verify {
            spec,
            reply,
        })
        .await
    }

    /// Looks up a host link by name.
    pub async fn link_by_name(&self, name: &str) -> StepResult<Option<HostLink>> {
        let name = name.to_string();
        self.call("looking up a link", |reply| Request::LinkByName {
            name,
            reply,
        })
        .await
    }
}

fn worker(
    mut rx: mpsc::UnboundedReceiver<Request>,
    ready: std::sync::mpsc::Sender<std::io::Result<()>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let (conn, handle, _) = match rtnetlink::new_connection() {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let conn_task = tokio::spawn(conn);
        let _ = ready.send(Ok(()));
        while let Some(req) = rx.recv().await {
            match req {
                Request::EnsureHostDevice { name, addr, reply } => {
                    let _ = reply.send(ensure_host_device(&handle, &name, addr).await);
                }
                Request::DelAddr { name, addr, reply } => {
                    let _ = reply.send(del_addr(&handle, &name, addr).await);
                }
                Request::CreateVeth { spec, reply } => {
                    let res = create_veth(&handle, &spec).await;
                    if res.is_err() {
                        // Undo: the host side takes the peer (wherever it is) with it.
                        if let Err(e) = delete_link(&handle, &spec.host_ifname).await {
                            tracing::warn!(ifname = %spec.host_ifname, error = %e,
                                "removing a half-created veth failed");
                        }
                    }
                    let fatal = matches!(&res, Err(e) if e.step.starts_with("FATAL"));
                    let _ = reply.send(res);
                    if fatal {
                        // The thread could not return to the host namespace: stop serving.
                        break;
                    }
                }
                Request::DeleteLink { name, reply } => {
                    let _ = reply.send(delete_link(&handle, &name).await);
                }
                Request::LinkByName { name, reply } => {
                    let _ = reply.send(link_by_name(&handle, &name).await);
                }
                Request::Verify { spec, reply } => {
                    let res = verify(&handle, &spec).await;
                    let fatal = matches!(&res, Err(e) if e.step.starts_with("FATAL"));
                    let _ = reply.send(res);
                    if fatal {
                        break;
                    }
                }
            }
        }
        conn_task.abort();
    });
}

fn nl_err(e: rtnetlink::Error) -> String {
    match &e {
        rtnetlink::Error::NetlinkError(m) => match m.code {
            Some(code) => std::io::Error::from_raw_os_error(-code.get()).to_string(),
            None => e.to_string(),
        },
        _ => e.to_string(),
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn mac_of(msg: &LinkMessage) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for a in &msg.attributes {
        if let LinkAttribute::Address(bytes) = a
            && bytes.len() == 6
        {
            mac.copy_from_slice(bytes);
        }
    }
    mac
}

async fn get_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    let mut s = handle.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(m) => Ok(m),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn link_by_name(handle: &Handle, name: &str) -> StepResult<Option<HostLink>> {
    let msg = get_link(handle, name)
        .await
        .map_err(|e| step_err(format!("looking up link {name}"))(nl_err(e)))?;
    Ok(msg.map(|m| HostLink {
        ifindex: m.header.index,
        mac: mac_of(&m),
    }))
}

async fn delete_link(handle: &Handle, name: &str) -> StepResult<bool> {
    let step = || format!("deleting link {name}");
    let Some(msg) = get_link(handle, name)
        .await
        .map_err(|e| step_err(step())(nl_err(e)))?
    else {
        return Ok(false);
    };
    match handle.link().del(msg.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(step_err(step())(nl_err(e))),
    }
}

async fn ensure_host_device(handle: &Handle, name: &str, addr: Ipv4Addr) -> StepResult<()> {
    let link = match get_link(handle, name)
        .await
        .map_err(|e| step_err(format!("looking up {name}"))(nl_err(e)))?
    {
        Some(l) => l,
        None => {
            // A veth pair like Cilium's cilium_host/cilium_net: works on kernels built
            // without the dummy driver, and the address on an up device is local.
            let peer = host_peer_name(name);
            match handle
                .link()
                .add(LinkVeth::new(name, &peer).build())
                .execute()
                .await
            {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => {
                    return Err(step_err(format!("creating veth pair {name}/{peer}"))(
                        nl_err(e),
                    ));
                }
            }
            if let Some(p) = get_link(handle, &peer)
                .await
                .map_err(|e| step_err(format!("looking up {peer}"))(nl_err(e)))?
            {
                handle
                    .link()
                    .set(LinkUnspec::new_with_index(p.header.index).up().build())
                    .execute()
                    .await
                    .map_err(|e| step_err(format!("bringing {peer} up"))(nl_err(e)))?;
            }
            get_link(handle, name)
                .await
                .map_err(|e| step_err(format!("looking up {name}"))(nl_err(e)))?
                .ok_or_else(|| StepError {
                    step: format!("creating host device {name}"),
                    error: "device vanished right after creation".into(),
                })?
        }
    };
    let idx = link.header.index;
    match handle
        .address()
        .add(idx, IpAddr::V4(addr), 32)
        .execute()
        .await
    {
        Ok(()) => {}
        Err(e) if errno(&e) == Some(libc::EEXIST) => {}
        Err(e) => return Err(step_err(format!("adding {addr}/32 to {name}"))(nl_err(e))),
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(|e| step_err(format!("bringing {name} up"))(nl_err(e)))
}

/// Peer of the host device: `cilium_host` -> `cilium_net`, anything else -> `<name>_p`
/// (truncated to 15 characters).
fn host_peer_name(name: &str) -> String {
    match name.strip_suffix("_host") {
        Some(base) => format!("{base}_net"),
        None => format!("{name}_p").chars().take(15).collect(),
    }
}

async fn del_addr(handle: &Handle, name: &str, addr: Ipv4Addr) -> StepResult<()> {
    let step = || format!("removing {addr}/32 from {name}");
    let Some(link) = get_link(handle, name)
        .await
        .map_err(|e| step_err(step())(nl_err(e)))?
    else {
        return Ok(());
    };
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(link.header.index)
        .execute();
    while let Some(msg) = addrs
        .try_next()
        .await
        .map_err(|e| step_err(step())(nl_err(e)))?
    {
        let matches = msg.attributes.iter().any(|a| {
            matches!(a, rtnetlink::packet_route::address::AddressAttribute::Address(IpAddr::V4(a)) if *a == addr)
        });
        if matches {
            handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(|e| step_err(step())(nl_err(e)))?;
        }
    }
    Ok(())
}

/// Opens a netlink connection inside the namespace at `path`: setns on this thread, open
/// the socket, setns back. Errors whose step starts with "FATAL" mean the thread is stuck
/// in the wrong namespace.
fn connect_in_netns(path: &Path) -> StepResult<(Handle, tokio::task::JoinHandle<()>)> {
    let target = File::open(path).map_err(|e| StepError {
        step: format!("opening network namespace {}", path.display()),
        error: e.to_string(),
    })?;
    let own = File::open("/proc/thread-self/ns/net").map_err(|e| StepError {
        step: "opening the agent's own network namespace".into(),
        error: e.to_string(),
    })?;
    setns(&target, CloneFlags::CLONE_NEWNET).map_err(|e| StepError {
        step: format!("entering network namespace {}", path.display()),
        error: e.to_string(),
    })?;
    let conn = rtnetlink::new_connection();
    if let Err(e) = setns(&own, CloneFlags::CLONE_NEWNET) {
        return Err(StepError {
            step: "FATAL: returning to the host network namespace".into(),
            error: e.to_string(),
        });
    }
    let (conn, handle, _) = conn.map_err(|e| StepError {
        step: format!("opening netlink inside {}", path.display()),
        error: e.to_string(),
    })?;
    Ok((handle, tokio::spawn(conn)))
}

async fn create_veth(handle: &Handle, s: &VethSpec) -> StepResult<VethInfo> {
    let host = &s.host_ifname;
    let ns_disp = s.netns.display().to_string();
    // A leftover from a crashed attempt of the same attachment carries the same name.
    delete_link(handle, host).await?;

    let netns = File::open(&s.netns).map_err(|e| StepError {
        step: format!("opening network namespace {ns_disp}"),
        error: e.to_string(),
    })?;
    // The peer is created directly inside the pod namespace under its final name, so it
    // never collides with a host interface and there is no rename step.
    let peer = LinkMessageBuilder::<LinkUnspec>::default()
        .name(s.ifname.clone())
        .mtu(s.mtu)
        .setns_by_fd(netns.as_raw_fd())
        .build();
    let msg = LinkVeth::new(host, &s.ifname)
        .mtu(s.mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    handle.link().add(msg).execute().await.map_err(|e| {
        step_err(format!(
            "creating veth {host} with peer {} in {ns_disp}",
            s.ifname
        ))(nl_err(e))
    })?;
    let host_link = get_link(handle, host)
        .await
        .map_err(|e| step_err(format!("looking up {host}"))(nl_err(e)))?
        .ok_or_else(|| StepError {
            step: format!("looking up {host}"),
            error: "veth vanished right after creation".into(),
        })?;
    let host_ifindex = host_link.header.index;
    let host_mac = mac_of(&host_link);

    let (pod, conn_task) = connect_in_netns(&s.netns)?;
    let res = configure_pod_side(&pod, s, &ns_disp).await;
    conn_task.abort();
    let pod_mac = res?;

    // Host side: sysctls before up so no packet sees the defaults.
    for (key, val) in [("rp_filter", "0"), ("forwarding", "1")] {
        let path = format!("/proc/sys/net/ipv4/conf/{host}/{key}");
        std::fs::write(&path, val).map_err(|e| StepError {
            step: format!("setting {path}={val}"),
            error: e.to_string(),
        })?;
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(host_ifindex).up().build())
        .execute()
        .await
        .map_err(|e| step_err(format!("bringing {host} up"))(nl_err(e)))?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(s.ip, 32)
        .output_interface(host_ifindex)
        .scope(RouteScope::Link)
        .build();
    handle
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(|e| step_err(format!("adding host route {}/32 dev {host}", s.ip))(nl_err(e)))?;
    Ok(VethInfo {
        host_ifindex,
        host_mac,
        pod_mac,
    })
}

async fn configure_pod_side(pod: &Handle, s: &VethSpec, ns: &str) -> StepResult<[u8; 6]> {
    let ifname = &s.ifname;
    let link = get_link(pod, ifname)
        .await
        .map_err(|e| step_err(format!("looking up {ifname} in {ns}"))(nl_err(e)))?
        .ok_or_else(|| StepError {
            step: format!("moving the veth peer into {ns} as {ifname}"),
            error: "the peer is not in the namespace".into(),
        })?;
    let idx = link.header.index;
    let mac = mac_of(&link);
    pod.address()
        .add(idx, IpAddr::V4(s.ip), POD_PREFIX_LEN)
        .execute()
        .await
        .map_err(|e| {
            step_err(format!(
                "adding {}/{POD_PREFIX_LEN} to {ifname} in {ns}",
                s.ip
            ))(nl_err(e))
        })?;
    pod.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(|e| step_err(format!("bringing {ifname} up in {ns}"))(nl_err(e)))?;
    let gw_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(s.gateway, 32)
        .output_interface(idx)
        .scope(RouteScope::Link)
        .build();
    pod.route()
        .add(gw_route)
        .replace()
        .execute()
        .await
        .map_err(|e| {
            step_err(format!(
                "adding route {}/32 dev {ifname} in {ns}",
                s.gateway
            ))(nl_err(e))
        })?;
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
        .gateway(s.gateway)
        .output_interface(idx)
        .build();
    pod.route()
        .add(default)
        .replace()
        .execute()
        .await
        .map_err(|e| {
            step_err(format!("adding default route via {} in {ns}", s.gateway))(nl_err(e))
        })?;
    Ok(mac)
}

fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Host side of [`Netlink::verify`], then the pod side.
async fn verify(host: &Handle, s: &VerifySpec) -> StepResult<Vec<String>> {
    let mut problems = Vec::new();
    let h = &s.host_ifname;
    match get_link(host, h)
        .await
        .map_err(|e| step_err(format!("looking up host veth {h}"))(nl_err(e)))?
    {
        None => problems.push(format!("host veth {h} is missing")),
        Some(l) => {
            if l.header.index != s.host_ifindex {
                problems.push(format!(
                    "host veth {h} has ifindex {}, the endpoint has {}",
                    l.header.index, s.host_ifindex
                ));
            }
            if !l.header.flags.contains(LinkFlags::Up) {
                problems.push(format!("host veth {h} is down"));
            }
        }
    }
    let ns = s.netns.display().to_string();
    // A vanished namespace is a finding, not a failure of the check.
    if std::fs::metadata(&s.netns).is_err() {
        problems.push(format!("network namespace {ns} is gone"));
        return Ok(problems);
    }
    let (pod, conn_task) = connect_in_netns(&s.netns)?;
    let res = verify_pod_side(&pod, s, &ns, &mut problems).await;
    conn_task.abort();
    res.map(|()| problems)
}

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

fn route_v4(
    r: &RouteMessage,
    want: fn(&RouteAttribute) -> Option<&RouteAddress>,
) -> Option<Ipv4Addr> {
    r.attributes.iter().find_map(|a| match want(a) {
        Some(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

fn route_dst(r: &RouteMessage) -> Ipv4Addr {
    route_v4(r, |a| match a {
        RouteAttribute::Destination(d) => Some(d),
        _ => None,
    })
    .unwrap_or(Ipv4Addr::UNSPECIFIED)
}

fn route_gw(r: &RouteMessage) -> Option<Ipv4Addr> {
    route_v4(r, |a| match a {
        RouteAttribute::Gateway(g) => Some(g),
        _ => None,
    })
}

fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

/// Whether the prefix `dst/len` contains `ip`.
fn prefix_contains(dst: Ipv4Addr, len: u8, ip: Ipv4Addr) -> bool {
    let mask = match len {
        0 => 0,
        1..=32 => u32::MAX << (32 - u32::from(len)),
        _ => return false,
    };
    u32::from(dst) & mask == u32::from(ip) & mask
}

async fn verify_pod_side(
    pod: &Handle,
    s: &VerifySpec,
    ns: &str,
    problems: &mut Vec<String>,
) -> StepResult<()> {
    let ifname = &s.ifname;
    let Some(link) = get_link(pod, ifname)
        .await
        .map_err(|e| step_err(format!("looking up {ifname} in {ns}"))(nl_err(e)))?
    else {
        problems.push(format!("interface {ifname} is missing in {ns}"));
        return Ok(());
    };
    let idx = link.header.index;
    if !link.header.flags.contains(LinkFlags::Up) {
        problems.push(format!("interface {ifname} in {ns} is down"));
    }
    if let Some(want) = s.mac {
        let have = mac_of(&link);
        if have != want {
            problems.push(format!(
                "interface {ifname} in {ns} has MAC {}, the endpoint has {}",
                fmt_mac(&have),
                fmt_mac(&want)
            ));
        }
    }

    let mut prefixes = Vec::new();
    let mut addrs = pod.address().get().set_link_index_filter(idx).execute();
    while let Some(msg) = addrs
        .try_next()
        .await
        .map_err(|e| step_err(format!("listing the addresses of {ifname} in {ns}"))(nl_err(e)))?
    {
        let ours = msg.attributes.iter().any(|a| {
            matches!(a, AddressAttribute::Address(IpAddr::V4(a)) | AddressAttribute::Local(IpAddr::V4(a)) if *a == s.ip)
        });
        if ours {
            prefixes.push(msg.header.prefix_len);
        }
    }
    if !prefixes.contains(&s.prefix_len) {
        match prefixes.first() {
            None => problems.push(format!(
                "address {}/{} is missing on {ifname} in {ns}",
                s.ip, s.prefix_len
            )),
            Some(p) => problems.push(format!(
                "address {} on {ifname} in {ns} has prefix /{p}, not /{}",
                s.ip, s.prefix_len
            )),
        }
    }

    let mut gw_route = false;
    let mut default_route = false;
    let mut routes = pod
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(r) = routes
        .try_next()
        .await
        .map_err(|e| step_err(format!("listing the routes in {ns}"))(nl_err(e)))?
    {
        if route_table(&r) != u32::from(RouteHeader::RT_TABLE_MAIN) || route_oif(&r) != Some(idx) {
            continue;
        }
        let len = r.header.destination_prefix_length;
        match route_gw(&r) {
            None if prefix_contains(route_dst(&r), len, s.gateway) => gw_route = true,
            Some(gw) if gw == s.gateway && len == 0 => default_route = true,
            _ => {}
        }
    }
    if !gw_route {
        problems.push(format!(
            "route to the gateway {} on {ifname} is missing in {ns}",
            s.gateway
        ));
    }
    if !default_route {
        problems.push(format!(
            "default route via {} on {ifname} is missing in {ns}",
            s.gateway
        ));
    }
    Ok(())
}

/// Sets a global IPv4 sysctl under /proc/sys/net/ipv4 (e.g. `ip_forward`).
pub fn set_ipv4_sysctl(name: &str, value: &str) -> std::io::Result<()> {
    let path = format!("/proc/sys/net/ipv4/{name}");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&path, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_contain_addresses() {
        let gw = Ipv4Addr::new(10, 1, 2, 1);
        assert!(prefix_contains(gw, 32, gw));
        assert!(prefix_contains(Ipv4Addr::new(10, 1, 2, 0), 24, gw));
        assert!(prefix_contains(Ipv4Addr::UNSPECIFIED, 0, gw));
        assert!(!prefix_contains(Ipv4Addr::new(10, 1, 3, 0), 24, gw));
        assert!(!prefix_contains(Ipv4Addr::new(10, 1, 2, 2), 32, gw));
        assert!(!prefix_contains(gw, 33, gw));
    }

    #[test]
    fn macs_are_formatted() {
        assert_eq!(fmt_mac(&[2, 0, 0xab, 0, 0, 1]), "02:00:ab:00:00:01");
    }
}
