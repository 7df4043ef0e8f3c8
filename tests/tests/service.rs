//! Service load balancing end to end: ClusterIP services (Service + EndpointSlice through
//! `ciliumctl apply`) reached from pods and from the host, TCP and UDP, through both paths of
//! the datapath: the socket hooks (clients inside the agent's own cgroup, `--cgroup-root`) and
//! the per-packet DNAT at from-container (pod clients outside that cgroup). Backends are pods
//! running `lb-client serve NAME`, which answers every connection or datagram with its name and
//! the client address it saw.
//!
//! Each test runs its own agent with its own pod range (10.230-10.234.0.0/24, hairpin
//! 10.230.2.0/24), service range (10.23x.1.0/24, hairpin 10.230.3.0/24) and cgroup.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use cilium_e2e::Pod;
use cilium_e2e::model::{ctl_apply, ctl_stdin, namespace_yaml, pod_yaml};
use cilium_e2e::services::{
    Client, Outside, Reply, SliceEp, SvcPort, UdpFlow, apply, bpf_frontends, drop_count, dump,
    enable_forwarding, eps, lb_args, require_lb, serve, serve_in, service_yaml, slice_yaml,
    start_agent, tokens, wait_programmed,
};

const NS: &str = "default";
const NODE: &str = "e2e-node";

fn pod<'a>(agent: &'a cilium_e2e::Agent, name: &str) -> Pod<'a> {
    Pod::add(
        agent,
        &format!("K8S_POD_NAMESPACE={NS};K8S_POD_NAME={name}"),
    )
}

fn slice(svc: &str, name: &str, ips: &[Ipv4Addr], ports: &[SvcPort]) -> String {
    let e: Vec<SliceEp> = ips.iter().map(|i| SliceEp::ready(*i, NODE)).collect();
    slice_yaml(NS, svc, name, &e, ports)
}

fn distinct(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

/// Every reply answered, by one of `allowed`, and reported the frontend `vip` as its peer.
fn check_replies(what: &str, replies: &[Reply], allowed: &[&str], vip: &str) {
    assert!(!replies.is_empty(), "{what}: no replies");
    for r in replies {
        match r {
            Reply::Ok { token, from, .. } => {
                assert!(
                    allowed.contains(&token.as_str()),
                    "{what}: answered by {token}, not one of {allowed:?}"
                );
                assert_eq!(
                    from, vip,
                    "{what}: the client socket sees {from} as its peer, not the frontend {vip} \
                     (reverse translation missing)"
                );
            }
            Reply::Err(kind) => panic!("{what}: a request failed ({kind}); replies: {replies:?}"),
        }
    }
}

#[test]
fn clusterip_tcp_and_udp_from_pods_and_from_the_host() {
    let Some(cg) = require_lb("clusterip_tcp_and_udp_from_pods_and_from_the_host") else {
        return;
    };
    let agent = start_agent(
        "10.230.0.0/24",
        &lb_args(&cg, "10.230.1.0/24", &["--node-name", NODE]),
    );
    let c = pod(&agent, "client");
    let b1 = pod(&agent, "b1");
    let b2 = pod(&agent, "b2");
    let _s1 = serve(&b1, "b1", &[8080], &[5353]);
    let _s2 = serve(&b2, "b2", &[8080], &[5353]);
    let vip = Ipv4Addr::new(10, 230, 1, 10);
    let ports = [
        SvcPort::tcp("http", 80, 8080),
        SvcPort::udp("dns", 53, 5353),
    ];
    apply(
        &agent,
        &format!(
            "{}{}",
            service_yaml(NS, "web", vip, &ports, ""),
            slice("web", "web-1", &[b1.ip, b2.ip], &ports)
        ),
    );
    wait_programmed(
        &agent,
        &format!("{vip}:80/tcp"),
        &eps(&[b1.ip, b2.ip], 8080),
    );
    wait_programmed(
        &agent,
        &format!("{vip}:53/udp"),
        &eps(&[b1.ip, b2.ip], 5353),
    );

    let tcp_vip = format!("{vip}:80");
    let udp_vip = format!("{vip}:53");
    for client in [
        Client::pod_in(&c, &cg),
        Client::pod_out(&c),
        Client::host_in(&cg),
    ] {
        let what = client.describe();
        // TCP: 20 new connections, spread over both backends.
        let first = client.tcp_until_ok(&tcp_vip, Duration::from_secs(5));
        assert!(
            first.token().is_some(),
            "{what}: TCP to {tcp_vip} never answered: {first:?}\n{}",
            dump(&agent)
        );
        let replies = client.tcp(&tcp_vip, 20, 2000);
        check_replies(&format!("{what} TCP"), &replies, &["b1", "b2"], &tcp_vip);
        assert_eq!(
            distinct(&tokens(&replies)).len(),
            2,
            "{what}: 20 TCP connections all went to one backend: {replies:?}"
        );
        if let Some(p) = client.pod {
            for r in &replies {
                if let Reply::Ok { seen, .. } = r {
                    assert_eq!(
                        seen,
                        &p.ip.to_string(),
                        "{what}: the backend saw {seen}, not the client pod's address"
                    );
                }
            }
        }
        // UDP: one unconnected socket (replies must come from the frontend), then a connected one.
        let replies = client.udp(&udp_vip, 10, 2000);
        check_replies(&format!("{what} UDP"), &replies, &["b1", "b2"], &udp_vip);
        let replies = client.udp_connected(&udp_vip, 5, 2000);
        check_replies(
            &format!("{what} connected UDP"),
            &replies,
            &["b1", "b2"],
            &udp_vip,
        );
    }
}

/// The source address the host picks for packets to `dst` (`ip route get`).
fn source_towards(dst: Ipv4Addr) -> Ipv4Addr {
    let out = cilium_e2e::run_ok(std::process::Command::new("ip").args([
        "-o",
        "route",
        "get",
        &dst.to_string(),
    ]));
    let mut words = out.split_whitespace();
    words
        .by_ref()
        .find(|w| *w == "src")
        .and_then(|_| words.next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no source address in `ip route get {dst}`: {out}"))
}

/// Backends that are not pods of this node: a process of the host (like the `kubernetes`
/// service's API server) and a machine outside (a namespace behind its own veth). The host
/// routes the translated packets; the replies come back through the host stack into the
/// client's veth, where the per-packet path must reverse-translate them (cil_to_container).
#[test]
fn backends_outside_the_pods_the_host_and_a_machine_outside() {
    let Some(cg) = require_lb("backends_outside_the_pods_the_host_and_a_machine_outside") else {
        return;
    };
    let agent = start_agent(
        "10.241.0.0/24",
        &lb_args(&cg, "10.241.1.0/24", &["--node-name", NODE]),
    );
    let _fwd = enable_forwarding();
    let c = pod(&agent, "client");
    let outside = Outside::new(Ipv4Addr::new(10, 241, 200, 0));
    // The host backend listens on the address the host itself uses towards the pod (its node
    // address), as a host-network server would: an unconnected UDP server answers from that
    // address, whatever address the datagram was sent to.
    let host_ip = source_towards(c.ip);
    // An unusual port: the server listens on every host address.
    let _host = serve_in(None, "host", &[18_241], &[18_241]);
    let _far = serve_in(Some(&outside.netns), "outside", &[8080], &[5353]);
    let host_vip = Ipv4Addr::new(10, 241, 1, 10);
    let far_vip = Ipv4Addr::new(10, 241, 1, 11);
    let host_ports = [
        SvcPort::tcp("http", 80, 18_241),
        SvcPort::udp("dns", 53, 18_241),
    ];
    let far_ports = [
        SvcPort::tcp("http", 80, 8080),
        SvcPort::udp("dns", 53, 5353),
    ];
    apply(
        &agent,
        &format!(
            "{}{}{}{}",
            service_yaml(NS, "on-host", host_vip, &host_ports, ""),
            slice("on-host", "on-host-1", &[host_ip], &host_ports),
            service_yaml(NS, "far", far_vip, &far_ports, ""),
            slice("far", "far-1", &[outside.peer_ip], &far_ports),
        ),
    );
    for (fe, be) in [
        (format!("{host_vip}:80/tcp"), eps(&[host_ip], 18_241)),
        (format!("{host_vip}:53/udp"), eps(&[host_ip], 18_241)),
        (format!("{far_vip}:80/tcp"), eps(&[outside.peer_ip], 8080)),
        (format!("{far_vip}:53/udp"), eps(&[outside.peer_ip], 5353)),
    ] {
        wait_programmed(&agent, &fe, &be);
    }
    for client in [Client::pod_out(&c), Client::pod_in(&c, &cg)] {
        let what = client.describe();
        for (vip, token) in [(host_vip, "host"), (far_vip, "outside")] {
            let tcp = format!("{vip}:80");
            let first = client.tcp_until_ok(&tcp, Duration::from_secs(5));
            assert_eq!(
                first.token(),
                Some(token),
                "{what}: TCP to {tcp} (backend: {token}) never answered: {first:?}\n{}",
                dump(&agent)
            );
            let replies = client.tcp(&tcp, 5, 2000);
            check_replies(&format!("{what} TCP to {token}"), &replies, &[token], &tcp);
            for r in &replies {
                if let Reply::Ok { seen, .. } = r {
                    assert_eq!(
                        seen,
                        &c.ip.to_string(),
                        "{what}: the {token} backend saw {seen}, not the client pod's address"
                    );
                }
            }
            let udp = format!("{vip}:53");
            let replies = client.udp(&udp, 5, 2000);
            check_replies(&format!("{what} UDP to {token}"), &replies, &[token], &udp);
            let replies = client.udp_connected(&udp, 5, 2000);
            check_replies(
                &format!("{what} connected UDP to {token}"),
                &replies,
                &[token],
                &udp,
            );
        }
    }
}

/// A backend that answers a UDP datagram with an ICMP error (nothing listens on the target
/// port): the client's connected socket gets ECONNREFUSED at once, as it would talking to the
/// backend directly. On the per-packet path the error quotes the translated packet, so the
/// datapath rewrites the quoted destination (and the error's source) back to the frontend;
/// without that the kernel matches the error to no socket and the client waits for a timeout.
#[test]
fn an_icmp_error_from_a_backend_reaches_the_client() {
    let Some(cg) = require_lb("an_icmp_error_from_a_backend_reaches_the_client") else {
        return;
    };
    let agent = start_agent(
        "10.243.0.0/24",
        &lb_args(&cg, "10.243.1.0/24", &["--node-name", NODE]),
    );
    if let Err(e) = ctl_apply(
        &agent,
        "apply",
        &format!("{}{}", namespace_yaml(NS, &[]), pod_yaml(NS, "client", &[])),
    ) {
        panic!("applying the namespace and the client pod: {e}");
    }
    let c = pod(&agent, "client");
    let b = pod(&agent, "b");
    // TCP only: a UDP datagram to 5353 gets an ICMP port unreachable from the backend. The
    // backend's kernel rate-limits its ICMP errors per destination (a burst of 6, then one a
    // second): off, so every datagram of the test gets its answer.
    let _s = serve(&b, "b", &[8080], &[]);
    let out = b.exec("sysctl", &["-q", "-w", "net.ipv4.icmp_ratelimit=0"]);
    assert!(out.status.success(), "sysctl in {}: {out:?}", b.netns.name);
    let vip = Ipv4Addr::new(10, 243, 1, 10);
    let ports = [SvcPort::udp("dns", 53, 5353)];
    apply(
        &agent,
        &format!(
            "{}{}",
            service_yaml(NS, "closed", vip, &ports, ""),
            slice("closed", "closed-1", &[b.ip], &ports)
        ),
    );
    wait_programmed(&agent, &format!("{vip}:53/udp"), &eps(&[b.ip], 5353));
    let addr = format!("{vip}:53");
    let check = |when: &str| {
        for client in [Client::pod_out(&c), Client::pod_in(&c, &cg)] {
            let what = client.describe();
            let started = std::time::Instant::now();
            let r = client.udp_connected(&addr, 3, 3000);
            assert!(
                !r.is_empty() && r.iter().all(|x| x == &Reply::Err("refused".into())),
                "{what} {when}: a datagram to {addr} (backend port closed) must be refused, got \
                 {r:?} after {:?}\n{}",
                started.elapsed(),
                dump(&agent)
            );
        }
    };
    check("without policy");
    // The error is related to the client's own flow: a policy denying every ingress to the
    // client does not stop it (it is not a new connection towards the client).
    let policy = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny-in, \
         namespace: {NS}}}\nspec:\n  podSelector: {{matchLabels: {{pod: client}}}}\n  \
         policyTypes: [Ingress]\n"
    );
    // `--wait`: returns once the policy is in the BPF maps.
    let out = ctl_stdin(
        &agent,
        &["apply", "--wait", "--timeout", "60", "-f", "-"],
        &policy,
    );
    assert!(out.status.success(), "apply --wait of the policy: {out:?}");
    // The deny is in force: a new flow towards the client (a ping from the backend) is dropped.
    assert!(
        !b.ping(&c.ip.to_string(), 1),
        "a ping from the backend to the client passed although all ingress to it is denied\n{}",
        dump(&agent)
    );
    check("with all ingress to the client denied");
}

#[test]
fn hairpin_a_pod_reaches_itself_through_its_service() {
    let Some(cg) = require_lb("hairpin_a_pod_reaches_itself_through_its_service") else {
        return;
    };
    let agent = start_agent(
        "10.230.2.0/24",
        &lb_args(&cg, "10.230.3.0/24", &["--node-name", NODE]),
    );
    let c = pod(&agent, "self");
    let _s = serve(&c, "self", &[8080], &[]);
    let vip = Ipv4Addr::new(10, 230, 3, 10);
    let ports = [SvcPort::tcp("http", 80, 8080)];
    apply(
        &agent,
        &format!(
            "{}{}",
            service_yaml(NS, "self", vip, &ports, ""),
            slice("self", "self-1", &[c.ip], &ports)
        ),
    );
    wait_programmed(&agent, &format!("{vip}:80/tcp"), &eps(&[c.ip], 8080));
    let addr = format!("{vip}:80");
    for client in [Client::pod_out(&c), Client::pod_in(&c, &cg)] {
        let what = client.describe();
        let first = client.tcp_until_ok(&addr, Duration::from_secs(5));
        assert_eq!(
            first.token(),
            Some("self"),
            "{what}: {first:?}\n{}",
            dump(&agent)
        );
        let r = client.tcp(&addr, 5, 2000);
        check_replies(&format!("{what} hairpin"), &r, &["self"], &addr);
    }

    // A port the pod does not listen on: its own ICMP port unreachable about the hairpinned
    // datagram is turned back into an error from the frontend, so the client's socket is
    // refused at once instead of waiting.
    let udp_vip = Ipv4Addr::new(10, 230, 3, 11);
    let udp_ports = [SvcPort::udp("closed", 53, 5399)];
    apply(
        &agent,
        &format!(
            "{}{}",
            service_yaml(NS, "self-udp", udp_vip, &udp_ports, ""),
            slice("self-udp", "self-udp-1", &[c.ip], &udp_ports)
        ),
    );
    wait_programmed(&agent, &format!("{udp_vip}:53/udp"), &eps(&[c.ip], 5399));
    let udp_addr = format!("{udp_vip}:53");
    for client in [Client::pod_out(&c), Client::pod_in(&c, &cg)] {
        let what = client.describe();
        let r = client.udp_connected(&udp_addr, 3, 3000);
        assert!(
            !r.is_empty() && r.iter().all(|x| x == &Reply::Err("refused".into())),
            "{what}: a datagram to itself through {udp_addr} (port closed) must be refused, got \
             {r:?}\n{}",
            dump(&agent)
        );
    }
}

#[test]
fn backends_added_and_removed_live() {
    let Some(cg) = require_lb("backends_added_and_removed_live") else {
        return;
    };
    let agent = start_agent(
        "10.231.0.0/24",
        &lb_args(&cg, "10.231.1.0/24", &["--node-name", NODE]),
    );
    let c = pod(&agent, "client");
    let bs: Vec<Pod<'_>> = ["b1", "b2", "b3"].iter().map(|n| pod(&agent, n)).collect();
    let _servers: Vec<_> = bs
        .iter()
        .zip(["b1", "b2", "b3"])
        .map(|(p, n)| serve(p, n, &[8080], &[]))
        .collect();
    let ips: Vec<Ipv4Addr> = bs.iter().map(|p| p.ip).collect();
    let vip = Ipv4Addr::new(10, 231, 1, 10);
    let ports = [SvcPort::tcp("http", 80, 8080)];
    let fe = format!("{vip}:80/tcp");
    let addr = format!("{vip}:80");
    apply(
        &agent,
        &format!(
            "{}{}",
            service_yaml(NS, "live", vip, &ports, ""),
            slice("live", "live-1", &ips[..1], &ports)
        ),
    );
    wait_programmed(&agent, &fe, &eps(&ips[..1], 8080));
    let clients = [Client::pod_in(&c, &cg), Client::pod_out(&c)];
    for client in &clients {
        let what = client.describe();
        let first = client.tcp_until_ok(&addr, Duration::from_secs(5));
        assert_eq!(
            first.token(),
            Some("b1"),
            "{what}: {first:?}\n{}",
            dump(&agent)
        );
        let r = client.tcp(&addr, 10, 2000);
        check_replies(&format!("{what} (b1 only)"), &r, &["b1"], &addr);
    }

    // Scale out: all three answer.
    apply(&agent, &slice("live", "live-1", &ips, &ports));
    wait_programmed(&agent, &fe, &eps(&ips, 8080));
    for client in &clients {
        let what = client.describe();
        let r = client.tcp(&addr, 30, 2000);
        check_replies(&format!("{what} (b1-b3)"), &r, &["b1", "b2", "b3"], &addr);
        assert_eq!(
            distinct(&tokens(&r)).len(),
            3,
            "{what}: after adding b2 and b3, 30 connections reached only {:?}",
            distinct(&tokens(&r))
        );
    }

    // Scale in: b1 gets nothing, nothing fails.
    apply(&agent, &slice("live", "live-1", &ips[1..], &ports));
    wait_programmed(&agent, &fe, &eps(&ips[1..], 8080));
    for client in &clients {
        let what = client.describe();
        let r = client.tcp(&addr, 20, 2000);
        check_replies(&format!("{what} (b1 removed)"), &r, &["b2", "b3"], &addr);
    }
}

#[test]
fn client_ip_affinity_holds_then_moves_after_its_timeout() {
    let Some(cg) = require_lb("client_ip_affinity_holds_then_moves_after_its_timeout") else {
        return;
    };
    const TIMEOUT_SECS: u64 = 2;
    let agent = start_agent(
        "10.232.0.0/24",
        &lb_args(&cg, "10.232.1.0/24", &["--node-name", NODE]),
    );
    let c = pod(&agent, "client");
    let names = ["b1", "b2", "b3"];
    let bs: Vec<Pod<'_>> = names.iter().map(|n| pod(&agent, n)).collect();
    let _servers: Vec<_> = bs
        .iter()
        .zip(names)
        .map(|(p, n)| serve(p, n, &[8080], &[]))
        .collect();
    let ips: Vec<Ipv4Addr> = bs.iter().map(|p| p.ip).collect();
    let sticky = Ipv4Addr::new(10, 232, 1, 10);
    let plain = Ipv4Addr::new(10, 232, 1, 11);
    let ports = [SvcPort::tcp("http", 80, 8080)];
    let affinity = format!(
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {TIMEOUT_SECS}\n"
    );
    apply(
        &agent,
        &format!(
            "{}{}{}{}",
            service_yaml(NS, "sticky", sticky, &ports, &affinity),
            slice("sticky", "sticky-1", &ips, &ports),
            service_yaml(NS, "plain", plain, &ports, ""),
            slice("plain", "plain-1", &ips, &ports),
        ),
    );
    wait_programmed(&agent, &format!("{sticky}:80/tcp"), &eps(&ips, 8080));
    wait_programmed(&agent, &format!("{plain}:80/tcp"), &eps(&ips, 8080));
    let (sticky_addr, plain_addr) = (format!("{sticky}:80"), format!("{plain}:80"));

    for client in [Client::pod_in(&c, &cg), Client::pod_out(&c)] {
        let what = client.describe();
        let first = client.tcp_until_ok(&sticky_addr, Duration::from_secs(5));
        assert!(
            first.token().is_some(),
            "{what}: {first:?}\n{}",
            dump(&agent)
        );
        // The control: without affinity 15 connections spread out.
        let r = client.tcp(&plain_addr, 15, 2000);
        check_replies(&format!("{what} plain"), &r, &names, &plain_addr);
        assert!(
            distinct(&tokens(&r)).len() > 1,
            "{what}: 15 connections to the service without affinity all hit one backend"
        );
        // 15 in a row: one backend.
        let r = client.tcp(&sticky_addr, 15, 2000);
        check_replies(&format!("{what} sticky"), &r, &names, &sticky_addr);
        let held = distinct(&tokens(&r));
        assert_eq!(
            held.len(),
            1,
            "{what}: ClientIP affinity did not hold one backend over 15 connections: {r:?}\n{}",
            dump(&agent)
        );
        let mut current = held.into_iter().next().unwrap_or_default();
        // After the timeout a new pick is made: at 1/3 per round for the same backend again,
        // 10 rounds without a move fail with probability 2e-5.
        let mut moved = false;
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(TIMEOUT_SECS * 1000 + 1500));
            let r = client.tcp(&sticky_addr, 3, 2000);
            check_replies(
                &format!("{what} sticky after the timeout"),
                &r,
                &names,
                &sticky_addr,
            );
            let now = distinct(&tokens(&r));
            assert_eq!(
                now.len(),
                1,
                "{what}: affinity did not hold after a new pick: {r:?}"
            );
            let now = now.into_iter().next().unwrap_or_default();
            if now != current {
                moved = true;
                break;
            }
            current = now;
        }
        assert!(
            moved,
            "{what}: the backend never changed in 10 rounds {TIMEOUT_SECS}+1.5 s apart: the \
             affinity did not expire after timeoutSeconds\n{}",
            dump(&agent)
        );
    }
}

#[test]
fn a_service_without_endpoints_is_refused_at_once() {
    let Some(cg) = require_lb("a_service_without_endpoints_is_refused_at_once") else {
        return;
    };
    let agent = start_agent(
        "10.233.0.0/24",
        &lb_args(&cg, "10.233.1.0/24", &["--node-name", NODE]),
    );
    let c = pod(&agent, "client");
    let empty = Ipv4Addr::new(10, 233, 1, 10);
    let drained = Ipv4Addr::new(10, 233, 1, 11);
    let ports = [
        SvcPort::tcp("http", 80, 8080),
        SvcPort::udp("dns", 53, 5353),
    ];
    apply(
        &agent,
        &format!(
            "{}{}{}",
            service_yaml(NS, "empty", empty, &ports, ""),
            service_yaml(NS, "drained", drained, &ports, ""),
            slice_yaml(NS, "drained", "drained-1", &[], &ports),
        ),
    );
    for vip in [empty, drained] {
        wait_programmed(&agent, &format!("{vip}:80/tcp"), &[]);
        wait_programmed(&agent, &format!("{vip}:53/udp"), &[]);
    }
    // A refusal is an error kind, never a timeout: the connect timeout is 5 s, so a dropped SYN
    // would show as `timeout`.
    let refused =
        |r: &Reply| matches!(r, Reply::Err(k) if k == "refused" || k.ends_with("unreachable"));
    for client in [
        Client::pod_in(&c, &cg),
        Client::pod_out(&c),
        Client::host_in(&cg),
    ] {
        let what = client.describe();
        let before = drop_count(&agent, "no-service-backend");
        for vip in [empty, drained] {
            let r = client.tcp(&format!("{vip}:80"), 2, 5000);
            eprintln!("{what}: TCP to {vip}:80 without endpoints: {r:?}");
            assert_eq!(r.len(), 2, "{what}: {r:?}");
            assert!(
                r.iter().all(refused),
                "{what}: TCP to {vip}:80 (no endpoints) was not refused: {r:?}\n{}",
                dump(&agent)
            );
            let r = client.udp_connected(&format!("{vip}:53"), 1, 5000);
            eprintln!("{what}: UDP to {vip}:53 without endpoints: {r:?}");
            assert_eq!(r.len(), 1, "{what}: {r:?}");
            assert!(
                r.iter().all(refused),
                "{what}: UDP to {vip}:53 (no endpoints) was not refused: {r:?}"
            );
        }
        // Every refusal is counted, at the socket layer as on the per-packet path.
        let after = drop_count(&agent, "no-service-backend");
        assert!(
            after >= before + 6,
            "{what}: 6 refusals, no-service-backend went {before} -> {after}"
        );
    }
}

#[test]
fn a_udp_flow_moves_when_its_backend_goes_away() {
    let Some(cg) = require_lb("a_udp_flow_moves_when_its_backend_goes_away") else {
        return;
    };
    let agent = start_agent(
        "10.234.0.0/24",
        &lb_args(&cg, "10.234.1.0/24", &["--node-name", NODE]),
    );
    let c = pod(&agent, "client");
    let b1 = pod(&agent, "b1");
    let b2 = pod(&agent, "b2");
    let _s1 = serve(&b1, "b1", &[], &[5353]);
    let _s2 = serve(&b2, "b2", &[], &[5353]);
    let vip = Ipv4Addr::new(10, 234, 1, 10);
    let ports = [SvcPort::udp("dns", 53, 5353)];
    let fe = format!("{vip}:53/udp");
    let addr = format!("{vip}:53");
    let both = slice("dns", "dns-1", &[b1.ip, b2.ip], &ports);
    apply(
        &agent,
        &format!("{}{both}", service_yaml(NS, "dns", vip, &ports, "")),
    );
    wait_programmed(&agent, &fe, &eps(&[b1.ip, b2.ip], 5353));

    // The per-packet path first (its conntrack entry is what must be flushed), then the
    // socket path.
    for client in [Client::pod_out(&c), Client::pod_in(&c, &cg)] {
        let what = client.describe();
        let mut flow = UdpFlow::start(&client, &addr, 1000);
        let mut first = Vec::new();
        for _ in 0..5 {
            first.push(flow.send());
        }
        check_replies(&format!("{what} before"), &first, &["b1", "b2"], &addr);
        let used = distinct(&tokens(&first));
        assert_eq!(
            used.len(),
            1,
            "{what}: one UDP flow used two backends: {first:?}"
        );
        let gone = used.into_iter().next().unwrap_or_default();
        let (stay_ip, stay) = if gone == "b1" {
            (b2.ip, "b2")
        } else {
            (b1.ip, "b1")
        };
        apply(&agent, &slice("dns", "dns-1", &[stay_ip], &ports));
        wait_programmed(&agent, &fe, &eps(&[stay_ip], 5353));
        // The same socket keeps sending: within 10 datagrams the answers come from the backend
        // that stayed, and then only from it.
        let mut after = Vec::new();
        let mut moved_at = None;
        for i in 0..10 {
            let r = flow.send();
            let hit = r.token() == Some(stay);
            after.push(r);
            if hit {
                moved_at = Some(i);
                break;
            }
        }
        assert!(
            moved_at.is_some(),
            "{what}: the UDP flow (local {}) still went to {gone} after it was removed: \
             {after:?}\n{}",
            flow.local,
            dump(&agent)
        );
        let mut rest = Vec::new();
        for _ in 0..5 {
            rest.push(flow.send());
        }
        check_replies(&format!("{what} after the move"), &rest, &[stay], &addr);
        eprintln!(
            "{what}: moved to {stay} after {} datagram(s)",
            moved_at.unwrap_or(0) + 1
        );
        drop(flow);
        apply(&agent, &both);
        wait_programmed(&agent, &fe, &eps(&[b1.ip, b2.ip], 5353));
    }
}

/// `ciliumctl apply --wait` returns only once every applied service is in the BPF maps: the
/// map is read once, right after it returns, with no polling.
#[test]
fn apply_wait_returns_once_services_are_in_the_bpf_maps() {
    let Some(cg) = require_lb("apply_wait_returns_once_services_are_in_the_bpf_maps") else {
        return;
    };
    let agent = start_agent(
        "10.235.0.0/24",
        &lb_args(&cg, "10.235.0.0/16", &["--node-name", NODE]),
    );
    let ports = [SvcPort::tcp("http", 80, 8080)];
    let mut yaml = String::new();
    let mut want = BTreeSet::new();
    for i in 0..300u32 {
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 235, 1, 0)) + i);
        let ips: Vec<Ipv4Addr> = (0..3)
            .map(|j| Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 31, 0, 1)) + (i * 3 + j) % 500))
            .collect();
        let name = format!("w{i}");
        yaml.push_str(&service_yaml(NS, &name, vip, &ports, ""));
        yaml.push_str(&slice(&name, &format!("{name}-1"), &ips, &ports));
        want.insert(format!("{vip}:80/tcp"));
    }
    let out = cilium_e2e::model::ctl_stdin(
        &agent,
        &["apply", "--wait", "--timeout", "60", "-f", "-"],
        &yaml,
    );
    assert!(
        out.status.success(),
        "apply --wait failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let programmed: BTreeSet<String> = bpf_frontends(&agent)
        .expect("bpf lb list")
        .into_iter()
        .filter(|(_, slots)| slots.len() == 3)
        .map(|(fe, _)| fe)
        .collect();
    let missing: Vec<&String> = want.difference(&programmed).collect();
    assert!(
        missing.is_empty(),
        "apply --wait returned before {} of 300 frontends were in the BPF map with their 3 backends (first: {:?})\n{}",
        missing.len(),
        missing.first(),
        dump(&agent)
    );

    // --timeout without --wait is refused by the CLI itself.
    let out = agent.ctl(&["apply", "--timeout", "5", "-f", "/dev/null"]);
    assert!(
        !out.status.success(),
        "--timeout without --wait was accepted"
    );
}
