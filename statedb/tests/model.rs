//! Property test: the table behaves like a BTreeMap, and the change iterator replays
//! to the same state.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers may panic"
)]

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use statedb::{Db, Query, key_from_str, key_from_u64};

#[derive(Debug, Clone)]
enum Op {
    Insert(u64, Vec<u8>),
    Delete(u64),
    Modify(u64, u8),
    Commit,
    Abort,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..24, proptest::collection::vec(0u8..4, 0..3)).prop_map(|(i, t)| Op::Insert(i, t)),
        2 => (0u64..24).prop_map(Op::Delete),
        1 => (0u64..24, 0u8..4).prop_map(|(i, t)| Op::Modify(i, t)),
        1 => Just(Op::Commit),
        1 => Just(Op::Abort),
    ]
}

fn mk(id: u64, tags: &[u8]) -> Obj {
    let tags: Vec<String> = tags.iter().map(|t| format!("t{t}")).collect();
    let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    obj(id, &format!("n{id}"), &refs)
}

fn check<X: statedb::Txn>(t: &statedb::Table<Obj>, txn: &X, model: &BTreeMap<u64, Obj>) {
    let all: Vec<Obj> = t.all(txn).map(|o| (*o).clone()).collect();
    let want: Vec<Obj> = model.values().cloned().collect();
    assert_eq!(all, want);
    for id in 0..24u64 {
        let got = t
            .get(txn, &Query::new("id", key_from_u64(id)))
            .map(|o| (*o).clone());
        assert_eq!(got.as_ref(), model.get(&id));
        let by_name = t.get(txn, &Query::new("name", key_from_str(&format!("n{id}"))));
        assert_eq!(by_name.map(|o| o.id), model.get(&id).map(|o| o.id));
    }
    for tg in 0..4u8 {
        let tag = format!("t{tg}");
        let mut got: Vec<u64> = t
            .list(txn, &Query::new("tag", key_from_str(&tag)))
            .map(|o| o.id)
            .collect();
        got.sort_unstable();
        got.dedup();
        let want: Vec<u64> = model
            .values()
            .filter(|o| o.tags.contains(&tag))
            .map(|o| o.id)
            .collect();
        assert_eq!(got, want, "list {tag}");
    }
    let got: Vec<u64> = t
        .prefix(txn, &Query::new("name", key_from_str("n1")))
        .map(|o| o.id)
        .collect();
    let mut want: Vec<u64> = model
        .keys()
        .copied()
        .filter(|i| format!("n{i}").starts_with("n1"))
        .collect();
    want.sort_by_key(|i| format!("n{i}"));
    assert_eq!(got, want, "prefix n1");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn table_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        let db = Db::new();
        let t = objs_table(&db, "objs");
        let mut wtxn = db.write_txn(&[&t]).unwrap();
        let mut iter = t.changes(&mut wtxn).unwrap();
        let mut committed: BTreeMap<u64, Obj> = BTreeMap::new();
        let mut pending = committed.clone();
        let mut replayed: BTreeMap<u64, Obj> = BTreeMap::new();
        let mut last_rev = 0;
        for op in ops {
            match op {
                Op::Insert(id, tags) => {
                    let o = mk(id, &tags);
                    let old = t.insert(&mut wtxn, o.clone()).unwrap();
                    prop_assert_eq!(old.map(|o| (*o).clone()), pending.insert(id, o));
                }
                Op::Delete(id) => {
                    let old = t.delete(&mut wtxn, &mk(id, &[])).unwrap();
                    prop_assert_eq!(old.map(|o| (*o).clone()), pending.remove(&id));
                }
                Op::Modify(id, tg) => {
                    t.modify(&mut wtxn, mk(id, &[tg]), |old, mut new| {
                        new.tags.extend(old.tags.iter().cloned());
                        new
                    }).unwrap();
                    let mut n = mk(id, &[tg]);
                    if let Some(old) = pending.get(&id) {
                        n.tags.extend(old.tags.iter().cloned());
                    }
                    pending.insert(id, n);
                }
                Op::Commit => {
                    let r = wtxn.commit();
                    committed = pending.clone();
                    check(&t, &r, &committed);
                    let (changes, _) = iter.next(&r);
                    for c in changes {
                        prop_assert!(c.revision > last_rev);
                        last_rev = c.revision;
                        if c.deleted { replayed.remove(&c.object.id); } else { replayed.insert(c.object.id, (*c.object).clone()); }
                    }
                    prop_assert_eq!(&replayed, &committed);
                    wtxn = db.write_txn(&[&t]).unwrap();
                }
                Op::Abort => {
                    drop(wtxn);
                    pending = committed.clone();
                    check(&t, &db.read_txn(), &committed);
                    wtxn = db.write_txn(&[&t]).unwrap();
                }
            }
            check(&t, &wtxn, &pending);
        }
        drop(wtxn);
        // Everything the tracker passed is garbage-collected at the next commit.
        let r = db.write_txn(&[&t]).unwrap().commit();
        prop_assert_eq!(t.graveyard_len(&r), 0);
    }
}
