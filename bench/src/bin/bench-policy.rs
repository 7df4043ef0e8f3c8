//! Policy benchmark (privileged; prints `SKIPPED: <why>` when it cannot run): two pods made by
//! the real agent and cilium-cni, a client in pod A and a server in pod B.
//!
//! - TCP connection rate (connect, read to EOF, close, in a loop from a thread inside A's
//!   network namespace) and throughput (`iperf3 -t 5`) when B is selected by no policy, by 100
//!   rules and by 10,000 rules (one rule allows A by its labels, the others allow distinct /32
//!   CIDRs, i.e. as many CIDR identities), as ratios to the no-policy baseline of the same run;
//! - time from `ciliumctl apply` of a policy denying A → B to the first dropped connection
//!   (p50/p99 over 20 runs);
//! - time to resolve and program 1,000 NetworkPolicies over 100 endpoints (100 pods via CNI):
//!   from the start of `ciliumctl apply` until every row of the `endpoint_policies` table is
//!   reconciled with at least the expected number of entries.
//!
//! Prints a markdown table and writes it into docs/performance.md (the section between the
//! `bench-policy` markers), with the date and the machine. Build the workspace binaries first
//! (`cargo build --release --workspace --bins`); `CILIUM_BIN_DIR` may point elsewhere.

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use cilium_e2e::model::{ctl_apply, enter_netns, pod_yaml, run_in_netns};
use cilium_e2e::{Agent, Bg, Pod, privileged};

const SERVER_PORT: u16 = 7000;
const IPERF_PORT: u16 = 5201;
const NS: &str = "bench";

fn pod_object(ns: &str, name: &str, labels: &[(&str, &str)]) -> String {
    pod_yaml(ns, name, labels)
}

fn namespace(ns: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {{ns: {ns}, kubernetes.io/metadata.name: {ns}}}\n"
    )
}

/// A policy set selecting the server with `rules` ingress rules: the first allows the client
/// pod, the others one /32 CIDR each (outside the pod range), 100 rules per document.
fn rules_yaml(rules: usize) -> String {
    let mut s = String::new();
    let mut i = 0usize;
    let mut doc = 0;
    while i < rules {
        s.push_str(&format!(
            "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: bench-{doc}, namespace: {NS}}}\nspec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n"
        ));
        let end = (i + 100).min(rules);
        while i < end {
            if i == 0 {
                s.push_str("  - fromEndpoints: [{matchLabels: {app: client}}]\n");
            } else {
                let n = u32::try_from(i).unwrap_or(0);
                let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + n);
                s.push_str(&format!("  - fromCIDR: ['{ip}/32']\n"));
            }
            i += 1;
        }
        doc += 1;
    }
    s
}

fn deny_yaml() -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bench-deny, namespace: {NS}}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  policyTypes: [Ingress]\n"
    )
}

/// Accept connections on `SERVER_PORT` inside B forever, closing each at once.
fn start_conn_server(b: &Pod<'_>) {
    let path = b.netns.path();
    std::thread::spawn(move || {
        if let Err(e) = enter_netns(&path) {
            eprintln!("connection server: cannot enter the pod namespace: {e}");
            return;
        }
        let l = match TcpListener::bind(("0.0.0.0", SERVER_PORT)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("connection server: bind: {e}");
                return;
            }
        };
        for c in l.incoming() {
            drop(c);
        }
    });
}

/// Connections per second from inside A to `dst` over `dur` (connect, read to EOF, close).
fn conn_rate(a: &Pod<'_>, dst: Ipv4Addr, dur: Duration) -> (f64, u64) {
    let addr = SocketAddr::from((dst, SERVER_PORT));
    run_in_netns(&a.netns.path(), || {
        let start = Instant::now();
        let (mut ok, mut failed) = (0u64, 0u64);
        while start.elapsed() < dur {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(mut s) => {
                    let mut buf = Vec::new();
                    let _ = s.read_to_end(&mut buf);
                    ok += 1;
                }
                Err(_) => failed += 1,
            }
        }
        (ok as f64 / start.elapsed().as_secs_f64(), failed)
    })
    .unwrap_or((0.0, 0))
}

/// iperf3 throughput A → B in bits per second (None when iperf3 is missing or fails).
fn throughput(a: &Pod<'_>, dst: Ipv4Addr) -> Option<f64> {
    let out = a
        .exec(
            "iperf3",
            &[
                "-c",
                &dst.to_string(),
                "-p",
                &IPERF_PORT.to_string(),
                "-t",
                "5",
                "-J",
            ],
        )
        .stdout;
    let v: serde_json::Value = serde_json::from_slice(&out).ok()?;
    v["end"]["sum_received"]["bits_per_second"].as_f64()
}

/// Whether one quick connection A → B succeeds.
fn probe(a: &Pod<'_>, dst: Ipv4Addr, timeout: Duration) -> bool {
    let addr = SocketAddr::from((dst, SERVER_PORT));
    run_in_netns(&a.netns.path(), || {
        TcpStream::connect_timeout(&addr, timeout).is_ok()
    })
    .unwrap_or(false)
}

fn endpoint_id(agent: &Agent, ip: Ipv4Addr) -> Option<u64> {
    let eps = agent.ctl_json(&["endpoint", "list"]);
    eps.as_array()?
        .iter()
        .find(|e| e["ipv4"] == ip.to_string().as_str())
        .and_then(|e| e["id"].as_u64())
}

/// Number of BPF policy entries of an endpoint (None when `bpf policy list` is missing).
fn policy_entries(agent: &Agent, ep: Option<u64>) -> Option<usize> {
    let ep = ep?.to_string();
    let out = agent.ctl(&["bpf", "policy", "list", &ep, "-o", "json"]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()
        .map(Vec::len)
        .or_else(|| v["entries"].as_array().map(Vec::len))
}

/// Rows of the `endpoint_policies` table: (all reconciled, total entries), None when missing.
fn endpoint_policies(agent: &Agent) -> Option<(bool, usize, usize)> {
    let out = agent.ctl(&["db", "endpoint_policies", "-o", "json"]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let objs = v["objects"].as_array().or_else(|| v.as_array())?.clone();
    let done = objs.iter().all(|o| {
        let o = o.get("object").unwrap_or(o);
        o["status"]["kind"]
            .as_str()
            .is_some_and(|k| k.eq_ignore_ascii_case("done"))
    });
    let entries = objs
        .iter()
        .map(|o| {
            o.get("object").unwrap_or(o)["entries"]
                .as_array()
                .map_or(0, Vec::len)
        })
        .sum();
    Some((done, objs.len(), entries))
}

/// The first line of an error, at most 120 characters, without table-breaking pipes.
fn short(e: &str) -> String {
    e.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(120)
        .collect::<String>()
        .replace('|', "/")
}

/// The agent, ciliumctl and cilium-cni must be where `cilium_e2e::bin` looks.
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
    for b in ["cilium-agent", "ciliumctl", "cilium-cni"] {
        if !dirs.iter().any(|d| d.join(b).exists()) {
            return Err(format!(
                "{b} not found in {dirs:?}: build the workspace binaries with the same profile \
                 (cargo build --release --workspace --bins) or set CILIUM_BIN_DIR"
            ));
        }
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx).copied()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

struct Scenario {
    name: String,
    rate: f64,
    failed: u64,
    bps: Option<f64>,
    entries: Option<usize>,
    note: String,
}

fn main() {
    if let Err(why) = privileged() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            eprintln!("bench-policy cannot run in CI: {why}");
            std::process::exit(1);
        }
        println!("SKIPPED: bench-policy: {why}");
        return;
    }
    if let Err(why) = binaries_present() {
        println!("SKIPPED: bench-policy: {why}");
        return;
    }
    let quick = std::env::var("BENCH_POLICY_QUICK").is_ok();
    let rate_dur = Duration::from_millis(if quick { 300 } else { 1000 });
    let agent = Agent::start("10.221.0.0/22", &[]);
    let objects = format!(
        "{}{}{}",
        namespace(NS),
        pod_object(NS, "client", &[("app", "client")]),
        pod_object(NS, "server", &[("app", "server")])
    );
    if let Err(e) = ctl_apply(&agent, "apply", &objects) {
        eprintln!("bench-policy: {e}");
        std::process::exit(1);
    }
    let a = Pod::add(
        &agent,
        &format!("K8S_POD_NAMESPACE={NS};K8S_POD_NAME=client"),
    );
    let b = Pod::add(
        &agent,
        &format!("K8S_POD_NAMESPACE={NS};K8S_POD_NAME=server"),
    );
    for (k, v) in [
        ("net.ipv4.ip_local_port_range", "1024 65000"),
        ("net.ipv4.tcp_tw_reuse", "1"),
    ] {
        let _ = a.exec("sysctl", &["-q", "-w", &format!("{k}={v}")]);
    }
    start_conn_server(&b);
    let _iperf = Bg::spawn(
        b.netns
            .cmd("iperf3")
            .args(["-s", "-p", &IPERF_PORT.to_string()]),
    );
    let ready = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        probe(&a, b.ip, Duration::from_secs(1))
    });
    if !ready {
        eprintln!("bench-policy: the client cannot reach the server without policy");
        std::process::exit(1);
    }
    let b_ep = endpoint_id(&agent, b.ip);

    // Connection rate and throughput with 0, 100 and 10,000 rules.
    let mut scenarios = Vec::new();
    // The no-policy row is measured again at the end to show the drift of the run.
    for (k, rules) in [0usize, 100, 10_000, 0].into_iter().enumerate() {
        let mut note = String::new();
        let yaml = rules_yaml(rules);
        if rules > 0 {
            let t0 = Instant::now();
            if let Err(e) = ctl_apply(&agent, "apply", &yaml) {
                note = format!("apply failed: {}", short(&e));
            } else {
                // Wait until the entries are there (when the command exists) and A passes.
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let n = policy_entries(&agent, b_ep);
                    if (n.is_none_or(|n| n >= rules)) && probe(&a, b.ip, Duration::from_secs(1)) {
                        break;
                    }
                    if Instant::now() > deadline {
                        note = "not fully programmed after 120 s".into();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                if note.is_empty() {
                    note = format!("programmed in {}", ms(t0.elapsed()));
                }
            }
        }
        // Best of three windows: other work on the machine only ever slows a window down.
        let (mut rate, mut failed) = (0.0f64, 0u64);
        for _ in 0..3 {
            let (r, f) = conn_rate(&a, b.ip, rate_dur);
            rate = rate.max(r);
            failed += f;
        }
        let bps = if quick { None } else { throughput(&a, b.ip) };
        let entries = policy_entries(&agent, b_ep);
        let name = match rules {
            0 if k > 0 => "B selected by no policy (again, after the others)".to_string(),
            0 => "B selected by no policy".to_string(),
            n => format!("B selected by {n} rules ({} CIDR identities + A)", n - 1),
        };
        eprintln!("{name}: {rate:.0} conn/s, {failed} failed, {bps:?} bit/s, entries {entries:?}");
        scenarios.push(Scenario {
            name,
            rate,
            failed,
            bps,
            entries,
            note,
        });
        if rules > 0 {
            let _ = ctl_apply(&agent, "delete", &yaml);
        }
    }

    // Apply → enforcement latency.
    let runs = if quick { 5 } else { 20 };
    let mut lat = Vec::new();
    let mut timeouts = 0;
    let deny = deny_yaml();
    for _ in 0..runs {
        let open = Instant::now();
        while !probe(&a, b.ip, Duration::from_millis(500)) {
            if open.elapsed() > Duration::from_secs(10) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if open.elapsed() > Duration::from_secs(10) {
            eprintln!("the client cannot reach the server 10 s after deleting the deny policy");
            break;
        }
        let t0 = Instant::now();
        let applied = ctl_apply(&agent, "apply", &deny);
        let mut dropped = None;
        if applied.is_ok() {
            while t0.elapsed() < Duration::from_secs(3) {
                if !probe(&a, b.ip, Duration::from_millis(100)) {
                    dropped = Some(t0.elapsed());
                    break;
                }
            }
        }
        let _ = ctl_apply(&agent, "delete", &deny);
        match dropped {
            Some(d) => lat.push(d),
            None => timeouts += 1,
        }
        if lat.is_empty() && timeouts >= 3 {
            break;
        }
        // Back to allowed before the next run (at most 5 s).
        let back = Instant::now();
        while back.elapsed() < Duration::from_secs(5)
            && !probe(&a, b.ip, Duration::from_millis(200))
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    lat.sort();

    // 1,000 policies over 100 endpoints.
    let scale = program_1000_policies(&agent);

    // Report.
    let base = scenarios.first().map_or(0.0, |s| s.rate);
    let base_bps = scenarios.first().and_then(|s| s.bps);
    let mut t = String::new();
    t.push_str(&format!(
        "## Policy (bench-policy)\n\nMeasured {} on {}. Two pods on one node through the real agent and cilium-cni; connection rate = TCP connect + read to EOF + close in a loop from one thread in pod A to pod B, best of three 1 s windows; throughput = `iperf3 -t 5`. Ratios are against the no-policy row of the same run (goal: ≥ 0.95× at 10,000 rules).\n\n",
        cilium_bench::today(),
        cilium_bench::machine()
    ));
    t.push_str("| scenario | conn/s | ratio | throughput | ratio | B's policy entries | notes |\n|---|---:|---:|---:|---:|---:|---|\n");
    for s in &scenarios {
        let ratio = if base > 0.0 {
            format!("{:.2}x", s.rate / base)
        } else {
            "-".into()
        };
        let (bps, bratio) = match (s.bps, base_bps) {
            (Some(b), Some(bb)) if bb > 0.0 => {
                (format!("{:.2} Gbit/s", b / 1e9), format!("{:.2}x", b / bb))
            }
            (Some(b), _) => (format!("{:.2} Gbit/s", b / 1e9), "-".into()),
            _ => ("-".into(), "-".into()),
        };
        let mut note = s.note.clone();
        if s.failed > 0 {
            note.push_str(&format!(" {} connects failed", s.failed));
        }
        t.push_str(&format!(
            "| {} | {:.0} | {ratio} | {bps} | {bratio} | {} | {} |\n",
            s.name,
            s.rate,
            s.entries.map_or("n/a".into(), |n| n.to_string()),
            note.trim()
        ));
    }
    t.push_str("\n| latency | p50 | p99 | runs | notes |\n|---|---:|---:|---:|---|\n");
    let lat_note = if timeouts > 0 {
        format!("{timeouts} runs not enforced within 3 s")
    } else {
        String::new()
    };
    t.push_str(&format!(
        "| `ciliumctl apply` of a denying policy → first dropped connection | {} | {} | {} | {lat_note} |\n",
        percentile(&lat, 0.5).map_or("n/a".into(), ms),
        percentile(&lat, 0.99).map_or("n/a".into(), ms),
        lat.len()
    ));
    t.push_str(&format!(
        "| resolve and program 1,000 NetworkPolicies over 100 endpoints | {} | - | 1 | {} |\n\n",
        scale.0.map_or("n/a".into(), ms),
        scale.1
    ));
    println!("{t}");
    if quick {
        println!("(quick run: docs/performance.md left as it was)");
    } else {
        cilium_bench::write_doc("bench-policy", &t);
    }
}

/// Create 100 pods, apply 1,000 NetworkPolicies over them and time until `endpoint_policies`
/// is reconciled with the expected entries. Returns (duration, note).
fn program_1000_policies(agent: &Agent) -> (Option<Duration>, String) {
    const SNS: &str = "scale";
    let mut objects = namespace(SNS);
    for i in 0..100 {
        let app = format!("s{}", i % 10);
        let idx = format!("{i}");
        objects.push_str(&pod_object(
            SNS,
            &format!("p{i}"),
            &[("app", &app), ("idx", &idx)],
        ));
    }
    if let Err(e) = ctl_apply(agent, "apply", &objects) {
        return (None, format!("applying the pods failed: {e}"));
    }
    let t_pods = Instant::now();
    let pods: Vec<Pod<'_>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..100)
            .map(|i| {
                s.spawn(move || {
                    Pod::add(agent, &format!("K8S_POD_NAMESPACE={SNS};K8S_POD_NAME=p{i}"))
                })
            })
            .collect();
        hs.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    eprintln!("100 pods in {}", ms(t_pods.elapsed()));
    let before = endpoint_policies(agent).map_or(0, |(_, _, e)| e);
    let mut pol = String::new();
    for k in 0..1000 {
        pol.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{k}, namespace: {SNS}}}\nspec:\n  podSelector: {{matchLabels: {{idx: '{}'}}}}\n  ingress:\n  - from:\n    - podSelector: {{matchLabels: {{app: s{}}}}}\n    ports:\n    - {{port: {}, protocol: TCP}}\n",
            k % 100,
            k % 10,
            1000 + k
        ));
    }
    // Each policy allows 10 pods (10 identities) on its port: ≥ 10,000 entries in total.
    let want = before + 10_000;
    let t0 = Instant::now();
    let result = match ctl_apply(agent, "apply", &pol) {
        Err(e) => (
            None,
            format!("apply failed: {}", e.lines().next().unwrap_or_default()),
        ),
        Ok(()) => {
            let applied = t0.elapsed();
            let deadline = t0 + Duration::from_secs(120);
            loop {
                match endpoint_policies(agent) {
                    None => {
                        break (
                            None,
                            format!(
                                "apply took {}; no endpoint_policies table to watch",
                                ms(applied)
                            ),
                        );
                    }
                    Some((true, _, n)) if n >= want => {
                        break (
                            Some(t0.elapsed()),
                            format!("apply returned after {}, {n} entries", ms(applied)),
                        );
                    }
                    Some((_, rows, n)) if Instant::now() > deadline => {
                        break (
                            None,
                            format!("not programmed after 120 s ({rows} rows, {n} entries)"),
                        );
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    };
    let _ = ctl_apply(agent, "delete", &pol);
    std::thread::scope(|s| {
        for p in &pods {
            s.spawn(move || p.del());
        }
    });
    drop(pods);
    result
}
