//! NodePort from outside the node: a namespace joined to the host by its own veth pair plays
//! the remote client; the agent's `--devices` is the host side of that pair, so its address is
//! the node address NodePort frontends are made on. Also externalTrafficPolicy Local.
//!
//! Also loadBalancerSourceRanges on a LoadBalancer ingress IP, and healthCheckNodePort.
//!
//! Pod ranges 10.235.0.0/24, 10.236.0.0/24, 10.242.0.0/24, 10.244.0.0/24, 10.244.2.0/24 and
//! 10.245.0.0/24; outside links 10.235.200.0/24, 10.236.200.0/24, 10.242.200.0/24,
//! 10.242.201.0/24, 10.244.200.0/24, 10.244.201.0/24, 10.245.200.0/24 and 10.245.201.0/24.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use cilium_e2e::model::ctl_apply;
use cilium_e2e::services::{
    Cgroup, Client, Outside, Reply, SliceEp, SvcPort, apply, drop_count, dump, enable_forwarding,
    eps, frontends, lb_args, require_lb, serve, serve_in, service_yaml, slice_yaml, start_agent,
    tokens, wait_programmed,
};
use cilium_e2e::{Pod, wait_until};

const NS: &str = "default";

/// An agent with load balancing on (socket LB under `cg`, cluster IPs from `service_cidr`),
/// pods from `pod_cidr`, node name `node` and NodePort on `devices` (comma-separated).
fn nodeport_agent(
    cg: &Cgroup,
    pod_cidr: &str,
    service_cidr: &str,
    node: &str,
    devices: &str,
) -> cilium_e2e::Agent {
    nodeport_agent_with(cg, pod_cidr, service_cidr, node, devices, &[])
}

/// [`nodeport_agent`] with `extra` agent flags.
fn nodeport_agent_with(
    cg: &Cgroup,
    pod_cidr: &str,
    service_cidr: &str,
    node: &str,
    devices: &str,
    extra: &[&str],
) -> cilium_e2e::Agent {
    let mut args = vec!["--node-name", node, "--devices", devices];
    args.extend_from_slice(extra);
    start_agent(pod_cidr, &lb_args(cg, service_cidr, &args))
}

fn outside_until_ok(out: &Outside, addr: &str) -> Reply {
    let mut last = Reply::Err("never tried".into());
    wait_until(Duration::from_secs(5), || {
        last = out
            .tcp(addr, 1, 1000)
            .into_iter()
            .next()
            .unwrap_or(Reply::Err("no output".into()));
        last.token().is_some()
    });
    last
}

#[test]
fn nodeport_from_an_outside_namespace() {
    let Some(cg) = require_lb("nodeport_from_an_outside_namespace") else {
        return;
    };
    let out = Outside::new(Ipv4Addr::new(10, 235, 200, 0));
    let _fwd = enable_forwarding();
    let node = "e2e-np";
    let agent = nodeport_agent(&cg, "10.235.0.0/24", "10.235.1.0/24", node, &out.host_if);
    let b1 = Pod::add(&agent, "K8S_POD_NAMESPACE=default;K8S_POD_NAME=b1");
    let b2 = Pod::add(&agent, "K8S_POD_NAMESPACE=default;K8S_POD_NAME=b2");
    let _s1 = serve(&b1, "b1", &[8080], &[]);
    let _s2 = serve(&b2, "b2", &[8080], &[]);
    // Nothing listens on UDP 5353: the backends answer with ICMP port unreachable (not
    // rate-limited, so every datagram of the test gets one).
    for b in [&b1, &b2] {
        let out = b.exec("sysctl", &["-q", "-w", "net.ipv4.icmp_ratelimit=0"]);
        assert!(out.status.success(), "sysctl in {}: {out:?}", b.netns.name);
    }
    let vip = Ipv4Addr::new(10, 235, 1, 10);
    let ports = [
        SvcPort::tcp("http", 80, 8080).node_port(31235),
        SvcPort::udp("dns", 53, 5353).node_port(31235),
    ];
    let e = [SliceEp::ready(b1.ip, node), SliceEp::ready(b2.ip, node)];
    apply(
        &agent,
        &format!(
            "{}{}",
            service_yaml(NS, "np", vip, &ports, "  type: NodePort\n"),
            slice_yaml(NS, "np", "np-1", &e, &ports)
        ),
    );
    let backends = eps(&[b1.ip, b2.ip], 8080);
    wait_programmed(&agent, &format!("{vip}:80/tcp"), &backends);
    let np = format!("{}:31235", out.host_ip);
    wait_programmed(&agent, &format!("{np}/tcp"), &backends);
    wait_programmed(&agent, &format!("{np}/udp"), &eps(&[b1.ip, b2.ip], 5353));

    let first = outside_until_ok(&out, &np);
    assert!(
        first.token().is_some(),
        "the outside client cannot reach NodePort {np}: {first:?}\n{}",
        dump(&agent)
    );
    let r = out.tcp(&np, 20, 2000);
    let got: BTreeSet<String> = tokens(&r).into_iter().collect();
    assert!(
        r.iter().all(|x| x.token().is_some()),
        "NodePort requests from outside failed: {r:?}\n{}",
        dump(&agent)
    );
    assert_eq!(
        got.len(),
        2,
        "20 NodePort connections reached only {got:?}: {r:?}"
    );
    for x in &r {
        if let Reply::Ok { from, .. } = x {
            assert_eq!(from, &np, "the outside client's peer is {from}, not {np}");
        }
    }
    // A backend's ICMP error about a NodePort flow reaches the outside client as the
    // frontend's: its connected UDP socket is refused at once.
    let r = out.udp_connected(&np, 3, 3000);
    assert!(
        !r.is_empty() && r.iter().all(|x| x == &Reply::Err("refused".into())),
        "UDP to NodePort {np} (backend port closed) must be refused, got {r:?}\n{}",
        dump(&agent)
    );
}

#[test]
fn external_traffic_policy_local_keeps_nodeport_on_local_backends() {
    let Some(cg) = require_lb("external_traffic_policy_local_keeps_nodeport_on_local_backends")
    else {
        return;
    };
    let out = Outside::new(Ipv4Addr::new(10, 236, 200, 0));
    let _fwd = enable_forwarding();
    let node = "e2e-etp";
    let agent = nodeport_agent(&cg, "10.236.0.0/24", "10.236.1.0/24", node, &out.host_if);
    let local = Pod::add(&agent, "K8S_POD_NAMESPACE=default;K8S_POD_NAME=local");
    let _s = serve(&local, "local", &[8080], &[]);
    // A backend on another node (its address is never reached in this test).
    let remote = Ipv4Addr::new(10, 236, 250, 9);
    let vip = Ipv4Addr::new(10, 236, 1, 10);
    let ports = [SvcPort::tcp("http", 80, 8080).node_port(31236)];
    let e = [
        SliceEp::ready(local.ip, node),
        SliceEp::ready(remote, "other-node"),
    ];
    let slice = slice_yaml(NS, "etp", "etp-1", &e, &ports);
    apply(
        &agent,
        &format!(
            "{}{slice}",
            service_yaml(
                NS,
                "etp",
                vip,
                &ports,
                "  type: NodePort\n  externalTrafficPolicy: Local\n"
            ),
        ),
    );
    let np = format!("{}:31236", out.host_ip);
    // NodePort: only the local backend. ClusterIP (internal policy Cluster): both.
    wait_programmed(&agent, &format!("{np}/tcp"), &eps(&[local.ip], 8080));
    wait_programmed(
        &agent,
        &format!("{vip}:80/tcp"),
        &eps(&[local.ip, remote], 8080),
    );
    let first = outside_until_ok(&out, &np);
    assert!(
        first.token().is_some(),
        "the outside client cannot reach NodePort {np}: {first:?}\n{}",
        dump(&agent)
    );
    let r = out.tcp(&np, 20, 2000);
    for x in &r {
        match x {
            Reply::Ok { token, seen, .. } => {
                assert_eq!(token, "local", "{r:?}");
                assert_eq!(
                    seen,
                    &out.peer_ip.to_string(),
                    "with externalTrafficPolicy Local the backend must see the outside client's \
                     address, it saw {seen}"
                );
            }
            Reply::Err(k) => panic!(
                "a NodePort request failed ({k}) although only the local backend is selected: \
                 {r:?}\n{}",
                dump(&agent)
            ),
        }
    }

    // Back to Cluster: the NodePort frontend takes the remote backend too.
    apply(
        &agent,
        &service_yaml(NS, "etp", vip, &ports, "  type: NodePort\n"),
    );
    wait_programmed(
        &agent,
        &format!("{np}/tcp"),
        &eps(&[local.ip, remote], 8080),
    );
    let kinds: Vec<String> = frontends(&agent)
        .unwrap_or_default()
        .into_iter()
        .map(|(f, k, ..)| format!("{f} {k}"))
        .collect();
    assert!(
        kinds.iter().any(|k| k.ends_with("NodePort")),
        "no NodePort frontend listed: {kinds:?}"
    );
}

/// `externalTrafficPolicy: Local` leaves the node's own clients alone (kube-proxy sends pods
/// and host processes that reach an external frontend to every endpoint): outside clients of
/// the NodePort and LoadBalancer frontends get only the local backend, a pod and a host
/// process get the backend on "another node" (an outside namespace) too, and still reach the
/// service once this node has no backend of it while outside clients are refused.
#[test]
fn external_traffic_policy_local_sends_the_nodes_own_clients_to_every_backend() {
    let Some(cg) =
        require_lb("external_traffic_policy_local_sends_the_nodes_own_clients_to_every_backend")
    else {
        return;
    };
    let out = Outside::new(Ipv4Addr::new(10, 245, 200, 0));
    let far = Outside::new(Ipv4Addr::new(10, 245, 201, 0));
    let _fwd = enable_forwarding();
    let node = "e2e-etp2";
    let agent = nodeport_agent(&cg, "10.245.0.0/24", "10.245.1.0/24", node, &out.host_if);
    let local = Pod::add(&agent, "K8S_POD_NAMESPACE=default;K8S_POD_NAME=local");
    let client = Pod::add(&agent, "K8S_POD_NAMESPACE=default;K8S_POD_NAME=client");
    let _s = serve(&local, "local", &[8080], &[]);
    let _far = serve_in(Some(&far.netns), "far", &[8080], &[]);
    let vip = Ipv4Addr::new(10, 245, 1, 10);
    let lb_ip = Ipv4Addr::new(10, 245, 100, 10);
    let ports = [SvcPort::tcp("http", 80, 8080).node_port(31247)];
    let svc = |policy: &str| {
        format!(
            "{}status:\n  loadBalancer:\n    ingress:\n    - ip: {lb_ip}\n",
            service_yaml(
                NS,
                "etp2",
                vip,
                &ports,
                &format!("  type: LoadBalancer\n  externalTrafficPolicy: {policy}\n")
            )
        )
    };
    let slice = |e: &[SliceEp]| slice_yaml(NS, "etp2", "etp2-1", e, &ports);
    let both = [
        SliceEp::ready(local.ip, node),
        SliceEp::ready(far.peer_ip, "other-node"),
    ];
    apply(&agent, &format!("{}{}", svc("Local"), slice(&both)));
    let np = format!("{}:31247", out.host_ip);
    let lb = format!("{lb_ip}:80");
    let everyone = eps(&[local.ip, far.peer_ip], 8080);
    for fe in [&np, &lb] {
        wait_programmed(&agent, &format!("{fe}/tcp"), &eps(&[local.ip], 8080));
        let (flags, _) = lb_entry(&agent, fe);
        assert!(
            flags.iter().any(|f| f == "two-scopes") && lb_internal_slots(&agent, fe) == everyone,
            "{fe}: the maps must hold a second, cluster-wide backend set for this node's \
             clients: flags {flags:?}, internal slots {:?}\n{}",
            lb_internal_slots(&agent, fe),
            dump(&agent)
        );
    }
    // The ClusterIP frontend has one set (internal traffic policy Cluster).
    let (flags, _) = lb_entry(&agent, &format!("{vip}:80"));
    assert!(!flags.iter().any(|f| f == "two-scopes"), "{flags:?}");

    // Outside clients: the local backend only, for both frontends.
    for fe in [&np, &lb] {
        let first = outside_until_ok(&out, fe);
        assert_eq!(
            first.token(),
            Some("local"),
            "{fe}: {first:?}\n{}",
            dump(&agent)
        );
        let got: BTreeSet<String> = tokens(&out.tcp(fe, 12, 2000)).into_iter().collect();
        assert_eq!(
            got,
            BTreeSet::from(["local".to_string()]),
            "outside clients of {fe} must only reach the local backend\n{}",
            dump(&agent)
        );
    }
    // The node's own clients: both backends. A pod (per-packet at its veth) and a host
    // process (socket layer); 24 connections each miss one of two backends with
    // probability 2^-23.
    let pod = Client::pod_out(&client);
    let host = Client::host_in(&cg);
    for (who, c) in [("a pod", &pod), ("a host process", &host)] {
        for fe in [&np, &lb] {
            let r = c.tcp(fe, 24, 2000);
            let got: BTreeSet<String> = tokens(&r).into_iter().collect();
            assert_eq!(
                got,
                BTreeSet::from(["far".to_string(), "local".to_string()]),
                "{who} on this node must reach every backend of {fe} (externalTrafficPolicy \
                 Local concerns outside clients only): {r:?}\n{}",
                dump(&agent)
            );
        }
    }

    // No backend on this node: outside clients are refused at once, the node's own
    // clients still reach the service.
    apply(&agent, &slice(&both[1..]));
    wait_programmed(&agent, &format!("{np}/tcp"), &[]);
    let r = out.tcp(&np, 2, 1000);
    assert!(
        !r.is_empty() && r.iter().all(|x| matches!(x, Reply::Err(_))),
        "without a local backend, outside clients of {np} must be refused: {r:?}\n{}",
        dump(&agent)
    );
    for (who, c) in [("a pod", &pod), ("a host process", &host)] {
        let got = tokens(&c.tcp(&np, 4, 2000));
        assert_eq!(
            got,
            ["far"; 4],
            "{who} on this node must still reach {np} through the backend elsewhere\n{}",
            dump(&agent)
        );
    }

    // Cluster again: one set, and the internal scope is gone from the maps.
    apply(&agent, &format!("{}{}", svc("Cluster"), slice(&both)));
    wait_programmed(&agent, &format!("{np}/tcp"), &everyone);
    let (flags, _) = lb_entry(&agent, &np);
    assert!(
        !flags.iter().any(|f| f == "two-scopes") && lb_internal_slots(&agent, &np).is_empty(),
        "{np} must have one backend set again: {flags:?}\n{}",
        dump(&agent)
    );
}

/// NodePort towards backends that are not pods of this node. A second outside namespace,
/// behind a second device, plays a backend on another machine: the request leaves with the
/// node's address towards that machine (SNAT), so the backend answers the node, which
/// translates the reply back and returns it to the client from the NodePort frontend. A
/// server of the host itself (host network) gets the request through the host stack; its
/// reply is given the frontend back at the client device's egress.
#[test]
fn nodeport_to_a_backend_elsewhere_is_source_natted() {
    let Some(cg) = require_lb("nodeport_to_a_backend_elsewhere_is_source_natted") else {
        return;
    };
    let client = Outside::new(Ipv4Addr::new(10, 242, 200, 0));
    let far = Outside::new(Ipv4Addr::new(10, 242, 201, 0));
    let _fwd = enable_forwarding();
    let node = "e2e-snat";
    let devices = format!("{},{}", client.host_if, far.host_if);
    let agent = nodeport_agent(&cg, "10.242.0.0/24", "10.242.1.0/24", node, &devices);
    let _srv = serve_in(Some(&far.netns), "far", &[8080], &[5353]);
    // An unusual port: the host server listens on every host address.
    let _host_srv = serve_in(None, "host", &[18_242], &[]);
    let vip = Ipv4Addr::new(10, 242, 1, 10);
    let ports = [
        SvcPort::tcp("http", 80, 8080).node_port(31242),
        SvcPort::udp("dns", 53, 5353).node_port(31242),
        // Nothing listens there: the backend answers with ICMP port unreachable.
        SvcPort::udp("closed", 54, 5454).node_port(31244),
    ];
    let e = [SliceEp::ready(far.peer_ip, "other-node")];
    let host_vip = Ipv4Addr::new(10, 242, 1, 11);
    let host_ports = [SvcPort::tcp("http", 80, 18_242).node_port(31243)];
    let host_e = [SliceEp::ready(client.host_ip, node)];
    apply(
        &agent,
        &format!(
            "{}{}{}{}",
            service_yaml(NS, "snat", vip, &ports, "  type: NodePort\n"),
            slice_yaml(NS, "snat", "snat-1", &e, &ports),
            service_yaml(NS, "on-host", host_vip, &host_ports, "  type: NodePort\n"),
            slice_yaml(NS, "on-host", "on-host-1", &host_e, &host_ports),
        ),
    );
    let np = format!("{}:31242", client.host_ip);
    wait_programmed(&agent, &format!("{np}/tcp"), &eps(&[far.peer_ip], 8080));
    wait_programmed(&agent, &format!("{np}/udp"), &eps(&[far.peer_ip], 5353));
    let np_closed = format!("{}:31244", client.host_ip);
    wait_programmed(
        &agent,
        &format!("{np_closed}/udp"),
        &eps(&[far.peer_ip], 5454),
    );
    let host_np = format!("{}:31243", client.host_ip);
    wait_programmed(
        &agent,
        &format!("{host_np}/tcp"),
        &eps(&[client.host_ip], 18_242),
    );

    let first = outside_until_ok(&client, &np);
    assert!(
        first.token().is_some(),
        "the outside client cannot reach NodePort {np} (backend {}:8080 elsewhere): {first:?}\n{}",
        far.peer_ip,
        dump(&agent)
    );
    // The backend elsewhere sees the node's address towards it (SNAT); the client sees the
    // NodePort frontend as its peer. TCP, then UDP from one unconnected socket.
    let seen = far.host_ip.to_string();
    let r = client.tcp(&np, 10, 2000);
    check_nodeport_replies(
        &agent,
        "TCP to the backend elsewhere",
        &r,
        "far",
        &seen,
        &np,
    );
    let r = client.udp(&np, 5, 2000);
    check_nodeport_replies(
        &agent,
        "UDP to the backend elsewhere",
        &r,
        "far",
        &seen,
        &np,
    );
    // The backend's ICMP error, sent to the node's address, reaches the client as the
    // frontend's: its connected UDP socket is refused at once.
    let out =
        cilium_e2e::run(
            far.netns
                .cmd("sysctl")
                .args(["-q", "-w", "net.ipv4.icmp_ratelimit=0"]),
        );
    assert!(
        out.status.success(),
        "sysctl in {}: {out:?}",
        far.netns.name
    );
    let r = client.udp_connected(&np_closed, 3, 3000);
    assert!(
        !r.is_empty() && r.iter().all(|x| x == &Reply::Err("refused".into())),
        "UDP to NodePort {np_closed} (backend elsewhere, port closed) must be refused, got \
         {r:?}\n{}",
        dump(&agent)
    );
    // `bpf nat list` shows the translated flows with the node address they left with.
    let nat = agent.ctl_json(&["bpf", "nat", "list"]);
    let rows = nat["snat"].as_array().cloned().unwrap_or_default();
    let backend = format!("{}:8080", far.peer_ip);
    let node_prefix = format!("{}:", far.host_ip);
    assert!(
        rows.iter().any(|r| r["backend"] == backend.as_str()
            && r["client"]
                .as_str()
                .is_some_and(|c| c.starts_with(&format!("{}:", client.peer_ip)))
            && r["node"]
                .as_str()
                .is_some_and(|n| n.starts_with(&node_prefix))),
        "no SNAT entry {}:* -> {backend} via {node_prefix}* in `bpf nat list`: {nat}",
        client.peer_ip
    );
    // Forwarding to the backend elsewhere is a routing hop: the TTL goes down by one, so a
    // packet arriving with TTL 1 is dropped (ttl-exceeded) and one with TTL 2 gets there.
    let before = drop_count(&agent, "ttl-exceeded");
    let r = client.tcp_ttl(1, &np, 1, 700);
    assert_eq!(
        r,
        [Reply::Err("timeout".into())],
        "a SYN with TTL 1 must not be forwarded to the backend elsewhere"
    );
    let after = drop_count(&agent, "ttl-exceeded");
    assert!(
        after > before,
        "the TTL 1 SYN must be counted as ttl-exceeded ({before} -> {after})\n{}",
        dump(&agent)
    );
    let r = client.tcp_ttl(2, &np, 1, 2000);
    assert_eq!(
        r.first().and_then(Reply::token),
        Some("far"),
        "TTL 2 leaves one hop to the backend elsewhere: {r:?}"
    );

    // The host backend: the client's own address is kept (no SNAT, nothing is forwarded).
    let first = outside_until_ok(&client, &host_np);
    assert!(
        first.token().is_some(),
        "the outside client cannot reach NodePort {host_np} (backend: a host server): \
         {first:?}\n{}",
        dump(&agent)
    );
    let r = client.tcp(&host_np, 10, 2000);
    let seen = client.peer_ip.to_string();
    check_nodeport_replies(
        &agent,
        "TCP to the host backend",
        &r,
        "host",
        &seen,
        &host_np,
    );
    // The host's replies pass only cil_to_netdev, and their conntrack entries still see
    // them: every connection above closed, so its entry is closing and goes within the FIN
    // timeout (10 s), instead of waiting for the SYN timeout renewed by the client alone.
    let ct = agent.ctl_json(&["bpf", "ct", "list"]);
    let flows: Vec<&serde_json::Value> = ct
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["src_ip"] == seen.as_str() && e["dst_port"] == 18_242)
                .collect()
        })
        .unwrap_or_default();
    assert!(
        flows.len() >= 10,
        "the host backend's flows are not in conntrack: {ct}"
    );
    for e in flows {
        let closing = e["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "closing"));
        assert!(
            closing
                && e["rx_flags_seen"]
                    .as_str()
                    .is_some_and(|f| f.contains("FIN"))
                && e["expires_in_seconds"].as_i64().is_some_and(|s| s <= 10),
            "a closed connection to the host backend must be closing, with the host's FIN \
             seen: {e}"
        );
    }
}

/// Every reply of `r` answered by `token`, which saw the client as `seen`, and came from
/// `frontend` as the client's peer.
fn check_nodeport_replies(
    agent: &cilium_e2e::Agent,
    what: &str,
    r: &[Reply],
    token: &str,
    seen: &str,
    frontend: &str,
) {
    assert!(!r.is_empty(), "{what}: no replies from {frontend}");
    for x in r {
        match x {
            Reply::Ok {
                token: t,
                seen: s,
                from,
                ..
            } => {
                assert_eq!(t, token, "{what}: {r:?}");
                assert_eq!(s, seen, "{what}: the backend saw the client as {s}: {r:?}");
                assert_eq!(from, frontend, "{what}: the client's peer is {from}: {r:?}");
            }
            Reply::Err(k) => panic!("{what}: a request failed ({k}): {r:?}\n{}", dump(agent)),
        }
    }
}

/// The LoadBalancer frontend of `svc` in `bpf lb list`: its flags and source ranges.
fn lb_entry(agent: &cilium_e2e::Agent, frontend: &str) -> (Vec<String>, Vec<String>) {
    let v = agent.ctl_json(&["bpf", "lb", "list"]);
    let strings = |x: &serde_json::Value| -> Vec<String> {
        x.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    v["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["frontend"] == frontend))
        .map(|s| (strings(&s["flags"]), strings(&s["source_ranges"])))
        .unwrap_or_default()
}

/// The internal-scope slots (`addr:port`, sorted) of `frontend` in `bpf lb list`.
fn lb_internal_slots(agent: &cilium_e2e::Agent, frontend: &str) -> Vec<String> {
    let v = agent.ctl_json(&["bpf", "lb", "list"]);
    let mut slots: Vec<String> = v["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["frontend"] == frontend))
        .and_then(|s| s["internal_slots"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|x| x["backend"].as_str().map(String::from))
        .collect();
    slots.sort();
    slots
}

/// loadBalancerSourceRanges: the LoadBalancer ingress IP admits only the listed clients,
/// whether they come from outside (two addresses of the outside namespace), from a pod or
/// from the host; the NodePort of the same service stays open; the ranges can be widened,
/// turned into a deny list (`service.cilium.io/src-ranges-policy: deny`) and removed live.
#[test]
fn load_balancer_source_ranges_admit_only_listed_clients() {
    let Some(cg) = require_lb("load_balancer_source_ranges_admit_only_listed_clients") else {
        return;
    };
    let out = Outside::new(Ipv4Addr::new(10, 244, 200, 0));
    let other = out.add_client_address(3);
    let _fwd = enable_forwarding();
    let node = "e2e-lbsr";
    let agent = nodeport_agent(&cg, "10.244.0.0/24", "10.244.1.0/24", node, &out.host_if);
    let b1 = Pod::add(&agent, "K8S_POD_NAMESPACE=default;K8S_POD_NAME=b1");
    let client = Pod::add(&agent, "K8S_POD_NAMESPACE=default;K8S_POD_NAME=c1");
    let _s1 = serve(&b1, "b1", &[8080], &[]);
    let vip = Ipv4Addr::new(10, 244, 1, 10);
    let lb_ip = Ipv4Addr::new(10, 244, 100, 10);
    let ports = [SvcPort::tcp("http", 80, 8080).node_port(31244)];
    let svc = |ranges: &[&str]| {
        let extra = if ranges.is_empty() {
            "  type: LoadBalancer\n".to_string()
        } else {
            format!(
                "  type: LoadBalancer\n  loadBalancerSourceRanges: [{}]\n",
                ranges.join(", ")
            )
        };
        format!(
            "{}status:\n  loadBalancer:\n    ingress:\n    - ip: {lb_ip}\n",
            service_yaml(NS, "lbsr", vip, &ports, &extra)
        )
    };
    let slice = slice_yaml(NS, "lbsr", "lbsr-1", &[SliceEp::ready(b1.ip, node)], &ports);
    let only_peer = format!("\"{}/32\"", out.peer_ip);
    apply(&agent, &format!("{}{slice}", svc(&[&only_peer])));
    let lb = format!("{lb_ip}:80");
    let np = format!("{}:31244", out.host_ip);
    let backends = eps(&[b1.ip], 8080);
    wait_programmed(&agent, &format!("{lb}/tcp"), &backends);
    wait_programmed(&agent, &format!("{np}/tcp"), &backends);
    let (flags, ranges) = lb_entry(&agent, &lb);
    assert!(
        flags.iter().any(|f| f == "source-range") && ranges == [format!("{}/32", out.peer_ip)],
        "the LoadBalancer frontend must carry its source range in the maps: flags {flags:?}, \
         ranges {ranges:?}\n{}",
        dump(&agent)
    );
    let (np_flags, _) = lb_entry(&agent, &np);
    assert!(
        !np_flags.iter().any(|f| f == "source-range"),
        "the NodePort frontend must not be restricted: {np_flags:?}"
    );

    // The listed client gets through.
    let first = outside_until_ok(&out, &lb);
    assert_eq!(
        first.token(),
        Some("b1"),
        "the listed outside client cannot reach {lb}: {first:?}\n{}",
        dump(&agent)
    );
    // Everyone else is dropped at the frontend: the other outside address, a pod, the host.
    let r = out.tcp_from(other, &lb, 2, 700);
    assert!(
        !r.is_empty() && r.iter().all(|x| x == &Reply::Err("timeout".into())),
        "{other} is outside the source ranges, its connections to {lb} must be dropped: \
         {r:?}\n{}",
        dump(&agent)
    );
    let pod = Client::pod_out(&client);
    let r = pod.tcp(&lb, 1, 700);
    assert_eq!(
        r,
        [Reply::Err("timeout".into())],
        "pod {} is outside the source ranges: {r:?}",
        client.ip
    );
    let host = Client::host_in(&cg);
    let r = host.tcp(&lb, 1, 700);
    assert_eq!(
        r,
        [Reply::Err("denied".into())],
        "the host (node address {}) is outside the source ranges; its connect() must fail \
         with EPERM: {r:?}",
        out.host_ip
    );
    // Two SYNs from the other address, one from the pod, the host's refused connect().
    let dropped = drop_count(&agent, "lb-source-range");
    assert!(
        dropped >= 4,
        "the refusals must be counted under lb-source-range, got {dropped}\n{}",
        dump(&agent)
    );
    // The NodePort of the same service is not restricted.
    let r = out.tcp_from(other, &np, 1, 2000);
    assert_eq!(
        r.first().and_then(Reply::token),
        Some("b1"),
        "NodePort {np} from {other}: {r:?}"
    );

    // Widened live: the outside subnet (host address included) and the pod range.
    apply(
        &agent,
        &svc(&["\"10.244.200.0/24\"", "\" 10.244.0.0/24 \""]),
    );
    let mut last = Vec::new();
    let widened = wait_until(Duration::from_secs(10), || {
        last = out.tcp_from(other, &lb, 1, 700);
        last.first().and_then(Reply::token) == Some("b1")
    });
    assert!(
        widened,
        "{other} is inside 10.244.200.0/24 now: {last:?}\n{}",
        dump(&agent)
    );
    for (who, r) in [
        ("the pod", pod.tcp(&lb, 3, 2000)),
        ("the host", host.tcp(&lb, 3, 2000)),
    ] {
        assert!(
            r.iter().all(|x| x.token() == Some("b1")),
            "{who} is inside the widened ranges: {r:?}\n{}",
            dump(&agent)
        );
    }
    let (_, ranges) = lb_entry(&agent, &lb);
    assert_eq!(
        ranges,
        ["10.244.0.0/24", "10.244.200.0/24"],
        "ranges in the map"
    );

    // Turned into a deny list (service.cilium.io/src-ranges-policy: deny): the outside
    // subnet, host address included, is refused; the pod is not listed and gets through.
    let deny = svc(&["\"10.244.200.0/24\""]).replacen(
        "metadata:\n",
        "metadata:\n  annotations:\n    service.cilium.io/src-ranges-policy: deny\n",
        1,
    );
    apply(&agent, &deny);
    let denied = wait_until(Duration::from_secs(10), || {
        let (f, r) = lb_entry(&agent, &lb);
        f.iter().any(|x| x == "source-range-deny") && r == ["10.244.200.0/24"]
    });
    assert!(
        denied,
        "the deny policy is not in the maps: {:?}\n{}",
        lb_entry(&agent, &lb),
        dump(&agent)
    );
    let before = drop_count(&agent, "lb-source-range");
    let r = out.tcp_from(other, &lb, 2, 700);
    assert!(
        !r.is_empty() && r.iter().all(|x| x == &Reply::Err("timeout".into())),
        "{other} is in the denied range, its connections to {lb} must be dropped: {r:?}\n{}",
        dump(&agent)
    );
    let r = host.tcp(&lb, 1, 700);
    assert_eq!(
        r,
        [Reply::Err("denied".into())],
        "the host ({}) is in the denied range: {r:?}",
        out.host_ip
    );
    let r = pod.tcp(&lb, 3, 2000);
    assert!(
        r.iter().all(|x| x.token() == Some("b1")),
        "pod {} is not in the denied range: {r:?}\n{}",
        client.ip,
        dump(&agent)
    );
    let dropped = drop_count(&agent, "lb-source-range") - before;
    assert!(
        dropped >= 3,
        "the denied clients must be counted under lb-source-range, got {dropped} more"
    );

    // Removed: the flags go and so do the map entries; everyone gets through.
    apply(&agent, &svc(&[]));
    let cleared = wait_until(Duration::from_secs(10), || {
        let (f, r) = lb_entry(&agent, &lb);
        !f.iter().any(|x| x.starts_with("source-range")) && r.is_empty()
    });
    assert!(
        cleared,
        "source ranges still in the maps: {:?}",
        lb_entry(&agent, &lb)
    );
    let r = out.tcp_from(other, &lb, 2, 2000);
    assert!(
        r.iter().all(|x| x.token() == Some("b1")),
        "without source ranges {other} reaches {lb}: {r:?}"
    );
}

/// One HTTP GET of `/` at `addr`: status code and body.
fn http_get(addr: &str) -> Result<(u16, String), String> {
    use std::io::{Read as _, Write as _};
    let a: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {raw:?}"))?;
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Ok((status, body))
}

/// Polls `GET /healthz` at `addr` for up to `secs` until it answers `status`: the body, or the
/// last answer when it never did.
fn http_until(addr: &str, secs: u64, status: u16) -> Result<String, Result<(u16, String), String>> {
    let mut last = Err("never tried".to_string());
    let ok = wait_until(Duration::from_secs(secs), || {
        last = http_get(addr);
        matches!(&last, Ok((s, _)) if *s == status)
    });
    match last {
        Ok((_, body)) if ok => Ok(body),
        other => Err(other),
    }
}

/// healthCheckNodePort: a LoadBalancer service with externalTrafficPolicy Local gets a node
/// port where this node answers 200 while it has a ready local endpoint and 503 when it has
/// none, so an outside load balancer skips it; the port closes with the service.
#[test]
fn health_check_node_port_reports_local_endpoints() {
    let Some(cg) = require_lb("health_check_node_port_reports_local_endpoints") else {
        return;
    };
    let out = Outside::new(Ipv4Addr::new(10, 244, 201, 0));
    let node = "e2e-hc";
    let agent = nodeport_agent(&cg, "10.244.2.0/24", "10.244.3.0/24", node, &out.host_if);
    let b1 = Pod::add(&agent, "K8S_POD_NAMESPACE=default;K8S_POD_NAME=b1");
    let vip = Ipv4Addr::new(10, 244, 3, 10);
    let ports = [SvcPort::tcp("http", 80, 8080).node_port(31245)];
    let service = service_yaml(
        NS,
        "hc",
        vip,
        &ports,
        "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 31246\n",
    );
    let slice = |ready: bool| {
        let ep = SliceEp {
            ready,
            ..SliceEp::ready(b1.ip, node)
        };
        slice_yaml(NS, "hc", "hc-1", &[ep], &ports)
    };
    apply(&agent, &format!("{service}{}", slice(true)));
    let hc = format!("{}:31246", out.host_ip);
    let body = http_until(&hc, 10, 200).unwrap_or_else(|last| {
        panic!(
            "health check {hc} with one local ready endpoint: {last:?}\n{}",
            dump(&agent)
        )
    });
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    assert_eq!(v["localEndpoints"], 1, "{body}");
    assert_eq!(v["service"]["name"], "hc", "{body}");
    let info = agent.ctl_json(&["service", "list"]);
    assert!(
        info.as_array()
            .is_some_and(|a| a.iter().any(|s| s["health_check_node_port"] == 31246)),
        "service list must show the health check port: {info}"
    );

    // The endpoint is no longer ready: 503, the outside load balancer stops sending here.
    apply(&agent, &slice(false));
    if let Err(last) = http_until(&hc, 10, 503) {
        panic!("health check {hc} without a ready local endpoint: {last:?}");
    }

    // The service goes: so does the port.
    ctl_apply(&agent, "delete", &service).expect("delete the service");
    let mut last = Err("never tried".to_string());
    let closed = wait_until(Duration::from_secs(10), || {
        last = http_get(&hc);
        last.as_ref().is_err_and(|e| e.contains("refused"))
    });
    assert!(
        closed,
        "health check port {hc} still answers after delete: {last:?}"
    );
}

/// `--kube-proxy-replacement-healthz-bind-address`: the node's kube-proxy health endpoint
/// answers 200 with kube-proxy's body while the agent is healthy, and 503 naming the
/// degraded part while one is not (here: a health check node port another process holds),
/// then 200 again once it recovers.
#[test]
fn kube_proxy_healthz_follows_the_agent_health() {
    let Some(cg) = require_lb("kube_proxy_healthz_follows_the_agent_health") else {
        return;
    };
    let out = Outside::new(Ipv4Addr::new(10, 244, 202, 0));
    let node = "e2e-kprhz";
    let healthz = format!("{}:10256", out.host_ip);
    let agent = nodeport_agent_with(
        &cg,
        "10.244.4.0/24",
        "10.244.5.0/24",
        node,
        &out.host_if,
        &["--kube-proxy-replacement-healthz-bind-address", &healthz],
    );
    let body = http_until(&healthz, 10, 200).unwrap_or_else(|last| {
        panic!(
            "{healthz}/healthz of a healthy agent: {last:?}\n{}",
            dump(&agent)
        )
    });
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    assert!(
        v["currentTime"].is_string() && v["lastUpdated"] == v["currentTime"],
        "kube-proxy's body, in sync: {body}"
    );

    // Something else holds the health check node port a service asks for: that part of the
    // agent is degraded, and the node says so.
    let held = std::net::TcpListener::bind(("0.0.0.0", 31250)).expect("hold port 31250");
    let ports = [SvcPort::tcp("http", 80, 8080).node_port(31251)];
    let service = service_yaml(
        NS,
        "kprhz",
        Ipv4Addr::new(10, 244, 5, 10),
        &ports,
        "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 31250\n",
    );
    apply(&agent, &service);
    let body = http_until(&healthz, 10, 503).unwrap_or_else(|last| {
        panic!(
            "{healthz}/healthz while port 31250 cannot be opened: {last:?}\n{}",
            dump(&agent)
        )
    });
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    assert!(
        v["degraded"].as_array().is_some_and(|d| d.iter().any(|x| x
            .as_str()
            .is_some_and(|s| s.contains("lb-health-check-ports")))),
        "the 503 must name the degraded part: {body}"
    );

    // Released: the port opens on the next retry and the node is healthy again.
    drop(held);
    if let Err(last) = http_until(&healthz, 15, 200) {
        panic!(
            "{healthz}/healthz after recovery: {last:?}\n{}",
            dump(&agent)
        );
    }
}
