//! Database behaviour: transactions, queries, watches, changes, initializers, dumps.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers may panic"
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use statedb::{Db, Error, Query, Watch, WatchSet, key_from_str, key_from_u64};

fn id(n: u64) -> Query {
    Query::new("id", key_from_u64(n))
}

fn tag(t: &str) -> Query {
    Query::new("tag", key_from_str(t))
}

#[test]
fn insert_get_list_prefix_lower_bound() {
    let db = Db::new();
    let t = objs_table(&db, "objs");
    let mut w = db.write_txn(&[&t]).unwrap();
    assert!(t.insert(&mut w, obj(1, "a1", &["x"])).unwrap().is_none());
    t.insert(&mut w, obj(2, "a2", &["x", "y"])).unwrap();
    t.insert(&mut w, obj(3, "b1", &["y"])).unwrap();
    let old = t.insert(&mut w, obj(3, "b3", &["y"])).unwrap().unwrap();
    assert_eq!(old.name, "b1");
    // The write txn sees its own writes; readers do not yet.
    assert_eq!(t.len(&w), 3);
    assert_eq!(t.len(&db.read_txn()), 0);
    let r = w.commit();
    assert_eq!(t.len(&r), 3);
    assert_eq!(t.revision(&r), 4);

    assert_eq!(t.get(&r, &id(2)).unwrap().name, "a2");
    assert_eq!(t.get(&r, &Query::new("name", "b3")).unwrap().id, 3);
    assert!(t.get(&r, &Query::new("name", "b1")).is_none());
    let xs: Vec<u64> = t.list(&r, &tag("x")).map(|o| o.id).collect();
    assert_eq!(xs, vec![1, 2]);
    let ys: Vec<u64> = t.list(&r, &tag("y")).map(|o| o.id).collect();
    assert_eq!(ys, vec![2, 3]);
    let pa: Vec<u64> = t
        .prefix(&r, &Query::new("name", "a"))
        .map(|o| o.id)
        .collect();
    assert_eq!(pa, vec![1, 2]);
    let lb: Vec<u64> = t.lower_bound(&r, &id(2)).map(|o| o.id).collect();
    assert_eq!(lb, vec![2, 3]);
    let all: Vec<u64> = t.all(&r).map(|o| o.id).collect();
    assert_eq!(all, vec![1, 2, 3]);
    assert_eq!(t.get(&r, &id(3)).unwrap().revision(), 4);
    assert!(t.get(&r, &Query::new("nope", "x")).is_none());
}

#[test]
fn unique_secondary_conflict_is_an_error() {
    let db = Db::new();
    let t = objs_table(&db, "objs");
    let mut w = db.write_txn(&[&t]).unwrap();
    t.insert(&mut w, obj(1, "same", &[])).unwrap();
    let err = t.insert(&mut w, obj(2, "same", &[])).unwrap_err();
    assert!(matches!(err, Error::UniqueConflict { .. }), "{err}");
    // Replacing the owner of the key is fine.
    t.insert(&mut w, obj(1, "same", &["t"])).unwrap();
    assert_eq!(t.len(&w), 1);
}

#[test]
fn cas_modify_delete_variants() {
    let db = Db::new();
    let t = objs_table(&db, "objs");
    let mut w = db.write_txn(&[&t]).unwrap();
    t.insert(&mut w, obj(1, "a", &[])).unwrap();
    let rev = t.get(&w, &id(1)).unwrap().revision();
    let err = t
        .compare_and_swap(&mut w, rev + 10, obj(1, "b", &[]))
        .unwrap_err();
    assert!(matches!(err, Error::RevisionMismatch { .. }));
    let err = t.compare_and_swap(&mut w, 1, obj(9, "z", &[])).unwrap_err();
    assert!(matches!(err, Error::ObjectNotFound { .. }));
    t.compare_and_swap(&mut w, rev, obj(1, "b", &[])).unwrap();
    t.modify(&mut w, obj(1, "c", &["new"]), |old, mut new| {
        new.tags.push(old.name.clone());
        new
    })
    .unwrap();
    assert_eq!(t.get(&w, &id(1)).unwrap().tags, vec!["new", "b"]);
    let rev = t.get(&w, &id(1)).unwrap().revision();
    assert!(matches!(
        t.compare_and_delete(&mut w, rev - 1, &obj(1, "", &[])),
        Err(Error::RevisionMismatch { .. })
    ));
    assert!(
        t.compare_and_delete(&mut w, rev, &obj(1, "", &[]))
            .unwrap()
            .is_some()
    );
    assert!(t.delete(&mut w, &obj(1, "", &[])).unwrap().is_none());
    for i in 0..5 {
        t.insert(&mut w, obj(i, &format!("n{i}"), &["t"])).unwrap();
    }
    assert_eq!(t.delete_all(&mut w).unwrap(), 5);
    assert!(t.is_empty(&w));
    assert_eq!(t.list(&w, &tag("t")).count(), 0);
}

#[test]
fn writing_unlocked_table_is_an_error() {
    let db = Db::new();
    let a = objs_table(&db, "a");
    let b = objs_table(&db, "b");
    let mut w = db.write_txn(&[&a]).unwrap();
    let err = b.insert(&mut w, obj(1, "x", &[])).unwrap_err();
    assert!(matches!(err, Error::TableNotLocked { .. }), "{err}");
    let other = Db::new();
    let c = objs_table(&other, "c");
    assert!(matches!(
        db.write_txn(&[&c]),
        Err(Error::ForeignTable { .. })
    ));
    assert!(matches!(
        db.register_table(statedb::TableDef::new("a", id_index())),
        Err(Error::DuplicateTable { .. })
    ));
}

#[test]
fn multi_table_txn_commits_atomically_and_aborts_on_drop() {
    let db = Db::new();
    let a = objs_table(&db, "a");
    let b = objs_table(&db, "b");
    {
        let mut w = db.write_txn(&[&b, &a, &b]).unwrap();
        a.insert(&mut w, obj(1, "x", &[])).unwrap();
        b.insert(&mut w, obj(2, "y", &[])).unwrap();
        // dropped: aborted
    }
    let r = db.read_txn();
    assert!(a.is_empty(&r) && b.is_empty(&r));
    let mut w = db.write_txn(&[&a, &b, &a]).unwrap();
    a.insert(&mut w, obj(1, "x", &[])).unwrap();
    b.insert(&mut w, obj(2, "y", &[])).unwrap();
    let before = db.read_txn();
    let r = w.commit();
    assert_eq!((a.len(&r), b.len(&r)), (1, 1));
    assert_eq!((a.len(&before), b.len(&before)), (0, 0));
    // Locks were released: a new txn can be taken.
    db.write_txn(&[&a, &b]).unwrap().abort();
}

#[test]
fn concurrent_writers_in_opposite_orders_do_not_deadlock() {
    let db = Db::new();
    let a = objs_table(&db, "a");
    let b = objs_table(&db, "b");
    let mut threads = Vec::new();
    for th in 0..4u64 {
        let (db, a, b) = (db.clone(), a.clone(), b.clone());
        threads.push(std::thread::spawn(move || {
            for i in 0..200u64 {
                let mut w = if th % 2 == 0 {
                    db.write_txn(&[&a, &b]).unwrap()
                } else {
                    db.write_txn(&[&b, &a, &b]).unwrap()
                };
                let n = th * 1000 + i;
                a.insert(&mut w, obj(n, &format!("a{n}"), &[])).unwrap();
                b.insert(&mut w, obj(n, &format!("b{n}"), &[])).unwrap();
                w.commit();
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let r = db.read_txn();
    assert_eq!((a.len(&r), b.len(&r)), (800, 800));
    assert_eq!(a.revision(&r), 800);
}

#[test]
fn watches_fire_after_the_new_state_is_visible() {
    let db = Db::new();
    let t = objs_table(&db, "objs");
    let mut w = db.write_txn(&[&t]).unwrap();
    t.insert(&mut w, obj(1, "a", &[])).unwrap();
    w.commit();

    let r = db.read_txn();
    let (o, obj_watch) = t.get_watch(&r, &id(1));
    assert!(o.is_some());
    let (none, miss_watch) = t.get_watch(&r, &id(2));
    assert!(none.is_none());
    let (_, table_watch) = t.all_watch(&r);
    let (_, other_watch) = t.get_watch(&r, &id(1));
    assert!(
        obj_watch.same(&other_watch),
        "watch lives behind the shared entry"
    );

    // A reader thread waiting on the object watch must see the new version.
    let (db2, t2, w2) = (db.clone(), t.clone(), obj_watch.clone());
    let reader = std::thread::spawn(move || {
        w2.wait_blocking();
        t2.get(&db2.read_txn(), &id(1)).unwrap().name.clone()
    });
    let mut w = db.write_txn(&[&t]).unwrap();
    t.insert(&mut w, obj(1, "b", &[])).unwrap();
    assert!(!obj_watch.is_closed(), "not before commit");
    w.commit();
    assert_eq!(reader.join().unwrap(), "b");
    assert!(obj_watch.is_closed() && table_watch.is_closed() && miss_watch.is_closed());

    // Aborted writes fire nothing.
    let (_, w1) = t.get_watch(&db.read_txn(), &id(1));
    let mut w = db.write_txn(&[&t]).unwrap();
    t.delete(&mut w, &obj(1, "", &[])).unwrap();
    drop(w);
    assert!(!w1.is_closed());
    // Deletion fires the object watch.
    let mut w = db.write_txn(&[&t]).unwrap();
    t.delete(&mut w, &obj(1, "", &[])).unwrap();
    w.commit();
    assert!(w1.is_closed());
}

#[test]
fn watch_allocated_on_an_old_snapshot_still_fires() {
    let db = Db::new();
    let t = objs_table(&db, "objs");
    let mut w = db.write_txn(&[&t]).unwrap();
    t.insert(&mut w, obj(1, "a", &[])).unwrap();
    w.commit();
    let old = db.read_txn();
    let mut w = db.write_txn(&[&t]).unwrap();
    t.insert(&mut w, obj(1, "b", &[])).unwrap();
    w.commit();
    // Reader asks for a watch on the replaced version after the commit: closed.
    let (o, watch) = t.get_watch(&old, &id(1));
    assert_eq!(o.unwrap().name, "a");
    assert!(watch.is_closed());
}

#[tokio::test]
async fn watch_set_wakes_async_waiter() {
    let db = Db::new();
    let a = objs_table(&db, "a");
    let b = objs_table(&db, "b");
    let r = db.read_txn();
    let mut set = WatchSet::new();
    set.add(a.all_watch(&r).1);
    set.add(b.all_watch(&r).1);
    let (db2, b2) = (db.clone(), b.clone());
    tokio::spawn(async move {
        let mut w = db2.write_txn(&[&b2]).unwrap();
        b2.insert(&mut w, obj(1, "x", &[])).unwrap();
        w.commit();
    });
    let closed = tokio::time::timeout(Duration::from_secs(10), set.wait())
        .await
        .unwrap();
    assert_eq!(closed.len(), 1);
    assert_eq!(b.len(&db.read_txn()), 1);
    assert_eq!(set.len(), 1);
}

#[test]
fn changes_replay_then_incremental_with_deletions_and_gc() {
    let db = Db::new();
    let t = objs_table(&db, "objs");
    let mut w = db.write_txn(&[&t]).unwrap();
    t.insert(&mut w, obj(1, "a", &[])).unwrap();
    t.insert(&mut w, obj(2, "b", &[])).unwrap();
    t.delete(&mut w, &obj(2, "", &[])).unwrap(); // before any tracker: no graveyard
    w.commit();
    assert_eq!(t.graveyard_len(&db.read_txn()), 0);

    let mut w = db.write_txn(&[&t]).unwrap();
    let mut iter = t.changes(&mut w).unwrap();
    w.commit();
    assert_eq!(t.delete_trackers(), 1);

    let (batch, watch) = iter.next(&db.read_txn());
    let got: Vec<(u64, bool)> = batch.iter().map(|c| (c.object.id, c.deleted)).collect();
    assert_eq!(got, vec![(1, false)]);
    assert!(!watch.is_closed());

    let mut w = db.write_txn(&[&t]).unwrap();
    t.insert(&mut w, obj(3, "c", &[])).unwrap();
    t.delete(&mut w, &obj(1, "", &[])).unwrap();
    t.insert(&mut w, obj(4, "d", &[])).unwrap();
    let r = w.commit();
    assert!(watch.is_closed());
    assert_eq!(t.graveyard_len(&r), 1);

    let (batch, _) = iter.next(&r);
    let got: Vec<(u64, bool)> = batch.iter().map(|c| (c.object.id, c.deleted)).collect();
    assert_eq!(got, vec![(3, false), (1, true), (4, false)]);
    let revs: Vec<u64> = batch.iter().map(|c| c.revision).collect();
    assert!(revs.windows(2).all(|w| w[0] < w[1]));
    // Nothing new.
    let (batch, w2) = iter.next(&r);
    assert!(batch.is_empty() && !w2.is_closed());

    // The tracker passed the deletion: the next commit collects it.
    let w = db.write_txn(&[&t]).unwrap();
    let r = w.commit();
    assert_eq!(t.graveyard_len(&r), 0);

    // A second tracker that lags keeps the graveyard alive; dropping it frees it.
    let mut w = db.write_txn(&[&t]).unwrap();
    let lagging = t.changes(&mut w).unwrap();
    t.delete(&mut w, &obj(3, "", &[])).unwrap();
    let r = w.commit();
    assert_eq!(t.graveyard_len(&r), 1);
    let (batch, _) = iter.next(&r);
    assert_eq!(batch.len(), 1);
    let r = db.write_txn(&[&t]).unwrap().commit();
    assert_eq!(t.graveyard_len(&r), 1, "lagging tracker still needs it");
    drop(lagging);
    assert_eq!(t.delete_trackers(), 1);
    let r = db.write_txn(&[&t]).unwrap().commit();
    assert_eq!(t.graveyard_len(&r), 0);
    drop(iter);
    assert_eq!(t.delete_trackers(), 0);
    // Without trackers deletions are not kept.
    let mut w = db.write_txn(&[&t]).unwrap();
    t.delete(&mut w, &obj(4, "", &[])).unwrap();
    assert_eq!(t.graveyard_len(&w.commit()), 0);
}

#[test]
fn changes_limited_batches() {
    let db = Db::new();
    let t = objs_table(&db, "objs");
    let mut w = db.write_txn(&[&t]).unwrap();
    for i in 0..10 {
        t.insert(&mut w, obj(i, &format!("n{i}"), &[])).unwrap();
    }
    let mut iter = t.changes(&mut w).unwrap();
    let r = w.commit();
    let mut seen = Vec::new();
    loop {
        let (batch, watch) = iter.next_limited(&r, 3);
        seen.extend(batch.iter().map(|c| c.object.id));
        if !watch.is_closed() {
            break;
        }
    }
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
}

#[test]
fn initializers_gate_initialized_without_busy_loop() {
    let db = Db::new();
    let t = objs_table(&db, "objs");
    let (init, w0) = t.initialized(&db.read_txn());
    assert!(init && w0.is_closed(), "no initializers: initialized");

    let mut w = db.write_txn(&[&t]).unwrap();
    let i1 = t.register_initializer(&mut w, "k8s").unwrap();
    let i2 = t.register_initializer(&mut w, "restore").unwrap();
    w.commit();
    let (init, watch) = t.initialized(&db.read_txn());
    assert!(!init && !watch.is_closed());
    let info = db.table_info(&db.read_txn());
    assert_eq!(info[0].pending_initializers, vec!["k8s", "restore"]);

    let mut w = db.write_txn(&[&t]).unwrap();
    i1.done(&mut w).unwrap();
    w.commit();
    let (init, w2) = t.initialized(&db.read_txn());
    assert!(!init && !w2.is_closed() && !watch.is_closed());

    // Aborted done() can be retried with the same handle.
    let mut w = db.write_txn(&[&t]).unwrap();
    i2.done(&mut w).unwrap();
    drop(w);
    assert!(!t.initialized(&db.read_txn()).0);
    let mut w = db.write_txn(&[&t]).unwrap();
    i2.done(&mut w).unwrap();
    assert!(matches!(
        i2.done(&mut w),
        Err(Error::UnknownInitializer { .. })
    ));
    w.commit();
    assert!(watch.is_closed());
    assert!(t.initialized(&db.read_txn()).0);
}

#[test]
fn type_erased_dump_names_and_info() {
    let db = Db::new();
    let t = objs_table(&db, "objs");
    let _u = objs_table(&db, "other");
    let mut w = db.write_txn(&[&t]).unwrap();
    t.insert(&mut w, obj(7, "seven", &["t"])).unwrap();
    w.commit();
    assert_eq!(db.table_names(), vec!["objs", "other"]);
    let r = db.read_txn();
    let dump = db.dump_table(&r, "objs").unwrap();
    assert_eq!(dump.len(), 1);
    assert_eq!(dump[0]["revision"], 1);
    assert_eq!(dump[0]["object"]["name"], "seven");
    assert!(matches!(
        r.dump_table("missing"),
        Err(Error::UnknownTable { .. })
    ));
    let info = db.table_info(&r);
    assert_eq!((info[0].objects, info[0].revision), (1, 1));
}

#[test]
fn metrics_are_exported() {
    let reg = prometheus::Registry::new();
    let db = Db::with_metrics(&reg).unwrap();
    let t = objs_table(&db, "objs");
    let mut w = db.write_txn(&[&t]).unwrap();
    t.insert(&mut w, obj(1, "a", &[])).unwrap();
    let _it = t.changes(&mut w).unwrap();
    w.commit();
    let names: Vec<String> = reg.gather().iter().map(|f| f.name().to_string()).collect();
    for n in [
        "cilium_statedb_write_txn_duration_seconds",
        "cilium_statedb_table_objects",
        "cilium_statedb_table_revision",
        "cilium_statedb_graveyard_objects",
        "cilium_statedb_table_delete_trackers",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing in {names:?}");
    }
    let objects = reg
        .gather()
        .into_iter()
        .find(|f| f.name() == "cilium_statedb_table_objects")
        .unwrap();
    assert_eq!(objects.get_metric()[0].get_gauge().value(), 1.0);
    assert!(
        Db::with_metrics(&reg).is_err(),
        "double registration is reported"
    );
}

#[test]
fn objects_are_shared_not_copied() {
    let db = Db::new();
    let t = objs_table(&db, "objs");
    let o = Arc::new(obj(1, "a", &[]));
    let mut w = db.write_txn(&[&t]).unwrap();
    t.insert(&mut w, o.clone()).unwrap();
    let r = w.commit();
    assert!(Arc::ptr_eq(&t.get(&r, &id(1)).unwrap().object(), &o));
    let _: Watch = Watch::closed();
}

/// Primary keys longer and shorter than the 8 bytes the internal key keeps inline,
/// including keys that are prefixes of each other: order, prefix, lower bound,
/// deletion and graveyard garbage collection must all treat them as plain bytes.
#[test]
fn long_and_short_primary_keys_order_and_collect_like_bytes() {
    let db = Db::new();
    let t = db
        .register_table(statedb::TableDef::new(
            "named",
            statedb::Index::primary("name", |o: &Obj| key_from_str(&o.name)),
        ))
        .unwrap();
    let names = [
        "a",
        "a\0",
        "abcdefgh",
        "abcdefghi",
        "abcdefghij",
        "b",
        "abcdefgh-long-name",
    ];
    let mut w = db.write_txn(&[&t]).unwrap();
    let mut changes = t.changes(&mut w).unwrap();
    for (i, n) in names.iter().enumerate() {
        t.insert(&mut w, obj(i as u64, n, &[])).unwrap();
    }
    let r = w.commit();
    let mut sorted: Vec<&str> = names.to_vec();
    sorted.sort_unstable();
    let all: Vec<String> = t.all(&r).map(|o| o.name.clone()).collect();
    assert_eq!(all, sorted);
    let q = |k: &str| Query::new("name", key_from_str(k));
    assert_eq!(t.get(&r, &q("abcdefghi")).unwrap().id, 3);
    assert!(t.get(&r, &q("abcdefg")).is_none());
    let pre: Vec<String> = t
        .prefix(&r, &q("abcdefgh"))
        .map(|o| o.name.clone())
        .collect();
    assert_eq!(
        pre,
        ["abcdefgh", "abcdefgh-long-name", "abcdefghi", "abcdefghij"]
    );
    let lb: Vec<String> = t
        .lower_bound(&r, &q("abcdefghi"))
        .map(|o| o.name.clone())
        .collect();
    assert_eq!(lb, ["abcdefghi", "abcdefghij", "b"]);
    let (batch, _) = changes.next(&r);
    assert_eq!(batch.len(), names.len());

    let mut w = db.write_txn(&[&t]).unwrap();
    t.delete_key(&mut w, key_from_str("abcdefghij"))
        .unwrap()
        .unwrap();
    t.delete_key(&mut w, key_from_str("a")).unwrap().unwrap();
    let r = w.commit();
    assert_eq!(t.graveyard_len(&r), 2);
    assert!(t.get(&r, &q("a")).is_none());
    assert_eq!(t.get(&r, &q("a\0")).unwrap().id, 1);
    let (batch, _) = changes.next(&r);
    let deleted: Vec<&str> = batch
        .iter()
        .filter(|c| c.deleted)
        .map(|c| c.object.name.as_str())
        .collect();
    assert_eq!(deleted, ["abcdefghij", "a"]);
    // The tracker passed both deletions: the next commit collects them.
    let mut w = db.write_txn(&[&t]).unwrap();
    t.insert(&mut w, obj(9, "z", &[])).unwrap();
    let r = w.commit();
    assert_eq!(t.graveyard_len(&r), 0);
    assert_eq!(t.len(&r), names.len() - 1);
}
