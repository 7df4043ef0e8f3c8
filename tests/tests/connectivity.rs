//! `ciliumctl connectivity test` end to end: the real ciliumctl binary against a harness agent
//! (its own socket, pod range, service range and cgroup; ciliumctl runs inside that cgroup so
//! the agent's socket load balancing applies to it, as it does to every process of a host whose
//! agent attached at the cgroup root). Checks the JSON and JUnit reports, `--test` selection,
//! Ctrl-C handling, and that nothing the run made is left: netns, host-side links, endpoints,
//! objects.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cilium_e2e::{Agent, CniCall, bin, require_privileges, unique};

/// The test pods' names (their netns is `cct-<run>-<pod>`).
const PODS: [&str; 4] = ["client", "client2", "echo-same", "echo-other"];

/// `ciliumctl --socket <agent> <args>` started inside the agent's cgroup.
fn ctl_in_cgroup(agent: &Agent, args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
        .arg(&agent.cgroup)
        .arg(bin("ciliumctl"))
        .arg("--socket")
        .arg(&agent.socket)
        .args(args)
        .env_remove("CILIUM_SOCKET")
        .stdin(Stdio::null());
    c
}

/// The agent's host-side interface name of a CNI attachment (same FNV-1a derivation as the
/// endpoint cell, written out here to check the link is gone).
fn host_ifname(container_id: &str) -> String {
    let key = cilium_api::models::attachment_key(container_id, "eth0");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("lxc{:011x}", h >> 20)
}

/// A named netns made for the test, deleted on drop (unless the run removed it already).
struct NetnsGuard {
    name: String,
    _undo: cilium_e2e::cleanup::OnInterrupt,
}

impl NetnsGuard {
    fn add(name: &str) -> Self {
        let undo = {
            let name = name.to_string();
            cilium_e2e::cleanup::on_interrupt(move || {
                cilium_e2e::cleanup::quiet("ip", &["netns", "del", &name]);
            })
        };
        cilium_e2e::run_ok(Command::new("ip").args(["netns", "add", name]));
        Self {
            name: name.to_string(),
            _undo: undo,
        }
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if std::path::Path::new("/var/run/netns")
            .join(&self.name)
            .exists()
        {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A temp file path removed on drop.
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Nothing of run `run_id` (`cct-<hex>`) is left on the host or in the agent.
fn assert_clean(agent: &Agent, run_id: &str) {
    let hex = run_id.trim_start_matches("cct-");
    let netns: Vec<String> = std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&format!("cct-{hex}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(netns.is_empty(), "netns left behind: {netns:?}");
    for pod in PODS {
        let name = host_ifname(&format!("cct-{hex}-{pod}"));
        let out = Command::new("ip")
            .args(["link", "show", &name])
            .stderr(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("ip link: {e}"));
        assert!(
            !out.status.success(),
            "host link {name} of pod {pod} left behind"
        );
    }
    for what in [
        &["endpoint", "list"][..],
        &["get", "namespaces"],
        &["get", "pods"],
        &["get", "services"],
        &["get", "endpointslices"],
        &["get", "networkpolicies"],
        &["get", "ciliumnetworkpolicies"],
        &["get", "ciliumclusterwidenetworkpolicies"],
        &["service", "list"],
    ] {
        let v = agent.ctl_json(what);
        assert_eq!(
            v.as_array().map(Vec::len),
            Some(0),
            "`ciliumctl {}` is not empty after the run: {v}",
            what.join(" ")
        );
    }
    let lxc = agent.ctl_json(&["bpf", "lxc", "list"]);
    assert_eq!(
        lxc.as_array().map(Vec::len),
        Some(0),
        "endpoint map entries left: {lxc}"
    );
}

fn parse_report(stdout: &[u8]) -> serde_json::Value {
    serde_json::from_slice(stdout).unwrap_or_else(|e| {
        panic!(
            "connectivity test printed no JSON report ({e}): {}",
            String::from_utf8_lossy(stdout)
        )
    })
}

#[test]
fn every_scenario_passes_and_nothing_is_left_behind() {
    if !require_privileges("every_scenario_passes_and_nothing_is_left_behind") {
        return;
    }
    let agent = Agent::start("10.250.0.0/24", &["--service-cidr", "10.250.1.0/24"]);
    let junit = TempPath(std::env::temp_dir().join(format!("{}.xml", unique("cct-junit"))));
    let junit_arg = junit.0.display().to_string();
    let cni = bin("cilium-cni").display().to_string();
    let out = ctl_in_cgroup(
        &agent,
        &[
            "connectivity",
            "test",
            "-o",
            "json",
            "--junit",
            &junit_arg,
            "--cni-bin",
            &cni,
        ],
    )
    .output()
    .unwrap_or_else(|e| panic!("cannot run ciliumctl: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = parse_report(&out.stdout);
    let scenarios = report["scenarios"].as_array().cloned().unwrap_or_default();
    let failed: Vec<&serde_json::Value> =
        scenarios.iter().filter(|s| s["result"] != "pass").collect();
    assert!(
        failed.is_empty() && out.status.success(),
        "connectivity test failed ({}): {failed:#?}\nstderr:\n{stderr}\nagent log:\n{}",
        out.status,
        agent.log_text()
    );
    assert!(
        scenarios.len() >= 21,
        "only {} scenarios ran",
        scenarios.len()
    );
    assert_eq!(report["passed"], scenarios.len());
    assert_eq!(report["failed"], 0);
    assert_eq!(report["skipped"], 0);
    // Every expected drop was confirmed by a monitor event with its reason.
    let mut drops = 0;
    for s in &scenarios {
        for p in s["probes"].as_array().into_iter().flatten() {
            assert_eq!(p["ok"], true, "{p}");
            if let Some(reason) = p["expected"]
                .as_str()
                .and_then(|e| e.strip_prefix("dropped ("))
            {
                let reason = reason.trim_end_matches(')');
                let ev = p["drop_event"].as_str().unwrap_or_default();
                assert!(
                    ev.contains(&format!("drop ({reason})")),
                    "{}: drop event {ev:?} lacks reason {reason}",
                    s["name"]
                );
                drops += 1;
            }
        }
    }
    assert!(drops >= 19, "only {drops} drops checked");
    for name in [
        "pod-to-pod/same-namespace",
        "host-to-service/cluster-ip",
        "service/no-endpoints-pod",
        "policy/cnp-ingress-deny",
        "policy/np-port-range",
    ] {
        assert!(
            scenarios.iter().any(|s| s["name"] == name),
            "scenario {name} missing"
        );
    }
    // Progress lines, one per scenario.
    assert!(
        stderr.contains(&format!("[{}/{}] ", scenarios.len(), scenarios.len())),
        "{stderr}"
    );
    let xml = std::fs::read_to_string(&junit.0)
        .unwrap_or_else(|e| panic!("no JUnit file {}: {e}", junit.0.display()));
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert_eq!(xml.matches("<testcase ").count(), scenarios.len(), "{xml}");
    assert_eq!(xml.matches("</testcase>").count(), scenarios.len(), "{xml}");
    assert!(xml.contains(" failures=\"0\""), "{xml}");
    assert!(!xml.contains("<failure"), "{xml}");
    assert_clean(
        &agent,
        report["run_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no run_id: {report}")),
    );
}

#[test]
fn test_filter_runs_only_the_selected_scenarios() {
    if !require_privileges("test_filter_runs_only_the_selected_scenarios") {
        return;
    }
    let agent = Agent::start("10.251.0.0/24", &["--service-cidr", "10.251.1.0/24"]);
    // Leftovers of an interrupted run whose process is gone (an id above pid_max can never be
    // alive): a pod (netns + CNI attachment) and objects in its namespace. The run removes them.
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4_194_304);
    let dead = format!("{:x}", pid_max + u64::from(std::process::id()));
    let dead_pod = format!("cct-{dead}-client");
    let _leftover = NetnsGuard::add(&dead_pod);
    let dead_ns = format!("cilium-test-{dead}-1");
    cilium_e2e::model::ctl_apply(
        &agent,
        "apply",
        &format!(
            "{}---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: old\n  namespace: {dead_ns}\nspec:\n  endpointSelector: {{}}\n  ingress: [{{}}]\n---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: cilium-test-{dead}-old\nspec:\n  endpointSelector:\n    matchLabels:\n      app: nothing-{dead}\n  ingress: [{{}}]\n",
            cilium_e2e::model::namespace_yaml(&dead_ns, &[])
                + &cilium_e2e::model::pod_yaml(&dead_ns, "client", &[])
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let add = agent.cni(
        &CniCall {
            command: "ADD",
            container_id: &dead_pod,
            netns: &format!("/var/run/netns/{dead_pod}"),
            ifname: "eth0",
            args: &format!("K8S_POD_NAMESPACE={dead_ns};K8S_POD_NAME=client"),
        },
        &cilium_e2e::net_conf("1.1.0"),
    );
    assert_eq!(add.code, 0, "leftover ADD: {} {}", add.json, add.stderr);
    let out = ctl_in_cgroup(
        &agent,
        &["connectivity", "test", "--test", "pod-to-pod", "-o", "json"],
    )
    .output()
    .unwrap_or_else(|e| panic!("cannot run ciliumctl: {e}"));
    let report = parse_report(&out.stdout);
    assert!(
        out.status.success(),
        "{report:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<&str> = report["scenarios"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(names.len() >= 2, "{names:?}");
    assert!(
        names.iter().all(|n| n.contains("pod-to-pod")),
        "ran more than selected: {names:?}"
    );
    assert_clean(&agent, report["run_id"].as_str().unwrap_or_default());
    assert_clean(&agent, &format!("cct-{dead}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("pod {dead_pod}"))
            && err.contains(&format!("namespace {dead_ns}"))
            && err.contains(&format!("policy cilium-test-{dead}-old")),
        "leftovers not reported as removed: {err}"
    );

    // A filter selecting nothing is an error, before anything is created.
    let out = ctl_in_cgroup(
        &agent,
        &["connectivity", "test", "--test", "^no-such-scenario$"],
    )
    .output()
    .unwrap_or_else(|e| panic!("cannot run ciliumctl: {e}"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("selects no scenario"), "{err}");
}

#[test]
fn ctrl_c_cleans_up_and_exits_130() {
    if !require_privileges("ctrl_c_cleans_up_and_exits_130") {
        return;
    }
    let agent = Agent::start("10.252.0.0/24", &["--service-cidr", "10.252.1.0/24"]);
    let mut child = ctl_in_cgroup(&agent, &["connectivity", "test", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run ciliumctl: {e}"));
    // `sh` execs ciliumctl: the child's pid is ciliumctl's.
    let pid = child.id();
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    // Interrupt once the run is inside the policy scenarios (objects, pods, a policy exist).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains("policy/np-ingress-allow") {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("the run never reached the policy scenarios:\n{seen}");
            }
        }
    }
    let hex = format!("{pid:x}");
    assert!(
        std::path::Path::new(&format!("/var/run/netns/cct-{hex}-client")).exists(),
        "the run's netns is missing before the interrupt:\n{seen}"
    );
    let sent = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(sent, "cannot send SIGINT to {pid}");
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("ciliumctl: {e}"));
    let err = reader.join().unwrap_or_default();
    assert_eq!(
        out.status.code(),
        Some(130),
        "exit status after SIGINT: {}\n{seen}{err}",
        out.status
    );
    assert!(err.contains("interrupted"), "{seen}{err}");
    let report = parse_report(&out.stdout);
    assert_eq!(report["interrupted"], true);
    assert_eq!(report["run_id"], format!("cct-{hex}"));
    assert_clean(&agent, &format!("cct-{hex}"));
}
