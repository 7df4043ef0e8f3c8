//! Reconciler behaviour with mock operations (tokio paused time).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers may panic"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use statedb::reconciler::{
    BatchEntry, Config, Operations, Reconcilable, Reconciler, ReconcilerHandle, ReconcilerMetrics,
    Status, StatusKind,
};
use statedb::{
    Db, HealthReporter, Index, ObjIter, Query, ReadTxn, Revision, Table, TableDef, key_from_u64,
};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, serde::Serialize)]
struct Item {
    id: u64,
    val: u32,
    status: Status,
}

impl Reconcilable for Item {
    fn status(&self) -> &Status {
        &self.status
    }
    fn set_status(&mut self, status: Status) {
        self.status = status;
    }
}

fn item(id: u64, val: u32) -> Item {
    Item {
        id,
        val,
        status: Status::pending(),
    }
}

#[derive(Default)]
struct State {
    fail: BTreeMap<u64, u32>,
    updates: Vec<(u64, u32)>,
    deletes: Vec<u64>,
    prunes: Vec<Vec<u64>>,
    batches: Vec<(&'static str, usize)>,
    /// On update of this id, write a newer version first (simulates a racing writer).
    race: Option<(Db, Table<Item>, u64)>,
}

#[derive(Default)]
struct Mock {
    st: Mutex<State>,
    batch: bool,
}

#[async_trait]
impl Operations<Item> for Mock {
    type Error = String;
    async fn update(&self, _txn: &ReadTxn, _rev: Revision, obj: &Item) -> Result<(), String> {
        let mut st = self.st.lock();
        st.updates.push((obj.id, obj.val));
        if let Some((db, t, id)) = st.race.take_if(|(_, _, id)| *id == obj.id) {
            let mut w = db.write_txn(&[&t]).unwrap();
            t.insert(&mut w, item(id, obj.val + 100)).unwrap();
            w.commit();
        }
        if let Some(n) = st.fail.get_mut(&obj.id)
            && *n > 0
        {
            *n -= 1;
            return Err(format!("boom on {}", obj.id));
        }
        Ok(())
    }
    async fn delete(&self, _txn: &ReadTxn, _rev: Revision, obj: &Item) -> Result<(), String> {
        self.st.lock().deletes.push(obj.id);
        Ok(())
    }
    async fn prune(&self, _txn: &ReadTxn, objects: ObjIter<'_, Item>) -> Result<(), String> {
        let ids = objects.map(|o| o.id).collect();
        self.st.lock().prunes.push(ids);
        Ok(())
    }
    async fn update_batch(&self, txn: &ReadTxn, batch: &mut [BatchEntry<Item, String>]) {
        if self.batch {
            self.st.lock().batches.push(("update", batch.len()));
        }
        for e in batch.iter_mut() {
            e.result = Some(self.update(txn, e.revision, &e.object).await);
        }
    }
    async fn delete_batch(&self, txn: &ReadTxn, batch: &mut [BatchEntry<Item, String>]) {
        if self.batch {
            self.st.lock().batches.push(("delete", batch.len()));
        }
        for e in batch.iter_mut() {
            e.result = Some(self.delete(txn, e.revision, &e.object).await);
        }
    }
}

#[derive(Default)]
struct Health(Mutex<Vec<(bool, String, String)>>);

impl HealthReporter for Health {
    fn ok(&self, msg: &str) {
        self.0.lock().push((true, msg.into(), String::new()));
    }
    fn degraded(&self, msg: &str, err: &str) {
        self.0.lock().push((false, msg.into(), err.into()));
    }
}

struct Fixture {
    db: Db,
    table: Table<Item>,
    ops: Arc<Mock>,
    health: Arc<Health>,
    handle: ReconcilerHandle,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn setup(
    ops: Mock,
    cfg: impl FnOnce(&mut Config),
    init: bool,
) -> (Fixture, Option<statedb::Initializer>) {
    let db = Db::new();
    let table = db
        .register_table(TableDef::new(
            "items",
            Index::primary("id", |o: &Item| key_from_u64(o.id)),
        ))
        .unwrap();
    let initializer = init.then(|| {
        let mut w = db.write_txn(&[&table]).unwrap();
        let i = table.register_initializer(&mut w, "test").unwrap();
        w.commit();
        i
    });
    let mut config = Config::new("test");
    cfg(&mut config);
    let ops = Arc::new(ops);
    let health = Arc::new(Health::default());
    let cancel = CancellationToken::new();
    let (handle, fut) = Reconciler::new(
        config,
        db.clone(),
        table.clone(),
        ops.clone(),
        health.clone(),
        cancel.clone(),
    )
    .unwrap();
    let task = tokio::spawn(fut);
    (
        Fixture {
            db,
            table,
            ops,
            health,
            handle,
            cancel,
            task,
        },
        initializer,
    )
}

impl Fixture {
    fn write(&self, f: impl FnOnce(&mut statedb::WriteTxn, &Table<Item>)) -> Revision {
        let mut w = self.db.write_txn(&[&self.table]).unwrap();
        f(&mut w, &self.table);
        let r = w.commit();
        self.table.revision(&r)
    }

    fn get(&self, id: u64) -> Option<Item> {
        self.table
            .get(&self.db.read_txn(), &Query::new("id", key_from_u64(id)))
            .map(|o| (*o).clone())
    }

    /// Waits (virtual time) until `pred` holds for the table.
    async fn until(&self, what: &str, pred: impl Fn(&ReadTxn) -> bool) {
        let wait = async {
            loop {
                let r = self.db.read_txn();
                if pred(&r) {
                    return;
                }
                let (_, w) = self.table.all_watch(&r);
                w.changed().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(3600), wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap();
    }
}

fn kind(f: &Fixture, id: u64) -> Option<StatusKind> {
    f.get(id).map(|o| o.status.kind)
}

#[tokio::test(start_paused = true)]
async fn failures_are_retried_with_backoff_and_status_shows_the_error() {
    let mut st = State::default();
    st.fail.insert(1, 3);
    let (f, _) = setup(
        Mock {
            st: Mutex::new(st),
            batch: false,
        },
        |_| {},
        false,
    );
    let start = tokio::time::Instant::now();
    let rev = f.write(|w, t| {
        t.insert(w, item(1, 7)).unwrap();
        t.insert(w, item(2, 8)).unwrap();
    });
    f.until("error status", |_| kind(&f, 1) == Some(StatusKind::Error))
        .await;
    assert_eq!(f.get(1).unwrap().status.error.as_deref(), Some("boom on 1"));
    f.handle.wait_until_reconciled(rev).await.unwrap();
    assert_eq!(kind(&f, 1), Some(StatusKind::Done));
    assert_eq!(kind(&f, 2), Some(StatusKind::Done));
    assert!(f.get(1).unwrap().status.error.is_none());
    let updates = f.ops.st.lock().updates.iter().filter(|u| u.0 == 1).count();
    assert_eq!(updates, 4, "3 failures + 1 success");
    // Backoff 100 + 200 + 400 ms of virtual time at least.
    assert!(
        start.elapsed() >= Duration::from_millis(700),
        "{:?}",
        start.elapsed()
    );
    let health = f.health.0.lock().clone();
    assert!(
        health
            .iter()
            .any(|(ok, msg, err)| !ok && msg == "1 error(s)" && err == "boom on 1")
    );
    assert!(health.last().unwrap().0, "healthy again: {health:?}");
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn prune_waits_for_initialization_then_runs_on_trigger() {
    let (f, init) = setup(Mock::default(), |_| {}, true);
    let rev = f.write(|w, t| {
        t.insert(w, item(1, 1)).unwrap();
    });
    f.handle.wait_until_reconciled(rev).await.unwrap();
    f.handle.prune();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        f.ops.st.lock().prunes.is_empty(),
        "no prune before initialized"
    );

    f.write(|w, _| init.unwrap().done(w).unwrap());
    for _ in 0..100 {
        if f.ops.st.lock().prunes.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(f.ops.st.lock().prunes, vec![vec![1]]);
    f.handle.prune();
    for _ in 0..100 {
        if f.ops.st.lock().prunes.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(f.ops.st.lock().prunes.len(), 2);
    // Periodic prune after the interval (1 h default).
    tokio::time::sleep(Duration::from_secs(3601)).await;
    assert_eq!(f.ops.st.lock().prunes.len(), 3);
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn deletes_reach_operations_in_batches_before_updates() {
    let (f, _) = setup(
        Mock {
            st: Mutex::default(),
            batch: true,
        },
        |_| {},
        false,
    );
    let rev = f.write(|w, t| {
        for i in 0..10 {
            t.insert(w, item(i, 0)).unwrap();
        }
    });
    f.handle.wait_until_reconciled(rev).await.unwrap();
    assert_eq!(f.ops.st.lock().batches, vec![("update", 10)]);
    f.ops.st.lock().batches.clear();
    let rev = f.write(|w, t| {
        t.delete(w, &item(3, 0)).unwrap();
        t.delete(w, &item(4, 0)).unwrap();
        t.insert(w, item(5, 1)).unwrap();
    });
    f.handle.wait_until_reconciled(rev).await.unwrap();
    {
        let st = f.ops.st.lock();
        assert_eq!(st.deletes, vec![3, 4]);
        assert_eq!(st.batches, vec![("delete", 2), ("update", 1)]);
        assert!(st.updates.contains(&(5, 1)));
    }
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn newer_write_wins_over_status_write() {
    let (f, _) = setup(Mock::default(), |_| {}, false);
    f.ops.st.lock().race = Some((f.db.clone(), f.table.clone(), 1));
    let rev = f.write(|w, t| {
        t.insert(w, item(1, 1)).unwrap();
    });
    f.handle.wait_until_reconciled(rev + 1).await.unwrap();
    let o = f.get(1).unwrap();
    assert_eq!((o.val, o.status.kind), (101, StatusKind::Done));
    assert_eq!(f.ops.st.lock().updates, vec![(1, 1), (1, 101)]);
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn refresh_re_reconciles_done_objects() {
    let (f, _) = setup(
        Mock::default(),
        |c| c.refresh_interval = Some(Duration::from_millis(1)),
        false,
    );
    let rev = f.write(|w, t| {
        t.insert(w, item(1, 1)).unwrap();
    });
    f.handle.wait_until_reconciled(rev).await.unwrap();
    // Refresh uses wall-clock ages; a 1 ms interval makes every done object stale.
    for _ in 0..1000 {
        if f.ops.st.lock().updates.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        f.ops.st.lock().updates.len() >= 3,
        "{:?}",
        f.ops.st.lock().updates
    );
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn wait_until_reconciled_errors_when_stopped_and_metrics_exist() {
    let reg = prometheus::Registry::new();
    let m = ReconcilerMetrics::new(&reg).unwrap();
    let mut st = State::default();
    st.fail.insert(1, u32::MAX);
    let (f, _) = setup(
        Mock {
            st: Mutex::new(st),
            batch: false,
        },
        |c| c.metrics = Some(m),
        false,
    );
    let rev = f.write(|w, t| {
        t.insert(w, item(1, 1)).unwrap();
    });
    f.until("error status", |_| kind(&f, 1) == Some(StatusKind::Error))
        .await;
    let handle = f.handle.clone();
    let names: Vec<String> = reg.gather().iter().map(|f| f.name().to_string()).collect();
    assert!(
        names.contains(&"cilium_reconciler_errors_total".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"cilium_reconciler_current_errors".to_string()));
    f.stop().await;
    assert!(handle.wait_until_reconciled(rev).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn status_is_in_the_json_dump() {
    let (f, _) = setup(Mock::default(), |_| {}, false);
    let rev = f.write(|w, t| {
        t.insert(w, item(1, 1)).unwrap();
    });
    f.handle.wait_until_reconciled(rev).await.unwrap();
    let dump = f.db.read_txn().dump_table("items").unwrap();
    assert_eq!(dump[0]["object"]["status"]["kind"], "done");
    f.stop().await;
}
