//! Load-balancer benchmark (privileged; prints `SKIPPED: <why>` when it cannot run).
//!
//! A client pod and 10 backend pods (real agent, cilium-cni), each backend running
//! `lb-client serve`. One measured ClusterIP service has the 10 pods as backends; 0, 999 or
//! 9,999 extra services with 10 (fake) backends each exist beside it. For every count it
//! measures the new-connection rate (connect + read to EOF + close in a loop from one process
//! in the client pod, best of five windows) and the connect latency (p50/p99 of that window):
//!
//! - **ours**: the agent with the load balancer on; the client inside the agent's cgroup (socket
//!   LB at connect) and outside it (per-packet DNAT at from-container);
//! - **iptables**: an agent with `--enable-lb=false` and the same services as kube-proxy-style
//!   nat rules generated here (KUBE-SERVICES → KUBE-SVC-<hash> with `statistic --mode random`
//!   → KUBE-SEP-<hash> DNAT), loaded with `iptables-restore --noflush` and removed at the end.
//!   The measured service sits in the middle of KUBE-SERVICES (kube-proxy's order is arbitrary,
//!   so the middle is the expected position).
//!
//! Control plane: 10,000 services × 10 backends in one `ciliumctl apply`, timed until every
//! frontend is in the BPF services map with its 10 slots (`ciliumctl bpf lb list -o json`).
//!
//! Prints a markdown table and writes it into docs/performance.md between the `bench-lb`
//! markers. `BENCH_LB_QUICK=1`: 1/100/1,000 services, short windows, the doc left alone.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cilium_bench::bpf_cost::{self, Cost, StatsOn, cpu_busy_ns, prog_stats};
use cilium_e2e::cleanup::{OnInterrupt, on_interrupt};
use cilium_e2e::model::ctl_apply;
use cilium_e2e::services::{
    Cgroup, Client, SliceEp, SvcPort, enable_forwarding, lb_args, serve, service_yaml, slice_yaml,
    start_agent,
};
use cilium_e2e::{Agent, Bg, Pod, privileged};

const NS: &str = "bench";
const POD_CIDR: &str = "10.239.0.0/24";
const SERVICE_CIDR: &str = "10.239.64.0/18";
const BACKENDS: usize = 10;
const TARGET_PORT: u16 = 8080;
const JUMP_COMMENT: &str = "bench-lb kubernetes service portals";
/// The jumps from the built-in nat chains into the generated ones.
const JUMPS: [(&str, &str); 3] = [
    ("PREROUTING", "KUBE-SERVICES"),
    ("OUTPUT", "KUBE-SERVICES"),
    ("POSTROUTING", "KUBE-POSTROUTING"),
];

/// VIP of service `i` (0 = the measured one).
fn vip(i: usize) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(10, 239, 64, 1));
    Ipv4Addr::from(base + u32::try_from(i).unwrap_or(0))
}

/// Fake backend `j` of extra service `i`: a pool of 4,000 addresses in 172.30.0.0/16 (distinct
/// within a service), so the backends map holds a realistic number of shared backends.
fn fake_backend(i: usize, j: usize) -> Ipv4Addr {
    let n = (i * 7 + j * 101) % 4000;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 30, 0, 1)) + u32::try_from(n).unwrap_or(0))
}

fn backends_of(i: usize, real: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
    if i == 0 {
        real.to_vec()
    } else {
        (0..BACKENDS).map(|j| fake_backend(i, j)).collect()
    }
}

fn ports() -> [SvcPort; 1] {
    [SvcPort::tcp("http", 80, TARGET_PORT)]
}

/// Service + EndpointSlice objects of services `range`.
fn objects(range: std::ops::Range<usize>, real: &[Ipv4Addr]) -> String {
    let mut s = String::new();
    for i in range {
        let name = format!("svc-{i}");
        let eps: Vec<SliceEp> = backends_of(i, real)
            .into_iter()
            .map(|ip| SliceEp::ready(ip, "bench"))
            .collect();
        s.push_str(&service_yaml(NS, &name, vip(i), &ports(), ""));
        s.push_str(&slice_yaml(NS, &name, &format!("{name}-1"), &eps, &ports()));
    }
    s
}

/// Runs of the control-plane measurement (the median is reported).
const CP_RUNS: usize = 3;

/// The objects of services `range` as one JSON `kind: List` (what kubectl sends).
fn objects_json(range: std::ops::Range<usize>, real: &[Ipv4Addr]) -> String {
    let mut items = Vec::new();
    for i in range {
        let name = format!("svc-{i}");
        items.push(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"clusterIP": vip(i).to_string(), "ports": [
                {"name": "http", "port": 80, "targetPort": TARGET_PORT, "protocol": "TCP"}]},
        }));
        let endpoints: Vec<serde_json::Value> = backends_of(i, real)
            .into_iter()
            .map(|ip| serde_json::json!({"addresses": [ip.to_string()], "conditions": {"ready": true}, "nodeName": "bench"}))
            .collect();
        items.push(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": NS,
                "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
        }));
    }
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// kube-proxy-style chain name: prefix + 16 upper-case characters of a hash.
fn chain(prefix: &str, key: &str) -> String {
    format!("{prefix}-{:016X}", fnv(key))
}

/// The nat table rules of `n` services (the measured one in the middle of KUBE-SERVICES),
/// as an `iptables-restore --noflush` input that replaces whatever these chains held.
fn iptables_rules(n: usize, real: &[Ipv4Addr], jump: bool) -> String {
    let mut chains = String::from(
        ":KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n",
    );
    let mut rules = String::from(
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE\n",
    );
    let mut order: Vec<usize> = (1..n).collect();
    order.insert((n - 1) / 2, 0);
    let mut svc_rules = String::new();
    for i in order {
        let name = format!("{NS}/svc-{i}:http");
        let svc = chain("KUBE-SVC", &name);
        chains.push_str(&format!(":{svc} - [0:0]\n"));
        svc_rules.push_str(&format!(
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport 80 -j {svc}\n",
            vip(i)
        ));
        // kube-proxy --masquerade-all: every service connection is marked for SNAT.
        rules.push_str(&format!(
            "-A {svc} -d {}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ\n",
            vip(i)
        ));
        let bs = backends_of(i, real);
        let count = bs.len();
        for (j, b) in bs.iter().enumerate() {
            let sep = chain("KUBE-SEP", &format!("{name}/{b}"));
            chains.push_str(&format!(":{sep} - [0:0]\n"));
            if j + 1 < count {
                rules.push_str(&format!(
                    "-A {svc} -m comment --comment \"{name}\" -m statistic --mode random --probability {:.10} -j {sep}\n",
                    1.0 / (count - j) as f64
                ));
            } else {
                rules.push_str(&format!(
                    "-A {svc} -m comment --comment \"{name}\" -j {sep}\n"
                ));
            }
            rules.push_str(&format!(
                "-A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {b}:{TARGET_PORT}\n"
            ));
        }
    }
    let mut s = format!("*nat\n{chains}{svc_rules}{rules}");
    if jump {
        for (hook, target) in JUMPS {
            s.push_str(&format!(
                "-A {hook} -m comment --comment \"{JUMP_COMMENT}\" -j {target}\n"
            ));
        }
    }
    s.push_str("COMMIT\n");
    s
}

/// The iptables flavour: `iptables-legacy*` when installed (kube-proxy's classic linear
/// chains, and the only flavour that loads 10,000 services' rules in seconds here), unless
/// `BENCH_LB_IPTABLES=nft` asks for the system's `iptables*` (nf_tables on Debian 12).
fn ipt(tool: &str) -> String {
    let legacy = tool.replacen("iptables", "iptables-legacy", 1);
    let nft = std::env::var("BENCH_LB_IPTABLES").is_ok_and(|v| v == "nft");
    let have_legacy = Command::new("sh")
        .args(["-c", &format!("command -v {legacy}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !nft && have_legacy {
        legacy
    } else {
        tool.to_string()
    }
}

fn iptables_restore(input: &str) -> Result<Duration, String> {
    use std::io::Write as _;
    let t0 = Instant::now();
    let mut child = Command::new(ipt("iptables-restore"))
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("iptables-restore: {e}"))?;
    if let Some(mut si) = child.stdin.take() {
        si.write_all(input.as_bytes())
            .map_err(|e| format!("iptables-restore stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("iptables-restore: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "iptables-restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or_default()
        ));
    }
    Ok(t0.elapsed())
}

/// Removes every chain and jump rule the benchmark installed (on drop, also after a panic or
/// an interrupt).
struct IptablesGuard {
    _undo: OnInterrupt,
}

impl IptablesGuard {
    fn new() -> Self {
        Self {
            _undo: on_interrupt(remove_bench_chains),
        }
    }
}

impl Drop for IptablesGuard {
    fn drop(&mut self) {
        remove_bench_chains();
    }
}

/// Deletes the jump rules and chains of [`iptables_rules`] (whatever is left of them).
fn remove_bench_chains() {
    for (hook, target) in JUMPS {
        while Command::new(ipt("iptables"))
            .args([
                "-t",
                "nat",
                "-D",
                hook,
                "-m",
                "comment",
                "--comment",
                JUMP_COMMENT,
                "-j",
                target,
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {}
    }
    let saved = Command::new(ipt("iptables-save"))
        .args(["-t", "nat"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let ours: Vec<&str> = saved
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| {
            [
                "KUBE-SERVICES",
                "KUBE-SVC-",
                "KUBE-SEP-",
                "KUBE-MARK-MASQ",
                "KUBE-POSTROUTING",
            ]
            .iter()
            .any(|p| c.starts_with(p))
        })
        .collect();
    if ours.is_empty() {
        return;
    }
    let mut s = String::from("*nat\n");
    for c in &ours {
        s.push_str(&format!(":{c} - [0:0]\n"));
    }
    for c in &ours {
        s.push_str(&format!("-X {c}\n"));
    }
    s.push_str("COMMIT\n");
    if let Err(e) = iptables_restore(&s) {
        eprintln!("bench-lb: removing the iptables chains failed: {e}");
    }
}

/// Frontends in the BPF services map with all their slots, and how long the listing took.
fn programmed(agent: &Agent) -> Option<(usize, Duration)> {
    let t0 = Instant::now();
    let out = agent.ctl(&["bpf", "lb", "list", "-o", "json"]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let n = v["services"]
        .as_array()?
        .iter()
        .filter(|s| s["slots"].as_array().is_some_and(|a| a.len() >= BACKENDS))
        .count();
    Some((n, t0.elapsed()))
}

/// Wait until `want` frontends are programmed (at most `limit`); returns when, and the slowest
/// poll (the measurement's granularity).
fn wait_programmed(
    agent: &Agent,
    want: usize,
    t0: Instant,
    limit: Duration,
) -> Result<(Duration, Duration), String> {
    let mut poll = Duration::ZERO;
    let mut last = 0;
    let mut progress = Instant::now();
    loop {
        match programmed(agent) {
            Some((n, took)) => {
                poll = poll.max(took);
                if n != last {
                    progress = Instant::now();
                }
                last = n;
                if n >= want {
                    return Ok((t0.elapsed(), poll));
                }
            }
            None if t0.elapsed() > Duration::from_secs(5) => {
                return Err("ciliumctl bpf lb list fails".into());
            }
            None => {}
        }
        if progress.elapsed() > Duration::from_secs(20) && last > 0 {
            return Err(format!(
                "only {last} of {want} frontends in the BPF map; no progress for 20 s"
            ));
        }
        if t0.elapsed() > limit {
            return Err(format!(
                "only {last} of {want} frontends in the BPF map after {} s",
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Debug, Clone, Default)]
struct Sample {
    rate: f64,
    p50_us: u64,
    p99_us: u64,
    failed: u64,
    last_error: String,
}

/// Seconds of connections run, unmeasured, before the first row of each implementation:
/// the new-connection rate on this machine drifts down during the first tens of seconds of
/// load (the same with 1 service throughout; TIME_WAIT and conntrack state building up), so
/// rows measured after a warm-up compare the number of services, not the time since start.
const WARM_UP_SECS: u64 = 20;

/// Connection loops of the parallel measurement: `BENCH_LB_LOOPS`, default two per CPU, so
/// that the rate is bound by the CPU each connection costs rather than by the wake-ups of
/// one loop waiting for each reply.
fn loops() -> usize {
    std::env::var("BENCH_LB_LOOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            2 * std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
}

/// Run `lb-client rate` for [`WARM_UP_SECS`] without keeping the result.
fn warm_up(client: &Client<'_>, addr: &str) {
    let _ = client
        .command(&[
            "rate",
            addr,
            &(WARM_UP_SECS * 1000).to_string(),
            &loops().to_string(),
        ])
        .output();
}

/// Both measurements of one row: one connection loop, and [`loops`] loops.
fn measure(client: &Client<'_>, addr: &str, dur: Duration, windows: u32) -> (Sample, Sample) {
    (
        measure_loops(client, addr, dur, windows, 1),
        measure_loops(client, addr, dur, windows, loops()),
    )
}

/// Best of `windows` windows of `lb-client rate` with `loops` connection loops.
fn measure_loops(
    client: &Client<'_>,
    addr: &str,
    dur: Duration,
    windows: u32,
    loops: usize,
) -> Sample {
    let mut best = Sample::default();
    for _ in 0..windows {
        let out = client
            .command(&[
                "rate",
                addr,
                &dur.as_millis().to_string(),
                &loops.to_string(),
            ])
            .output();
        let Ok(out) = out else { continue };
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let s = Sample {
            rate: v["rate"].as_f64().unwrap_or(0.0),
            p50_us: v["p50_us"].as_u64().unwrap_or(0),
            p99_us: v["p99_us"].as_u64().unwrap_or(0),
            failed: v["failed"].as_u64().unwrap_or(0),
            last_error: v["last_error"].as_str().unwrap_or("").to_string(),
        };
        let last_error = if s.last_error.is_empty() {
            best.last_error.clone()
        } else {
            s.last_error.clone()
        };
        if s.rate >= best.rate {
            let failed = best.failed + s.failed;
            best = Sample { failed, ..s };
        } else {
            best.failed += s.failed;
        }
        best.last_error = last_error;
    }
    best
}

struct Row {
    implementation: &'static str,
    path: &'static str,
    services: usize,
    /// One connection loop: rate and connect latency.
    sample: Sample,
    /// [`loops`] connection loops: rate.
    par: Sample,
    note: String,
}

/// The agent, ciliumctl, cilium-cni and lb-client must be where `cilium_e2e::bin` looks.
fn binaries_present() -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let here = exe
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let dirs: Vec<std::path::PathBuf> = match std::env::var_os("CILIUM_BIN_DIR") {
        Some(d) => vec![d.into()],
        None => vec![
            here.parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default(),
            here,
        ],
    };
    for b in ["cilium-agent", "ciliumctl", "cilium-cni", "lb-client"] {
        if !dirs.iter().any(|d| d.join(b).exists()) {
            return Err(format!(
                "{b} not found in {dirs:?}: build the workspace binaries with the same profile \
                 (cargo build --release --workspace --bins) or set CILIUM_BIN_DIR"
            ));
        }
    }
    for tool in ["iptables", "iptables-restore", "iptables-save"] {
        let tool = ipt(tool);
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Err(format!("{tool} is not installed"));
        }
    }
    Ok(())
}

struct Cluster<'a> {
    /// The client of the socket-LB path (and of the iptables baseline).
    client: Pod<'a>,
    /// The client of our per-packet path. A pod of its own: the backends keep TIME_WAIT
    /// sockets of every connection (they close first), and TCP timestamps are offset per
    /// destination address, so a socket-LB connection (destination: the backend) and a later
    /// per-packet one (destination: the VIP) from the same client address and port look like
    /// an old duplicate to the backend (PAWS) and the SYN is dropped and retransmitted. That
    /// is an artifact of mixing the paths in one pod, not a cost of either path.
    packet_client: Pod<'a>,
    /// The client of the bound row (straight to the backends), for the same reason.
    direct_client: Pod<'a>,
    backends: Vec<Pod<'a>>,
    _servers: Vec<Bg>,
}

fn cluster(agent: &Agent) -> Cluster<'_> {
    if let Err(e) = ctl_apply(
        agent,
        "apply",
        &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n"),
    ) {
        eprintln!("bench-lb: namespace: {e}");
    }
    let client_pod = |name: &str| {
        let pod = Pod::add(
            agent,
            &format!("K8S_POD_NAMESPACE={NS};K8S_POD_NAME={name}"),
        );
        for (k, v) in [
            ("net.ipv4.ip_local_port_range", "1024 65000"),
            ("net.ipv4.tcp_tw_reuse", "1"),
        ] {
            let _ = pod.exec("sysctl", &["-q", "-w", &format!("{k}={v}")]);
        }
        pod
    };
    let client = client_pod("client");
    let packet_client = client_pod("packet-client");
    let direct_client = client_pod("direct-client");
    let backends: Vec<Pod<'_>> = (0..BACKENDS)
        .map(|j| Pod::add(agent, &format!("K8S_POD_NAMESPACE={NS};K8S_POD_NAME=b{j}")))
        .collect();
    let servers = backends
        .iter()
        .enumerate()
        .map(|(j, p)| serve(p, &format!("b{j}"), &[TARGET_PORT], &[]))
        .collect();
    Cluster {
        client,
        packet_client,
        direct_client,
        backends,
        _servers: servers,
    }
}

/// Services per `ciliumctl apply` while building up the service counts (the control-plane
/// measurement applies everything at once).
const APPLY_CHUNK: usize = 1000;

/// Apply services `range` in chunks of [`APPLY_CHUNK`]; the total time.
fn apply_range(
    agent: &Agent,
    range: std::ops::Range<usize>,
    real: &[Ipv4Addr],
) -> Result<Duration, String> {
    chunked(agent, "apply", range, real)
}

/// `ciliumctl VERB` of services `range` in chunks of [`APPLY_CHUNK`].
fn chunked(
    agent: &Agent,
    verb: &str,
    range: std::ops::Range<usize>,
    real: &[Ipv4Addr],
) -> Result<Duration, String> {
    let t0 = Instant::now();
    let mut start = range.start;
    while start < range.end {
        let end = (start + APPLY_CHUNK).min(range.end);
        ctl_apply(agent, verb, &objects(start..end, real)).map_err(|e| short(&e))?;
        start = end;
    }
    Ok(t0.elapsed())
}

fn short(e: &str) -> String {
    e.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(140)
        .collect::<String>()
        .replace('|', "/")
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// Length of each pass with the BPF statistics on.
const COST_WINDOW: Duration = Duration::from_secs(2);

/// One pass of [`loops()`] connection loops for [`COST_WINDOW`] with the BPF run-time
/// statistics on: where the CPU of a connection on this path goes.
fn cost_pass(path: &str, client: &Client<'_>, addr: &str) -> Option<Cost> {
    let _on = StatsOn::enable()
        .map_err(|e| eprintln!("bench-lb: no BPF run-time statistics: {e}"))
        .ok()?;
    let before = (prog_stats(), cpu_busy_ns());
    let out = client
        .command(&[
            "rate",
            addr,
            &COST_WINDOW.as_millis().to_string(),
            &loops().to_string(),
        ])
        .output()
        .ok()?;
    let after = (prog_stats(), cpu_busy_ns());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let secs = v["secs"].as_f64().unwrap_or(COST_WINDOW.as_secs_f64());
    let cost = Cost::from_window(
        path,
        v["ok"].as_f64()?,
        Duration::from_secs_f64(secs),
        (&before.0, before.1),
        (&after.0, after.1),
    );
    eprintln!("cost of {path}: {cost:?}");
    cost
}

/// Rows of our load balancer, plus the control-plane measurement (duration, note).
fn run_ours(
    counts: &[usize],
    total: usize,
    dur: Duration,
    windows: u32,
    costs: &mut Vec<Cost>,
) -> (Vec<Row>, (Option<Duration>, String)) {
    let cg = match Cgroup::new() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench-lb: {e}");
            std::process::exit(1);
        }
    };
    let agent = start_agent(
        POD_CIDR,
        &lb_args(&cg, SERVICE_CIDR, &["--node-name", "bench"]),
    );
    let c = cluster(&agent);
    let real: Vec<Ipv4Addr> = c.backends.iter().map(|p| p.ip).collect();
    let addr = format!("{}:80", vip(0));
    let mut rows = Vec::new();
    let mut have = 0usize;
    for &n in counts {
        let added = n.saturating_sub(have);
        let note = match apply_range(&agent, have..n, &real) {
            Ok(took) => {
                have = n;
                match wait_programmed(&agent, n, Instant::now(), Duration::from_secs(300)) {
                    Ok(_) => format!("apply of {added} services took {}", ms(took)),
                    Err(e) => e,
                }
            }
            Err(e) => format!("apply failed: {e}"),
        };
        let _ = Client::pod_in(&c.client, &cg).tcp_until_ok(&addr, Duration::from_secs(5));
        if rows.is_empty() {
            warm_up(&Client::pod_in(&c.client, &cg), &addr);
            warm_up(&Client::pod_out(&c.packet_client), &addr);
        }
        rows.extend(measure_ours(&c, &cg, &addr, (dur, windows), n, &note));
        if n == counts[0] {
            rows.push(measure_direct(&c, &real, (dur, windows), n));
        }
        if Some(&n) == counts.last() {
            costs.extend(cost_pass(
                "ours, socket LB",
                &Client::pod_in(&c.client, &cg),
                &addr,
            ));
            costs.extend(cost_pass(
                "ours, per-packet DNAT",
                &Client::pod_out(&c.packet_client),
                &addr,
            ));
            costs.extend(cost_pass(
                "bound: no service",
                &Client::pod_out(&c.direct_client),
                &direct_addrs(&real),
            ));
        }
    }

    // Control plane: back to one service, then all `total` in one `apply --wait` (JSON, as
    // kubectl sends it), three times; the map is checked once after each run.
    let mut times = Vec::new();
    let mut notes = Vec::new();
    let all = objects_json(0..total, &real);
    for run in 0..CP_RUNS {
        let extra = if run == 0 { have } else { total };
        if extra > 1 && chunked(&agent, "delete", 1..extra, &real).is_err() {
            notes.push("deleting the extra services failed".to_string());
            break;
        }
        if !wait_until_count(&agent, 1) {
            notes.push("the extra services did not leave the BPF map".to_string());
            break;
        }
        let seen = agent.log_text().lines().count();
        let t0 = Instant::now();
        let out = cilium_e2e::model::ctl_stdin(
            &agent,
            &["apply", "--wait", "--timeout", "120", "-f", "-"],
            &all,
        );
        let took = t0.elapsed();
        // The agent's own per-stage breakdown of this run.
        let log = agent.log_text();
        let stages: Vec<&str> = log
            .lines()
            .skip(seen)
            .filter(|l| {
                l.contains("apply done")
                    || l.contains("applied objects are in the datapath")
                    || l.contains("conntrack GC pass done")
            })
            .collect();
        for line in stages {
            eprintln!("control plane run {run}: {line}");
        }
        if !out.status.success() {
            notes.push(format!(
                "apply --wait failed: {}",
                short(&String::from_utf8_lossy(&out.stderr))
            ));
            break;
        }
        match programmed(&agent) {
            Some((n, _)) if n >= total => times.push(took),
            Some((n, _)) => {
                notes.push(format!(
                    "apply --wait returned with only {n} of {total} frontends in the map"
                ));
                break;
            }
            None => {
                notes.push("ciliumctl bpf lb list failed".to_string());
                break;
            }
        }
    }
    let cp = if times.is_empty() {
        (None, notes.join("; "))
    } else {
        let mut sorted = times.clone();
        sorted.sort();
        let all_runs: Vec<String> = times.iter().map(|d| ms(*d)).collect();
        notes.insert(
            0,
            format!(
                "median of {} runs ({}); from the start of `ciliumctl apply --wait` of a {:.1} MB JSON List until it returns (every frontend in the BPF services map with its backend slots, checked after each run); the agent log's `apply done` and `applied objects are in the datapath` lines break it down per stage",
                times.len(),
                all_runs.join(", "),
                all.len() as f64 / 1e6
            ),
        );
        (Some(sorted[sorted.len() / 2]), notes.join("; "))
    };
    eprintln!("control plane: {cp:?}");

    // Drift check, A-B-B-A: the control-plane runs leave all `total` services in place, so
    // the largest count is measured a second time here, then, back at one service, the first
    // count again. The table shows how much of a difference between rows is the machine; the
    // mean of both rows of each count takes out most of a slow drift.
    let hi = counts.last().copied().unwrap_or(1);
    if total == hi && times.len() == CP_RUNS {
        rows.extend(measure_ours(&c, &cg, &addr, (dur, windows), hi, AGAIN_HI));
    }
    if chunked(&agent, "delete", 1..total, &real).is_ok() && wait_until_count(&agent, 1) {
        rows.extend(measure_ours(
            &c,
            &cg,
            &addr,
            (dur, windows),
            1,
            "again, after the 10,000-service rows and the control-plane runs",
        ));
    }
    (rows, cp)
}

/// One row per path of ours (socket LB from the client inside the agent's cgroup, per-packet
/// DNAT from the other client pod) with `n` services.
fn measure_ours(
    c: &Cluster<'_>,
    cg: &Cgroup,
    addr: &str,
    (dur, windows): (Duration, u32),
    n: usize,
    note: &str,
) -> Vec<Row> {
    [
        (
            "socket LB (client in the agent's cgroup)",
            Client::pod_in(&c.client, cg),
        ),
        (
            "per-packet DNAT (client outside it)",
            Client::pod_out(&c.packet_client),
        ),
    ]
    .into_iter()
    .map(|(path, client)| {
        let (sample, par) = measure(&client, addr, dur, windows);
        eprintln!("ours, {path}, {n} services: {sample:?} {par:?} {note}");
        Row {
            implementation: "ours",
            path,
            services: n,
            sample,
            par,
            note: note.to_string(),
        }
    })
    .collect()
}

/// Note of the second measurement at the largest count (after the control-plane runs).
const AGAIN_HI: &str = "again, after the control-plane runs (which leave every service in place)";

/// Path of the bound row.
const DIRECT: &str = "no service: straight to the backends' pod addresses";

/// The bound of any service implementation on this datapath: the per-packet client
/// connecting to the backend pods' own addresses in turn, so no translation happens anywhere
/// (what remains is both pods' TCP, the veths and our pod-to-pod programs).
fn measure_direct(
    c: &Cluster<'_>,
    real: &[Ipv4Addr],
    (dur, windows): (Duration, u32),
    n: usize,
) -> Row {
    let addrs = direct_addrs(real);
    let client = Client::pod_out(&c.direct_client);
    warm_up(&client, &addrs);
    let (sample, par) = measure(&client, &addrs, dur, windows);
    eprintln!("direct: {sample:?} {par:?}");
    Row {
        implementation: "bound",
        path: DIRECT,
        services: n,
        sample,
        par,
        note: "what a service costing nothing would reach (within run-to-run noise)".into(),
    }
}

/// The backends' own addresses, comma-separated: what the bound row connects to in turn.
fn direct_addrs(real: &[Ipv4Addr]) -> String {
    let addrs: Vec<String> = real
        .iter()
        .map(|ip| format!("{ip}:{TARGET_PORT}"))
        .collect();
    addrs.join(",")
}

fn wait_until_count(agent: &Agent, want: usize) -> bool {
    cilium_e2e::wait_until(Duration::from_secs(120), || {
        let out = agent.ctl(&["bpf", "lb", "list", "-o", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["services"].as_array().map(Vec::len))
            .is_some_and(|n| n <= want)
    })
}

fn run_iptables(counts: &[usize], dur: Duration, windows: u32, costs: &mut Vec<Cost>) -> Vec<Row> {
    let saved = Command::new(ipt("iptables-save"))
        .args(["-t", "nat"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if saved.contains(":KUBE-SERVICES") {
        eprintln!(
            "bench-lb: the host already has KUBE-SERVICES (a kube-proxy?): iptables rows skipped"
        );
        return Vec::new();
    }
    let cg = match Cgroup::new() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench-lb: {e}");
            return Vec::new();
        }
    };
    let agent = start_agent(
        POD_CIDR,
        &lb_args(
            &cg,
            SERVICE_CIDR,
            &["--node-name", "bench", "--enable-lb=false"],
        ),
    );
    let c = cluster(&agent);
    let real: Vec<Ipv4Addr> = c.backends.iter().map(|p| p.ip).collect();
    let addr = format!("{}:80", vip(0));
    let _guard = IptablesGuard::new();
    let mut rows = Vec::new();
    let mut have = 0usize;
    for (k, &n) in counts.iter().enumerate() {
        let mut note = match apply_range(&agent, have..n, &real) {
            Ok(_) => String::new(),
            Err(e) => format!("ciliumctl apply failed: {e}; "),
        };
        have = n;
        // Not during an interrupt's undo (it would put back what the undo removes).
        let busy = cilium_e2e::cleanup::busy();
        let restored = iptables_restore(&iptables_rules(n, &real, k == 0));
        drop(busy);
        match restored {
            Ok(d) => note.push_str(&format!("iptables-restore of {n} services took {}", ms(d))),
            Err(e) => {
                // Rules half loaded (or not at all) would measure something else: no row for
                // this count or the larger ones.
                eprintln!("bench-lb: iptables rows from {n} services on not measured: {e}");
                break;
            }
        }
        let client = Client::pod_out(&c.client);
        let first = client.tcp_until_ok(&addr, Duration::from_secs(5));
        if first.token().is_none() {
            note.push_str(&format!(
                "; the ClusterIP does not answer through iptables: {first:?}"
            ));
            if std::env::var_os("BENCH_LB_DEBUG").is_some() {
                let out = Command::new("sh")
                    .args(["-c", "iptables-save -c -t nat | grep -v -- '-A KUBE-SEP' | head -30; ip route; sysctl net.ipv4.ip_forward"])
                    .output();
                if let Ok(o) = out {
                    eprintln!("{}", String::from_utf8_lossy(&o.stdout));
                }
                eprintln!(
                    "pausing 120 s for inspection (client pod {})",
                    c.client.netns.name
                );
                std::thread::sleep(Duration::from_secs(120));
            }
        }
        if k == 0 {
            warm_up(&client, &addr);
        }
        let (sample, par) = measure(&client, &addr, dur, windows);
        eprintln!("iptables, {n} services: {sample:?} {par:?} {note}");
        if Some(&n) == counts.last() {
            costs.extend(cost_pass("kube-proxy iptables", &client, &addr));
        }
        rows.push(Row {
            implementation: "kube-proxy iptables",
            path: "netfilter DNAT (client in the pod)",
            services: n,
            sample,
            par,
            note,
        });
    }
    rows
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "n/a".into(),
    }
}

fn main() {
    if let Err(why) = privileged().and_then(|()| binaries_present()) {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            eprintln!("bench-lb cannot run in CI: {why}");
            std::process::exit(1);
        }
        println!("SKIPPED: bench-lb: {why}");
        return;
    }
    let quick = std::env::var("BENCH_LB_QUICK").is_ok();
    // BENCH_LB_COUNTS=1,1,1 (say) measures those counts instead, for drift checks; the doc is
    // then left alone.
    let custom: Option<Vec<usize>> = std::env::var("BENCH_LB_COUNTS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let quick = quick || custom.is_some();
    let counts: Vec<usize> = match custom {
        Some(c) if !c.is_empty() => c,
        _ if quick => vec![1, 100, 1000],
        _ => vec![1, 1000, 10_000],
    };
    let dur = Duration::from_millis(if quick { 300 } else { 1000 });
    let windows = 5;
    let _ = enable_forwarding();
    let started = Instant::now();
    // BENCH_LB_TOTAL: services of the control-plane measurement (default 10,000; 1,000 quick).
    let total = std::env::var("BENCH_LB_TOTAL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1000 } else { 10_000 });
    let only_iptables = std::env::var_os("BENCH_LB_ONLY_IPTABLES").is_some();
    let mut costs = Vec::new();
    let (mut rows, cp) = if only_iptables {
        (Vec::new(), (None, "not run".to_string()))
    } else {
        run_ours(&counts, total, dur, windows, &mut costs)
    };
    if std::env::var_os("BENCH_LB_SKIP_IPTABLES").is_none() {
        rows.extend(run_iptables(&counts, dur, windows, &mut costs));
    }

    let rate = |imp: &str, path_prefix: &str, n: usize, par: bool| {
        rows.iter()
            .find(|r| r.implementation == imp && r.path.starts_with(path_prefix) && r.services == n)
            .map(|r| if par { r.par.rate } else { r.sample.rate })
    };
    // The mean of both rows of a count (first and "again"), when there are two.
    let mean_of_both = |imp: &str, path_prefix: &str, n: usize, par: bool| {
        let v: Vec<f64> = rows
            .iter()
            .filter(|r| {
                r.implementation == imp && r.path.starts_with(path_prefix) && r.services == n
            })
            .map(|r| if par { r.par.rate } else { r.sample.rate })
            .collect();
        (v.len() == 2).then(|| (v[0] + v[1]) / 2.0)
    };
    let (lo, hi) = (counts[0], counts[counts.len() - 1]);
    let flavour = Command::new(ipt("iptables"))
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let loops = loops();
    let mut t = format!(
        "## Load balancing (bench-lb)\n\nMeasured {} on {}{}; iptables baseline with `{flavour}`. One measured ClusterIP with 10 pod backends beside 0 / {} / {} other services of 10 backends each. New-connection rate = connect + read to EOF + close in a loop in the client pod, best of {windows} {} ms windows, measured twice: with one loop (bound by the wake-ups of a loop waiting for each reply; connect latency p50/p99 from this one) and with {loops} loops side by side (bound by the CPU each connection costs).\n\n",
        cilium_bench::today(),
        cilium_bench::machine(),
        if quick { " (quick run)" } else { "" },
        counts.get(1).copied().unwrap_or(lo).saturating_sub(1),
        hi.saturating_sub(1),
        dur.as_millis()
    );
    t.push_str(&format!("| implementation | path | services | conn/s, 1 loop | p50 connect | p99 connect | conn/s, {loops} loops | ratio to the same path at 1 service (1 loop / {loops} loops) | notes |\n|---|---|---:|---:|---:|---:|---:|---:|---|\n"));
    for r in &rows {
        let base = rows
            .iter()
            .find(|b| b.implementation == r.implementation && b.path == r.path && b.services == lo);
        let mut note = r.note.clone();
        let failed = r.sample.failed + r.par.failed;
        if failed > 0 {
            let last = if r.par.last_error.is_empty() {
                &r.sample.last_error
            } else {
                &r.par.last_error
            };
            note.push_str(&format!("; {failed} connects failed ({last})"));
        }
        t.push_str(&format!(
            "| {} | {} | {} | {:.0} | {} µs | {} µs | {:.0} | {} / {} | {} |\n",
            r.implementation,
            r.path,
            r.services,
            r.sample.rate,
            r.sample.p50_us,
            r.sample.p99_us,
            r.par.rate,
            ratio(Some(r.sample.rate), base.map(|b| b.sample.rate)),
            ratio(Some(r.par.rate), base.map(|b| b.par.rate)),
            note.trim_start_matches("; ")
        ));
    }
    let both = |a: &dyn Fn(bool) -> Option<f64>, b: &dyn Fn(bool) -> Option<f64>| {
        format!(
            "{} | {}",
            ratio(a(false), b(false)),
            ratio(a(true), b(true))
        )
    };
    let paths = [("socket LB", "socket"), ("per-packet", "per-packet")];
    let mut goals = Vec::new();
    for (name, prefix) in paths {
        goals.push((
            format!("ours ({name}) at {hi} / ours at {lo}"),
            both(&|p| rate("ours", prefix, hi, p), &|p| {
                rate("ours", prefix, lo, p)
            }),
            "≥ 0.95x",
        ));
    }
    for (name, prefix) in paths {
        goals.push((
            format!("ours ({name}), mean of both {hi} rows / mean of both {lo} rows (A-B-B-A)"),
            both(&|p| mean_of_both("ours", prefix, hi, p), &|p| {
                mean_of_both("ours", prefix, lo, p)
            }),
            "≥ 0.95x",
        ));
    }
    for (name, prefix) in paths {
        goals.push((
            format!("ours ({name}) at {hi} / iptables at {hi}"),
            both(&|p| rate("ours", prefix, hi, p), &|p| {
                rate("kube-proxy iptables", "netfilter", hi, p)
            }),
            "≥ 2x",
        ));
    }
    goals.push((
        format!("bound (no service) / iptables at {hi}: a service costing nothing"),
        both(&|p| rate("bound", "no service", lo, p), &|p| {
            rate("kube-proxy iptables", "netfilter", hi, p)
        }),
        "-",
    ));
    t.push_str(&format!(
        "\n| ratio | 1 loop | {loops} loops | goal |\n|---|---:|---:|---|\n"
    ));
    for (what, value, goal) in goals {
        t.push_str(&format!("| {what} | {value} | {goal} |\n"));
    }
    if !costs.is_empty() {
        t.push_str(&format!(
            "\nWhere the CPU of a connection goes, at {hi} services: one more {} s pass per path with `kernel.bpf_stats_enabled` on (off for every row above; it adds two clock reads per program run). CPU = busy time of all CPUs (`/proc/stat`: user, system, irq, softirq), so both pods' TCP, the client and server processes, the veths and netfilter; BPF = the run time the kernel counted for our programs (`cil_*`, names cut to 15 characters), per connection made in the pass.\n",
            COST_WINDOW.as_secs()
        ));
        t.push_str(&bpf_cost::table(&costs, loops, hi));
    }
    t.push_str(&format!(
        "\n| control plane | time | goal | notes |\n|---|---:|---|---|\n| {total} services × 10 backends in one `ciliumctl apply --wait` → all in the BPF services map | {} | ≤ 1 s (10,000) | {} |\n\nWhole run: {:.0} s.\n\n",
        cp.0.map_or("n/a".into(), ms),
        cp.1,
        started.elapsed().as_secs_f64()
    ));
    println!("{t}");
    if quick {
        println!("(quick run: docs/performance.md left as it was)");
    } else {
        cilium_bench::write_doc("bench-lb", &t);
    }
}
