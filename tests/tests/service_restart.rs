//! Established service connections survive kill -9 and restart of the agent: two 10 s TCP
//! streams through a ClusterIP, one from a client inside the agent's cgroup (socket-level
//! translation) and one from a client outside it (per-packet DNAT, conntrack and reverse NAT in
//! pinned maps). Neither may stall, and the restarted agent keeps the service and backend ids
//! (the BPF services map is the same). Pod range 10.238.0.0/24.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use cilium_e2e::services::{
    Client, SliceEp, SvcPort, apply, bpf_frontends, dump, eps, lb_args, require_lb, serve,
    service_yaml, slice_yaml, start_agent, wait_programmed,
};
use cilium_e2e::{Bg, Pod};

fn stream(cmd: Command) -> std::thread::JoinHandle<std::io::Result<std::process::Output>> {
    let mut cmd = cmd;
    std::thread::spawn(move || cmd.output())
}

fn check_stream(what: &str, out: std::io::Result<std::process::Output>) {
    let out = out.unwrap_or_else(|e| panic!("{what}: iperf3 did not run: {e}"));
    let report = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&report).unwrap_or_else(|e| {
        panic!(
            "{what}: iperf3 output is not JSON ({e}): {report}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    if let Some(err) = json["error"].as_str() {
        panic!("{what}: iperf3 failed: {err}");
    }
    let intervals = json["intervals"].as_array().cloned().unwrap_or_default();
    assert!(
        intervals.len() >= 18,
        "{what}: the stream ended early: {} intervals\n{report}",
        intervals.len()
    );
    for (i, iv) in intervals.iter().enumerate() {
        let bps = iv["sum"]["bits_per_second"].as_f64().unwrap_or(0.0);
        assert!(
            bps > 0.0,
            "{what}: interval {i} carried nothing: the stream stalled\n{iv}"
        );
    }
}

#[test]
fn established_service_connections_survive_an_agent_restart() {
    let Some(cg) = require_lb("established_service_connections_survive_an_agent_restart") else {
        return;
    };
    let node = "e2e-rst";
    let agent = start_agent(
        "10.238.0.0/24",
        &lb_args(&cg, "10.238.1.0/24", &["--node-name", node]),
    );
    let c = Pod::add(&agent, "K8S_POD_NAMESPACE=default;K8S_POD_NAME=client");
    let be = Pod::add(&agent, "K8S_POD_NAMESPACE=default;K8S_POD_NAME=server");
    let _i1 = Bg::spawn(be.netns.cmd("iperf3").args(["-s", "-1", "-p", "5201"]));
    let _i2 = Bg::spawn(be.netns.cmd("iperf3").args(["-s", "-1", "-p", "5202"]));
    let _probe = serve(&be, "be", &[8080], &[]);
    let vip = Ipv4Addr::new(10, 238, 1, 10);
    let ports = [
        SvcPort::tcp("sock", 5201, 5201),
        SvcPort::tcp("pkt", 5202, 5202),
        SvcPort::tcp("probe", 80, 8080),
    ];
    apply(
        &agent,
        &format!(
            "{}{}",
            service_yaml("default", "stream", vip, &ports, ""),
            slice_yaml(
                "default",
                "stream",
                "stream-1",
                &[SliceEp::ready(be.ip, node)],
                &ports
            )
        ),
    );
    wait_programmed(&agent, &format!("{vip}:5201/tcp"), &eps(&[be.ip], 5201));
    wait_programmed(&agent, &format!("{vip}:5202/tcp"), &eps(&[be.ip], 5202));
    let services_before = agent.ctl_json(&["service", "list"]);
    let map_before = bpf_frontends(&agent);
    std::thread::sleep(Duration::from_millis(300));

    let vip_s = vip.to_string();
    let iperf =
        |port: &str| ["-c", &vip_s, "-p", port, "-t", "10", "-i", "0.5", "-J"].map(str::to_string);
    let sock_args = iperf("5201");
    let sock_refs: Vec<&str> = sock_args.iter().map(String::as_str).collect();
    let in_cg = stream(cg.command(Some(&c.netns), std::path::Path::new("iperf3"), &sock_refs));
    let pkt_args = iperf("5202");
    let mut pkt_cmd = c.netns.cmd("iperf3");
    pkt_cmd.args(&pkt_args);
    let out_cg = stream(pkt_cmd);

    std::thread::sleep(Duration::from_secs(2));
    agent.kill9();
    std::thread::sleep(Duration::from_secs(2));
    agent.restart();
    let sock = in_cg
        .join()
        .unwrap_or_else(|_| panic!("stream thread panicked"));
    let pkt = out_cg
        .join()
        .unwrap_or_else(|_| panic!("stream thread panicked"));
    let failed_dump = || dump(&agent);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check_stream("socket-LB stream (client in the cgroup)", sock);
        check_stream("per-packet stream (client outside the cgroup)", pkt);
    }));
    if let Err(e) = r {
        eprintln!("{}", failed_dump());
        std::panic::resume_unwind(e);
    }

    // The restarted agent shows the same services and programs the same map (same ids).
    wait_programmed(&agent, &format!("{vip}:5201/tcp"), &eps(&[be.ip], 5201));
    assert_eq!(
        agent.ctl_json(&["service", "list"]),
        services_before,
        "service list changed across the restart"
    );
    assert_eq!(
        bpf_frontends(&agent),
        map_before,
        "the BPF services map changed"
    );
    // And new connections through the service work, on both paths.
    for client in [Client::pod_in(&c, &cg), Client::pod_out(&c)] {
        let r = client.tcp_until_ok(&format!("{vip}:80"), Duration::from_secs(5));
        assert_eq!(
            r.token(),
            Some("be"),
            "{}: no new service connection after the restart: {r:?}\n{}",
            client.describe(),
            dump(&agent)
        );
    }
}
