//! Reconciler operations: table rows into the BPF ipcache map.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use cilium_bpf::{Datapath, IpcacheValue};
use ipnet::Ipv4Net;
use statedb::reconciler::Operations;
use statedb::{ObjIter, ReadTxn, Revision};

use crate::IpcacheEntry;
use crate::error::Error;

/// Where ipcache rows go: the BPF map in the agent, a double in tests.
pub trait IpcacheBackend: Send + Sync + 'static {
    /// Writes (or replaces) `prefix -> identity`.
    fn upsert(&self, prefix: Ipv4Net, identity: u32) -> Result<(), cilium_bpf::Error>;
    /// Removes `prefix`; `Ok(false)` when absent.
    fn remove(&self, prefix: Ipv4Net) -> Result<bool, cilium_bpf::Error>;
    /// Every prefix present.
    fn prefixes(&self) -> Result<Vec<Ipv4Net>, cilium_bpf::Error>;
}

impl IpcacheBackend for Arc<Datapath> {
    fn upsert(&self, prefix: Ipv4Net, identity: u32) -> Result<(), cilium_bpf::Error> {
        let value = IpcacheValue {
            sec_identity: identity,
            ..Default::default()
        };
        self.maps()
            .ipcache
            .upsert(prefix.network(), prefix.prefix_len(), &value)
    }

    fn remove(&self, prefix: Ipv4Net) -> Result<bool, cilium_bpf::Error> {
        self.maps()
            .ipcache
            .remove(prefix.network(), prefix.prefix_len())
    }

    fn prefixes(&self) -> Result<Vec<Ipv4Net>, cilium_bpf::Error> {
        Ok(self
            .maps()
            .ipcache
            .dump()?
            .into_iter()
            .filter_map(|(ip, len, _)| Ipv4Net::new(ip, len).ok())
            .collect())
    }
}

/// The ipcache reconciler's operations over a backend.
#[derive(Debug)]
pub struct IpcacheOps<B = Arc<Datapath>> {
    backend: B,
}

impl<B: IpcacheBackend> IpcacheOps<B> {
    /// Operations writing into `backend`.
    pub fn new(backend: B) -> Self {
        Self { backend }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }
}

#[async_trait]
impl<B: IpcacheBackend> Operations<IpcacheEntry> for IpcacheOps<B> {
    type Error = Error;

    async fn update(&self, _txn: &ReadTxn, _rev: Revision, e: &IpcacheEntry) -> Result<(), Error> {
        self.backend
            .upsert(e.prefix, e.identity)
            .map_err(|source| Error::Map {
                op: "updating",
                prefix: e.prefix.to_string(),
                source: Box::new(source),
            })
    }

    async fn delete(&self, _txn: &ReadTxn, _rev: Revision, e: &IpcacheEntry) -> Result<(), Error> {
        self.backend
            .remove(e.prefix)
            .map(|_| ())
            .map_err(|source| Error::Map {
                op: "deleting",
                prefix: e.prefix.to_string(),
                source: Box::new(source),
            })
    }

    async fn prune(&self, _txn: &ReadTxn, objects: ObjIter<'_, IpcacheEntry>) -> Result<(), Error> {
        let wanted: BTreeSet<Ipv4Net> = objects.map(|o| o.prefix.trunc()).collect();
        let present = self.backend.prefixes().map_err(|source| Error::Map {
            op: "listing",
            prefix: "*".into(),
            source: Box::new(source),
        })?;
        let mut removed = 0usize;
        for p in present.into_iter().filter(|p| !wanted.contains(p)) {
            self.backend.remove(p).map_err(|source| Error::Map {
                op: "deleting",
                prefix: p.to_string(),
                source: Box::new(source),
            })?;
            removed += 1;
        }
        if removed > 0 {
            tracing::info!(removed, "pruned ipcache map entries no table row wants");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use statedb::reconciler::{Config, Reconciler, StatusKind};
    use statedb::{Db, NoopHealth};

    use super::*;
    use crate::{new_table, prefix_query};

    #[derive(Default)]
    struct FakeMap(Mutex<BTreeMap<Ipv4Net, u32>>);

    impl IpcacheBackend for Arc<FakeMap> {
        fn upsert(&self, prefix: Ipv4Net, identity: u32) -> Result<(), cilium_bpf::Error> {
            self.0.lock().unwrap().insert(prefix, identity);
            Ok(())
        }
        fn remove(&self, prefix: Ipv4Net) -> Result<bool, cilium_bpf::Error> {
            Ok(self.0.lock().unwrap().remove(&prefix).is_some())
        }
        fn prefixes(&self) -> Result<Vec<Ipv4Net>, cilium_bpf::Error> {
            Ok(self.0.lock().unwrap().keys().copied().collect())
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    async fn eventually(what: &str, f: impl Fn() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for: {what}");
    }

    #[tokio::test]
    async fn rows_reach_the_map_and_stale_entries_are_pruned_only_after_init() {
        let db = Db::new();
        let table = new_table(&db).unwrap();
        let map = Arc::new(FakeMap::default());
        // A leftover from a previous agent run, and one that a writer will restore.
        map.upsert(net("10.9.0.0/16"), 99).unwrap();
        map.upsert(net("10.200.0.5/32"), 100).unwrap();

        let mut w = db.write_txn(&[&table]).unwrap();
        let init = table.register_initializer(&mut w, "endpoint").unwrap();
        table
            .insert(
                &mut w,
                IpcacheEntry::new(net("10.200.0.7/32"), 101, "endpoint"),
            )
            .unwrap();
        w.commit();

        let cancel = hive::CancellationToken::new();
        let ops = Arc::new(IpcacheOps::new(map.clone()));
        let (_h, run) = Reconciler::new(
            Config::new("ipcache"),
            db.clone(),
            table.clone(),
            ops,
            Arc::new(NoopHealth),
            cancel.clone(),
        )
        .unwrap();
        let task = tokio::spawn(run);

        eventually("row written", || {
            map.prefixes().unwrap().contains(&net("10.200.0.7/32"))
        })
        .await;
        // Not initialized yet: nothing pruned.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(map.prefixes().unwrap().contains(&net("10.9.0.0/16")));

        let mut w = db.write_txn(&[&table]).unwrap();
        table
            .insert(
                &mut w,
                IpcacheEntry::new(net("10.200.0.5/32"), 100, "endpoint"),
            )
            .unwrap();
        init.done(&mut w).unwrap();
        w.commit();
        eventually("stale prefix pruned", || {
            !map.prefixes().unwrap().contains(&net("10.9.0.0/16"))
        })
        .await;
        assert_eq!(
            map.0.lock().unwrap().clone(),
            BTreeMap::from([(net("10.200.0.5/32"), 100), (net("10.200.0.7/32"), 101)])
        );
        let r = db.read_txn();
        let row = table.get(&r, &prefix_query(&net("10.200.0.7/32"))).unwrap();
        eventually("status done", || {
            let r = db.read_txn();
            table
                .get(&r, &prefix_query(&net("10.200.0.7/32")))
                .is_some_and(|o| o.status.kind == StatusKind::Done)
        })
        .await;
        assert_eq!(row.identity, 101);

        // Deleting the row removes the map entry.
        let mut w = db.write_txn(&[&table]).unwrap();
        let obj = (*table.get(&w, &prefix_query(&net("10.200.0.7/32"))).unwrap()).clone();
        table.delete(&mut w, &obj).unwrap();
        w.commit();
        eventually("deleted", || {
            !map.prefixes().unwrap().contains(&net("10.200.0.7/32"))
        })
        .await;
        cancel.cancel();
        task.await.unwrap();
    }

    #[test]
    fn keys_order_by_address_then_length_and_ignore_host_bits() {
        let a = crate::prefix_key(&net("10.0.0.0/8"));
        let b = crate::prefix_key(&net("10.0.0.0/16"));
        let c = crate::prefix_key(&net("10.0.0.1/32"));
        assert!(a < b && b < c);
        assert_eq!(crate::prefix_key(&net("10.1.2.3/8")), a);
        assert_eq!(
            IpcacheEntry::new(net("10.1.2.3/8"), 1, "x").prefix,
            net("10.0.0.0/8")
        );
    }
}
