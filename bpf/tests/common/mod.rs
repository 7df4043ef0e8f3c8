//! Helpers shared by the privileged datapath tests (tests/datapath.rs, tests/lb.rs): the
//! SKIPPED/CI rule, command runners, RAII guards for namespaces and pins, running code inside a
//! namespace, and a pod (veth pair into its own namespace) in the lxc map's format.
#![allow(
    dead_code,
    reason = "each test binary includes this module and uses only part of it"
)]

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use cilium_bpf::EndpointInfo;

/// The pods' gateway (on the node namespace's loopback).
pub const GW: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);

pub fn skip(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("privileged datapath test cannot run under CI=true: {why}");
    }
    println!("SKIPPED: {why}");
}

pub fn has_cmd(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn is_bpffs(path: &str) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// Why the test cannot run here, if it cannot.
pub fn missing_privilege() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root".into());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("kernel has no BTF (/sys/kernel/btf/vmlinux)".into());
    }
    if !is_bpffs("/sys/fs/bpf") {
        let _ = Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status();
        if !is_bpffs("/sys/fs/bpf") {
            return Some("no bpffs at /sys/fs/bpf and mounting one failed".into());
        }
    }
    for cmd in ["ip", "ping"] {
        if !has_cmd(cmd) {
            return Some(format!("`{cmd}` not installed"));
        }
    }
    None
}

pub fn run(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"))
}

/// Runs a command that must succeed; returns trimmed stdout.
pub fn sh(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn ping(ns: &str, dst: Ipv4Addr, src: Option<Ipv4Addr>) -> bool {
    let dst = dst.to_string();
    let mut args = vec![
        "ip", "netns", "exec", ns, "ping", "-c", "2", "-i", "0.2", "-W", "2",
    ];
    let src_s = src.map(|s| s.to_string());
    if let Some(s) = &src_s {
        args.extend(["-I", s.as_str()]);
    }
    args.push(&dst);
    run(&args).status.success()
}

/// Deletes the namespaces (and with them every veth) on drop.
pub struct NetnsGuard(pub Vec<String>);
impl Drop for NetnsGuard {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Removes the test's bpf root (map and link pins) on drop.
pub struct PinGuard(pub PathBuf);
impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `f` on a thread inside network namespace `ns`.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|_| panic!("thread in netns {ns} panicked"))
    })
}

pub fn mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, part) in s.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(part, 16).unwrap();
    }
    m
}

pub struct Pod {
    pub lxc: String,
    pub ip: Ipv4Addr,
    pub ifindex: u32,
    pub info: EndpointInfo,
}

pub fn make_pod(node: &str, ns: &str, lxc: &str, ip: Ipv4Addr, ep_id: u16, identity: u32) -> Pod {
    let ip_s = ip.to_string();
    let gw = GW.to_string();
    sh(&[
        "ip", "-n", node, "link", "add", lxc, "type", "veth", "peer", "name", "eth0", "netns", ns,
    ]);
    sh(&["ip", "-n", node, "link", "set", lxc, "up"]);
    sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
    sh(&[
        "ip",
        "-n",
        ns,
        "addr",
        "add",
        &format!("{ip_s}/32"),
        "dev",
        "eth0",
    ]);
    sh(&[
        "ip", "-n", ns, "route", "add", &gw, "dev", "eth0", "scope", "link",
    ]);
    sh(&[
        "ip", "-n", ns, "route", "add", "default", "via", &gw, "dev", "eth0",
    ]);
    sh(&[
        "ip",
        "-n",
        node,
        "route",
        "add",
        &format!("{ip_s}/32"),
        "dev",
        lxc,
    ]);
    let ifindex: u32 = sh(&[
        "ip",
        "netns",
        "exec",
        node,
        "cat",
        &format!("/sys/class/net/{lxc}/ifindex"),
    ])
    .parse()
    .unwrap();
    let node_mac = mac(&sh(&[
        "ip",
        "netns",
        "exec",
        node,
        "cat",
        &format!("/sys/class/net/{lxc}/address"),
    ]));
    let pod_mac = mac(&sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "cat",
        "/sys/class/net/eth0/address",
    ]));
    let info = EndpointInfo {
        ifindex,
        ep_id,
        flags: 0,
        mac: pod_mac,
        node_mac,
        sec_identity: identity,
    };
    Pod {
        lxc: lxc.to_string(),
        ip,
        ifindex,
        info,
    }
}
