//! The ipcache reconciler against a real loaded datapath: rows reach `cilium_ipcache_v1`,
//! deletions remove entries, and entries no row wants are pruned once the table is
//! initialized. Needs root, kernel BTF and bpffs; prints `SKIPPED: <why>` otherwise
//! (panics when CI=true).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic on setup failures"
)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cilium_bpf::{Datapath, DatapathConfig, IpcacheValue};
use cilium_ipcache::{IpcacheEntry, IpcacheOps, new_table, prefix_query};
use ipnet::Ipv4Net;
use statedb::reconciler::{Config, Reconciler};
use statedb::{Db, NoopHealth};

fn skip(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("privileged ipcache test cannot run under CI=true: {why}");
    }
    println!("SKIPPED: {why}");
}

struct DirGuard(PathBuf);
impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn map_prefixes(dp: &Datapath) -> Vec<(Ipv4Addr, u8, u32)> {
    dp.maps()
        .ipcache
        .dump()
        .unwrap()
        .into_iter()
        .map(|(ip, len, v)| (ip, len, v.sec_identity))
        .collect()
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn reconciles_rows_into_the_bpf_ipcache_map() {
    if !nix::unistd::Uid::effective().is_root() {
        return skip("needs root");
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return skip("needs kernel BTF");
    }
    let root = PathBuf::from(format!(
        "/sys/fs/bpf/cilium-test-ipcache-{}",
        std::process::id()
    ));
    let _guard = DirGuard(root.clone());
    let dp = match Datapath::load(&DatapathConfig {
        bpf_root: root.clone(),
        ..Default::default()
    }) {
        Ok(dp) => Arc::new(dp),
        Err(e) => return skip(&format!("cannot load the datapath: {e}")),
    };
    // Left over from a "previous run": must be pruned once the table is initialized.
    dp.maps()
        .ipcache
        .upsert(
            Ipv4Addr::new(10, 99, 0, 0),
            16,
            &IpcacheValue {
                sec_identity: 9,
                ..Default::default()
            },
        )
        .unwrap();

    let db = Db::new();
    let table = new_table(&db).unwrap();
    let mut w = db.write_txn(&[&table]).unwrap();
    let init = table.register_initializer(&mut w, "test").unwrap();
    table
        .insert(
            &mut w,
            IpcacheEntry::new(net("10.200.0.5/32"), 100, "endpoint"),
        )
        .unwrap();
    table
        .insert(&mut w, IpcacheEntry::new(net("0.0.0.0/0"), 2, "world"))
        .unwrap();
    w.commit();

    let cancel = hive::CancellationToken::new();
    let (_h, run) = Reconciler::new(
        Config::new("ipcache"),
        db.clone(),
        table.clone(),
        Arc::new(IpcacheOps::new(dp.clone())),
        Arc::new(NoopHealth),
        cancel.clone(),
    )
    .unwrap();
    let task = tokio::spawn(run);

    eventually("rows in the map", || {
        let m = map_prefixes(&dp);
        m.contains(&(Ipv4Addr::new(10, 200, 0, 5), 32, 100))
            && m.contains(&(Ipv4Addr::UNSPECIFIED, 0, 2))
    })
    .await;
    // Longest prefix match as the datapath sees it.
    let v = dp
        .maps()
        .ipcache
        .lookup_addr(Ipv4Addr::new(10, 200, 0, 5))
        .unwrap()
        .unwrap();
    assert_eq!(v.sec_identity, 100);
    assert!(map_prefixes(&dp).contains(&(Ipv4Addr::new(10, 99, 0, 0), 16, 9)));

    let mut w = db.write_txn(&[&table]).unwrap();
    init.done(&mut w).unwrap();
    let obj = (*table.get(&w, &prefix_query(&net("10.200.0.5/32"))).unwrap()).clone();
    table.delete(&mut w, &obj).unwrap();
    w.commit();
    eventually("stale entry pruned and deleted row removed", || {
        map_prefixes(&dp) == vec![(Ipv4Addr::UNSPECIFIED, 0, 2)]
    })
    .await;

    cancel.cancel();
    task.await.unwrap();
}
