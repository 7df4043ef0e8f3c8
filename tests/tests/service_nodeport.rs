//! NodePort from outside the node: a namespace joined to the host by its own veth pair plays
//! the remote client; the agent's `--devices` is the host side of that pair, so its address is
//! the node address NodePort frontends are made on. Also externalTrafficPolicy Local.
//!
//! Pod ranges 10.235.0.0/24, 10.236.0.0/24 and 10.242.0.0/24; outside links 10.235.200.0/24,
//! 10.236.200.0/24, 10.242.200.0/24 and 10.242.201.0/24.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use cilium_e2e::services::{
    Outside, Reply, SliceEp, SvcPort, apply, dump, enable_forwarding, eps, frontends, lb_args,
    require_lb, serve, serve_in, service_yaml, slice_yaml, start_agent, tokens, wait_programmed,
};
use cilium_e2e::{Pod, wait_until};

const NS: &str = "default";

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
    let agent = start_agent(
        "10.235.0.0/24",
        &lb_args(
            &cg,
            "10.235.1.0/24",
            &["--node-name", node, "--devices", &out.host_if],
        ),
    );
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
    let agent = start_agent(
        "10.236.0.0/24",
        &lb_args(
            &cg,
            "10.236.1.0/24",
            &["--node-name", node, "--devices", &out.host_if],
        ),
    );
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
    let agent = start_agent(
        "10.242.0.0/24",
        &lb_args(
            &cg,
            "10.242.1.0/24",
            &["--node-name", node, "--devices", &devices],
        ),
    );
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
