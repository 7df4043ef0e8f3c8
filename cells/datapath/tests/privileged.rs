//! Privileged test of the datapath cell's pieces against a real loaded datapath: a pod
//! namespace on a veth, events streamed through `GET /v1/monitor`, counters in
//! `GET /v1/metrics`, map dumps, and conntrack GC deleting expired entries.
//!
//! Needs root, kernel BTF and bpffs; prints `SKIPPED: <why>` otherwise (panics when
//! CI=true). Everything is named with the pid and removed by RAII guards.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic on setup failures"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cilium_api::Client;
use cilium_api::models::{MonitorEvent, MonitorEventType};
use cilium_bpf::EndpointInfo;
use cilium_datapath::{ConntrackGc, DatapathApi, DatapathFlags, Monitor};

fn skip(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("privileged datapath cell test cannot run under CI=true: {why}");
    }
    println!("SKIPPED: {why}");
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?} failed");
}

fn out(args: &[&str]) -> String {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct NetnsGuard(Vec<String>);
impl Drop for NetnsGuard {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

struct DirGuard(PathBuf);
impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// (ifindex, mac) of `dev` in namespace `ns`.
fn link(ns: &str, dev: &str) -> (u32, [u8; 6]) {
    let j: serde_json::Value =
        serde_json::from_str(&out(&["ip", "-n", ns, "-j", "link", "show", "dev", dev])).unwrap();
    let ifindex = j[0]["ifindex"].as_u64().unwrap() as u32;
    let mut mac = [0u8; 6];
    for (i, b) in j[0]["address"].as_str().unwrap().split(':').enumerate() {
        mac[i] = u8::from_str_radix(b, 16).unwrap();
    }
    (ifindex, mac)
}

/// Runs `f` on a fresh thread inside network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

async fn next_event(
    lines: &mut cilium_api::client::LineStream,
    want: impl Fn(&MonitorEvent) -> bool,
) -> MonitorEvent {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("no matching monitor event within 20 s")
            .unwrap()
            .expect("stream ended");
        let ev: MonitorEvent = serde_json::from_str(&line).unwrap();
        if want(&ev) {
            return ev;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_metrics_dumps_and_gc_on_a_real_datapath() {
    if !nix::unistd::Uid::effective().is_root() {
        return skip("needs root");
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return skip("needs kernel BTF");
    }
    let pid = std::process::id();
    let root = PathBuf::from(format!("/sys/fs/bpf/cilium-test-datapath-{pid}"));
    let tmp = PathBuf::from(format!("/tmp/cilium-test-datapath-{pid}"));
    std::fs::create_dir_all(&tmp).unwrap();
    let _tmp_guard = DirGuard(tmp.clone());
    let _root_guard = DirGuard(root.clone());
    let (node, pod) = (format!("cdn{pid}"), format!("cdp{pid}"));
    let lxc = format!("lxcd{pid}");
    let _ns_guard = NetnsGuard(vec![pod.clone(), node.clone()]);

    // Datapath with a 1 s non-TCP conntrack lifetime so GC has something to delete.
    let flags = DatapathFlags {
        bpf_root: root.clone(),
        ct_timeout_any: Duration::from_secs(1),
        ..Default::default()
    };
    let dp = Arc::new(cilium_datapath::loader::load(&flags).unwrap());

    sh(&["ip", "netns", "add", &node]);
    sh(&["ip", "netns", "add", &pod]);
    sh(&[
        "ip", "-n", &node, "link", "add", &lxc, "type", "veth", "peer", "name", "eth0", "netns",
        &pod,
    ]);
    for (ns, cmds) in [
        (
            &node,
            vec![
                "link set lo up".to_string(),
                format!("link set {lxc} up"),
                "addr add 10.201.0.1/32 dev lo".into(),
                format!("route add 10.201.0.2/32 dev {lxc}"),
            ],
        ),
        (
            &pod,
            vec![
                "link set lo up".to_string(),
                "link set eth0 up".into(),
                "addr add 10.201.0.2/32 dev eth0".into(),
                "addr add 10.9.9.9/32 dev eth0".into(),
                "route add 10.201.0.1/32 dev eth0".into(),
            ],
        ),
    ] {
        for c in cmds {
            let mut args = vec!["ip", "-n", ns.as_str()];
            args.extend(c.split(' '));
            sh(&args);
        }
    }
    let (ifindex, node_mac) = link(&node, &lxc);
    let (_, pod_mac) = link(&pod, "eth0");
    dp.maps()
        .endpoints
        .upsert(
            "10.201.0.2".parse().unwrap(),
            &EndpointInfo {
                ifindex,
                ep_id: 12,
                flags: 0,
                mac: pod_mac,
                node_mac,
                sec_identity: 100,
            },
        )
        .unwrap();
    let d = dp.clone();
    let name = lxc.clone();
    in_netns(&node, move || d.attach_endpoint(ifindex, &name)).unwrap();

    // The API over a unix socket, as the agent serves it.
    let registry = Arc::new(prometheus::Registry::new());
    let monitor = Arc::new(Monitor::new(&registry).unwrap());
    let gc = Arc::new(
        ConntrackGc::new(
            dp.clone(),
            &registry,
            None,
            Duration::from_secs(10),
            Duration::from_secs(3600),
        )
        .unwrap(),
    );
    let pressure = Arc::new(parking_lot::Mutex::new(Vec::new()));
    registry
        .register(Box::new(
            cilium_datapath::DatapathCollector::new(dp.clone(), pressure.clone()).unwrap(),
        ))
        .unwrap();
    cilium_datapath::metrics::refresh(&dp, &pressure);
    let cancel = hive::CancellationToken::new();
    let reader = tokio::spawn(monitor.clone().run(
        dp.clone(),
        cancel.clone(),
        hive::Health::for_test("monitor"),
    ));
    let (router, _doc) = DatapathApi {
        dp: dp.clone(),
        monitor: monitor.clone(),
        gc: gc.clone(),
        registry: registry.clone(),
    }
    .router()
    .split_for_parts();
    let sock = tmp.join("api.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = Client::unix(&sock);

    let mut all = client.monitor(None).await.unwrap();
    let mut drops = client.monitor(Some("drop")).await.unwrap();
    assert_eq!(
        client
            .monitor(Some("bogus"))
            .await
            .err()
            .and_then(|e| e.status()),
        Some(400)
    );

    let p = pod.clone();
    let ping = tokio::task::spawn_blocking(move || {
        let ok = Command::new("ip")
            .args([
                "netns",
                "exec",
                &p,
                "ping",
                "-c",
                "2",
                "-W",
                "2",
                "-I",
                "10.201.0.2",
                "10.201.0.1",
            ])
            .status()
            .unwrap()
            .success();
        // Spoofed source: dropped as invalid-source-ip.
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &p,
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                "-I",
                "10.9.9.9",
                "10.201.0.1",
            ])
            .status();
        ok
    })
    .await
    .unwrap();
    assert!(ping, "pod could not ping the node through the datapath");

    let trace = next_event(&mut all, |e| {
        e.kind == MonitorEventType::Trace && e.endpoint == 12 && e.protocol == "icmp"
    })
    .await;
    assert_eq!(trace.verdict, "forwarded");
    assert!(trace.observation_point.is_some());
    assert!(
        trace.src_ip == "10.201.0.2" || trace.dst_ip == "10.201.0.2",
        "{trace:?}"
    );
    let drop = next_event(&mut drops, |_| true).await;
    assert_eq!(drop.kind, MonitorEventType::Drop);
    assert_eq!(drop.drop_reason.as_deref(), Some("invalid-source-ip"));
    assert_eq!(drop.src_ip, "10.9.9.9");

    let text = client.metrics_text().await.unwrap();
    let forwarded = text
        .lines()
        .find(|l| {
            l.starts_with("cilium_datapath_packets_total")
                && l.contains("reason=\"forwarded\"")
                && l.contains("direction=\"egress\"")
        })
        .unwrap_or_else(|| panic!("no forwarded egress counter in:\n{text}"));
    let n: f64 = forwarded.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 2.0, "{forwarded}");
    assert!(text.contains("reason=\"invalid-source-ip\""), "{text}");
    for map in ["cilium_lxc_v1", "cilium_lb4_services_v1", "cilium_snat4_v1"] {
        assert!(
            text.contains(&format!("cilium_bpf_map_fill_ratio{{map=\"{map}\"}}")),
            "no fill ratio of {map} in:\n{text}"
        );
    }

    let lxc_rows = client.bpf_lxc().await.unwrap();
    assert!(
        lxc_rows
            .iter()
            .any(|r| r.ip == "10.201.0.2" && r.endpoint_id == 12)
    );
    let ct = client.bpf_ct().await.unwrap();
    assert!(
        ct.iter()
            .any(|r| r.protocol == "icmp" && r.src_ip == "10.201.0.2" && r.dst_ip == "10.201.0.1"),
        "{ct:?}"
    );
    let metrics_rows = client.bpf_metrics().await.unwrap();
    assert!(
        metrics_rows
            .iter()
            .any(|r| r.reason == "forwarded" && r.packets >= 2)
    );

    // The ICMP entry lives 1 s; once it expired a GC pass deletes it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let res = client.bpf_ct_gc().await.unwrap();
    assert!(res.deleted >= 1, "{res:?}");
    assert!(
        client
            .bpf_ct()
            .await
            .unwrap()
            .iter()
            .all(|r| r.protocol != "icmp")
    );
    let text = client.metrics_text().await.unwrap();
    assert!(
        text.lines().any(
            |l| l.starts_with("cilium_datapath_conntrack_gc_entries_total")
                && l.contains("protocol=\"non-tcp\"")
                && !l.ends_with(" 0")
        ),
        "{text}"
    );

    cancel.cancel();
    reader.await.unwrap().unwrap();
    server.abort();
    let d = dp.clone();
    in_netns(&node, move || d.detach_endpoint(ifindex, &lxc)).unwrap();
}
