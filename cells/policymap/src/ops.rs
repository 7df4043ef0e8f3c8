//! Reconciler operations: rows of `endpoint_policies` into the BPF policy maps.
//!
//! Order per endpoint (so a change never exposes a half-written policy):
//! 1. write the new and changed entries (batched),
//! 2. write the enforcement flags,
//! 3. delete the entries the new policy no longer has.
//!
//! During the change the map holds the union of old and new entries; since any deny
//! drops, a new deny applies at once and an old deny is only lifted in step 3, after
//! everything the new policy allows is present. Turning enforcement on happens after
//! the new allows are written (no transient default deny of allowed traffic); turning
//! it off happens before the entries are deleted (no transient drop either).
//! Deleting an endpoint's row deletes its entries, then its flags.
//!
//! The operations keep a shadow of what they wrote per endpoint so a change costs a
//! diff, not a map walk. The shadow is loaded from the maps on first use (restart) and
//! dropped on any error (reloaded on the retry). An update whose entries equal the shadow
//! (a refresh or retry) rewrites every entry, which repairs drift.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use cilium_bpf::{Datapath, PolicyKey, PolicyValue};
use parking_lot::Mutex;
use statedb::reconciler::{Operations, Reconcilable};
use statedb::{ObjIter, ReadTxn, Revision};

use crate::entries::{PolicySource, normalize};
use crate::error::Error;

/// Entries of one endpoint as written.
pub type EndpointEntries = BTreeMap<PolicyKey, PolicyValue>;

/// Where policy goes: the BPF maps in the agent, a double in tests.
pub trait PolicyBackend: Send + Sync + 'static {
    /// Writes (inserts or replaces) entries.
    fn write(&self, entries: &[(PolicyKey, PolicyValue)]) -> Result<(), cilium_bpf::Error>;
    /// Deletes entries (absent ones are fine).
    fn delete(&self, keys: &[PolicyKey]) -> Result<(), cilium_bpf::Error>;
    /// Writes an endpoint's enforcement flags.
    fn set_enforcement(
        &self,
        ep: u16,
        ingress: bool,
        egress: bool,
        revision: u32,
    ) -> Result<(), cilium_bpf::Error>;
    /// Removes an endpoint's flags (absent is fine).
    fn remove_enforcement(&self, ep: u16) -> Result<(), cilium_bpf::Error>;
    /// Every entry present.
    fn dump(&self) -> Result<Vec<(PolicyKey, PolicyValue)>, cilium_bpf::Error>;
    /// Every endpoint with flags.
    fn enforced_endpoints(&self) -> Result<Vec<u16>, cilium_bpf::Error>;
    /// Every cookie with counters.
    fn stat_cookies(&self) -> Result<Vec<u32>, cilium_bpf::Error>;
    /// Forgets a cookie's counters.
    fn delete_stat(&self, cookie: u32) -> Result<(), cilium_bpf::Error>;
}

impl PolicyBackend for Arc<Datapath> {
    fn write(&self, entries: &[(PolicyKey, PolicyValue)]) -> Result<(), cilium_bpf::Error> {
        self.maps().policy.entries.insert_many(entries)
    }
    fn delete(&self, keys: &[PolicyKey]) -> Result<(), cilium_bpf::Error> {
        self.maps().policy.entries.delete_many(keys).map(|_| ())
    }
    fn set_enforcement(
        &self,
        ep: u16,
        ingress: bool,
        egress: bool,
        revision: u32,
    ) -> Result<(), cilium_bpf::Error> {
        self.maps()
            .policy
            .set_enforcement(ep, ingress, egress, revision)
    }
    fn remove_enforcement(&self, ep: u16) -> Result<(), cilium_bpf::Error> {
        self.maps().policy.remove_enforcement(ep).map(|_| ())
    }
    fn dump(&self) -> Result<Vec<(PolicyKey, PolicyValue)>, cilium_bpf::Error> {
        self.maps().policy.entries.entries()
    }
    fn enforced_endpoints(&self) -> Result<Vec<u16>, cilium_bpf::Error> {
        Ok(self
            .maps()
            .policy
            .enforcements()?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }
    fn stat_cookies(&self) -> Result<Vec<u32>, cilium_bpf::Error> {
        Ok(self
            .maps()
            .policy
            .stats()?
            .into_iter()
            .map(|r| r.cookie)
            .collect())
    }
    fn delete_stat(&self, cookie: u32) -> Result<(), cilium_bpf::Error> {
        self.maps().policy.delete_stat(cookie).map(|_| ())
    }
}

/// The `endpoint_policies` reconciler's operations over a backend.
pub struct PolicyMapOps<B = Arc<Datapath>> {
    backend: B,
    shadow: Mutex<Option<HashMap<u16, EndpointEntries>>>,
    revision: AtomicU32,
}

impl<B> std::fmt::Debug for PolicyMapOps<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyMapOps").finish_non_exhaustive()
    }
}

fn map_err(op: &'static str, endpoint: u16) -> impl FnOnce(cilium_bpf::Error) -> Error {
    move |source| Error::Map {
        op,
        endpoint,
        source: Box::new(source),
    }
}

impl<B: PolicyBackend> PolicyMapOps<B> {
    /// Operations writing into `backend`.
    pub fn new(backend: B) -> Self {
        // Flag revisions only need to differ between writes; start from the wall clock so
        // a restarted agent does not repeat the previous run's numbers.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u32::try_from(d.as_secs() & 0x0fff_ffff).unwrap_or(1))
            .unwrap_or(1);
        Self {
            backend,
            shadow: Mutex::new(None),
            revision: AtomicU32::new(start),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn load_shadow(&self) -> Result<HashMap<u16, EndpointEntries>, Error> {
        let mut shadow: HashMap<u16, EndpointEntries> = HashMap::new();
        for (k, v) in self.backend.dump().map_err(map_err("listing", 0))? {
            shadow.entry(k.ep_id).or_default().insert(k, v);
        }
        Ok(shadow)
    }

    /// Runs `f` on the shadow (loaded if needed); an error drops the shadow.
    fn with_shadow<T>(
        &self,
        f: impl FnOnce(&mut HashMap<u16, EndpointEntries>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut guard = self.shadow.lock();
        if guard.is_none() {
            *guard = Some(self.load_shadow()?);
        }
        let Some(shadow) = guard.as_mut() else {
            return Err(Error::Internal("policy map shadow missing after load"));
        };
        let res = f(shadow);
        if res.is_err() {
            *guard = None;
        }
        res
    }

    /// Applies one endpoint's policy (see the module docs for the order).
    pub fn apply(
        &self,
        ep: u16,
        ingress: bool,
        egress: bool,
        desired: EndpointEntries,
    ) -> Result<(), Error> {
        self.with_shadow(|shadow| {
            let current = shadow.remove(&ep).unwrap_or_default();
            let rewrite_all = current == desired;
            let write: Vec<(PolicyKey, PolicyValue)> = desired
                .iter()
                .filter(|(k, v)| rewrite_all || current.get(k) != Some(v))
                .map(|(k, v)| (*k, *v))
                .collect();
            let stale: Vec<PolicyKey> = current
                .keys()
                .filter(|k| !desired.contains_key(k))
                .copied()
                .collect();
            self.backend
                .write(&write)
                .map_err(map_err("writing entries of", ep))?;
            let rev = self
                .revision
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            self.backend
                .set_enforcement(ep, ingress, egress, rev)
                .map_err(map_err("writing enforcement flags of", ep))?;
            self.backend
                .delete(&stale)
                .map_err(map_err("deleting stale entries of", ep))?;
            tracing::debug!(
                endpoint = ep,
                ingress,
                egress,
                entries = desired.len(),
                written = write.len(),
                deleted = stale.len(),
                "endpoint policy written to the datapath"
            );
            shadow.insert(ep, desired);
            Ok(())
        })
    }

    /// Removes one endpoint's policy: entries first, then the flags.
    pub fn remove(&self, ep: u16) -> Result<(), Error> {
        self.with_shadow(|shadow| {
            let current = shadow.remove(&ep).unwrap_or_default();
            let keys: Vec<PolicyKey> = current.into_keys().collect();
            self.backend
                .delete(&keys)
                .map_err(map_err("deleting entries of", ep))?;
            self.backend
                .remove_enforcement(ep)
                .map_err(map_err("removing enforcement flags of", ep))?;
            Ok(())
        })
    }

    /// Deletes the entries and flags of endpoints not in `wanted`, and the counters of
    /// cookies no wanted entry uses. Entries of wanted endpoints are left to their updates
    /// (which keep the write-flags-delete order): the shadow is reloaded from the maps, so
    /// the next update of such an endpoint deletes whatever extra it finds there.
    pub fn prune_to(&self, wanted: &HashMap<u16, EndpointEntries>) -> Result<(), Error> {
        let mut guard = self.shadow.lock();
        *guard = None;
        let mut present = self.load_shadow()?;
        let mut removed = 0usize;
        for (ep, entries) in present.iter().filter(|(ep, _)| !wanted.contains_key(ep)) {
            let keys: Vec<PolicyKey> = entries.keys().copied().collect();
            self.backend
                .delete(&keys)
                .map_err(map_err("pruning entries of", *ep))?;
            removed += keys.len();
        }
        present.retain(|ep, _| wanted.contains_key(ep));
        for ep in self
            .backend
            .enforced_endpoints()
            .map_err(map_err("listing enforcement flags", 0))?
        {
            if !wanted.contains_key(&ep) {
                self.backend
                    .remove_enforcement(ep)
                    .map_err(map_err("pruning enforcement flags of", ep))?;
                removed += 1;
            }
        }
        let cookies: BTreeSet<u32> = wanted
            .values()
            .flat_map(|m| m.values().map(|v| v.cookie))
            .collect();
        for c in self
            .backend
            .stat_cookies()
            .map_err(map_err("listing counters", 0))?
        {
            if !cookies.contains(&c) {
                self.backend
                    .delete_stat(c)
                    .map_err(map_err("pruning counters", 0))?;
            }
        }
        if removed > 0 {
            tracing::info!(
                removed,
                "pruned policy map entries of endpoints without a policy row"
            );
        }
        *guard = Some(present);
        Ok(())
    }
}

#[async_trait]
impl<T, B> Operations<T> for PolicyMapOps<B>
where
    T: PolicySource + Reconcilable,
    B: PolicyBackend,
{
    type Error = Error;

    async fn update(&self, _txn: &ReadTxn, _rev: Revision, obj: &T) -> Result<(), Error> {
        let ep = obj.endpoint_id();
        let (ingress, egress) = obj.enforcement();
        self.apply(ep, ingress, egress, normalize(ep, obj.policy_entries()))
    }

    async fn delete(&self, _txn: &ReadTxn, _rev: Revision, obj: &T) -> Result<(), Error> {
        self.remove(obj.endpoint_id())
    }

    async fn prune(&self, _txn: &ReadTxn, objects: ObjIter<'_, T>) -> Result<(), Error> {
        let wanted: HashMap<u16, EndpointEntries> = objects
            .map(|o| {
                (
                    o.endpoint_id(),
                    normalize(o.endpoint_id(), o.policy_entries()),
                )
            })
            .collect();
        self.prune_to(&wanted)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cilium_policy::{Direction, EndpointPolicy, PolicyEntry, new_endpoint_policies_table};
    use statedb::reconciler::{Config, Reconciler, Status};
    use statedb::{Db, NoopHealth};

    use super::*;

    /// A fake map that logs every call.
    #[derive(Default)]
    struct Fake {
        entries: Mutex<BTreeMap<PolicyKey, PolicyValue>>,
        flags: Mutex<BTreeMap<u16, (bool, bool)>>,
        stats: Mutex<BTreeSet<u32>>,
        log: Mutex<Vec<String>>,
    }

    impl PolicyBackend for Arc<Fake> {
        fn write(&self, entries: &[(PolicyKey, PolicyValue)]) -> Result<(), cilium_bpf::Error> {
            self.log.lock().push(format!("write {}", entries.len()));
            self.entries.lock().extend(entries.iter().copied());
            Ok(())
        }
        fn delete(&self, keys: &[PolicyKey]) -> Result<(), cilium_bpf::Error> {
            self.log.lock().push(format!("delete {}", keys.len()));
            let mut m = self.entries.lock();
            for k in keys {
                m.remove(k);
            }
            Ok(())
        }
        fn set_enforcement(
            &self,
            ep: u16,
            ingress: bool,
            egress: bool,
            _revision: u32,
        ) -> Result<(), cilium_bpf::Error> {
            self.log
                .lock()
                .push(format!("flags {ep} {ingress} {egress}"));
            self.flags.lock().insert(ep, (ingress, egress));
            Ok(())
        }
        fn remove_enforcement(&self, ep: u16) -> Result<(), cilium_bpf::Error> {
            self.log.lock().push(format!("unflag {ep}"));
            self.flags.lock().remove(&ep);
            Ok(())
        }
        fn dump(&self) -> Result<Vec<(PolicyKey, PolicyValue)>, cilium_bpf::Error> {
            Ok(self.entries.lock().iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn enforced_endpoints(&self) -> Result<Vec<u16>, cilium_bpf::Error> {
            Ok(self.flags.lock().keys().copied().collect())
        }
        fn stat_cookies(&self) -> Result<Vec<u32>, cilium_bpf::Error> {
            Ok(self.stats.lock().iter().copied().collect())
        }
        fn delete_stat(&self, cookie: u32) -> Result<(), cilium_bpf::Error> {
            self.stats.lock().remove(&cookie);
            Ok(())
        }
    }

    fn entry(identity: u32, port: u16, cookie: u32) -> PolicyEntry {
        PolicyEntry {
            direction: Direction::Ingress,
            identity,
            protocol: 6,
            port,
            port_prefix_len: 16,
            deny: false,
            cookie,
        }
    }

    fn policy(ep: u16, ingress: bool, entries: Vec<PolicyEntry>) -> EndpointPolicy {
        EndpointPolicy {
            endpoint_id: ep,
            identity: 300,
            ingress_enforced: ingress,
            egress_enforced: false,
            entries,
            status: Status::pending(),
        }
    }

    #[test]
    fn writes_then_flags_then_deletes_and_removes_entries_before_flags() {
        let fake = Arc::new(Fake::default());
        let ops = PolicyMapOps::new(fake.clone());
        let p1 = policy(7, true, vec![entry(300, 80, 1), entry(301, 80, 2)]);
        ops.apply(7, true, false, normalize(7, &p1.entries))
            .unwrap();
        let p2 = vec![entry(300, 80, 1), entry(302, 81, 3)];
        ops.apply(7, true, false, normalize(7, &p2)).unwrap();
        assert_eq!(
            fake.log.lock().clone(),
            vec![
                "write 2",
                "flags 7 true false",
                "delete 0",
                "write 1",
                "flags 7 true false",
                "delete 1"
            ]
        );
        assert_eq!(fake.entries.lock().len(), 2);
        // The same content again (refresh/retry) rewrites everything.
        ops.apply(7, true, false, normalize(7, &p2)).unwrap();
        assert_eq!(fake.log.lock()[6], "write 2");
        fake.log.lock().clear();
        ops.remove(7).unwrap();
        assert_eq!(fake.log.lock().clone(), vec!["delete 2", "unflag 7"]);
        assert!(fake.entries.lock().is_empty() && fake.flags.lock().is_empty());
    }

    #[test]
    fn prune_removes_unwanted_endpoints_flags_and_counters_and_restart_loads_the_maps() {
        let fake = Arc::new(Fake::default());
        let old = PolicyMapOps::new(fake.clone());
        old.apply(7, true, false, normalize(7, &[entry(300, 80, 1)]))
            .unwrap();
        old.apply(8, true, true, normalize(8, &[entry(300, 80, 2)]))
            .unwrap();
        fake.stats.lock().extend([1, 2, 99]);
        // A restarted agent: a new ops instance, endpoint 7 still wanted with a new policy.
        let ops = PolicyMapOps::new(fake.clone());
        let wanted = HashMap::from([(7u16, normalize(7, &[entry(301, 80, 5)]))]);
        ops.prune_to(&wanted).unwrap();
        assert!(fake.entries.lock().keys().all(|k| k.ep_id == 7));
        assert_eq!(
            fake.flags.lock().keys().copied().collect::<Vec<_>>(),
            vec![7]
        );
        assert!(fake.stats.lock().is_empty(), "only cookie 5 is wanted");
        // The update of 7 finds the old entry through the reloaded shadow and deletes it.
        ops.apply(7, true, false, wanted[&7].clone()).unwrap();
        let keys: Vec<PolicyKey> = fake.entries.lock().keys().copied().collect();
        assert_eq!(keys, vec![PolicyKey::new(7, 1, 301, 6, 80, 16)]);
    }

    #[tokio::test]
    async fn reconciles_the_endpoint_policies_table() {
        let db = Db::new();
        let table = new_endpoint_policies_table(&db).unwrap();
        let fake = Arc::new(Fake::default());
        let mut w = db.write_txn(&[&table]).unwrap();
        table
            .insert(&mut w, policy(3, true, vec![entry(300, 443, 9)]))
            .unwrap();
        w.commit();
        let cancel = hive::CancellationToken::new();
        let (_h, run) = Reconciler::new(
            Config::new("endpoint-policies"),
            db.clone(),
            table.clone(),
            Arc::new(PolicyMapOps::new(fake.clone())),
            Arc::new(NoopHealth),
            cancel.clone(),
        )
        .unwrap();
        let task = tokio::spawn(run);
        let mut ok = false;
        for _ in 0..500 {
            if fake.flags.lock().get(&3) == Some(&(true, false)) && fake.entries.lock().len() == 1 {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            ok,
            "policy of endpoint 3 not written: {:?}",
            fake.log.lock()
        );
        let mut w = db.write_txn(&[&table]).unwrap();
        let obj = (*table
            .get(&w, &cilium_policy::endpoint_policy_query(3))
            .unwrap())
        .clone();
        table.delete(&mut w, &obj).unwrap();
        w.commit();
        let mut gone = false;
        for _ in 0..500 {
            if fake.flags.lock().is_empty() && fake.entries.lock().is_empty() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gone, "endpoint 3 not removed: {:?}", fake.log.lock());
        cancel.cancel();
        task.await.unwrap();
    }
}
