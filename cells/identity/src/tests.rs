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

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn cidr_count_in_state(f: &Fixture) -> usize {
    let text = std::fs::read_to_string(f.dir.path().join(STATE_FILE)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["identities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] == "cidr")
        .count()
}

#[test]
fn cidr_sync_adds_drops_and_releases_in_one_change() {
    use std::collections::{BTreeMap, BTreeSet};
    let f = Fixture::new();
    let a = f.alloc();
    let (p1, p2, p3) = (net("10.1.0.0/16"), net("10.2.0.0/16"), net("10.3.0.7/16"));
    // Another writer's reference to p1 is not the sync's business.
    let other = a.allocate_cidr(p1, "other:x").unwrap();
    let desired = |pairs: &[(&str, &[Ipv4Net])]| -> BTreeMap<String, BTreeSet<Ipv4Net>> {
        pairs
            .iter()
            .map(|(o, ps)| (o.to_string(), ps.iter().copied().collect()))
            .collect()
    };
    let d1 = desired(&[("policy:a", &[p1, p2]), ("policy:b", &[p2])]);
    let s = a.sync_cidr_owners("policy:", &d1).unwrap();
    assert_eq!(
        s,
        CidrSync {
            added: 3,
            allocated: 1,
            ..Default::default()
        }
    );
    let id2 = a.lookup_cidr(p2).unwrap();
    assert_eq!(f.ipcache_row(p2).unwrap().identity, id2.0);
    assert_eq!(a.get(other).unwrap().owners.len(), 2);
    assert_eq!(cidr_count_in_state(&f), 2);
    // Nothing differs: nothing done.
    assert_eq!(
        a.sync_cidr_owners("policy:", &d1).unwrap(),
        CidrSync::default()
    );
    // policy:a goes away, policy:b moves to p2 + p3 (host bits cleared).
    let d2 = desired(&[("policy:b", &[p2, p3])]);
    let s = a.sync_cidr_owners("policy:", &d2).unwrap();
    assert_eq!((s.added, s.allocated, s.dropped, s.released), (1, 1, 2, 0));
    assert_eq!(
        a.get(other).unwrap().owners,
        BTreeSet::from(["other:x".to_string()])
    );
    assert_eq!(
        a.get(id2).unwrap().owners,
        BTreeSet::from(["policy:b".to_string()])
    );
    let id3 = a.lookup_cidr(p3.trunc()).unwrap();
    assert_eq!(f.ipcache_row(p3.trunc()).unwrap().identity, id3.0);
    // Everything dropped: the policy's identities are released with their rows.
    let s = a.sync_cidr_owners("policy:", &BTreeMap::new()).unwrap();
    assert_eq!((s.dropped, s.released), (2, 2));
    assert!(a.get(id2).is_none() && a.get(id3).is_none());
    assert!(f.ipcache_row(p2).is_none() && f.ipcache_row(p3.trunc()).is_none());
    assert!(a.get(other).is_some());
    assert_eq!(cidr_count_in_state(&f), 1);
    // Owners outside the prefix are refused.
    assert!(
        a.sync_cidr_owners("policy:", &desired(&[("cni:x", &[p1])]))
            .is_err()
    );
    // The batch allocation gives the identities in order, idempotently.
    let ids = a.allocate_cidrs(&[p2, p1], "policy:c").unwrap();
    assert_eq!(ids[1], other);
    assert_eq!(a.allocate_cidrs(&[p2, p1], "policy:c").unwrap(), ids);
}

#[test]
fn a_failed_cidr_batch_changes_nothing() {
    use std::collections::{BTreeMap, BTreeSet};
    let f = Fixture::new();
    let a = f.alloc();
    a.allocate_cidr(net("10.9.0.0/16"), "other:keep").unwrap();
    let before_ids: Vec<u32> = a.list().iter().map(|o| o.id).collect();
    // Make the state file unreplaceable: a non-empty directory in its place.
    let path = f.dir.path().join(STATE_FILE);
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("block"), b"x").unwrap();
    let many: BTreeSet<Ipv4Net> = (0..50u32)
        .map(|i| Ipv4Net::new(std::net::Ipv4Addr::from(0xac10_0000 + i), 32).unwrap())
        .collect();
    let desired = BTreeMap::from([("policy:p".to_string(), many.clone())]);
    assert!(a.sync_cidr_owners("policy:", &desired).is_err());
    let v: Vec<Ipv4Net> = many.iter().copied().collect();
    assert!(a.allocate_cidrs(&v, "policy:p").is_err());
    assert_eq!(
        a.list().iter().map(|o| o.id).collect::<Vec<_>>(),
        before_ids
    );
    assert!(f.ipcache_row(v[0]).is_none());
    // Writable again: the same batch goes through, ids continue where they would have.
    std::fs::remove_dir_all(&path).unwrap();
    let s = a.sync_cidr_owners("policy:", &desired).unwrap();
    assert_eq!(s.allocated, 50);
    let first = a.lookup_cidr(v[0]).unwrap();
    assert_eq!(
        first.0,
        Identity::CIDR_BASE + 2,
        "the failed batch used no ids"
    );
    assert_eq!(cidr_count_in_state(&f), 51);
    // A restart restores all of them.
    drop(a);
    let f2 = Fixture::in_dir(f.dir);
    let a2 = f2.alloc();
    assert_eq!(a2.lookup_cidr(v[49]).unwrap().0, Identity::CIDR_BASE + 51);
}

#[test]
fn identity_count_gauges_follow_changes() {
    let f = Fixture::new();
    let reg = prometheus::Registry::new();
    let a = IdentityAllocator::new(
        f.db.clone(),
        f.table.clone(),
        f.ipcache.clone(),
        StateFile::new(f.dir.path().join(STATE_FILE)),
        Some(&reg),
    )
    .unwrap();
    let gauge = |kind: &str| -> f64 {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&reg.gather())
            .unwrap();
        let prefix = format!("cilium_identities{{kind=\"{kind}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(gauge("reserved"), 7.0);
    let e = a.allocate(&labels(&[("app", "x")]), "cni:1").unwrap();
    let ids = a
        .allocate_cidrs(&[net("10.0.0.0/8"), net("11.0.0.0/8")], "policy:p")
        .unwrap();
    assert_eq!((gauge("endpoint"), gauge("cidr")), (1.0, 2.0));
    a.release(ids[0], "policy:p").unwrap();
    a.release(e, "cni:1").unwrap();
    assert_eq!((gauge("endpoint"), gauge("cidr")), (0.0, 1.0));
    // A failed change leaves the counts alone.
    assert!(a.allocate(&Labels::new(), "cni:2").is_err());
    assert_eq!((gauge("endpoint"), gauge("cidr")), (0.0, 1.0));
}
