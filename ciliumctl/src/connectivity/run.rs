//! The run: preflight, setup (objects, pods, echo servers, services), the scenarios with their
//! bounded waits and monitor evidence, progress, cleanup (also on Ctrl-C) and the report.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cilium_api::Client;
use cilium_api::models::{MonitorEvent, MonitorEventType};
use tokio::signal::unix::{SignalKind, signal};

use super::TestArgs;
use super::net::{self, EchoServers, Observed, Proto};
use super::report::{Outcome, ProbeResult, Report, ScenarioResult, secs};
use super::scenarios::{
    ECHO_TCP, ECHO_TCP_ALT, ECHO_UDP, Expect, PolicyEnv, ProbeSpec, Role, SVC_TCP, SVC_UDP,
    Scenario, Src, Svc, To, catalog,
};
use super::setup::{Ctx, lock, remove_leftovers};
use crate::output::{Format, print_structured};

/// Addresses known once setup is done.
struct Env {
    policy: PolicyEnv,
    gateway: Ipv4Addr,
    host_tcp: u16,
    host_udp: u16,
    cluster_ips: BTreeMap<&'static str, Ipv4Addr>,
    /// None when this process gets socket load balancing (or it cannot be told); else why not.
    host_lb_missing: Option<String>,
}

/// `ciliumctl connectivity test`.
pub async fn test(client: &Client, format: Format, args: TestArgs) -> anyhow::Result<ExitCode> {
    let selected: Vec<Scenario> = match &args.test {
        Some(re) => {
            let re = regex::Regex::new(re).map_err(|e| {
                anyhow::anyhow!("--test {re:?} is not a valid regular expression: {e}")
            })?;
            catalog()
                .into_iter()
                .filter(|s| re.is_match(s.name))
                .collect()
        }
        None => catalog(),
    };
    if selected.is_empty() {
        let names: Vec<&str> = catalog().iter().map(|s| s.name).collect();
        anyhow::bail!(
            "--test {:?} selects no scenario; the scenarios are: {}",
            args.test.as_deref().unwrap_or_default(),
            names.join(", ")
        );
    }
    let exe = std::env::current_exe().ok();
    let cni = super::resolve_cni_bin(args.cni_bin.as_deref(), exe.as_deref())?;
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "connectivity test must run as root: it creates network namespaces and pod interfaces \
         (try sudo ciliumctl connectivity test)"
    );
    client.status().await.map_err(|e| {
        anyhow::anyhow!("cannot run the connectivity test: the agent does not answer: {e}")
    })?;
    // Registered now, before anything is created: Ctrl-C and SIGTERM lead to cleanup.
    let mut sigint = signal(SignalKind::interrupt())
        .map_err(|e| anyhow::anyhow!("cannot watch for Ctrl-C: {e}"))?;
    let mut sigterm = signal(SignalKind::terminate())
        .map_err(|e| anyhow::anyhow!("cannot watch for SIGTERM: {e}"))?;

    let ctx = Ctx {
        client: client.clone(),
        id: format!("{:x}", std::process::id()),
        cni,
        socket: client.target(),
        created: Mutex::default(),
        inflight: Arc::default(),
        events: Arc::default(),
    };
    let results: Mutex<Vec<ScenarioResult>> = Mutex::default();
    let timing = Timing {
        scenario: Duration::from_secs(args.timeout.max(1)),
        probe: Duration::from_millis(args.probe_timeout_ms.max(100)),
    };
    eprintln!(
        "Connectivity test {} against {} ({} scenarios)",
        ctx.id,
        ctx.socket,
        selected.len()
    );
    let mut interrupted = false;
    let outcome = tokio::select! {
        _ = sigint.recv() => { interrupted = true; Ok(()) }
        _ = sigterm.recv() => { interrupted = true; Ok(()) }
        r = body(&ctx, &selected, timing, &results) => r,
    };
    if interrupted {
        eprintln!("\ninterrupted: cleaning up");
    }
    let cleanup_errors = ctx.cleanup().await;
    eprintln!(
        "Cleanup: {}",
        if cleanup_errors.is_empty() {
            "done".to_string()
        } else {
            cleanup_errors.join("; ")
        }
    );

    let mut errors = Vec::new();
    if let Err(e) = outcome {
        errors.push(format!("{e:#}"));
    }
    errors.extend(cleanup_errors.into_iter().map(|e| format!("cleanup: {e}")));
    let mut report = Report {
        run_id: format!("cct-{}", ctx.id),
        agent: ctx.socket.clone(),
        scenarios: std::mem::take(&mut *lock(&results)),
        passed: 0,
        failed: 0,
        skipped: 0,
        interrupted,
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    };
    report.tally();
    if let Some(path) = &args.junit {
        std::fs::write(path, report.junit()).map_err(|e| {
            anyhow::anyhow!("cannot write the JUnit report {}: {e}", path.display())
        })?;
    }
    if !print_structured(format, &report)? {
        print!("{}", report.table());
    }
    Ok(if interrupted {
        ExitCode::from(130)
    } else if report.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(Clone, Copy)]
struct Timing {
    scenario: Duration,
    probe: Duration,
}

async fn body(
    ctx: &Ctx,
    selected: &[Scenario],
    timing: Timing,
    results: &Mutex<Vec<ScenarioResult>>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let removed = remove_leftovers(ctx).await?;
    if !removed.is_empty() {
        eprintln!("Removed leftovers of earlier runs: {}", removed.join(", "));
    }
    let _monitor = start_monitor(ctx).await?;
    let env = setup(ctx, timing).await?;
    eprintln!(
        "Setup done in {}",
        secs(started.elapsed().as_millis() as u64)
    );
    let total = selected.len();
    for (i, sc) in selected.iter().enumerate() {
        eprint!("[{}/{total}] {} ... ", i + 1, sc.name);
        let _ = std::io::stderr().flush();
        let r = run_scenario(ctx, &env, sc, timing).await;
        eprintln!(
            "{}{} ({})",
            r.result.name(),
            r.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default(),
            secs(r.duration_ms)
        );
        lock(results).push(r);
    }
    Ok(())
}

/// Aborts the monitor task on drop.
struct MonitorTask(tokio::task::JoinHandle<()>);

impl Drop for MonitorTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn start_monitor(ctx: &Ctx) -> anyhow::Result<MonitorTask> {
    let mut stream = ctx
        .client
        .monitor(Some("drop"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the agent's monitor stream: {e}"))?;
    let events = ctx.events.clone();
    Ok(MonitorTask(tokio::spawn(async move {
        while let Ok(Some(line)) = stream.next_line().await {
            if let Ok(ev) = serde_json::from_str::<MonitorEvent>(&line)
                && ev.kind == MonitorEventType::Drop
            {
                lock(&events).push(ev);
            }
        }
    })))
}

fn objects_yaml(ctx: &Ctx) -> String {
    let mut s = String::new();
    for n in [1u8, 2] {
        let ns = ctx.namespace(n);
        s.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    kubernetes.io/metadata.name: {ns}\n    cilium-test: \"{n}\"\n"
        ));
    }
    for role in Role::ALL {
        s.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  labels:\n    app: {}\n    role: {}\nspec:\n  containers:\n  - name: echo\n    image: none\n    ports:\n    - {{name: tcp, containerPort: {ECHO_TCP}, protocol: TCP}}\n    - {{name: tcp-alt, containerPort: {ECHO_TCP_ALT}, protocol: TCP}}\n    - {{name: udp, containerPort: {ECHO_UDP}, protocol: UDP}}\n",
            role.name(),
            ctx.namespace(role.ns_index()),
            role.name(),
            role.kind()
        ));
    }
    s
}

fn services_yaml(ns: &str, env: &PolicyEnv) -> String {
    let mut s = String::new();
    for svc in Svc::ALL {
        let name = svc.name();
        s.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  ports:\n  - {{name: tcp, port: {SVC_TCP}, targetPort: {ECHO_TCP}, protocol: TCP}}\n  - {{name: udp, port: {SVC_UDP}, targetPort: {ECHO_UDP}, protocol: UDP}}\n"
        ));
        let eps: Vec<Ipv4Addr> = svc.backends().iter().map(|r| env.ip_of(*r)).collect();
        let endpoints = if eps.is_empty() {
            "endpoints: []\n".to_string()
        } else {
            let mut e = String::from("endpoints:\n");
            for ip in &eps {
                e.push_str(&format!(
                    "- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n"
                ));
            }
            e
        };
        s.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- {{name: tcp, port: {ECHO_TCP}, protocol: TCP}}\n- {{name: udp, port: {ECHO_UDP}, protocol: UDP}}\n{endpoints}"
        ));
    }
    s
}

async fn setup(ctx: &Ctx, timing: Timing) -> anyhow::Result<Env> {
    ctx.apply(objects_yaml(ctx)).await?;
    let mut ips = [Ipv4Addr::UNSPECIFIED; 4];
    let mut gateway = None;
    for (i, role) in Role::ALL.into_iter().enumerate() {
        let rec = ctx.add_pod(role).await?;
        let ip = rec.ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        if let Some(slot) = ips.get_mut(i) {
            *slot = ip;
        }
        gateway = gateway.or(rec.gateway);
        let path = net::netns_path(&rec.netns);
        let name = role.name();
        let servers = tokio::task::spawn_blocking(move || {
            EchoServers::start(
                Some(&path),
                Ipv4Addr::UNSPECIFIED,
                &[ECHO_TCP, ECHO_TCP_ALT],
                &[ECHO_UDP],
                name,
            )
        })
        .await
        .map_err(|e| anyhow::anyhow!("echo server task: {e}"))??;
        lock(&ctx.created).servers.push(servers);
        eprintln!("  pod {}/{} {ip}", rec.namespace, role.name());
    }
    let gateway = gateway
        .ok_or_else(|| anyhow::anyhow!("cilium-cni returned no gateway for the test pods"))?;
    // The host's listeners, on the gateway address (so replies leave from it).
    let host =
        tokio::task::spawn_blocking(move || EchoServers::start(None, gateway, &[0], &[0], "host"))
            .await
            .map_err(|e| anyhow::anyhow!("host echo server task: {e}"))??;
    let (host_tcp, host_udp) = (
        host.tcp.first().map_or(0, SocketAddr::port),
        host.udp.first().map_or(0, SocketAddr::port),
    );
    lock(&ctx.created).servers.push(host);

    let policy = PolicyEnv {
        id: ctx.id.clone(),
        ns1: ctx.namespace(1),
        ns2: ctx.namespace(2),
        ips,
    };
    ctx.apply(services_yaml(&policy.ns1, &policy)).await?;
    let cluster_ips = wait_cluster_ips(ctx, &policy.ns1, timing.scenario).await?;
    let host_lb_missing = host_lb_missing(&ctx.client).await;
    if let Some(why) = &host_lb_missing {
        eprintln!("  note: {why}");
    }
    Ok(Env {
        policy,
        gateway,
        host_tcp,
        host_udp,
        cluster_ips,
        host_lb_missing,
    })
}

async fn wait_cluster_ips(
    ctx: &Ctx,
    ns: &str,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<&'static str, Ipv4Addr>> {
    let deadline = Instant::now() + timeout;
    loop {
        let list = ctx
            .client
            .service_list()
            .await
            .map_err(|e| anyhow::anyhow!("listing services: {e}"))?;
        let mut found = BTreeMap::new();
        for svc in Svc::ALL {
            if let Some(ip) = list
                .iter()
                .find(|s| s.namespace == ns && s.name == svc.name())
                .and_then(|s| s.cluster_ip.parse::<Ipv4Addr>().ok())
            {
                found.insert(svc.name(), ip);
            }
        }
        if found.len() == Svc::ALL.len() {
            return Ok(found);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the test services in {ns} got no cluster IP within {timeout:?} (ciliumctl service list)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Why this process would not get socket load balancing, when the agent's config tells where it
/// attached and this process's cgroup is outside of it.
async fn host_lb_missing(client: &Client) -> Option<String> {
    let cfg = client.config().await.ok()?;
    let mut root = None;
    let mut enabled = true;
    for cell in cfg.as_object()?.values() {
        if let Some(v) = cell.get("cgroup-root").or_else(|| cell.get("cgroup_root")) {
            root = v.as_str().map(str::to_string);
        }
        if let Some(v) = cell.get("enable-lb").or_else(|| cell.get("enable_lb")) {
            enabled = v.as_bool().unwrap_or(true);
        }
    }
    if !enabled {
        return Some(
            "the agent runs with --enable-lb=false: host clients get no service translation".into(),
        );
    }
    let root = std::path::PathBuf::from(root?);
    let mine = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = mine.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mount = root
        .ancestors()
        .find(|a| {
            a.join("cgroup.controllers").exists()
                && !a.join("..").join("cgroup.controllers").exists()
        })
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| root.clone());
    let my_dir = mount.join(rel.trim_start_matches('/'));
    if my_dir.starts_with(&root) {
        None
    } else {
        Some(format!(
            "this process (cgroup {}) is outside the agent's --cgroup-root {}: host-to-service \
             scenarios are skipped",
            my_dir.display(),
            root.display()
        ))
    }
}

/// A probe resolved to addresses.
#[derive(Clone)]
struct Resolved {
    spec: ProbeSpec,
    netns: Option<std::path::PathBuf>,
    src_ip: Option<Ipv4Addr>,
    addr: SocketAddr,
    /// Destination of the dropped packets: the backend for a single-backend service (socket
    /// load balancing translates before any packet leaves), else `addr`.
    drop_dst: SocketAddr,
    from: String,
    to: String,
    /// Acceptable answers for `Connected`.
    servers: Vec<&'static str>,
}

fn resolve(ctx: &Ctx, env: &Env, spec: ProbeSpec) -> Resolved {
    let pod_label = |r: Role| format!("{}/{}", ctx.namespace(r.ns_index()), r.name());
    let (netns, src_ip, from) = match spec.from {
        Src::Host => (None, None, "host".to_string()),
        Src::Pod(r) => (
            Some(net::netns_path(&ctx.netns_name(r))),
            Some(env.policy.ip_of(r)),
            pod_label(r),
        ),
    };
    let mut drop_dst = None;
    let (addr, to, servers) = match spec.to {
        To::Pod(r, port) => (
            SocketAddrV4::new(env.policy.ip_of(r), port),
            pod_label(r),
            vec![r.name()],
        ),
        To::Service(svc, port) => {
            if let [only] = svc.backends() {
                let target = if port == SVC_UDP { ECHO_UDP } else { ECHO_TCP };
                drop_dst = Some(SocketAddrV4::new(env.policy.ip_of(*only), target));
            }
            (
                SocketAddrV4::new(
                    env.cluster_ips
                        .get(svc.name())
                        .copied()
                        .unwrap_or(Ipv4Addr::UNSPECIFIED),
                    port,
                ),
                format!("service {}/{}", env.policy.ns1, svc.name()),
                svc.backends().iter().map(|r| r.name()).collect(),
            )
        }
        To::Host => (
            SocketAddrV4::new(
                env.gateway,
                match spec.proto {
                    Proto::Tcp => env.host_tcp,
                    Proto::Udp => env.host_udp,
                },
            ),
            "host".to_string(),
            vec!["host"],
        ),
    };
    Resolved {
        spec,
        netns,
        src_ip,
        addr: SocketAddr::V4(addr),
        drop_dst: SocketAddr::V4(drop_dst.unwrap_or(addr)),
        from,
        to,
        servers,
    }
}

/// Whether an observation meets the expectation (drops still need their monitor event).
fn meets(r: &Resolved, o: &Observed) -> bool {
    match (r.spec.expect, o) {
        (Expect::Connected, Observed::Connected(who)) => r.servers.contains(&who.as_str()),
        (Expect::Refused, Observed::Refused) => true,
        (Expect::Dropped(_), Observed::Timeout) => true,
        _ => false,
    }
}

/// Run every probe at once, each on its own thread (in its pod's netns).
async fn probe_all(probes: &[Resolved], timeout: Duration) -> Vec<Observed> {
    let probes = probes.to_vec();
    let n = probes.len();
    tokio::task::spawn_blocking(move || {
        std::thread::scope(|s| {
            let handles: Vec<_> = probes
                .iter()
                .map(|r| {
                    s.spawn(move || {
                        net::in_netns(r.netns.as_deref(), || {
                            net::probe(r.spec.proto, r.addr, timeout)
                        })
                        .unwrap_or_else(Observed::Error)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Observed::Error("probe thread panicked".into()))
                })
                .collect()
        })
    })
    .await
    .unwrap_or_else(|e| vec![Observed::Error(format!("probe task: {e}")); n])
}

/// The monitor drop event (seen after `since`) matching a dropped probe, as a line.
fn drop_event(ctx: &Ctx, r: &Resolved, since: usize) -> Option<String> {
    let Expect::Dropped(reason) = r.spec.expect else {
        return None;
    };
    let events = lock(&ctx.events);
    // The latest one: the last round of probes is the one reported.
    events.iter().skip(since).rev().find_map(|e| {
        let matches = e.drop_reason.as_deref() == Some(reason)
            && r.src_ip.is_none_or(|ip| e.src_ip == ip.to_string())
            && e.dst_ip == r.drop_dst.ip().to_string()
            && e.dst_port == r.drop_dst.port()
            && e.protocol == r.spec.proto.name();
        matches.then(|| crate::monitor::render(e))
    })
}

async fn run_scenario(ctx: &Ctx, env: &Env, sc: &Scenario, timing: Timing) -> ScenarioResult {
    let started = Instant::now();
    let mut result = ScenarioResult {
        name: sc.name.to_string(),
        description: sc.about.to_string(),
        result: Outcome::Pass,
        duration_ms: 0,
        probes: Vec::new(),
        error: None,
    };
    if sc.host_socket_lb
        && let Some(why) = &env.host_lb_missing
    {
        result.result = Outcome::Skip;
        result.error = Some(why.clone());
        return result;
    }
    let probes: Vec<Resolved> = sc.probes.iter().map(|p| resolve(ctx, env, *p)).collect();
    let since = lock(&ctx.events).len();
    let policy = sc.policy.map(|f| f(&env.policy));
    if let Some(yaml) = &policy
        && let Err(e) = ctx.apply(yaml.clone()).await
    {
        result.result = Outcome::Fail;
        result.error = Some(format!("{e:#}"));
        result.duration_ms = started.elapsed().as_millis() as u64;
        return result;
    }
    let deadline = Instant::now() + timing.scenario;
    let (observed, events) = loop {
        let observed = probe_all(&probes, timing.probe).await;
        let all_meet = observed.len() == probes.len()
            && probes.iter().zip(&observed).all(|(r, o)| meets(r, o));
        let mut events: Vec<Option<String>> =
            probes.iter().map(|r| drop_event(ctx, r, since)).collect();
        if all_meet {
            // Drop events may trail the probe a little: wait for them, briefly.
            let wait_until = Instant::now() + Duration::from_secs(2);
            loop {
                let missing = probes
                    .iter()
                    .zip(&events)
                    .any(|(r, e)| matches!(r.spec.expect, Expect::Dropped(_)) && e.is_none());
                if !missing || Instant::now() > wait_until {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                events = probes.iter().map(|r| drop_event(ctx, r, since)).collect();
            }
            let missing = probes
                .iter()
                .zip(&events)
                .any(|(r, e)| matches!(r.spec.expect, Expect::Dropped(_)) && e.is_none());
            if !missing {
                break (observed, events);
            }
        }
        if Instant::now() >= deadline {
            break (observed, events);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut bad = Vec::new();
    for ((r, o), ev) in probes.iter().zip(&observed).zip(&events) {
        let ok = meets(r, o) && (!matches!(r.spec.expect, Expect::Dropped(_)) || ev.is_some());
        if !ok {
            let why = if meets(r, o) {
                format!(
                    "{} -> {} {}: no drop event with reason {} from monitor",
                    r.from,
                    r.to,
                    r.spec.proto.name(),
                    match r.spec.expect {
                        Expect::Dropped(reason) => reason,
                        _ => "",
                    }
                )
            } else {
                format!(
                    "{} -> {} {}: expected {}, got {o}",
                    r.from,
                    r.to,
                    r.spec.proto.name(),
                    r.spec.expect
                )
            };
            bad.push(why);
        }
        result.probes.push(ProbeResult {
            from: r.from.clone(),
            to: r.to.clone(),
            address: r.addr.to_string(),
            protocol: r.spec.proto.name(),
            expected: r.spec.expect.to_string(),
            observed: o.to_string(),
            drop_event: ev.clone(),
            ok,
        });
    }
    if observed.len() != probes.len() {
        bad.push("the probes did not run".into());
    }
    // Undo the policy and check its drops are gone (nothing leaks into the next scenario).
    if let Some(yaml) = &policy {
        if let Err(e) = ctx.delete(yaml).await {
            bad.push(format!("{e:#}"));
        } else {
            let dropped: Vec<Resolved> = probes
                .iter()
                .filter(|r| matches!(r.spec.expect, Expect::Dropped(_)))
                .cloned()
                .collect();
            let restore_deadline = Instant::now() + timing.scenario;
            loop {
                let obs = probe_all(&dropped, timing.probe).await;
                let still: Vec<String> = dropped
                    .iter()
                    .zip(&obs)
                    .filter(|(_, o)| !matches!(o, Observed::Connected(_)))
                    .map(|(r, o)| format!("{} -> {} {} ({o})", r.from, r.to, r.spec.proto.name()))
                    .collect();
                if still.is_empty() {
                    break;
                }
                if Instant::now() >= restore_deadline {
                    bad.push(format!(
                        "after deleting the policy, still not connected: {}",
                        still.join(", ")
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    if !bad.is_empty() {
        result.result = Outcome::Fail;
        result.error = Some(bad.join("; "));
    }
    result.duration_ms = started.elapsed().as_millis() as u64;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_objects_label_every_pod_and_namespace() {
        let ctx = ctx();
        let y = objects_yaml(&ctx);
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&y)
            .map(serde_yaml::Value::deserialize)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(docs.len(), 6);
        assert_eq!(docs[0]["metadata"]["name"], "cilium-test-1f-1");
        assert_eq!(docs[5]["metadata"]["namespace"], "cilium-test-1f-2");
        assert_eq!(docs[5]["metadata"]["labels"]["app"], "echo-other");
        let s = services_yaml("ns", &env().policy);
        assert!(s.contains("endpoints: []"), "{s}");
        assert!(s.contains("addresses: [\"10.9.0.4\"]"), "{s}");
        assert_eq!(s.matches("kind: Service\n").count(), 3, "{s}");
    }

    use serde::Deserialize as _;

    fn ctx() -> Ctx {
        Ctx {
            client: Client::unix("/nonexistent.sock"),
            id: "1f".into(),
            cni: "/bin/true".into(),
            socket: "/nonexistent.sock".into(),
            created: Mutex::default(),
            inflight: Arc::default(),
            events: Arc::default(),
        }
    }

    fn env() -> Env {
        Env {
            policy: PolicyEnv {
                id: "1f".into(),
                ns1: "cilium-test-1f-1".into(),
                ns2: "cilium-test-1f-2".into(),
                ips: [
                    "10.9.0.2".parse().unwrap(),
                    "10.9.0.3".parse().unwrap(),
                    "10.9.0.4".parse().unwrap(),
                    "10.9.0.5".parse().unwrap(),
                ],
            },
            gateway: "10.9.0.1".parse().unwrap(),
            host_tcp: 4000,
            host_udp: 4001,
            cluster_ips: [
                ("echo", "10.9.1.1".parse().unwrap()),
                ("echo-same", "10.9.1.2".parse().unwrap()),
            ]
            .into_iter()
            .collect(),
            host_lb_missing: None,
        }
    }

    #[test]
    fn outcomes_must_come_from_the_right_server() {
        let (c, e) = (ctx(), env());
        let to_pod = resolve(
            &c,
            &e,
            ProbeSpec {
                from: Src::Pod(Role::Client),
                to: To::Pod(Role::EchoSame, ECHO_TCP),
                proto: Proto::Tcp,
                expect: Expect::Connected,
            },
        );
        assert_eq!(to_pod.addr.to_string(), "10.9.0.4:8080");
        assert!(meets(&to_pod, &Observed::Connected("echo-same".into())));
        assert!(!meets(&to_pod, &Observed::Connected("echo-other".into())));
        assert!(!meets(&to_pod, &Observed::Timeout));
        let svc = resolve(
            &c,
            &e,
            ProbeSpec {
                from: Src::Host,
                to: To::Service(Svc::Echo, SVC_UDP),
                proto: Proto::Udp,
                expect: Expect::Connected,
            },
        );
        assert_eq!(svc.addr.to_string(), "10.9.1.1:53");
        assert!(svc.netns.is_none());
        assert!(meets(&svc, &Observed::Connected("echo-other".into())));
        let host = resolve(
            &c,
            &e,
            ProbeSpec {
                from: Src::Pod(Role::EchoOther),
                to: To::Host,
                proto: Proto::Udp,
                expect: Expect::Refused,
            },
        );
        assert_eq!(host.addr.to_string(), "10.9.0.1:4001");
        assert!(meets(&host, &Observed::Refused));
        assert!(!meets(&host, &Observed::Timeout));
    }

    #[test]
    fn a_drop_needs_a_monitor_event_of_its_flow_and_reason() {
        let (c, e) = (ctx(), env());
        let r = resolve(
            &c,
            &e,
            ProbeSpec {
                from: Src::Pod(Role::Client2),
                to: To::Pod(Role::EchoSame, ECHO_TCP),
                proto: Proto::Tcp,
                expect: Expect::Dropped("policy-deny"),
            },
        );
        assert!(meets(&r, &Observed::Timeout));
        assert!(!meets(
            &r,
            &Observed::Error("connected, but no answer arrived".into())
        ));
        let mut ev = MonitorEvent::lost(0);
        ev.kind = MonitorEventType::Drop;
        ev.lost = None;
        ev.src_ip = "10.9.0.3".into();
        ev.dst_ip = "10.9.0.4".into();
        ev.dst_port = ECHO_TCP;
        ev.protocol = "tcp".into();
        ev.drop_reason = Some("policy-denied".into());
        lock(&c.events).push(ev.clone());
        assert_eq!(drop_event(&c, &r, 0), None, "wrong reason accepted");
        ev.drop_reason = Some("policy-deny".into());
        ev.src_ip = "10.9.0.2".into();
        lock(&c.events).push(ev.clone());
        assert_eq!(drop_event(&c, &r, 0), None, "wrong source accepted");
        ev.src_ip = "10.9.0.3".into();
        lock(&c.events).push(ev);
        assert!(drop_event(&c, &r, 0).is_some_and(|l| l.contains("policy-deny")));
        // Through a single-backend service, the drop names the backend, not the cluster IP.
        let svc = resolve(
            &c,
            &e,
            ProbeSpec {
                from: Src::Pod(Role::Client2),
                to: To::Service(Svc::EchoSame, SVC_TCP),
                proto: Proto::Tcp,
                expect: Expect::Dropped("policy-deny"),
            },
        );
        assert_eq!(svc.addr.to_string(), "10.9.1.2:80");
        assert_eq!(svc.drop_dst.to_string(), "10.9.0.4:8080");
        assert!(drop_event(&c, &svc, 0).is_some());
        assert_eq!(
            drop_event(&c, &r, 3),
            None,
            "events before the scenario count"
        );
    }
}
