//! Pods made by cilium-cni talk to each other and to the host through the BPF datapath; the
//! metrics map counts it and `ciliumctl monitor` shows it.

use std::process::Command;
use std::time::Duration;

use cilium_e2e::{Agent, Bg, Pod, bin, require_privileges, wait_until};

/// Serve one TCP connection on `port` inside `pod`, answering `reply`.
fn tcp_server(pod: &Pod<'_>, port: u16, reply: &str) -> Bg {
    Bg::spawn(pod.netns.cmd("socat").args([
        "-T5",
        &format!("TCP-LISTEN:{port},reuseaddr,fork"),
        &format!("SYSTEM:echo {reply}"),
    ]))
}

/// Connect from `pod` to `ip:port` and return what the server said.
fn tcp_get(pod: &Pod<'_>, ip: &str, port: u16) -> String {
    let out = pod.exec(
        "socat",
        &["-T3", "-", &format!("TCP:{ip}:{port},connect-timeout=3")],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Answer UDP datagrams on `port` inside `pod` with `reply`.
fn udp_server(pod: &Pod<'_>, port: u16, reply: &str) -> Bg {
    Bg::spawn(pod.netns.cmd("socat").args([
        "-T5",
        &format!("UDP-RECVFROM:{port},reuseaddr,fork"),
        &format!("SYSTEM:echo {reply}"),
    ]))
}

fn udp_get(pod: &Pod<'_>, ip: &str, port: u16) -> String {
    let out = Command::new("sh")
        .args([
            "-c",
            &format!(
                "echo ping | ip netns exec {} socat -T2 - UDP:{ip}:{port}",
                pod.netns.name
            ),
        ])
        .output()
        .unwrap_or_else(|e| panic!("socat: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn retry(f: impl Fn() -> String, want: &str) -> String {
    let mut got = String::new();
    for _ in 0..20 {
        got = f();
        if got == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    got
}

fn forwarded_packets(agent: &Agent) -> (u64, u64) {
    let rows = agent.ctl_json(&["bpf", "metrics", "list"]);
    let mut ingress = 0;
    let mut egress = 0;
    for r in rows.as_array().cloned().unwrap_or_default() {
        if r["reason"] == "forwarded" {
            let p = r["packets"].as_u64().unwrap_or(0);
            match r["direction"].as_str() {
                Some("ingress") => ingress += p,
                Some("egress") => egress += p,
                _ => {}
            }
        }
    }
    (ingress, egress)
}

#[test]
fn two_pods_talk_both_ways_and_reach_the_host() {
    if !require_privileges("two_pods_talk_both_ways_and_reach_the_host") {
        return;
    }
    let agent = Agent::start("10.212.0.0/24", &[]);
    let monitor = Bg::spawn(
        Command::new(bin("ciliumctl"))
            .arg("--socket")
            .arg(&agent.socket)
            .args(["monitor", "-o", "json"]),
    );

    let a = Pod::add(&agent, "K8S_POD_NAMESPACE=default;K8S_POD_NAME=a");
    let b = Pod::add(&agent, "K8S_POD_NAMESPACE=default;K8S_POD_NAME=b");
    let (ai, bi) = (a.ip.to_string(), b.ip.to_string());
    assert_ne!(ai, bi);

    // ICMP both ways.
    assert!(a.ping(&bi, 3), "a cannot ping b");
    assert!(b.ping(&ai, 3), "b cannot ping a");

    // TCP both ways.
    let _sb = tcp_server(&b, 8080, "hello-from-b");
    let _sa = tcp_server(&a, 8080, "hello-from-a");
    assert_eq!(
        retry(|| tcp_get(&a, &bi, 8080), "hello-from-b"),
        "hello-from-b"
    );
    assert_eq!(
        retry(|| tcp_get(&b, &ai, 8080), "hello-from-a"),
        "hello-from-a"
    );

    // UDP both ways.
    let _ub = udp_server(&b, 9090, "pong-b");
    let _ua = udp_server(&a, 9090, "pong-a");
    assert_eq!(retry(|| udp_get(&a, &bi, 9090), "pong-b"), "pong-b");
    assert_eq!(retry(|| udp_get(&b, &ai, 9090), "pong-a"), "pong-a");

    // The host: the pod's gateway answers, a host TCP server is reachable, and the host
    // reaches the pod.
    let gw = a.result["routes"][0]["gw"]
        .as_str()
        .or(a.result["ips"][0]["gateway"].as_str())
        .unwrap_or_else(|| panic!("no gateway in {}", a.result))
        .to_string();
    assert!(a.ping(&gw, 2), "a cannot ping its gateway {gw}");
    let host_port = 20000 + (std::process::id() % 20000) as u16;
    let _host = Bg::spawn(Command::new("socat").args([
        "-T5",
        &format!("TCP-LISTEN:{host_port},reuseaddr,fork"),
        "SYSTEM:echo hello-from-host",
    ]));
    assert_eq!(
        retry(|| tcp_get(&a, &gw, host_port), "hello-from-host"),
        "hello-from-host"
    );
    assert!(
        Command::new("ping")
            .args(["-c", "2", "-i", "0.2", "-W", "2", "-q", &ai])
            .status()
            .is_ok_and(|s| s.success()),
        "the host cannot ping pod a"
    );

    // The datapath counted it, both directions.
    let (ingress, egress) = forwarded_packets(&agent);
    assert!(
        egress >= 10 && ingress >= 4,
        "forwarded counters too low: ingress {ingress}, egress {egress}"
    );

    // The monitor saw the flows between the pods.
    assert!(
        wait_until(Duration::from_secs(2), || agent
            .ctl(&["status"])
            .status
            .success()),
        "agent gone"
    );
    let lines = monitor.stop();
    let events: Vec<serde_json::Value> = lines
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let between = |e: &serde_json::Value, proto: &str| {
        e["protocol"] == proto
            && ((e["src_ip"] == ai.as_str() && e["dst_ip"] == bi.as_str())
                || (e["src_ip"] == bi.as_str() && e["dst_ip"] == ai.as_str()))
    };
    for proto in ["icmp", "tcp", "udp"] {
        assert!(
            events
                .iter()
                .any(|e| e["type"] == "trace" && between(e, proto)),
            "no {proto} trace event between the pods in {} events:\n{lines}",
            events.len()
        );
    }

    // The human form names endpoint, flow and verdict.
    let human = Bg::spawn(
        Command::new(bin("ciliumctl"))
            .arg("--socket")
            .arg(&agent.socket)
            .args(["monitor"]),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(a.ping(&bi, 1));
    std::thread::sleep(Duration::from_millis(300));
    let text = human.stop();
    assert!(
        text.contains(&ai) && text.contains(&bi),
        "monitor text lacks the flow:\n{text}"
    );
}

#[test]
fn del_removes_everything_and_parallel_adds_leave_nothing_behind() {
    if !require_privileges("del_removes_everything_and_parallel_adds_leave_nothing_behind") {
        return;
    }
    let agent = Agent::start("10.213.0.0/24", &[]);
    // One pod: its state is visible everywhere, then gone after DEL.
    let pod = Pod::add(&agent, "");
    let ip = pod.ip.to_string();
    let eps = agent.ctl_json(&["endpoint", "list"]);
    let ep = eps
        .as_array()
        .and_then(|a| a.iter().find(|e| e["ipv4"] == ip.as_str()).cloned())
        .unwrap_or_else(|| panic!("endpoint for {ip} missing: {eps}"));
    let host_if = ep["host_ifname"].as_str().unwrap_or_default().to_string();
    assert!(host_if.starts_with("lxc"), "{ep}");
    let lxc = agent.ctl_json(&["bpf", "lxc", "list"]);
    assert!(lxc.to_string().contains(&ip), "{lxc}");
    let ipc = agent.ctl_json(&["bpf", "ipcache", "list"]);
    assert!(ipc.to_string().contains(&ip), "{ipc}");

    let out = pod.del();
    assert_eq!(out.code, 0, "DEL failed: {} {}", out.json, out.stderr);
    assert!(
        agent
            .ctl_json(&["endpoint", "list"])
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    assert!(
        !agent
            .ctl_json(&["bpf", "lxc", "list"])
            .to_string()
            .contains(&ip)
    );
    assert!(
        wait_until(Duration::from_secs(5), || !agent
            .ctl_json(&["bpf", "ipcache", "list"])
            .to_string()
            .contains(&ip)),
        "ipcache entry for {ip} stayed"
    );
    assert!(
        !Command::new("ip")
            .args(["link", "show", &host_if])
            .output()
            .is_ok_and(|o| o.status.success()),
        "{host_if} still exists"
    );
    let ipam = agent.ctl_json(&["db", "ipam"]);
    assert!(
        !ipam.to_string().contains(&ip),
        "{ip} still allocated: {ipam}"
    );
    drop(pod);

    // 50 parallel ADDs, then 50 parallel DELs.
    let pods: Vec<Pod<'_>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let agent = &agent;
                s.spawn(move || {
                    Pod::add(agent, &format!("K8S_POD_NAMESPACE=par;K8S_POD_NAME=p{i}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| panic!("a parallel ADD failed")))
            .collect()
    });
    let mut ips: Vec<String> = pods.iter().map(|p| p.ip.to_string()).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 50, "duplicate addresses handed out");
    let eps = agent.ctl_json(&["endpoint", "list"]);
    assert_eq!(eps.as_array().map(Vec::len), Some(50));
    let host_ifs: Vec<String> = eps
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["host_ifname"].as_str().map(str::to_string))
        .collect();
    std::thread::scope(|s| {
        for p in &pods {
            s.spawn(move || {
                let out = p.del();
                assert_eq!(out.code, 0, "DEL failed: {} {}", out.json, out.stderr);
            });
        }
    });
    assert!(
        agent
            .ctl_json(&["endpoint", "list"])
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    assert_eq!(
        agent
            .ctl_json(&["bpf", "lxc", "list"])
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    let ipam = agent.ctl_json(&["db", "ipam"]);
    assert_eq!(ipam["objects"].as_array().map(Vec::len), Some(0), "{ipam}");
    let links = cilium_e2e::run_ok(Command::new("ip").args(["-o", "link", "show"]));
    for h in &host_ifs {
        assert!(
            !links.contains(&format!(": {h}@")) && !links.contains(&format!(": {h}:")),
            "{h} left behind"
        );
    }
    drop(pods);
}
