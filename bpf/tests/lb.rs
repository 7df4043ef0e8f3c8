//! Privileged test of service load balancing: per-packet DNAT at from-container (TCP,
//! UDP, hairpin-free), refusal of a frontend without backends (TCP RST / ICMP
//! unreachable), Maglev table lookup, socket-level translation for a process in the test's
//! own cgroup (connect4/getpeername4, sendmsg4/recvmsg4) and NodePort from an "outside"
//! namespace through a device carrying `cil_from_netdev`.
//!
//! Needs root, BTF, bpffs, a cgroup v2 mount, `ip` and `python3`; prints `SKIPPED: <why>`
//! otherwise (panics when CI=true). Namespaces, the cgroup and pins are removed by guards.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed step must fail the test"
)]

use std::fs::File;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use cilium_bpf::types::{LB_ALG_MAGLEV, SVC_F_EXTERNAL, SVC_F_NO_BACKENDS};
use cilium_bpf::{
    Datapath, DatapathConfig, IpcacheValue, Lb4Backend, Lb4Key, Lb4RevNat, Lb4RevNatKey, Lb4Service,
};
use common::*;

const IP_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 20);
const IP_C: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 30);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP_EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const VIP_MAGLEV: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
const NODE_EXT: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const PORT: u16 = 8080;

/// Removes the test cgroup on drop (after moving nothing: the child exited).
struct CgroupGuard(PathBuf);
impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn cgroup2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| {
            nix::sys::statfs::statfs(p.as_path())
                .is_ok_and(|s| s.filesystem_type().0 as u32 as i64 == 0x6367_7270)
        })
}

/// A server in `ns` answering every TCP connection and UDP datagram on PORT with `name`.
fn serve(ns: &str, ip: Ipv4Addr, name: &'static str) {
    let (tx, rx) = std::sync::mpsc::channel();
    let ns_tcp = ns.to_string();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        let f = File::open(format!("/run/netns/{ns_tcp}")).unwrap();
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = TcpListener::bind((ip, PORT)).unwrap();
        tx.send(()).unwrap();
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(name.as_bytes());
        }
    });
    let ns_udp = ns.to_string();
    std::thread::spawn(move || {
        let f = File::open(format!("/run/netns/{ns_udp}")).unwrap();
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let s = UdpSocket::bind((ip, PORT)).unwrap();
        tx2.send(()).unwrap();
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(name.as_bytes(), from);
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

fn tcp_get(addr: Ipv4Addr, port: u16) -> std::io::Result<(String, SocketAddr)> {
    let mut c =
        TcpStream::connect_timeout(&SocketAddr::from((addr, port)), Duration::from_secs(3))?;
    c.set_read_timeout(Some(Duration::from_secs(3)))?;
    let peer = c.peer_addr()?;
    let mut s = String::new();
    c.read_to_string(&mut s)?;
    Ok((s, peer))
}

fn udp_get(addr: Ipv4Addr, port: u16) -> std::io::Result<(String, SocketAddr)> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.connect((addr, port))?;
    s.send(b"hi")?;
    let mut buf = [0u8; 64];
    let n = s.recv(&mut buf)?;
    Ok((
        String::from_utf8_lossy(&buf[..n]).into_owned(),
        s.peer_addr()?,
    ))
}

#[expect(clippy::too_many_arguments, reason = "test helper")]
fn add_service(
    dp: &Datapath,
    vip: Ipv4Addr,
    port: u16,
    proto: u8,
    id: u16,
    backends: &[(u32, Ipv4Addr)],
    flags: u8,
    algorithm: u8,
    maglev_size: u32,
) {
    let lb = &dp.maps().lb;
    for (bid, ip) in backends {
        lb.backends
            .insert(bid, &Lb4Backend::new(*ip, PORT, proto, 0))
            .unwrap();
    }
    for (i, (bid, _)) in backends.iter().enumerate() {
        lb.services
            .insert(
                &Lb4Key::new(vip, port, proto, u16::try_from(i + 1).unwrap()),
                &Lb4Service {
                    backend_id: *bid,
                    rev_nat_id: id,
                    ..Default::default()
                },
            )
            .unwrap();
    }
    lb.revnat
        .insert(
            &Lb4RevNatKey {
                rev_nat_id: id,
                pad: 0,
            },
            &Lb4RevNat::new(vip, port),
        )
        .unwrap();
    lb.services
        .insert(
            &Lb4Key::new(vip, port, proto, 0),
            &Lb4Service {
                backend_id: maglev_size,
                count: u16::try_from(backends.len()).unwrap(),
                rev_nat_id: id,
                flags: if backends.is_empty() {
                    flags | SVC_F_NO_BACKENDS
                } else {
                    flags
                },
                algorithm,
                ..Default::default()
            },
        )
        .unwrap();
}

#[test]
fn services_are_load_balanced() {
    if let Some(why) = missing_privilege() {
        skip(&why);
        return;
    }
    if !has_cmd("python3") {
        skip("`python3` not installed");
        return;
    }
    let Some(cg_root) = cgroup2_root() else {
        skip("no cgroup v2 mount");
        return;
    };
    let id = std::process::id();
    let (node, pa, pb, pc, px) = (
        format!("lbn{id}"),
        format!("lba{id}"),
        format!("lbb{id}"),
        format!("lbc{id}"),
        format!("lbx{id}"),
    );
    let _netns = NetnsGuard(vec![
        node.clone(),
        pa.clone(),
        pb.clone(),
        pc.clone(),
        px.clone(),
    ]);
    for ns in [&node, &pa, &pb, &pc, &px] {
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
    let a = make_pod(&node, &pa, &format!("lxa{id}"), IP_A, 11, 1011);
    let b = make_pod(&node, &pb, &format!("lxb{id}"), IP_B, 12, 1012);
    let c = make_pod(&node, &pc, &format!("lxc{id}"), IP_C, 13, 1013);
    // The outside client: a namespace behind a veth that is a NodePort device.
    let dev = format!("lbd{id}");
    sh(&[
        "ip", "-n", &node, "link", "add", &dev, "type", "veth", "peer", "name", "eth0", "netns",
        &px,
    ]);
    sh(&[
        "ip",
        "-n",
        &node,
        "addr",
        "add",
        &format!("{NODE_EXT}/24"),
        "dev",
        &dev,
    ]);
    sh(&["ip", "-n", &node, "link", "set", &dev, "up"]);
    sh(&["ip", "-n", &px, "link", "set", "lo", "up"]);
    sh(&[
        "ip",
        "-n",
        &px,
        "addr",
        "add",
        &format!("{OUTSIDE}/24"),
        "dev",
        "eth0",
    ]);
    sh(&["ip", "-n", &px, "link", "set", "eth0", "up"]);
    let dev_ifindex: u32 = sh(&[
        "ip",
        "netns",
        "exec",
        &node,
        "cat",
        &format!("/sys/class/net/{dev}/ifindex"),
    ])
    .parse()
    .unwrap();

    let root = PathBuf::from(format!("/sys/fs/bpf/cilium-lbtest-{id}"));
    let _pins = PinGuard(root.clone());
    let dp = Datapath::load(&DatapathConfig {
        bpf_root: root.clone(),
        ..Default::default()
    })
    .expect("loading the datapath");
    let maps = dp.maps();
    for (ip, p) in [(IP_A, &a), (IP_B, &b), (IP_C, &c)] {
        maps.endpoints.upsert(ip, &p.info).unwrap();
        maps.ipcache
            .upsert(
                ip,
                32,
                &IpcacheValue {
                    sec_identity: p.info.sec_identity,
                    ..Default::default()
                },
            )
            .unwrap();
    }
    in_netns(&node, || {
        for (p, n) in [(&a, "a"), (&b, "b"), (&c, "c")] {
            dp.attach_endpoint(p.info.ifindex, n).unwrap();
        }
        dp.attach_netdev(dev_ifindex, &dev).unwrap();
    });
    serve(&pb, IP_B, "B");
    serve(&pc, IP_C, "C");

    // ClusterIP with one backend (B), TCP and UDP; an empty service; a Maglev service.
    add_service(&dp, VIP, 80, 6, 1, &[(101, IP_B)], 0, 0, 0);
    add_service(&dp, VIP, 80, 17, 2, &[(102, IP_B)], 0, 0, 0);
    add_service(&dp, VIP_EMPTY, 80, 6, 3, &[], 0, 0, 0);
    add_service(&dp, VIP_EMPTY, 80, 17, 4, &[], 0, 0, 0);
    let m = 251u32;
    add_service(
        &dp,
        VIP_MAGLEV,
        80,
        6,
        5,
        &[(103, IP_B), (104, IP_C)],
        0,
        LB_ALG_MAGLEV,
        m,
    );
    // A table that sends every flow to C: the datapath must follow the table, not a slot.
    maps.lb.set_maglev(5, &vec![104u32; m as usize]).unwrap();
    assert_eq!(maps.lb.maglev_table(5).unwrap().unwrap().len(), m as usize);
    add_service(
        &dp,
        NODE_EXT,
        30080,
        6,
        6,
        &[(105, IP_B)],
        SVC_F_EXTERNAL,
        0,
        0,
    );

    // 1. Per-packet DNAT from pod A (not in any LB cgroup): TCP and UDP, reply from the VIP.
    let (tcp, udp) = in_netns(&pa, || {
        (tcp_get(VIP, 80).unwrap(), udp_get(VIP, 80).unwrap())
    });
    assert_eq!(tcp.0, "B");
    assert_eq!(tcp.1, SocketAddr::from((VIP, 80)));
    assert_eq!(udp.0, "B", "UDP reply reverse-NATed to the VIP");
    let ct = maps.conntrack.dump().unwrap();
    assert!(
        ct.iter().any(
            |r| r.entry.flags & cilium_bpf::types::CT_F_SERVICE != 0 && r.entry.rev_nat_id == 1
        ),
        "service flow marked in conntrack"
    );

    // 2. No backends: refused at once, TCP RST and ICMP port unreachable.
    let (t_err, u_err, took) = in_netns(&pa, || {
        let start = Instant::now();
        let t = tcp_get(VIP_EMPTY, 80).unwrap_err();
        let u = udp_get(VIP_EMPTY, 80).unwrap_err();
        (t, u, start.elapsed())
    });
    assert_eq!(t_err.kind(), ErrorKind::ConnectionRefused, "{t_err}");
    assert_eq!(u_err.kind(), ErrorKind::ConnectionRefused, "{u_err}");
    assert!(
        took < Duration::from_secs(3),
        "refusal must not wait for a timeout"
    );
    assert!(
        maps.metrics.packets(158, 2).unwrap() >= 2,
        "no-service-backend counted"
    );

    // 3. Maglev: every flow follows the table.
    for _ in 0..5 {
        assert_eq!(in_netns(&pa, || tcp_get(VIP_MAGLEV, 80).unwrap()).0, "C");
    }

    // 4. NodePort from the outside namespace.
    let (np, _) = in_netns(&px, || tcp_get(NODE_EXT, 30080).unwrap());
    assert_eq!(np, "B");

    // 5. Socket LB: a process in the node namespace inside the test's cgroup. The host
    //    stack does no per-packet translation, so only connect4/sendmsg4 can make this work.
    let cg = cg_root.join(format!("cilium-lbtest-{id}"));
    std::fs::create_dir_all(&cg).unwrap();
    let _cg = CgroupGuard(cg.clone());
    let att = dp.attach_cgroup(&cg).unwrap();
    assert_eq!(att.created.len(), cilium_bpf::SOCK_HOOKS.len());
    let script = format!(
        "import socket,sys\n\
         t=socket.create_connection(('{VIP}',80),timeout=3)\n\
         print('tcp', t.recv(16).decode(), t.getpeername()[0])\n\
         u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.settimeout(3)\n\
         u.sendto(b'x',('{VIP}',80)); d,a=u.recvfrom(64)\n\
         print('udp', d.decode(), a[0])\n\
         try:\n  socket.create_connection(('{VIP_EMPTY}',80),timeout=3); print('empty connected')\n\
         except ConnectionRefusedError: print('empty refused')\n"
    );
    // Join the cgroup first (`ip netns exec` remounts /sys), then enter the namespace.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec ip netns exec {node} python3 -c \"$0\"",
            cg.display()
        ))
        .arg(&script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("tcp B {VIP}")), "{stdout}");
    assert!(stdout.contains(&format!("udp B {VIP}")), "{stdout}");
    assert!(stdout.contains("empty refused"), "{stdout}");
    // The process is gone: the connected TCP socket's reverse entry went with it
    // (sock_release); the unconnected UDP socket's stays to the LRU.
    let sk = dp.maps().lb.sk.entries().unwrap();
    assert_eq!(
        sk.len(),
        1,
        "reverse socket entries left after the sockets closed: {sk:?}"
    );
    // The same program outside the cgroup is not translated (the host stack has no route
    // semantics for the VIP): proves the cgroup scoping.
    // Re-attach (restart) updates the pinned links in place.
    let again = dp.attach_cgroup(&cg).unwrap();
    assert_eq!(again.updated.len(), cilium_bpf::SOCK_HOOKS.len());
    dp.detach_cgroup().unwrap();
    assert!(dp.cgroup_links().is_empty());
    in_netns(&node, || dp.detach_netdev(dev_ifindex).unwrap());
}
