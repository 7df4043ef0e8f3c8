//! Privileged end-to-end test of the pod datapath: two pods (network namespaces) on a
//! "node" namespace, each behind a veth whose host side carries the programs.
//!
//! Needs root, kernel BTF and bpffs; prints `SKIPPED: <why>` otherwise (panics when
//! CI=true). Everything it creates is named with the test's pid and removed by RAII
//! guards, also on failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed step must fail the test"
)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

mod common;

use cilium_bpf::types::{CT_F_CLOSING, CT_F_ESTABLISHED};
use cilium_bpf::{
    Datapath, DatapathConfig, DropReason, Error, Event, EventKind, EventReader, IpcacheValue,
    PolicyKey, PolicyValue, TracePoint,
};
use common::*;

const IP_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 20);
const SPOOF: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 99);
const EP_A: u16 = 101;
const EP_B: u16 = 102;
const ID_A: u32 = 1001;
const ID_B: u32 = 1002;

/// TCP echo from pod `client` to `server_ip:port` in pod `server`; returns the reply line.
fn tcp_roundtrip(server: &str, client: &str, server_ip: Ipv4Addr, port: u16) -> String {
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        let srv = s.spawn(|| {
            in_netns(server, || {
                let l = TcpListener::bind((server_ip, port)).unwrap();
                tx.send(()).unwrap();
                let (mut conn, _) = l.accept().unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut line = String::new();
                BufReader::new(conn.try_clone().unwrap())
                    .read_line(&mut line)
                    .unwrap();
                conn.write_all(format!("pong {line}").as_bytes()).unwrap();
            })
        });
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let reply = in_netns(client, || {
            let addr = SocketAddr::from((server_ip, port));
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.write_all(b"hello\n").unwrap();
            let mut line = String::new();
            BufReader::new(c).read_line(&mut line).unwrap();
            line
        });
        srv.join().unwrap();
        reply
    })
}

#[test]
fn load_rejects_a_root_outside_bpffs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DatapathConfig {
        bpf_root: dir.path().join("root"),
        ..Default::default()
    };
    match Datapath::load(&cfg) {
        Err(Error::BpffsNotMounted { path }) => assert_eq!(path, cfg.bpf_root),
        other => panic!("expected BpffsNotMounted, got {other:?}"),
    }
}

#[test]
fn pods_talk_through_the_datapath() {
    if let Some(why) = missing_privilege() {
        skip(&why);
        return;
    }
    let id = std::process::id();
    let (node, pa, pb) = (format!("cbn{id}"), format!("cba{id}"), format!("cbb{id}"));
    let _netns = NetnsGuard(vec![node.clone(), pa.clone(), pb.clone()]);
    for ns in [&node, &pa, &pb] {
        sh(&["ip", "netns", "add", ns]);
    }
    sh(&["ip", "-n", &node, "link", "set", "lo", "up"]);
    sh(&[
        "ip",
        "-n",
        &node,
        "addr",
        "add",
        &format!("{GW}/32"),
        "dev",
        "lo",
    ]);
    let a = make_pod(&node, &pa, &format!("lxca{id}"), IP_A, EP_A, ID_A);
    let b = make_pod(&node, &pb, &format!("lxcb{id}"), IP_B, EP_B, ID_B);

    let root = PathBuf::from(format!("/sys/fs/bpf/cilium-test-{id}"));
    let _pins = PinGuard(root.clone());
    let cfg = DatapathConfig {
        bpf_root: root.clone(),
        ..Default::default()
    };
    let dp = Datapath::load(&cfg).expect("loading the datapath");
    let maps = dp.maps();
    for p in [&a, &b] {
        maps.endpoints.upsert(p.ip, &p.info).unwrap();
        maps.ipcache
            .upsert(
                p.ip,
                32,
                &IpcacheValue {
                    sec_identity: p.info.sec_identity,
                    ..Default::default()
                },
            )
            .unwrap();
    }
    maps.ipcache
        .upsert(
            GW,
            32,
            &IpcacheValue {
                sec_identity: 1,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(maps.endpoints.dump().unwrap().len(), 2);

    let reader = dp.event_reader().unwrap();
    in_netns(&node, || {
        for p in [&a, &b] {
            let att = dp.attach_endpoint(p.ifindex, &p.lxc).unwrap();
            assert!(!att.replaced_existing);
        }
    });
    assert_eq!(
        dp.pinned_links().unwrap().len(),
        4,
        "two links per endpoint pinned"
    );

    // Pod to pod, both ways (ARP for the gateway is answered by the datapath).
    assert!(ping(&pa, IP_B, None), "pod A cannot ping pod B");
    assert!(ping(&pb, IP_A, None), "pod B cannot ping pod A");
    // TCP through bpf_redirect_peer.
    assert_eq!(tcp_roundtrip(&pb, &pa, IP_B, 8080), "pong hello\n");
    // Pod to host and host to pod (cil_to_container).
    assert!(ping(&pa, GW, None), "pod A cannot reach the host");
    assert!(ping(&node, IP_B, None), "host cannot reach pod B");

    let fwd_egress = maps.metrics.packets(0, 2).unwrap();
    let fwd_ingress = maps.metrics.packets(0, 1).unwrap();
    assert!(fwd_egress >= 8, "forwarded egress packets: {fwd_egress}");
    assert!(fwd_ingress >= 8, "forwarded ingress packets: {fwd_ingress}");

    // Conntrack saw the TCP connection in both directions and its state.
    let ct = maps.conntrack.dump().unwrap();
    let tcp = ct
        .iter()
        .find(|r| {
            r.key.proto == 6
                && r.key.src() == IP_A
                && r.key.dst() == IP_B
                && r.key.dst_port() == 8080
        })
        .unwrap_or_else(|| panic!("no CT entry for A->B:8080 in {ct:?}"));
    assert!(
        tcp.entry.tx_packets >= 3 && tcp.entry.rx_packets >= 2,
        "{tcp:?}"
    );
    assert_eq!(tcp.entry.src_sec_identity, ID_A);
    assert!(tcp.entry.flags & CT_F_ESTABLISHED != 0, "{tcp:?}");
    // FIN both ways was seen (the server closed after replying, the client on drop).
    assert!(tcp.entry.flags & CT_F_CLOSING != 0, "{tcp:?}");
    assert!(
        ct.iter()
            .any(|r| r.key.proto == 1 && r.key.src() == IP_A && r.key.dst() == IP_B)
    );

    // Spoofed source: dropped at A's veth with the right reason.
    sh(&[
        "ip",
        "-n",
        &pa,
        "addr",
        "add",
        &format!("{SPOOF}/32"),
        "dev",
        "eth0",
    ]);
    assert!(!ping(&pa, IP_B, Some(SPOOF)), "spoofed ping got through");
    let spoof_drops = maps
        .metrics
        .packets(DropReason::InvalidSip.code(), 2)
        .unwrap();
    assert!(spoof_drops >= 2, "invalid-source-ip drops: {spoof_drops}");

    // Events: traces for pod-to-pod and host-to-pod, a policy verdict, the spoof drop.
    let mut events: Vec<Event> = Vec::new();
    for _ in 0..5 {
        events.extend(reader.poll(Duration::from_millis(200)).unwrap());
    }
    let has = |pred: &dyn Fn(&Event) -> bool| events.iter().any(pred);
    assert!(
        has(&|e| e.kind == EventKind::Trace(TracePoint::ToEndpoint)
            && e.endpoint == EP_A
            && e.dst_endpoint == EP_B
            && e.dst_ifindex == b.ifindex),
        "no pod-to-pod trace in {events:#?}"
    );
    assert!(
        has(&|e| e.kind == EventKind::Trace(TracePoint::ToStack) && e.dst == GW),
        "no to-stack trace"
    );
    assert!(
        has(&|e| e.kind == EventKind::Trace(TracePoint::ToEndpoint)
            && e.src_identity == 1
            && e.endpoint == EP_B),
        "no host-to-pod trace"
    );
    assert!(
        !has(&|e| e.kind == EventKind::PolicyVerdict),
        "policy verdicts are only reported for enforced directions"
    );
    assert!(
        has(&|e| e.drop_reason() == Some(DropReason::InvalidSip) && e.src == SPOOF),
        "no invalid-source-ip drop event"
    );

    check_policy(&dp, &reader, &node, &pa, &pb);

    // Restart: a new load reuses the pinned maps and updates the pinned links in place.
    drop(reader);
    drop(dp);
    let dp = Datapath::load(&cfg).expect("reloading the datapath");
    assert_eq!(
        dp.maps().endpoints.get(IP_A).unwrap(),
        Some(a.info),
        "endpoint survived restart"
    );
    assert!(
        dp.maps().metrics.packets(0, 2).unwrap() >= fwd_egress,
        "metrics survived restart"
    );
    assert!(
        ping(&pa, IP_B, None),
        "traffic must flow before re-attach (old programs)"
    );
    in_netns(&node, || {
        for p in [&a, &b] {
            assert!(
                dp.attach_endpoint(p.ifindex, &p.lxc)
                    .unwrap()
                    .replaced_existing
            );
        }
    });
    assert!(
        ping(&pa, IP_B, None),
        "pod A cannot ping pod B after restart"
    );

    // Detach: pins gone, pod-to-pod stops (the node does not forward by itself).
    in_netns(&node, || {
        for p in [&a, &b] {
            dp.detach_endpoint(p.ifindex, &p.lxc).unwrap();
            dp.detach_endpoint(p.ifindex, &p.lxc).unwrap(); // idempotent
        }
    });
    assert!(dp.pinned_links().unwrap().is_empty());
    // A new namespace may inherit forwarding from the host (another agent on this machine
    // turns it on); switch it off so only the BPF redirect could carry pod-to-pod traffic.
    sh(&[
        "ip",
        "netns",
        "exec",
        &node,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=0",
    ]);
    assert!(
        !ping(&pa, IP_B, None),
        "traffic still redirected after detach"
    );
}

const INGRESS: u8 = 1;
const EGRESS: u8 = 2;
const ICMP: u8 = 1;
const TCP: u8 = 6;
const ICMP_ECHO: u16 = 8;

fn allow(cookie: u32) -> PolicyValue {
    PolicyValue {
        cookie,
        ..Default::default()
    }
}

fn deny(cookie: u32) -> PolicyValue {
    PolicyValue {
        cookie,
        deny: 1,
        ..Default::default()
    }
}

/// TCP connect from pod `client` to `ip:port` (no server): true when the SYN reached the
/// pod (refused), false when it was dropped (timeout).
fn syn_reaches(client: &str, ip: Ipv4Addr, port: u16) -> bool {
    in_netns(client, || {
        let addr = SocketAddr::from((ip, port));
        match TcpStream::connect_timeout(&addr, Duration::from_millis(1500)) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        }
    })
}

fn drain(reader: &EventReader) -> Vec<Event> {
    let mut events = Vec::new();
    for _ in 0..3 {
        events.extend(reader.poll(Duration::from_millis(100)).unwrap());
    }
    events
}

/// Policy enforcement: default deny, allow by identity, replies, deny beats allow, port
/// ranges, egress, host identity, verdict/drop events with cookies, per-cookie counters.
fn check_policy(dp: &Datapath, reader: &EventReader, node: &str, pa: &str, pb: &str) {
    let pm = &dp.maps().policy;
    let metrics = &dp.maps().metrics;
    let _ = drain(reader);
    let denied = DropReason::PolicyDenied.code();
    let deny_code = DropReason::PolicyDeny.code();

    // Default-deny ingress on B: A's ping is dropped and counted as policy-denied.
    pm.set_enforcement(EP_B, true, false, 1).unwrap();
    let before = metrics.packets(denied, INGRESS).unwrap();
    assert!(
        !ping(pa, IP_B, None),
        "default-deny ingress let a ping through"
    );
    assert!(metrics.packets(denied, INGRESS).unwrap() >= before + 2);
    let ev = drain(reader);
    assert!(
        ev.iter()
            .any(|e| e.drop_reason() == Some(DropReason::PolicyDenied)
                && e.endpoint == EP_B
                && e.src_identity == ID_A
                && e.cookie == 0),
        "no policy-denied drop event in {ev:#?}"
    );
    assert!(
        ev.iter().any(|e| e.kind == EventKind::PolicyVerdict
            && e.verdict == -i32::from(denied)
            && e.dir == INGRESS
            && e.endpoint == EP_B),
        "no denied verdict in {ev:#?}"
    );
    // No conntrack entry is left behind by the dropped first packets (a left-over entry
    // would let B's "replies" in).
    let ct = dp.maps().conntrack.dump().unwrap();
    assert!(
        !ct.iter().any(|r| r.key.proto == ICMP
            && r.key.src() == IP_A
            && r.key.dst() == IP_B
            && r.entry.rx_packets == 0),
        "dropped pings left conntrack entries: {ct:?}"
    );

    // Allow ICMP echo (type 8 in the port field) from A's identity.
    let echo_from_a = PolicyKey::new(EP_B, INGRESS, ID_A, ICMP, ICMP_ECHO, 16);
    pm.entries.insert(&echo_from_a, &allow(501)).unwrap();
    assert!(ping(pa, IP_B, None), "allowed ping dropped");
    let st = pm.stat(501).unwrap();
    assert!(
        st.packets >= 2 && st.bytes > 0,
        "cookie 501 counters: {st:?}"
    );
    let ev = drain(reader);
    assert!(
        ev.iter().any(|e| e.kind == EventKind::PolicyVerdict
            && e.verdict == 0
            && e.cookie == 501
            && e.endpoint == EP_B
            && e.src_identity == ID_A
            && e.dst_identity == ID_B
            && e.proto == ICMP),
        "no allowed verdict with cookie 501 in {ev:#?}"
    );
    // B's own ping to A is a new flow, not a reply: its echo type is allowed but only
    // from A's identity towards B, so B -> A is unaffected (A enforces nothing) ...
    assert!(ping(pb, IP_A, None));
    // ... and replies pass under default-deny ingress: A enforces ingress with no entry.
    pm.set_enforcement(EP_A, true, false, 2).unwrap();
    assert!(
        ping(pa, IP_B, None),
        "echo replies to A must ride on conntrack"
    );
    assert!(
        !ping(pb, IP_A, None),
        "A's default-deny ingress let B's ping in"
    );
    pm.remove_enforcement(EP_A).unwrap();

    // The host (identity 1, the gateway is an ipcache row with identity 1) is a peer too.
    assert!(!ping(node, IP_B, None), "host ping passed default-deny");
    let host_echo = PolicyKey::new(EP_B, INGRESS, 1, ICMP, ICMP_ECHO, 16);
    pm.entries.insert(&host_echo, &allow(504)).unwrap();
    assert!(
        ping(node, IP_B, None),
        "host ping dropped although identity 1 is allowed"
    );
    assert!(pm.stat(504).unwrap().packets >= 2);

    // An explicit deny (any peer, any protocol) beats the more specific allow.
    let deny_all = PolicyKey::new(EP_B, INGRESS, 0, 0, 0, 0);
    pm.entries.insert(&deny_all, &deny(502)).unwrap();
    let before = metrics.packets(deny_code, INGRESS).unwrap();
    assert!(!ping(pa, IP_B, None), "deny did not beat allow");
    assert!(metrics.packets(deny_code, INGRESS).unwrap() >= before + 2);
    let ev = drain(reader);
    assert!(
        ev.iter()
            .any(|e| e.drop_reason() == Some(DropReason::PolicyDeny)
                && e.cookie == 502
                && e.endpoint == EP_B),
        "no policy-deny drop with cookie 502 in {ev:#?}"
    );
    assert!(pm.stat(502).unwrap().packets >= 2);
    pm.entries.delete(&deny_all).unwrap();
    assert!(ping(pa, IP_B, None));

    // A port range 8080-8083 (prefix 14) for TCP from A.
    let range = PolicyKey::new(EP_B, INGRESS, ID_A, TCP, 8080, 14);
    assert_eq!((range.port(), range.port_end()), (8080, 8083));
    assert!(
        !syn_reaches(pa, IP_B, 8082),
        "TCP passed before the range was allowed"
    );
    pm.entries.insert(&range, &allow(503)).unwrap();
    assert!(
        syn_reaches(pa, IP_B, 8082),
        "port 8082 inside the range dropped"
    );
    assert!(syn_reaches(pa, IP_B, 8080));
    assert!(
        !syn_reaches(pa, IP_B, 8084),
        "port 8084 outside the range passed"
    );
    assert_eq!(tcp_roundtrip(pb, pa, IP_B, 8083), "pong hello\n");

    // Egress enforcement at A: default deny stops A -> host, an allow for identity 1
    // (the gateway) lets it through; A -> B (identity ID_B) stays denied.
    pm.set_enforcement(EP_A, false, true, 3).unwrap();
    let before = metrics.packets(denied, EGRESS).unwrap();
    assert!(
        !ping(pa, GW, None),
        "egress default deny let A reach the host"
    );
    assert!(metrics.packets(denied, EGRESS).unwrap() >= before + 2);
    let to_host = PolicyKey::new(EP_A, EGRESS, 1, ICMP, ICMP_ECHO, 16);
    pm.entries.insert(&to_host, &allow(505)).unwrap();
    assert!(ping(pa, GW, None), "egress allow to the host did not apply");
    assert!(!ping(pa, IP_B, None), "egress default deny let A reach B");
    let ev = drain(reader);
    assert!(
        ev.iter().any(|e| e.kind == EventKind::PolicyVerdict
            && e.dir == EGRESS
            && e.endpoint == EP_A
            && e.dst_identity == 1
            && e.cookie == 505),
        "no egress verdict with cookie 505 in {ev:#?}"
    );

    // Listing and clean-up: back to allow-all for the rest of the test.
    let b_entries = pm.endpoint_entries(EP_B).unwrap();
    assert_eq!(b_entries.len(), 3, "{b_entries:?}");
    assert_eq!(pm.enforcements().unwrap().len(), 2);
    for (k, _) in pm.dump().unwrap() {
        pm.entries.delete(&k).unwrap();
    }
    pm.remove_enforcement(EP_A).unwrap();
    pm.remove_enforcement(EP_B).unwrap();
    assert!(pm.stats().unwrap().iter().any(|r| r.cookie == 503));
    assert!(ping(pa, IP_B, None));
}

#[test]
fn a_pin_with_an_old_layout_is_recreated() {
    use libbpf_rs::{MapCore as _, MapHandle, MapType};
    if let Some(why) = missing_privilege() {
        skip(&why);
        return;
    }
    let root = PathBuf::from(format!(
        "/sys/fs/bpf/cilium-test-layout-{}",
        std::process::id()
    ));
    let _pins = PinGuard(root.clone());
    std::fs::create_dir_all(&root).unwrap();
    let pin = root.join("cilium_lb4_services_v1");
    // The services map as an older agent pinned it: same key and value, fewer entries.
    let opts = libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as libbpf_sys::size_t,
        map_flags: libbpf_sys::BPF_F_NO_PREALLOC,
        ..Default::default()
    };
    let mut old = MapHandle::create(MapType::Hash, Some("old_svc"), 12, 16, 1024, &opts).unwrap();
    old.pin(&pin).unwrap();
    drop(old);

    let cfg = DatapathConfig {
        bpf_root: root.clone(),
        ..Default::default()
    };
    let dp = Datapath::load(&cfg).expect("loading over a pin with another layout");
    let now = MapHandle::from_pinned_path(&pin).unwrap();
    assert!(
        now.max_entries() > 1024,
        "the pin was reused instead of re-created: {} entries",
        now.max_entries()
    );
    drop(dp);
}
