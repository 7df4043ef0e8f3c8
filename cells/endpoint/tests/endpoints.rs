//! Privileged end-to-end tests of the endpoint cell: a hive with the node, IPAM, resources,
//! datapath, ipcache and endpoint cells over a temporary state dir and bpf root; pods are
//! network namespaces created here.
//!
//! Needs root, kernel BTF, bpffs and `ip`/`ping`; prints `SKIPPED: <why>` otherwise (panics
//! when CI=true). Every name carries the pid and a counter; RAII guards remove namespaces,
//! veths, pins, the gateway address and state even when an assertion fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic on setup failures"
)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cilium_api::models::EndpointChangeRequest;
use cilium_api::routes::ApiRoutes;
use cilium_endpoint::{EndpointError, EndpointManager, EndpointState, HOST_DEVICE};
use cilium_ipcache::IpcacheEntry;
use cilium_resources::Pod;
use hive::{Hive, Module, Provide};
use statedb::{Db, Table};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn skip(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("privileged endpoint test cannot run under CI=true: {why}");
    }
    println!("SKIPPED: {why}");
}

fn has_cmd(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn missing_privilege() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root".into());
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("needs kernel BTF (/sys/kernel/btf/vmlinux)".into());
    }
    if !std::path::Path::new("/sys/fs/bpf").exists() {
        return Some("needs bpffs at /sys/fs/bpf".into());
    }
    for cmd in ["ip", "ping"] {
        if !has_cmd(cmd) {
            return Some(format!("needs the `{cmd}` command"));
        }
    }
    None
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
}

fn ping(ns: &str, ip: Ipv4Addr) -> bool {
    run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "ping",
        "-c1",
        "-W2",
        &ip.to_string(),
    ])
    .status
    .success()
}

fn link_exists(name: &str) -> bool {
    run(&["ip", "link", "show", "dev", name]).status.success()
}

/// Everything one test creates outside its temp dir; removed on drop.
struct Env {
    tag: String,
    netns: Vec<String>,
    bpf_root: PathBuf,
    gateway: Ipv4Addr,
    cidr: String,
    state: tempfile::TempDir,
}

impl Env {
    fn new(test: u8) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{}{}", pid % 100_000, n);
        // A /24 of our own so tests of other crates running at the same time never share
        // addresses or host routes with us.
        let third = (pid % 200) as u8 + 20;
        let second = 150 + test;
        let cidr = format!("10.{second}.{third}.0/24");
        let gateway = Ipv4Addr::new(10, second, third, 1);
        Self {
            netns: Vec::new(),
            bpf_root: PathBuf::from(format!("/sys/fs/bpf/cilium-ep-test-{tag}")),
            gateway,
            cidr,
            state: tempfile::tempdir().unwrap(),
            tag,
        }
    }

    fn add_netns(&mut self, suffix: &str) -> (String, String) {
        let name = format!("cep{}{suffix}", self.tag);
        let out = run(&["ip", "netns", "add", &name]);
        assert!(out.status.success(), "ip netns add {name}: {out:?}");
        self.netns.push(name.clone());
        run(&[
            "ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up",
        ]);
        (name.clone(), format!("/var/run/netns/{name}"))
    }

    fn hive(&self) -> Hive {
        let state = self.state.path().to_path_buf();
        let bpf_root = self.bpf_root.clone();
        let cidr = self.cidr.parse().unwrap();
        Hive::new(vec![Module::new(
            "agent",
            "endpoint test agent",
            vec![
                Provide::new(|| Ok(ApiRoutes::default())),
                cilium_node::cell(),
                cilium_ipam::cell(),
                cilium_resources::cell(),
                cilium_datapath::cell(),
                cilium_ipcache::cell(),
                cilium_endpoint::cell(),
                cilium_identity::cell(),
            ],
        )])
        .with_config_override(move |c: &mut cilium_node::NodeConfig| {
            c.state_dir = state.clone();
            c.node_name = "test".into();
        })
        .with_config_override(move |c: &mut cilium_datapath::DatapathFlags| {
            c.bpf_root = bpf_root.clone();
        })
        .with_config_override(move |c: &mut cilium_ipam::IpamConfig| c.ipv4_pod_cidr = cidr)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for ns in &self.netns {
            // Deleting the namespace deletes the pod ends, which takes the host veths along.
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args([
                "addr",
                "del",
                &format!("{}/32", self.gateway),
                "dev",
                HOST_DEVICE,
            ])
            .output();
        // The host device is shared by every agent on the host: remove it only when no
        // gateway address is left on it.
        let left = Command::new("ip")
            .args(["-4", "addr", "show", "dev", HOST_DEVICE])
            .output();
        if left.is_ok_and(|o| {
            o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("inet ")
        }) {
            let _ = Command::new("ip")
                .args(["link", "del", HOST_DEVICE])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.bpf_root);
    }
}

struct Agent {
    hive: Hive,
    mgr: Arc<EndpointManager>,
    db: Arc<Db>,
    ipcache: Arc<Table<IpcacheEntry>>,
    pods: Arc<Table<Pod>>,
    ipam: Arc<cilium_ipam::Ipam>,
    dp: Arc<cilium_bpf::Datapath>,
    ids: Arc<cilium_identity::IdentityAllocator>,
    resources: Arc<cilium_resources::Resources>,
}

async fn start(env: &Env) -> Agent {
    let hive = env.hive();
    hive.populate().unwrap();
    hive.start().await.unwrap();
    let health: Vec<String> = hive
        .health()
        .all()
        .into_iter()
        .filter(|h| h.id.contains("endpoint"))
        .map(|h| format!("{h:?}"))
        .collect();
    assert!(
        link_exists(HOST_DEVICE),
        "{HOST_DEVICE} missing after start: {health:?}"
    );
    Agent {
        mgr: hive.get::<EndpointManager>().unwrap().unwrap(),
        db: hive.get::<Db>().unwrap().unwrap(),
        ipcache: hive.get::<Table<IpcacheEntry>>().unwrap().unwrap(),
        pods: hive.get::<Table<Pod>>().unwrap().unwrap(),
        ipam: hive.get::<cilium_ipam::Ipam>().unwrap().unwrap(),
        dp: hive.get::<cilium_bpf::Datapath>().unwrap().unwrap(),
        ids: hive
            .get::<cilium_identity::IdentityAllocator>()
            .unwrap()
            .unwrap(),
        resources: hive.get::<cilium_resources::Resources>().unwrap().unwrap(),
        hive,
    }
}

fn req(cid: &str, netns: &str, pod: &str) -> EndpointChangeRequest {
    EndpointChangeRequest {
        container_id: cid.into(),
        netns: netns.into(),
        ifname: "eth0".into(),
        pod_namespace: Some("default".into()),
        pod_name: Some(pod.into()),
        ..Default::default()
    }
}

fn ipcache_has(a: &Agent, ip: Ipv4Addr) -> bool {
    let txn = a.db.read_txn();
    a.ipcache
        .all(&txn)
        .any(|e| e.prefix.addr() == ip && e.prefix.prefix_len() == 32)
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn host_ip(exclude: &str) -> Option<Ipv4Addr> {
    let out = run(&["ip", "-4", "-o", "addr", "show", "scope", "global"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains(HOST_DEVICE) && !l.contains(exclude))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            it.position(|w| w == "inet")?;
            it.next()?.split('/').next()?.parse().ok()
        })
        .find(|ip: &Ipv4Addr| !ip.is_loopback())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_connect_pods_and_clean_up() {
    if let Some(why) = missing_privilege() {
        return skip(&why);
    }
    let mut env = Env::new(0);
    let (ns_a, path_a) = env.add_netns("a");
    let (ns_b, path_b) = env.add_netns("b");
    let a = start(&env).await;

    // Bad input: clear errors, nothing applied.
    let e = a
        .mgr
        .create(
            "cni:ca:eth0",
            &req("ca", "/var/run/netns/does-not-exist", "pa"),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, EndpointError::Invalid { .. }), "{e}");
    assert!(a.mgr.list().is_empty());

    // A failure in the middle (the pod already has an interface called `lo`) is undone.
    let mut lo = req("cx", &path_a, "px");
    lo.ifname = "lo".into();
    let e = a.mgr.create("cni:cx:lo", &lo).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("cni:cx:lo") && msg.contains("creating veth"),
        "{msg}"
    );
    assert!(
        a.ipam.lookup_owner("cni:cx:lo").is_none(),
        "IP not released"
    );
    assert!(!link_exists(&cilium_endpoint::host_ifname("cni:cx:lo")));
    assert!(a.mgr.get("cni:cx:lo").is_none());

    let ep_a = a
        .mgr
        .create("cni:ca:eth0", &req("ca", &path_a, "pa"))
        .await
        .unwrap();
    let mut rb = req("cb", &path_b, "pb");
    let want_b = Ipv4Addr::from(u32::from(env.gateway) + 100);
    rb.requested_ipv4 = Some(want_b);
    let ep_b = a.mgr.create("cni:cb:eth0", &rb).await.unwrap();
    assert_eq!(ep_b.ipv4, want_b, "requested IP honoured");
    assert_eq!(ep_a.state, "ready");
    assert_ne!(ep_a.id, ep_b.id);
    assert_eq!(ep_a.gateway, env.gateway);
    assert!(ep_a.host_ifname.len() <= 15);

    // Idempotent for the same key and netns; a different netns is a conflict.
    let again = a
        .mgr
        .create("cni:ca:eth0", &req("ca", &path_a, "pa"))
        .await
        .unwrap();
    assert_eq!(again, ep_a);
    let e = a
        .mgr
        .create("cni:ca:eth0", &req("ca", &path_b, "pa"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), cilium_api::ErrorCode::Conflict, "{e}");

    // Kernel state: map entry, ipcache row (table and map), the pod interface.
    let info = a.dp.maps().endpoints.get(ep_a.ipv4).unwrap().unwrap();
    assert_eq!(info.ifindex, ep_a.host_ifindex);
    assert_eq!(info.ep_id, ep_a.id);
    assert!(ipcache_has(&a, ep_a.ipv4));
    let dp = a.dp.clone();
    let ip_a = ep_a.ipv4;
    eventually("the ipcache map entry", || {
        dp.maps().ipcache.lookup_addr(ip_a).ok().flatten().is_some()
    })
    .await;
    let out = run(&[
        "ip", "netns", "exec", &ns_a, "ip", "-4", "addr", "show", "eth0",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{}/32", ep_a.ipv4)));

    // Traffic: pod to pod both ways, pod to gateway, pod to a host address.
    assert!(ping(&ns_a, ep_b.ipv4), "A -> B");
    assert!(ping(&ns_b, ep_a.ipv4), "B -> A");
    assert!(ping(&ns_a, env.gateway), "A -> gateway");
    if let Some(h) = host_ip(&env.cidr) {
        assert!(ping(&ns_b, h), "B -> host {h}");
    }

    // Labels follow the Pod object live.
    {
        let mut w = a.db.write_txn(&[&*a.pods]).unwrap();
        a.pods
            .insert(
                &mut w,
                Pod {
                    namespace: "default".into(),
                    name: "pa".into(),
                    labels: [("app".to_string(), "web".to_string())].into(),
                    service_account: "sa1".into(),
                    named_ports: [(
                        "http".to_string(),
                        cilium_resources::NamedPort {
                            port: 80,
                            protocol: cilium_resources::Protocol::Tcp,
                        },
                    )]
                    .into(),
                    uid: "u1".into(),
                },
            )
            .unwrap();
        w.commit();
    }
    let mgr = a.mgr.clone();
    eventually("labels on endpoint A", || {
        mgr.get("cni:ca:eth0")
            .is_some_and(|e| e.labels.get("app").is_some_and(|v| v == "web"))
    })
    .await;
    let got = a.mgr.get(&ep_a.id.to_string()).unwrap();
    assert_eq!(got.service_account, "sa1");
    assert_eq!(got.named_ports["http"], "80/TCP");
    // The row is committed first, the file written right after: wait for the file.
    let state_file = env.state.path().join("endpoints.json");
    eventually("labels persisted", || {
        std::fs::read_to_string(&state_file).is_ok_and(|s| s.contains("\"app\": \"web\""))
    })
    .await;

    // Delete: veth, map entry, ipcache row, IP, state all gone; a second delete is NotFound.
    let host_a = ep_a.host_ifname.clone();
    a.mgr.delete(&ep_a.id.to_string()).await.unwrap();
    assert!(!link_exists(&host_a), "host veth {host_a} still there");
    assert!(a.dp.maps().endpoints.get(ep_a.ipv4).unwrap().is_none());
    assert!(!ipcache_has(&a, ep_a.ipv4));
    assert!(a.ipam.lookup_owner("cni:ca:eth0").is_none());
    assert!(a.mgr.get("cni:ca:eth0").is_none());
    assert!(
        !std::fs::read_to_string(env.state.path().join("endpoints.json"))
            .unwrap()
            .contains("cni:ca:eth0")
    );
    assert!(matches!(
        a.mgr.delete("cni:ca:eth0").await,
        Err(EndpointError::NotFound(_))
    ));

    // GC keeps only what is listed.
    assert!(a.mgr.gc(&["cni:cb:eth0".into()]).await.unwrap().is_empty());
    assert_eq!(
        a.mgr.gc(&[]).await.unwrap(),
        vec!["cni:cb:eth0".to_string()]
    );
    assert!(!link_exists(&ep_b.host_ifname));
    assert!(a.dp.maps().endpoints.get(ep_b.ipv4).unwrap().is_none());

    a.hive.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_restores_endpoints_and_keeps_traffic() {
    if let Some(why) = missing_privilege() {
        return skip(&why);
    }
    let mut env = Env::new(1);
    let (ns_a, path_a) = env.add_netns("a");
    let (_ns_b, path_b) = env.add_netns("b");
    let (ns_c, path_c) = env.add_netns("c");

    let first = start(&env).await;
    let ep_a = first
        .mgr
        .create("cni:ra:eth0", &req("ra", &path_a, "a"))
        .await
        .unwrap();
    let ep_b = first
        .mgr
        .create("cni:rb:eth0", &req("rb", &path_b, "b"))
        .await
        .unwrap();
    let ep_c = first
        .mgr
        .create("cni:rc:eth0", &req("rc", &path_c, "c"))
        .await
        .unwrap();
    assert!(ping(&ns_a, ep_c.ipv4));
    first.hive.stop().await.unwrap();
    drop(first);

    // Agent down: the pinned programs and maps keep forwarding.
    assert!(ping(&ns_a, ep_c.ipv4), "A -> C while the agent is down");
    assert!(ping(&ns_c, ep_a.ipv4), "C -> A while the agent is down");
    // B's pod goes away while the agent is down.
    let out = run(&["ip", "link", "del", &ep_b.host_ifname]);
    assert!(out.status.success(), "{out:?}");

    let second = start(&env).await;
    let a2 = second.mgr.get("cni:ra:eth0").expect("A restored");
    assert_eq!(a2.id, ep_a.id);
    assert_eq!(a2.ipv4, ep_a.ipv4);
    assert_eq!(a2.host_ifindex, ep_a.host_ifindex);
    assert_eq!(a2.state, EndpointState::Ready);
    assert!(
        second.mgr.get("cni:rb:eth0").is_none(),
        "B removed: veth vanished"
    );
    assert!(
        second.ipam.lookup_owner("cni:rb:eth0").is_none(),
        "B's IP released"
    );
    assert!(second.dp.maps().endpoints.get(ep_b.ipv4).unwrap().is_none());
    assert!(ipcache_has(&second, ep_a.ipv4));
    assert!(!ipcache_has(&second, ep_b.ipv4));
    let (init, _) = second.ipcache.initialized(&second.db.read_txn());
    assert!(init, "ipcache table initialized after restore");
    assert!(ping(&ns_a, ep_c.ipv4), "A -> C after restart");

    // A new endpoint after the restart does not reuse a live id.
    let (_ns_d, path_d) = env.add_netns("d");
    let ep_d = second
        .mgr
        .create("cni:rd:eth0", &req("rd", &path_d, "d"))
        .await
        .unwrap();
    assert!(ep_d.id != ep_a.id && ep_d.id != ep_c.id);

    for k in ["cni:ra:eth0", "cni:rc:eth0", "cni:rd:eth0"] {
        second.mgr.delete(k).await.unwrap();
    }
    second.hive.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_what_differs_in_the_live_state() {
    if let Some(why) = missing_privilege() {
        return skip(&why);
    }
    let mut env = Env::new(2);
    let (ns, path) = env.add_netns("v");
    let a = start(&env).await;

    assert!(matches!(
        a.mgr.verify("cni:nope:eth0").await,
        Err(EndpointError::NotFound(_))
    ));
    let ep = a
        .mgr
        .create("cni:va:eth0", &req("va", &path, "va"))
        .await
        .unwrap();
    // Right after create everything matches, by key and by id.
    assert_eq!(a.mgr.verify("cni:va:eth0").await.unwrap(), ep);
    assert_eq!(a.mgr.verify(&ep.id.to_string()).await.unwrap(), ep);

    // The address is removed inside the pod.
    let addr = format!("{}/32", ep.ipv4);
    let out = run(&["ip", "-n", &ns, "addr", "del", &addr, "dev", "eth0"]);
    assert!(out.status.success(), "{out:?}");
    let e = a.mgr.verify("cni:va:eth0").await.unwrap_err();
    assert_eq!(e.code(), cilium_api::ErrorCode::Conflict, "{e}");
    let msg = e.to_string();
    let want = format!(
        "endpoint {} (cni:va:eth0): address {addr} is missing on eth0 in {path}",
        ep.id
    );
    assert!(msg.starts_with(&want), "{msg}");
    assert!(
        !msg.contains("host veth") && !msg.contains("BPF"),
        "host side reported although intact: {msg}"
    );

    // The BPF entry points elsewhere.
    let mut info = a.dp.maps().endpoints.get(ep.ipv4).unwrap().unwrap();
    let good = info;
    info.ep_id = ep.id.wrapping_add(1000);
    a.dp.maps().endpoints.upsert(ep.ipv4, &info).unwrap();
    let msg = a.mgr.verify("cni:va:eth0").await.unwrap_err().to_string();
    assert!(
        msg.contains(&format!(
            "BPF endpoint map entry for {} has ifindex {} and endpoint id {}",
            ep.ipv4,
            good.ifindex,
            ep.id.wrapping_add(1000)
        )),
        "{msg}"
    );
    a.dp.maps().endpoints.upsert(ep.ipv4, &good).unwrap();

    // The pod interface is deleted (its host peer goes with it).
    let out = run(&["ip", "-n", &ns, "link", "del", "eth0"]);
    assert!(out.status.success(), "{out:?}");
    let msg = a.mgr.verify("cni:va:eth0").await.unwrap_err().to_string();
    assert!(
        msg.contains(&format!("interface eth0 is missing in {path}")),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("host veth {} is missing", ep.host_ifname)),
        "{msg}"
    );

    // The endpoint is still known and can be deleted; afterwards verify says NotFound.
    a.mgr.delete("cni:va:eth0").await.unwrap();
    assert!(matches!(
        a.mgr.verify("cni:va:eth0").await,
        Err(EndpointError::NotFound(_))
    ));
    a.hive.stop().await.unwrap();
}

/// `ciliumctl apply` of a Namespace `ns` with `labels` (persisted like the CLI would).
fn apply_ns(a: &Agent, ns: &str, labels: &str) {
    a.resources
        .apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {{{labels}}}\n"
        ))
        .unwrap();
}

/// `ciliumctl apply` of a Pod `ns/name` with `labels`.
fn apply_pod(a: &Agent, ns: &str, name: &str, labels: &str) {
    a.resources
        .apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{{labels}}}\n"
        ))
        .unwrap();
}

/// Identity of endpoint `key` in the table, the BPF endpoint map and the BPF ipcache agree.
async fn identity_everywhere(a: &Agent, key: &str, want: u32) {
    let mgr = a.mgr.clone();
    let dp = a.dp.clone();
    let key = key.to_string();
    eventually(
        &format!("identity {want} on {key} in table, lxc map and ipcache"),
        || {
            let Some(ep) = mgr.get(&key) else {
                return false;
            };
            let lxc = dp.maps().endpoints.get(ep.ipv4).ok().flatten();
            let ipc = dp.maps().ipcache.lookup_addr(ep.ipv4).ok().flatten();
            ep.identity == want
                && lxc.is_some_and(|i| i.sec_identity == want)
                && ipc.is_some_and(|v| v.sec_identity == want)
        },
    )
    .await;
}

fn identity_of(a: &Agent, key: &str) -> u32 {
    a.mgr.get(key).unwrap().identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_follow_pod_and_namespace_labels_and_survive_restart() {
    if let Some(why) = missing_privilege() {
        return skip(&why);
    }
    let mut env = Env::new(3);
    let (_, path_a) = env.add_netns("a");
    let (_, path_b) = env.add_netns("b");
    let (_, path_c) = env.add_netns("c");
    let (_, path_d) = env.add_netns("d");
    let a = start(&env).await;
    let ns = "idns";
    apply_ns(&a, ns, "team: red");
    apply_pod(&a, ns, "pa", "app: web");
    apply_pod(&a, ns, "pb", "app: web");
    apply_pod(&a, ns, "pc", "app: db");
    let mk = |cid: &str, path: &str, pod: Option<&str>| EndpointChangeRequest {
        container_id: cid.into(),
        netns: path.into(),
        ifname: "eth0".into(),
        pod_namespace: Some(ns.into()),
        pod_name: pod.map(str::to_string),
        ..Default::default()
    };
    let ea = a
        .mgr
        .create("cni:ia:eth0", &mk("ia", &path_a, Some("pa")))
        .await
        .unwrap();
    let eb = a
        .mgr
        .create("cni:ib:eth0", &mk("ib", &path_b, Some("pb")))
        .await
        .unwrap();
    let ec = a
        .mgr
        .create("cni:ic:eth0", &mk("ic", &path_c, Some("pc")))
        .await
        .unwrap();
    // No Pod object: the namespace-derived labels only.
    let ed = a
        .mgr
        .create("cni:id:eth0", &mk("id", &path_d, None))
        .await
        .unwrap();

    // Same labels, same identity; different labels, different identity.
    assert_eq!(ea.identity, eb.identity);
    assert_ne!(ea.identity, ec.identity);
    assert!(
        ea.identity >= 256 && ec.identity >= 256,
        "{} {}",
        ea.identity,
        ec.identity
    );
    assert_eq!(ea.labels["io.kubernetes.pod.namespace"], ns);
    assert_eq!(ea.labels["io.cilium.k8s.namespace.labels.team"], "red");
    assert_eq!(ea.labels["io.cilium.k8s.policy.serviceaccount"], "default");
    assert_eq!(ea.labels["io.cilium.k8s.policy.cluster"], "default");
    assert_eq!(ed.labels["io.kubernetes.pod.namespace"], ns);
    assert!(!ed.labels.contains_key("app"));
    assert!(ed.identity >= 256 && ed.identity != ea.identity && ed.identity != ec.identity);
    let shared = a.ids.get(cilium_identity::Identity(ea.identity)).unwrap();
    assert_eq!(
        shared.owners.iter().cloned().collect::<Vec<_>>(),
        vec!["cni:ia:eth0".to_string(), "cni:ib:eth0".to_string()]
    );
    for (k, id) in [
        ("cni:ia:eth0", ea.identity),
        ("cni:ic:eth0", ec.identity),
        ("cni:id:eth0", ed.identity),
    ] {
        identity_everywhere(&a, k, id).await;
    }

    // Pod relabel: A moves to a new identity; B keeps the shared one, now owned by B only.
    apply_pod(&a, ns, "pa", "app: web2");
    let mgr = a.mgr.clone();
    let old = ea.identity;
    eventually("A relabeled", || {
        mgr.get("cni:ia:eth0").is_some_and(|e| e.identity != old)
    })
    .await;
    let a_new = identity_of(&a, "cni:ia:eth0");
    assert_eq!(a.mgr.get("cni:ia:eth0").unwrap().labels["app"], "web2");
    identity_everywhere(&a, "cni:ia:eth0", a_new).await;
    identity_everywhere(&a, "cni:ib:eth0", old).await;
    let shared = a.ids.get(cilium_identity::Identity(old)).unwrap();
    assert_eq!(shared.owners.len(), 1);
    // The endpoint list (API form) shows it too.
    assert!(
        a.mgr
            .list()
            .iter()
            .any(|e| e.key == "cni:ia:eth0" && e.identity == a_new)
    );

    // Namespace relabel: every endpoint of the namespace gets a new identity; the unused old
    // ones are released.
    apply_ns(&a, ns, "team: blue");
    let before = [a_new, old, ec.identity, ed.identity];
    for (k, was) in ["cni:ia:eth0", "cni:ib:eth0", "cni:ic:eth0", "cni:id:eth0"]
        .into_iter()
        .zip(before)
    {
        let mgr = a.mgr.clone();
        eventually(&format!("{k} relabeled by the namespace"), || {
            mgr.get(k).is_some_and(|e| {
                e.identity != was
                    && e.labels
                        .get("io.cilium.k8s.namespace.labels.team")
                        .map(String::as_str)
                        == Some("blue")
            })
        })
        .await;
        identity_everywhere(&a, k, identity_of(&a, k)).await;
        assert!(
            a.ids.get(cilium_identity::Identity(was)).is_none(),
            "{was} released"
        );
    }
    let after: Vec<u32> = ["cni:ia:eth0", "cni:ib:eth0", "cni:ic:eth0", "cni:id:eth0"]
        .iter()
        .map(|k| identity_of(&a, k))
        .collect();
    a.hive.stop().await.unwrap();
    drop(a);

    // Restart: same identities, same map contents.
    let b = start(&env).await;
    for (k, id) in ["cni:ia:eth0", "cni:ib:eth0", "cni:ic:eth0", "cni:id:eth0"]
        .into_iter()
        .zip(after.iter().copied())
    {
        assert_eq!(
            identity_of(&b, k),
            id,
            "{k} keeps its identity across the restart"
        );
        identity_everywhere(&b, k, id).await;
        assert!(
            b.ids
                .get(cilium_identity::Identity(id))
                .unwrap()
                .owners
                .contains(k)
        );
    }

    // Delete releases: no endpoint identity left.
    for k in ["cni:ia:eth0", "cni:ib:eth0", "cni:ic:eth0", "cni:id:eth0"] {
        b.mgr.delete(k).await.unwrap();
    }
    let left: Vec<u32> = b
        .ids
        .list()
        .iter()
        .filter(|o| o.kind != cilium_identity::IdentityKind::Reserved)
        .map(|o| o.id)
        .collect();
    assert!(
        left.is_empty(),
        "identities left after deleting every endpoint: {left:?}"
    );
    b.hive.stop().await.unwrap();
}
