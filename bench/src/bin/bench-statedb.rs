//! statedb benchmark: write transactions, lookups, iteration and the reconciler, against a
//! baseline measured in the same run: a `BTreeMap` behind a `RwLock` (no snapshots, no
//! revisions, no watches), i.e. the cheapest store a cell could use instead.
//!
//! `[Go ...]` in a row name is the published figure of Cilium's Go statedb for orientation
//! only (other hardware; its benchmarks mostly use 1000-object tables). Pass a substring of
//! a row key (e.g. `WriteTxn_100/1k`) as the first argument to run only matching rows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cilium_bench::{Row, ops_per_sec, print_table};
use parking_lot::RwLock;
use rand::Rng as _;
use statedb::reconciler::{Config, Operations, Reconcilable, Reconciler, Status};
use statedb::{Db, Index, NoopHealth, ObjIter, ReadTxn, Revision, Table, TableDef, key_from_u64};

#[derive(Debug, Clone, serde::Serialize)]
struct Obj {
    id: u64,
    value: u64,
    status: Status,
}

impl Reconcilable for Obj {
    fn status(&self) -> &Status {
        &self.status
    }
    fn set_status(&mut self, status: Status) {
        self.status = status;
    }
}

const TABLE_SIZE: u64 = 100_000;
const BUDGET: Duration = Duration::from_millis(700);

fn new_table(db: &Db) -> Table<Obj> {
    new_table_with(db, false)
}

/// The bench table; with `secondary`, plus a non-unique index on `id % 16`.
fn new_table_with(db: &Db, secondary: bool) -> Table<Obj> {
    let mut def = TableDef::new("objs", Index::primary("id", |o: &Obj| key_from_u64(o.id)));
    if secondary {
        def = def.with_index(Index::non_unique("group", |o: &Obj| {
            std::iter::once(key_from_u64(o.id % 16)).collect()
        }));
    }
    match db.register_table(def) {
        Ok(t) => t,
        Err(e) => panic!("register table: {e}"),
    }
}

/// One pending status shared by every bench object: `Status::pending()` reads the clock,
/// which costs more than a statedb insert on some VMs and would dominate both columns.
static PENDING: std::sync::LazyLock<Status> = std::sync::LazyLock::new(Status::pending);

fn obj(id: u64, value: u64) -> Obj {
    Obj {
        id,
        value,
        status: PENDING.clone(),
    }
}

fn fill(db: &Db, t: &Table<Obj>) {
    fill_n(db, t, TABLE_SIZE);
}

fn fill_n(db: &Db, t: &Table<Obj>, n: u64) {
    let mut w = db.write_txn(&[t]).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..n {
        t.insert(&mut w, obj(i, 0))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    w.commit();
}

fn baseline_fill() -> RwLock<BTreeMap<u64, Arc<Obj>>> {
    baseline_fill_n(TABLE_SIZE)
}

fn baseline_fill_n(n: u64) -> RwLock<BTreeMap<u64, Arc<Obj>>> {
    RwLock::new((0..n).map(|i| (i, Arc::new(obj(i, 0)))).collect())
}

/// Human-readable table size.
fn size_name(n: u64) -> String {
    if n >= 1000 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// `batch` random replacements per write transaction on a table of `size` objects
/// (`size == 0`: inserts of fresh ids into a table that starts empty).
fn write_txn(batch: u64, size: u64, secondary: bool, go: &str) -> Row {
    let db = Db::new();
    let t = new_table_with(&db, secondary);
    fill_n(&db, &t, size);
    let mut rng = rand::rng();
    let mut next_id = 0u64;
    let mut pick = move || {
        if size == 0 {
            next_id += 1;
            next_id
        } else {
            rng.random_range(0..size)
        }
    };
    let ours = ops_per_sec(BUDGET, batch, || {
        let mut w = db.write_txn(&[&t]).unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..batch {
            let id = pick();
            t.insert(&mut w, obj(id, 1))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        w.commit();
    });
    let base = baseline_fill_n(size);
    let baseline = ops_per_sec(BUDGET, batch, || {
        let mut m = base.write();
        for _ in 0..batch {
            let id = pick();
            m.insert(id, Arc::new(obj(id, 1)));
        }
    });
    let what = match (size, secondary) {
        (0, _) => "insert, empty table".to_string(),
        (n, false) => format!("replace, {} table", size_name(n)),
        (n, true) => format!("replace, {} table, +secondary index", size_name(n)),
    };
    Row {
        name: format!("WriteTxn_{batch} ({what}) [Go {go}]"),
        ours,
        baseline: Some(baseline),
    }
}

fn lookups(size: u64) -> Row {
    let db = Db::new();
    let t = new_table(&db);
    fill_n(&db, &t, size);
    let mut rng = rand::rng();
    let idx = Index::<Obj>::primary("id", |o: &Obj| key_from_u64(o.id));
    let ours = ops_per_sec(BUDGET, 1000, || {
        let r = db.read_txn();
        for _ in 0..1000 {
            let q = idx.query(key_from_u64(rng.random_range(0..size)));
            std::hint::black_box(t.get(&r, &q));
        }
    });
    let base = baseline_fill_n(size);
    let baseline = ops_per_sec(BUDGET, 1000, || {
        let m = base.read();
        for _ in 0..1000 {
            std::hint::black_box(m.get(&rng.random_range(0..size)).cloned());
        }
    });
    Row {
        name: format!(
            "RandomLookup ({} table) [Go 24M, 1k table]",
            size_name(size)
        ),
        ours,
        baseline: Some(baseline),
    }
}

fn iteration() -> Row {
    let db = Db::new();
    let t = new_table(&db);
    fill(&db, &t);
    let ours = ops_per_sec(BUDGET, TABLE_SIZE, || {
        let r = db.read_txn();
        let mut sum = 0u64;
        for o in t.all(&r) {
            sum = sum.wrapping_add(o.value);
        }
        std::hint::black_box(sum);
    });
    let base = baseline_fill();
    let baseline = ops_per_sec(BUDGET, TABLE_SIZE, || {
        let m = base.read();
        let mut sum = 0u64;
        for o in m.values() {
            sum = sum.wrapping_add(o.value);
        }
        std::hint::black_box(sum);
    });
    Row {
        name: "FullIteration (100k) [Go 84M All / 165M Prefix]".into(),
        ours,
        baseline: Some(baseline),
    }
}

struct NoopOps;

#[async_trait::async_trait]
impl Operations<Obj> for NoopOps {
    type Error = std::convert::Infallible;
    async fn update(&self, _txn: &ReadTxn, _rev: Revision, _obj: &Obj) -> Result<(), Self::Error> {
        Ok(())
    }
    async fn delete(&self, _txn: &ReadTxn, _rev: Revision, _obj: &Obj) -> Result<(), Self::Error> {
        Ok(())
    }
    async fn prune(&self, _txn: &ReadTxn, _objs: ObjIter<'_, Obj>) -> Result<(), Self::Error> {
        Ok(())
    }
}

fn reconciler() -> Row {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let ours = rt.block_on(async {
        let db = Db::new();
        let t = new_table(&db);
        let cancel = tokio_util::sync::CancellationToken::new();
        let (handle, fut) = Reconciler::new(
            Config::new("bench"),
            db.clone(),
            t.clone(),
            Arc::new(NoopOps),
            Arc::new(NoopHealth),
            cancel.clone(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(fut);
        let start = std::time::Instant::now();
        let mut w = db.write_txn(&[&t]).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..TABLE_SIZE {
            t.insert(&mut w, obj(i, 0))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let r = w.commit();
        let rev = t.revision(&r);
        handle
            .wait_until_reconciled(rev)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let rate = TABLE_SIZE as f64 / start.elapsed().as_secs_f64();
        cancel.cancel();
        rate
    });
    Row {
        name: "Reconciler, 100k objects inserted then reconciled (no-op ops) [Go 760k, 1M objects]"
            .into(),
        ours,
        baseline: None,
    }
}

/// A benchmark row: its selection key and the function measuring it.
type Bench = (&'static str, Box<dyn Fn() -> Row>);

fn main() {
    // Optional argument: run only the rows whose name contains it (e.g. for profiling).
    let filter = std::env::args().nth(1).unwrap_or_default();
    let benches: Vec<Bench> = vec![
        (
            "WriteTxn_1/100k",
            Box::new(|| write_txn(1, TABLE_SIZE, false, "1.0M, 1k table")),
        ),
        (
            "WriteTxn_100/100k",
            Box::new(|| write_txn(100, TABLE_SIZE, false, "3.0M, 1k table")),
        ),
        (
            "WriteTxn_1000/100k",
            Box::new(|| write_txn(1000, TABLE_SIZE, false, "2.5M, 1k table")),
        ),
        (
            "WriteTxn_100/1k",
            Box::new(|| write_txn(100, 1000, false, "3.0M")),
        ),
        (
            "WriteTxn_100/1k/secondary",
            Box::new(|| write_txn(100, 1000, true, "1.25M")),
        ),
        (
            "WriteTxn_100/insert",
            Box::new(|| write_txn(100, 0, false, "-")),
        ),
        ("RandomLookup/100k", Box::new(|| lookups(TABLE_SIZE))),
        ("RandomLookup/1k", Box::new(|| lookups(1000))),
        ("FullIteration", Box::new(iteration)),
        ("Reconciler", Box::new(reconciler)),
    ];
    let rows: Vec<Row> = benches
        .iter()
        .filter(|(name, _)| name.contains(filter.as_str()))
        .map(|(_, f)| f())
        .collect();
    print_table("statedb", "RwLock<BTreeMap> baseline", &rows);
}
