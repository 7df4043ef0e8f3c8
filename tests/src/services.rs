//! Helpers for the service load-balancing e2e tests and `bench-lb`: a cgroup v2 directory per
//! agent (passed as `--cgroup-root`; clients run inside it so the socket hooks translate for
//! them), Service and EndpointSlice objects, the `lb-client` server and clients, an "outside"
//! namespace wired to the host by its own veth pair, and waits on what the agent programmed.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use crate::cleanup::{OnInterrupt, on_interrupt, quiet};
use crate::model::ctl_apply;
use crate::{Agent, Bg, Netns, Pod, bin, run, run_ok, unique};

/// The host's cgroup v2 mount point (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified`
/// on hybrid ones), from /proc/mounts.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fs) = (f.next()?, f.next()?, f.next()?);
            (fs == "cgroup2").then(|| PathBuf::from(dir))
        })
        .collect();
    let preferred = [
        Path::new("/sys/fs/cgroup"),
        Path::new("/sys/fs/cgroup/unified"),
    ];
    preferred
        .iter()
        .find(|p| found.iter().any(|f| f == *p))
        .map(|p| p.to_path_buf())
        .or_else(|| found.into_iter().next())
}

/// A cgroup v2 directory of its own for one agent (its `--cgroup-root`). Processes started with
/// [`Cgroup::command`] run inside it. On drop, processes left inside are killed (only this test
/// put processes there) and the directory is removed.
pub struct Cgroup {
    /// The directory.
    pub path: PathBuf,
    _undo: OnInterrupt,
}

impl Cgroup {
    /// Create `<cgroup2 mount>/cilium-e2e-<unique>`.
    pub fn new() -> Result<Self, String> {
        let root = cgroup2_mount().ok_or("no cgroup v2 mount on this host")?;
        let path = root.join(unique("cilium-e2e-cg"));
        std::fs::create_dir(&path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        let undo = {
            let path = path.clone();
            on_interrupt(move || {
                let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.split_whitespace() {
                    quiet("kill", &["-KILL", pid]);
                }
                std::thread::sleep(Duration::from_millis(100));
                let _ = std::fs::remove_dir(&path);
            })
        };
        Ok(Self { path, _undo: undo })
    }

    /// The `--cgroup-root` argument.
    pub fn arg(&self) -> String {
        self.path.display().to_string()
    }

    /// A command that first moves itself into this cgroup, then runs `prog args` inside the
    /// network namespace `netns` (or the host's when None).
    pub fn command(&self, netns: Option<&Netns>, prog: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(&self.path);
        if let Some(ns) = netns {
            c.args(["ip", "netns", "exec", &ns.name]);
        }
        c.arg(prog).args(args);
        c
    }

    fn pids(&self) -> Vec<String> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                let _ = Command::new("kill")
                    .args(["-KILL", &p])
                    .stderr(Stdio::null())
                    .status();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("cannot remove the test cgroup {}", self.path.display());
    }
}

/// Call at the top of a privileged service test: the privileges of
/// [`crate::require_privileges`] plus a cgroup v2 mount, and the test's own cgroup. None
/// (after printing `SKIPPED: <why>`) when it cannot run; panics instead when `CI=true`.
pub fn require_lb(test: &str) -> Option<Cgroup> {
    if !crate::require_privileges(test) {
        return None;
    }
    match Cgroup::new() {
        Ok(cg) => Some(cg),
        Err(why) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: cannot run in CI: {why}");
            }
            eprintln!("SKIPPED: {test}: {why}");
            None
        }
    }
}

/// The agent arguments for load balancing in `cg`, with cluster IPs allocated from
/// `service_cidr`, and `extra` after them.
pub fn lb_args(cg: &Cgroup, service_cidr: &str, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--cgroup-root".to_string(),
        cg.arg(),
        "--service-cidr".to_string(),
        service_cidr.to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Start an agent with `args` (owned strings).
pub fn start_agent(pod_cidr: &str, args: &[String]) -> Agent {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start(pod_cidr, &refs)
}

/// One port of a Service.
#[derive(Debug, Clone)]
pub struct SvcPort {
    /// Port name (also the EndpointSlice port name).
    pub name: String,
    /// Service port.
    pub port: u16,
    /// Target (backend) port.
    pub target: u16,
    /// `TCP` or `UDP`.
    pub proto: &'static str,
    /// NodePort (for type NodePort).
    pub node_port: Option<u16>,
}

impl SvcPort {
    /// A TCP port.
    pub fn tcp(name: &str, port: u16, target: u16) -> Self {
        Self {
            name: name.into(),
            port,
            target,
            proto: "TCP",
            node_port: None,
        }
    }

    /// A UDP port.
    pub fn udp(name: &str, port: u16, target: u16) -> Self {
        Self {
            proto: "UDP",
            ..Self::tcp(name, port, target)
        }
    }

    /// With a node port.
    pub fn node_port(mut self, np: u16) -> Self {
        self.node_port = Some(np);
        self
    }
}

/// A Service object. `extra_spec` is inserted into `spec` as is (lines indented by two spaces,
/// e.g. `"  type: NodePort\n"`).
pub fn service_yaml(
    ns: &str,
    name: &str,
    cluster_ip: Ipv4Addr,
    ports: &[SvcPort],
    extra_spec: &str,
) -> String {
    let mut p = String::new();
    for sp in ports {
        p.push_str(&format!(
            "  - name: {}\n    port: {}\n    targetPort: {}\n    protocol: {}\n",
            sp.name, sp.port, sp.target, sp.proto
        ));
        if let Some(np) = sp.node_port {
            p.push_str(&format!("    nodePort: {np}\n"));
        }
    }
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  clusterIP: {cluster_ip}\n{extra_spec}  ports:\n{p}"
    )
}

/// One endpoint of an EndpointSlice.
#[derive(Debug, Clone)]
pub struct SliceEp {
    /// Address.
    pub ip: Ipv4Addr,
    /// `nodeName` (empty: none).
    pub node: String,
    /// `conditions.ready`.
    pub ready: bool,
}

impl SliceEp {
    /// A ready endpoint on `node`.
    pub fn ready(ip: Ipv4Addr, node: &str) -> Self {
        Self {
            ip,
            node: node.into(),
            ready: true,
        }
    }
}

/// The EndpointSlice `slice` of service `svc` with `eps` serving the target ports of `ports`.
pub fn slice_yaml(ns: &str, svc: &str, slice: &str, eps: &[SliceEp], ports: &[SvcPort]) -> String {
    let mut e = String::new();
    for ep in eps {
        e.push_str(&format!(
            "- addresses: [\"{}\"]\n  conditions: {{ready: {}}}\n",
            ep.ip, ep.ready
        ));
        if !ep.node.is_empty() {
            e.push_str(&format!("  nodeName: {}\n", ep.node));
        }
    }
    let endpoints = if eps.is_empty() {
        "endpoints: []\n".to_string()
    } else {
        format!("endpoints:\n{e}")
    };
    let mut p = String::new();
    for sp in ports {
        p.push_str(&format!(
            "- name: {}\n  port: {}\n  protocol: {}\n",
            sp.name, sp.target, sp.proto
        ));
    }
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {slice}\n  namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {svc}\naddressType: IPv4\n{endpoints}ports:\n{p}"
    )
}

/// `ciliumctl apply -f -` of `yaml`; panics with ciliumctl's message (and a hint that the
/// loadbalancer cell may be missing) when it fails.
pub fn apply(agent: &Agent, yaml: &str) {
    if let Err(e) = ctl_apply(agent, "apply", yaml) {
        panic!(
            "ciliumctl apply of the service objects failed (is the loadbalancer cell with the \
             Service/EndpointSlice kinds in this agent?): {e}\n{yaml}"
        );
    }
}

/// Start `lb-client serve TOKEN` inside the pod, answering on `tcp` and `udp` ports.
pub fn serve(pod: &Pod<'_>, token: &str, tcp: &[u16], udp: &[u16]) -> Bg {
    serve_in(Some(&pod.netns), token, tcp, udp)
}

/// Start `lb-client serve TOKEN` in `netns` (None: the host), answering on `tcp` and `udp`
/// ports of every address there.
pub fn serve_in(netns: Option<&Netns>, token: &str, tcp: &[u16], udp: &[u16]) -> Bg {
    let join = |v: &[u16]| v.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let prog = bin("lb-client").display().to_string();
    let cmd = |args: &[String]| {
        let mut c = match netns {
            Some(ns) => ns.cmd(&prog),
            None => Command::new(&prog),
        };
        c.args(args);
        c
    };
    let mut args = vec!["serve".to_string(), token.to_string()];
    if !tcp.is_empty() {
        args.extend(["--tcp".to_string(), join(tcp)]);
    }
    if !udp.is_empty() {
        args.extend(["--udp".to_string(), join(udp)]);
    }
    let bg = Bg::spawn(&mut cmd(&args));
    let place = netns.map_or("the host".to_string(), |n| n.name.clone());
    // Wait until the sockets are bound (the listener answers locally).
    if let Some(p) = tcp.first() {
        let probe = [
            "tcp".to_string(),
            format!("127.0.0.1:{p}"),
            "1".into(),
            "500".into(),
        ];
        let ok = crate::wait_until(Duration::from_secs(5), || {
            cmd(&probe)
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("ok "))
        });
        assert!(ok, "the server {token} in {place} did not come up");
    } else {
        std::thread::sleep(Duration::from_millis(300));
    }
    bg
}

/// One result line of an lb-client call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The answer: the server's token, the client address the server saw, and the peer the
    /// client's socket reports (`addr:port`).
    Ok {
        /// Token of the backend that answered.
        token: String,
        /// Client address as the backend saw it.
        seen: String,
        /// The peer address as the client socket reports it.
        from: String,
    },
    /// An error kind (`refused`, `timeout`, ...).
    Err(String),
}

impl Reply {
    /// Parse one line.
    pub fn parse(line: &str) -> Self {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("ok") => Reply::Ok {
                token: f.next().unwrap_or_default().to_string(),
                seen: f.next().unwrap_or_default().to_string(),
                from: f.next().unwrap_or_default().to_string(),
            },
            Some("err") => Reply::Err(f.next().unwrap_or_default().to_string()),
            _ => Reply::Err(format!("unparsable: {line}")),
        }
    }

    /// The backend token when it answered.
    pub fn token(&self) -> Option<&str> {
        match self {
            Reply::Ok { token, .. } => Some(token),
            Reply::Err(_) => None,
        }
    }
}

/// Where a client runs: in a pod or on the host, in the agent's cgroup (socket-level load
/// balancing) or outside it (per-packet DNAT).
#[derive(Clone, Copy)]
pub struct Client<'a> {
    /// The pod (None: the host).
    pub pod: Option<&'a Pod<'a>>,
    /// The agent's cgroup when the client runs inside it.
    pub cgroup: Option<&'a Cgroup>,
}

impl<'a> Client<'a> {
    /// A client in `pod`, inside `cg`.
    pub fn pod_in(pod: &'a Pod<'a>, cg: &'a Cgroup) -> Self {
        Self {
            pod: Some(pod),
            cgroup: Some(cg),
        }
    }

    /// A client in `pod`, outside any test cgroup (per-packet path).
    pub fn pod_out(pod: &'a Pod<'a>) -> Self {
        Self {
            pod: Some(pod),
            cgroup: None,
        }
    }

    /// A host process inside `cg`.
    pub fn host_in(cg: &'a Cgroup) -> Self {
        Self {
            pod: None,
            cgroup: Some(cg),
        }
    }

    /// What this client is, for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} {}",
            self.pod
                .map_or("host".to_string(), |p| format!("pod {}", p.ip)),
            if self.cgroup.is_some() {
                "(in the agent's cgroup: socket LB)"
            } else {
                "(outside the cgroup: per-packet DNAT)"
            }
        )
    }

    /// The lb-client command for `args`.
    pub fn command(&self, args: &[&str]) -> Command {
        let prog = bin("lb-client");
        let netns = self.pod.map(|p| &p.netns);
        match self.cgroup {
            Some(cg) => cg.command(netns, &prog, args),
            None => match netns {
                Some(ns) => {
                    let mut c = ns.cmd(&prog.display().to_string());
                    c.args(args);
                    c
                }
                None => {
                    let mut c = Command::new(prog);
                    c.args(args);
                    c
                }
            },
        }
    }

    /// Run lb-client with `args`; the result lines.
    pub fn run(&self, args: &[&str]) -> Vec<Reply> {
        let out = run(&mut self.command(args));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "lb-client {args:?} from {} failed ({}): {}{}",
            self.describe(),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout.lines().map(Reply::parse).collect()
    }

    /// `count` TCP connections to `addr` (`ip:port`), each with `timeout_ms`.
    pub fn tcp(&self, addr: &str, count: u32, timeout_ms: u64) -> Vec<Reply> {
        self.run(&["tcp", addr, &count.to_string(), &timeout_ms.to_string()])
    }

    /// `count` datagrams from one unconnected UDP socket to `addr`.
    pub fn udp(&self, addr: &str, count: u32, timeout_ms: u64) -> Vec<Reply> {
        self.run(&["udp", addr, &count.to_string(), &timeout_ms.to_string()])
    }

    /// `count` datagrams from one connected UDP socket to `addr`.
    pub fn udp_connected(&self, addr: &str, count: u32, timeout_ms: u64) -> Vec<Reply> {
        self.run(&[
            "udp-connected",
            addr,
            &count.to_string(),
            &timeout_ms.to_string(),
        ])
    }

    /// Retry one TCP request until it answers with a token (at most `timeout`).
    pub fn tcp_until_ok(&self, addr: &str, timeout: Duration) -> Reply {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self
                .tcp(addr, 1, 1000)
                .into_iter()
                .next()
                .unwrap_or(Reply::Err("no output".into()));
            if r.token().is_some() || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A long-lived `lb-client udp-stdin` process: one UDP socket, one datagram per [`UdpFlow::send`].
pub struct UdpFlow {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// The local `addr:port` of the socket.
    pub local: String,
}

impl UdpFlow {
    /// Start it for `client` towards `addr`, each datagram awaiting `timeout_ms` for its answer.
    pub fn start(client: &Client<'_>, addr: &str, timeout_ms: u64) -> Self {
        let mut child = client
            .command(&["udp-stdin", addr, &timeout_ms.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start lb-client udp-stdin: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            if let Some(out) = stdout {
                for line in std::io::BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        let local = first.strip_prefix("local ").unwrap_or_default().to_string();
        assert!(
            !local.is_empty(),
            "lb-client udp-stdin did not start: {first:?}"
        );
        Self {
            child,
            stdin,
            lines: rx,
            local,
        }
    }

    /// Send one datagram and return the result.
    pub fn send(&mut self) -> Reply {
        use std::io::Write as _;
        let Some(si) = self.stdin.as_mut() else {
            return Reply::Err("closed".into());
        };
        if si.write_all(b"x\n").and_then(|()| si.flush()).is_err() {
            return Reply::Err("lb-client exited".into());
        }
        match self.lines.recv_timeout(Duration::from_secs(10)) {
            Ok(l) => Reply::parse(&l),
            Err(_) => Reply::Err("no answer line".into()),
        }
    }
}

impl Drop for UdpFlow {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One frontend row: (address:port/proto, kind, backends `addr:port` sorted, status).
pub type FrontendRow = (String, String, Vec<String>, String);

/// Frontends as `ciliumctl service list -o json` shows them. None when the command failed
/// (printed to stderr).
pub fn frontends(agent: &Agent) -> Option<Vec<FrontendRow>> {
    let out = agent.ctl(&["service", "list", "-o", "json"]);
    if !out.status.success() {
        eprintln!(
            "ciliumctl service list failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut rows = Vec::new();
    for s in v.as_array()? {
        for f in s["frontends"].as_array().into_iter().flatten() {
            let mut bs: Vec<String> = f["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| format!("{}:{}", b["address"].as_str().unwrap_or(""), b["port"]))
                .collect();
            bs.sort();
            rows.push((
                format!(
                    "{}:{}/{}",
                    f["address"].as_str().unwrap_or(""),
                    f["port"],
                    f["protocol"].as_str().unwrap_or("").to_lowercase()
                ),
                f["kind"].as_str().unwrap_or("").to_string(),
                bs,
                f["status"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    Some(rows)
}

/// The BPF services map as `ciliumctl bpf lb list -o json` shows it: frontend
/// (`addr:port/proto`) → backend slots (`addr:port`, sorted). None when the command failed.
pub fn bpf_frontends(agent: &Agent) -> Option<Vec<(String, Vec<String>)>> {
    let out = agent.ctl(&["bpf", "lb", "list", "-o", "json"]);
    if !out.status.success() {
        eprintln!(
            "ciliumctl bpf lb list failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let list = v["services"].as_array().or_else(|| v.as_array())?;
    Some(
        list.iter()
            .map(|s| {
                let mut slots: Vec<String> = s["slots"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|x| x["backend"].as_str().unwrap_or("").to_string())
                    .collect();
                slots.sort();
                slots.dedup();
                (
                    format!(
                        "{}/{}",
                        s["frontend"].as_str().unwrap_or(""),
                        s["protocol"].as_str().unwrap_or("").to_lowercase()
                    ),
                    slots,
                )
            })
            .collect(),
    )
}

/// What the agent shows about services: `service list`, `bpf lb list`, the last log lines.
pub fn dump(agent: &Agent) -> String {
    let text = |args: &[&str]| {
        let o = agent.ctl(args);
        format!(
            "$ ciliumctl {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let log = agent.log_text();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    format!(
        "{}\n{}\n{}\nagent log (last 30 lines):\n{}",
        text(&["service", "list"]),
        text(&["bpf", "lb", "list", "--backends"]),
        text(&["bpf", "nat", "list"]),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

/// Wait (up to 15 s) until the frontend `addr:port/proto` (proto lower case) has exactly
/// `backends` (`ip:port`) both in the `frontends` table (status done) and in the BPF services
/// map; panics with [`dump`] otherwise.
pub fn wait_programmed(agent: &Agent, frontend: &str, backends: &[String]) {
    let mut want: Vec<String> = backends.to_vec();
    want.sort();
    let mut last = String::new();
    let ok = crate::wait_until(Duration::from_secs(15), || {
        let table = frontends(agent).and_then(|rows| {
            rows.into_iter()
                .find(|(f, ..)| f == frontend)
                .map(|(_, _, b, s)| (b, s))
        });
        let map = bpf_frontends(agent)
            .and_then(|rows| rows.into_iter().find(|(f, _)| f == frontend).map(|r| r.1));
        last = format!("table: {table:?}, bpf map: {map:?}");
        matches!((&table, &map), (Some((b, s)), Some(m)) if *b == want && s == "done" && *m == want)
        // A frontend with no backends may be absent from the slots but present with its
        // header: the empty lists compare equal above.
    });
    assert!(
        ok,
        "frontend {frontend} not programmed with {want:?} within 15 s ({last})\n{}",
        dump(agent)
    );
}

/// `ip:port` strings.
pub fn eps(ips: &[Ipv4Addr], port: u16) -> Vec<String> {
    ips.iter().map(|i| format!("{i}:{port}")).collect()
}

/// An "outside" client: a namespace joined to the host by its own veth pair. The host side
/// `host_if` gets `host_ip/24` (the node address for `--devices`), the namespace side
/// `peer_ip/24` with a default route through the host side. Removed on drop.
pub struct Outside {
    /// The namespace.
    pub netns: Netns,
    /// Host-side interface name.
    pub host_if: String,
    /// The node address (host side).
    pub host_ip: Ipv4Addr,
    /// The outside client's address.
    pub peer_ip: Ipv4Addr,
    /// Interface name inside the namespace.
    peer_if: String,
    _undo: OnInterrupt,
}

impl Outside {
    /// Create the namespace and the veth pair on `subnet_base` (x.y.z.0): host .1, outside .2.
    pub fn new(subnet_base: Ipv4Addr) -> Self {
        let [a, b, c, _] = subnet_base.octets();
        let host_ip = Ipv4Addr::new(a, b, c, 1);
        let peer_ip = Ipv4Addr::new(a, b, c, 2);
        let netns = Netns::new("out");
        let host_if = unique("vnp");
        let peer_if = unique("vnq");
        let undo = {
            let host_if = host_if.clone();
            on_interrupt(move || quiet("ip", &["link", "del", &host_if]))
        };
        run_ok(Command::new("ip").args([
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ]));
        let me = Self {
            netns,
            host_if,
            host_ip,
            peer_ip,
            peer_if,
            _undo: undo,
        };
        run_ok(Command::new("ip").args(["link", "set", &me.peer_if, "netns", &me.netns.name]));
        run_ok(Command::new("ip").args([
            "addr",
            "add",
            &format!("{host_ip}/24"),
            "dev",
            &me.host_if,
        ]));
        run_ok(Command::new("ip").args(["link", "set", &me.host_if, "up"]));
        run_ok(Command::new("ip").args([
            "-n",
            &me.netns.name,
            "addr",
            "add",
            &format!("{peer_ip}/24"),
            "dev",
            &me.peer_if,
        ]));
        run_ok(Command::new("ip").args(["-n", &me.netns.name, "link", "set", &me.peer_if, "up"]));
        run_ok(Command::new("ip").args([
            "-n",
            &me.netns.name,
            "route",
            "add",
            "default",
            "via",
            &host_ip.to_string(),
        ]));
        me
    }

    /// `count` TCP connections from inside the outside namespace (never in the agent's cgroup).
    pub fn tcp(&self, addr: &str, count: u32, timeout_ms: u64) -> Vec<Reply> {
        self.run("tcp", addr, count, timeout_ms)
    }

    /// A second client address in the outside subnet (`x.y.z.host`), for [`Outside::tcp_from`].
    pub fn add_client_address(&self, host: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.peer_ip.octets();
        let ip = Ipv4Addr::new(a, b, c, host);
        run_ok(Command::new("ip").args([
            "-n",
            &self.netns.name,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &self.peer_if,
        ]));
        ip
    }

    /// Like [`Outside::tcp`], connecting from the outside address `src`.
    pub fn tcp_from(&self, src: Ipv4Addr, addr: &str, count: u32, timeout_ms: u64) -> Vec<Reply> {
        self.run_env(
            &[("LB_CLIENT_BIND", src.to_string())],
            "tcp",
            addr,
            count,
            timeout_ms,
        )
    }

    /// Like [`Outside::tcp`], the packets sent with IP TTL `ttl`.
    pub fn tcp_ttl(&self, ttl: u8, addr: &str, count: u32, timeout_ms: u64) -> Vec<Reply> {
        self.run_env(
            &[("LB_CLIENT_TTL", ttl.to_string())],
            "tcp",
            addr,
            count,
            timeout_ms,
        )
    }

    /// `count` datagrams from one unconnected UDP socket in the outside namespace.
    pub fn udp(&self, addr: &str, count: u32, timeout_ms: u64) -> Vec<Reply> {
        self.run("udp", addr, count, timeout_ms)
    }

    /// `count` datagrams from one connected UDP socket in the outside namespace (ICMP errors
    /// reach it as `Err("refused")`).
    pub fn udp_connected(&self, addr: &str, count: u32, timeout_ms: u64) -> Vec<Reply> {
        self.run("udp-connected", addr, count, timeout_ms)
    }

    fn run(&self, mode: &str, addr: &str, count: u32, timeout_ms: u64) -> Vec<Reply> {
        self.run_env(&[], mode, addr, count, timeout_ms)
    }

    fn run_env(
        &self,
        env: &[(&str, String)],
        mode: &str,
        addr: &str,
        count: u32,
        timeout_ms: u64,
    ) -> Vec<Reply> {
        let prog = bin("lb-client").display().to_string();
        let mut cmd = self.netns.cmd(&prog);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let out = run(cmd.args([mode, addr, &count.to_string(), &timeout_ms.to_string()]));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(Reply::parse)
            .collect()
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
    }
}

/// Make sure the host forwards IPv4 (NodePort traffic from the outside namespace to pods).
/// Returns the previous value so the caller may restore it.
pub fn enable_forwarding() -> String {
    let path = "/proc/sys/net/ipv4/ip_forward";
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let _ = std::fs::write(path, "1");
    old.trim().to_string()
}

/// Packets the datapath counted under drop reason `reason` (both directions), from
/// `ciliumctl bpf metrics list`.
pub fn drop_count(agent: &Agent, reason: &str) -> u64 {
    agent
        .ctl_json(&["bpf", "metrics", "list"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|r| r["reason"] == reason)
        .filter_map(|r| r["packets"].as_u64())
        .sum()
}

/// Tokens of the successful replies.
pub fn tokens(replies: &[Reply]) -> Vec<String> {
    replies
        .iter()
        .filter_map(|r| r.token().map(str::to_string))
        .collect()
}
