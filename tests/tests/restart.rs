//! kill -9 of the agent during a long TCP stream: the stream never stalls (pinned maps and
//! links keep forwarding), and the restarted agent restores exactly what it had.

use std::time::Duration;

use cilium_e2e::{Agent, Bg, Pod, require_privileges};

fn sorted(v: serde_json::Value, key: &str) -> Vec<serde_json::Value> {
    let mut a = v.as_array().cloned().unwrap_or_default();
    a.sort_by_key(|e| e[key].to_string());
    a
}

/// The parts of an endpoint that must survive a restart.
fn endpoint_view(v: serde_json::Value) -> Vec<serde_json::Value> {
    sorted(v, "id")
        .into_iter()
        .map(|e| {
            serde_json::json!({
                "id": e["id"], "key": e["key"], "ipv4": e["ipv4"], "mac": e["mac"],
                "host_ifname": e["host_ifname"], "host_ifindex": e["host_ifindex"],
                "identity": e["identity"], "state": e["state"], "labels": e["labels"],
            })
        })
        .collect()
}

#[test]
fn kill9_during_a_stream_keeps_it_flowing_and_restores_state() {
    if !require_privileges("kill9_during_a_stream_keeps_it_flowing_and_restores_state") {
        return;
    }
    let agent = Agent::start("10.214.0.0/24", &[]);
    let a = Pod::add(&agent, "K8S_POD_NAMESPACE=default;K8S_POD_NAME=client");
    let b = Pod::add(&agent, "K8S_POD_NAMESPACE=default;K8S_POD_NAME=server");
    let bi = b.ip.to_string();

    let endpoints_before = endpoint_view(agent.ctl_json(&["endpoint", "list"]));
    let lxc_before = sorted(agent.ctl_json(&["bpf", "lxc", "list"]), "ip");
    let ipcache_before = sorted(agent.ctl_json(&["bpf", "ipcache", "list"]), "prefix");
    assert_eq!(endpoints_before.len(), 2);

    let _server = Bg::spawn(b.netns.cmd("iperf3").args(["-s", "-1", "-p", "5201"]));
    std::thread::sleep(Duration::from_millis(500));
    // A 10 s stream reporting every 0.5 s.
    let client = Bg::spawn(
        a.netns
            .cmd("iperf3")
            .args(["-c", &bi, "-p", "5201", "-t", "10", "-i", "0.5", "-J"]),
    );
    std::thread::sleep(Duration::from_secs(2));
    agent.kill9();
    std::thread::sleep(Duration::from_secs(2));
    agent.restart();
    std::thread::sleep(Duration::from_secs(7));
    let report = client.stop();
    let json: serde_json::Value = serde_json::from_str(&report)
        .unwrap_or_else(|e| panic!("iperf3 output is not JSON ({e}): {report}"));
    let intervals = json["intervals"].as_array().cloned().unwrap_or_default();
    assert!(
        intervals.len() >= 18,
        "the stream ended early: {} intervals\n{report}",
        intervals.len()
    );
    for (i, iv) in intervals.iter().enumerate() {
        let bps = iv["sum"]["bits_per_second"].as_f64().unwrap_or(0.0);
        assert!(
            bps > 0.0,
            "interval {i} carried nothing: the stream stalled\n{iv}"
        );
    }

    // The restarted agent restored the same endpoints and map contents.
    assert_eq!(
        endpoint_view(agent.ctl_json(&["endpoint", "list"])),
        endpoints_before
    );
    assert_eq!(
        sorted(agent.ctl_json(&["bpf", "lxc", "list"]), "ip"),
        lxc_before
    );
    assert_eq!(
        sorted(agent.ctl_json(&["bpf", "ipcache", "list"]), "prefix"),
        ipcache_before
    );
    // And the pods still talk.
    assert!(a.ping(&bi, 2), "pods cannot talk after the restart");
}
