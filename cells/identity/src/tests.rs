//! Unit tests of the allocator: refcounts, sharing, CIDR identities, persistence, concurrency.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on unexpected failures"
)]

use std::sync::Arc;

use cilium_ipcache::{IpcacheEntry, prefix_query};
use cilium_node::StateFile;
use ipnet::Ipv4Net;
use statedb::{Db, Table};

use crate::*;

struct Fixture {
    db: Arc<Db>,
    table: Arc<Table<IdentityObj>>,
    ipcache: Arc<Table<IpcacheEntry>>,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self::in_dir(tempfile::tempdir().unwrap())
    }

    fn in_dir(dir: tempfile::TempDir) -> Self {
        let db = Arc::new(Db::new());
        let table = Arc::new(new_table(&db).unwrap());
        let ipcache = Arc::new(cilium_ipcache::new_table(&db).unwrap());
        Self {
            db,
            table,
            ipcache,
            dir,
        }
    }

    fn alloc(&self) -> IdentityAllocator {
        IdentityAllocator::new(
            self.db.clone(),
            self.table.clone(),
            self.ipcache.clone(),
            StateFile::new(self.dir.path().join(STATE_FILE)),
            None,
        )
        .unwrap()
    }

    fn ipcache_row(&self, prefix: Ipv4Net) -> Option<IpcacheEntry> {
        let txn = self.db.read_txn();
        self.ipcache
            .get(&txn, &prefix_query(&prefix))
            .map(|r| (*r).clone())
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn reserved_identities_are_always_present() {
    let f = Fixture::new();
    let a = f.alloc();
    for (id, name) in RESERVED {
        let o = a.get(id).unwrap();
        assert_eq!(o.kind, IdentityKind::Reserved);
        assert!(o.labels.contains_key(&format!("reserved:{name}")));
    }
    assert_eq!(a.get(Identity::HOST).unwrap().id, 1);
    assert_eq!(a.get(Identity::KUBE_APISERVER).unwrap().id, 7);
    // Reserved labels resolve to the reserved identity and are never released.
    let host = a.allocate(&reserved_labels("host"), "x").unwrap();
    assert_eq!(host, Identity::HOST);
    assert!(!a.release(Identity::HOST, "x").unwrap());
    assert!(a.get(Identity::HOST).is_some());
}

#[test]
fn same_labels_share_an_identity_until_the_last_owner_releases() {
    let f = Fixture::new();
    let a = f.alloc();
    let web = labels(&[("app", "web"), ("io.kubernetes.pod.namespace", "x")]);
    let db = labels(&[("app", "db"), ("io.kubernetes.pod.namespace", "x")]);
    let w1 = a.allocate(&web, "cni:1:eth0").unwrap();
    let w2 = a.allocate(&web, "cni:2:eth0").unwrap();
    let d = a.allocate(&db, "cni:3:eth0").unwrap();
    assert_eq!(w1, w2);
    assert_ne!(w1, d);
    assert!(w1.0 >= Identity::MIN_ALLOCATED && w1.is_endpoint());
    assert_eq!(a.lookup(&web), Some(w1));
    // Idempotent per owner.
    assert_eq!(a.allocate(&web, "cni:1:eth0").unwrap(), w1);
    assert_eq!(a.get(w1).unwrap().owners.len(), 2);
    assert_eq!(a.get(w1).unwrap().to_api().refs, 2);

    assert!(!a.release(w1, "cni:1:eth0").unwrap(), "one owner left");
    assert!(
        !a.release(w1, "cni:1:eth0").unwrap(),
        "double release ignored"
    );
    assert_eq!(a.get(w1).unwrap().owners.len(), 1);
    assert!(a.release(w1, "cni:2:eth0").unwrap(), "last owner gone");
    assert!(a.get(w1).is_none());
    assert_eq!(a.lookup(&web), None);
    assert!(!a.release(Identity(99_999), "nobody").unwrap());

    // A new allocation of the released labels does not reuse the id right away.
    let w3 = a.allocate(&web, "cni:4:eth0").unwrap();
    assert_ne!(w3, w1);
    assert!(a.allocate(&Labels::new(), "x").is_err());
    assert!(a.allocate(&web, "").is_err());
}

#[test]
fn cidr_identities_write_and_remove_their_ipcache_row() {
    let f = Fixture::new();
    let a = f.alloc();
    let p: Ipv4Net = "192.168.7.9/24".parse().unwrap();
    let id = a.allocate_cidr(p, "policy:x/p").unwrap();
    assert!(id.is_cidr(), "{id}");
    assert_eq!(id.0, Identity::CIDR_BASE + 1);
    let trunc: Ipv4Net = "192.168.7.0/24".parse().unwrap();
    assert_eq!(a.allocate_cidr(trunc, "policy:y/q").unwrap(), id);
    assert_eq!(a.lookup_cidr(trunc), Some(id));
    let obj = a.get(id).unwrap();
    assert_eq!(obj.kind, IdentityKind::Cidr);
    assert_eq!(obj.cidr, Some(trunc));
    assert_eq!(obj.labels[CIDR_LABEL], "192.168.7.0/24");
    let row = f.ipcache_row(trunc).unwrap();
    assert_eq!(row.identity, id.0);
    assert_eq!(row.source, IPCACHE_SOURCE);

    let other = a
        .allocate_cidr("10.0.0.0/8".parse().unwrap(), "policy:x/p")
        .unwrap();
    assert_ne!(other, id);

    assert!(!a.release(id, "policy:x/p").unwrap());
    assert!(f.ipcache_row(trunc).is_some());
    assert!(a.release(id, "policy:y/q").unwrap());
    assert!(f.ipcache_row(trunc).is_none());

    // Another writer's row for the same prefix is left alone.
    let pod: Ipv4Net = "10.1.2.3/32".parse().unwrap();
    {
        let mut w = f.db.write_txn(&[&*f.ipcache]).unwrap();
        f.ipcache
            .insert(&mut w, IpcacheEntry::new(pod, 300, "endpoint"))
            .unwrap();
        w.commit();
    }
    let pid = a.allocate_cidr(pod, "policy:z").unwrap();
    assert_eq!(f.ipcache_row(pod).unwrap().identity, 300);
    assert!(a.release(pid, "policy:z").unwrap());
    assert_eq!(f.ipcache_row(pod).unwrap().source, "endpoint");
}

#[test]
fn identities_survive_a_restart_with_the_same_ids() {
    let f = Fixture::new();
    let web = labels(&[("app", "web")]);
    let (w, c) = {
        let a = f.alloc();
        a.allocate(&labels(&[("app", "tmp")]), "cni:t:eth0")
            .unwrap();
        let w = a.allocate(&web, "cni:1:eth0").unwrap();
        let c = a
            .allocate_cidr("172.16.0.0/12".parse().unwrap(), "policy:p")
            .unwrap();
        let tmp = a.lookup(&labels(&[("app", "tmp")])).unwrap();
        assert!(a.release(tmp, "cni:t:eth0").unwrap());
        (w, c)
    };
    // A new process: new Db, same state dir.
    let f2 = Fixture::in_dir(f.dir);
    let a = f2.alloc();
    assert_eq!(a.lookup(&web), Some(w));
    assert_eq!(a.get(w).unwrap().owners.len(), 1);
    assert_eq!(a.get(c).unwrap().kind, IdentityKind::Cidr);
    assert_eq!(
        f2.ipcache_row("172.16.0.0/12".parse().unwrap())
            .unwrap()
            .identity,
        c.0
    );
    assert!(a.lookup(&labels(&[("app", "tmp")])).is_none());
    // The ipcache waits for the restore.
    let (init, _) = f2.ipcache.initialized(&f2.db.read_txn());
    assert!(!init);
    a.restore_done().unwrap();
    let (init, _) = f2.ipcache.initialized(&f2.db.read_txn());
    assert!(init);
    // Same labels, same owner after the restart: same id, no extra reference.
    assert_eq!(a.allocate(&web, "cni:1:eth0").unwrap(), w);
    assert_eq!(a.get(w).unwrap().owners.len(), 1);
    // New allocations continue after the persisted counter, not over a released id.
    let n = a
        .allocate(&labels(&[("app", "new")]), "cni:2:eth0")
        .unwrap();
    assert!(n.0 > w.0, "{n} after {w}");
    // Owners that did not come back are dropped.
    assert_eq!(a.retain_owners("cni:", |o| o == "cni:2:eth0").unwrap(), 1);
    assert!(a.get(w).is_none());
    assert!(a.get(c).is_some(), "other prefixes untouched");
}

#[test]
fn a_preferred_id_is_kept_when_free() {
    let f = Fixture::new();
    let a = f.alloc();
    let l = labels(&[("app", "x")]);
    assert_eq!(
        a.allocate_hinted(&l, "cni:1:eth0", Some(Identity(4242)))
            .unwrap(),
        Identity(4242)
    );
    let taken = a
        .allocate_hinted(&labels(&[("app", "y")]), "cni:2:eth0", Some(Identity(4242)))
        .unwrap();
    assert_ne!(taken, Identity(4242));
    // Known labels win over the hint.
    assert_eq!(
        a.allocate_hinted(&l, "cni:3:eth0", Some(Identity(5000)))
            .unwrap(),
        Identity(4242)
    );
}

#[test]
fn concurrent_allocations_agree() {
    let f = Fixture::new();
    let a = Arc::new(f.alloc());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let a = a.clone();
            std::thread::spawn(move || {
                (0..20)
                    .map(|i| {
                        let l = labels(&[("app", &format!("a{}", i % 5))]);
                        (i % 5, a.allocate(&l, &format!("cni:{t}-{i}:eth0")).unwrap())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut by_label = std::collections::BTreeMap::new();
    for t in threads {
        for (k, id) in t.join().unwrap() {
            let prev = by_label.insert(k, id);
            assert!(
                prev.is_none_or(|p| p == id),
                "labels a{k} got {prev:?} and {id}"
            );
        }
    }
    assert_eq!(by_label.len(), 5);
    let ids: std::collections::BTreeSet<_> = by_label.values().collect();
    assert_eq!(ids.len(), 5, "distinct labels, distinct ids");
    for id in by_label.values() {
        assert_eq!(a.get(*id).unwrap().owners.len(), 8 * 4);
    }
    // The file agrees with the table.
    let f2 = Fixture::in_dir(tempfile::tempdir().unwrap());
    std::fs::copy(
        f.dir.path().join(STATE_FILE),
        f2.dir.path().join(STATE_FILE),
    )
    .unwrap();
    let b = f2.alloc();
    for id in by_label.values() {
        assert_eq!(b.get(*id).unwrap().owners.len(), 32);
    }
}

#[test]
fn pod_labels_give_the_identity() {
    let f = Fixture::new();
    let a = f.alloc();
    let pod = cilium_resources::Pod {
        namespace: "x".into(),
        name: "a".into(),
        labels: labels(&[("pod", "a")]),
        service_account: "default".into(),
        named_ports: Default::default(),
        uid: "u".into(),
    };
    let mut pod_b = pod.clone();
    pod_b.name = "b".into();
    let ia = a
        .allocate(&pod_security_labels(&pod, None), "cni:a:eth0")
        .unwrap();
    let ib = a
        .allocate(&pod_security_labels(&pod_b, None), "cni:b:eth0")
        .unwrap();
    assert_eq!(ia, ib, "same labels in the same namespace");
    let txn = f.db.read_txn();
    let hits: Vec<_> = f.table.list(&txn, &label_query("pod", "a")).collect();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].id, ia.0);
}
