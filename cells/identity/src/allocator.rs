//! [`IdentityAllocator`]: one identity per distinct label set or prefix, reference counted by
//! owner, persisted in `<state-dir>/identities.json` before any call returns.
//!
//! Every mutation holds one mutex, opens a write transaction on `identities` (and `ipcache`
//! for CIDR identities), writes the state file from that transaction's view and only then
//! commits, so the file and the table never disagree and a failed write changes nothing.
//! Batch operations ([`IdentityAllocator::allocate_cidrs`],
//! [`IdentityAllocator::sync_cidr_owners`], [`IdentityAllocator::retain_owners`]) are one
//! such mutation each: one transaction and one state-file write however many prefixes they
//! touch (the file is rewritten whole, so per-prefix calls cost O(n) each). The per-kind
//! gauges are kept incrementally.
//! Callers must not hold a write transaction on `identities` or `ipcache` while calling in.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cilium_ipcache::{IpcacheEntry, prefix_query};
use cilium_node::StateFile;
use ipnet::Ipv4Net;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use statedb::{Db, Initializer, Table, WriteTxn};

use crate::error::IdentityError;
use crate::identity::{
    Identity, IdentityKind, IdentityObj, RESERVED, cidr_labels, id_query, labels_query,
};
use crate::labels::{Labels, format_labels};

/// Name of the state file inside `--state-dir`.
pub const STATE_FILE: &str = "identities.json";
/// `source` of the ipcache rows of CIDR identities.
pub const IPCACHE_SOURCE: &str = "identity";

/// Contents of `identities.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    /// Where the search for a free endpoint identity starts next.
    next_id: u32,
    /// Where the search for a free CIDR identity starts next.
    next_cidr: u32,
    /// Every non-reserved identity.
    identities: Vec<IdentityObj>,
}

/// Allocation cursors and the identity counts per kind, changed only under the mutex and
/// restored when a mutation fails.
#[derive(Debug, Clone, Copy)]
struct Counters {
    next_id: u32,
    next_cidr: u32,
    /// Identities per [`IdentityKind`] (index = `kind as usize`), kept incrementally so a
    /// mutation does not recount the table.
    counts: [i64; 3],
}

/// What [`IdentityAllocator::sync_cidr_owners`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CidrSync {
    /// Owner references added (new identities included).
    pub added: usize,
    /// New CIDR identities.
    pub allocated: usize,
    /// Owner references dropped.
    pub dropped: usize,
    /// Identities deleted because their last owner went.
    pub released: usize,
    /// Prefixes that could not get an identity (id space exhausted); the rest is applied.
    pub failed: usize,
}

/// Gauges of the identity counts per kind.
struct Metrics {
    count: prometheus::IntGaugeVec,
}

/// Allocates and releases security identities; see the module docs.
pub struct IdentityAllocator {
    db: Arc<Db>,
    table: Arc<Table<IdentityObj>>,
    ipcache: Arc<Table<IpcacheEntry>>,
    state: StateFile,
    counters: Mutex<Counters>,
    init: Mutex<Option<Initializer>>,
    metrics: Option<Metrics>,
}

impl std::fmt::Debug for IdentityAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityAllocator")
            .field("state", &self.state.path())
            .finish_non_exhaustive()
    }
}

fn clamp_next(n: u32, min: u32, max: u32) -> u32 {
    if (min..=max).contains(&n) { n } else { min }
}

impl IdentityAllocator {
    /// Builds the allocator: inserts the reserved identities, restores `identities.json`
    /// (ids unchanged) with the ipcache rows of its CIDR identities, and registers an
    /// initializer on the ipcache table that [`IdentityAllocator::restore_done`] completes.
    pub fn new(
        db: Arc<Db>,
        table: Arc<Table<IdentityObj>>,
        ipcache: Arc<Table<IpcacheEntry>>,
        state: StateFile,
        registry: Option<&prometheus::Registry>,
    ) -> Result<Self, IdentityError> {
        let persisted: Persisted = state.load()?.unwrap_or_default();
        let metrics = match registry {
            Some(r) => {
                let count = prometheus::IntGaugeVec::new(
                    prometheus::Opts::new(
                        "cilium_identities",
                        "Number of security identities by kind (reserved, endpoint, cidr)",
                    ),
                    &["kind"],
                )
                .map_err(|e| IdentityError::Invalid(format!("creating metrics: {e}")))?;
                // A second allocator in the same registry (tests) shares the first's gauge.
                let _ = r.register(Box::new(count.clone()));
                Some(Metrics { count })
            }
            None => None,
        };
        let mut w = db.write_txn(&[&*table, &*ipcache])?;
        for (id, name) in RESERVED {
            table.insert(&mut w, IdentityObj::reserved(id, name))?;
        }
        let mut restored = 0usize;
        for obj in persisted.identities {
            let id = obj.identity();
            let kind_ok = match obj.kind {
                IdentityKind::Endpoint => id.is_endpoint(),
                IdentityKind::Cidr => id.is_cidr() && obj.cidr.is_some(),
                IdentityKind::Reserved => false,
            };
            let taken = table.get(&w, &id_query(id)).is_some()
                || table.get(&w, &labels_query(&obj.labels)).is_some();
            if !kind_ok || taken || obj.owners.is_empty() {
                tracing::warn!(identity = obj.id, labels = %format_labels(&obj.labels),
                    "ignoring an invalid, duplicate or unowned identity in the state file");
                continue;
            }
            if let Some(prefix) = obj.cidr {
                Self::put_cidr_row(&ipcache, &mut w, prefix, id)?;
            }
            table.insert(&mut w, obj)?;
            restored += 1;
        }
        let init = ipcache.register_initializer(&mut w, "identities")?;
        let mut counts = [0i64; 3];
        for o in table.all(&w) {
            counts[o.kind as usize] += 1;
        }
        w.commit();
        tracing::info!(count = restored, path = %state.path().display(), "identities restored from state");
        let alloc = Self {
            db,
            table,
            ipcache,
            state,
            counters: Mutex::new(Counters {
                next_id: clamp_next(
                    persisted.next_id,
                    Identity::MIN_ALLOCATED,
                    Identity::MAX_ALLOCATED,
                ),
                next_cidr: clamp_next(
                    persisted.next_cidr,
                    Identity::CIDR_BASE + 1,
                    Identity::CIDR_MAX,
                ),
                counts,
            }),
            init: Mutex::new(Some(init)),
            metrics,
        };
        alloc.update_metrics(&counts);
        Ok(alloc)
    }

    /// The `identities` table.
    pub fn table(&self) -> &Arc<Table<IdentityObj>> {
        &self.table
    }

    /// Marks the allocator's ipcache initializer done (its restored CIDR rows are in).
    pub fn restore_done(&self) -> Result<(), IdentityError> {
        if let Some(init) = self.init.lock().take() {
            let mut w = self.db.write_txn(&[&*self.ipcache])?;
            init.done(&mut w)?;
            w.commit();
        }
        Ok(())
    }

    /// The identity `id`.
    pub fn get(&self, id: Identity) -> Option<IdentityObj> {
        let txn = self.db.read_txn();
        self.table.get(&txn, &id_query(id)).map(|o| (*o).clone())
    }

    /// The identity with exactly these labels, if one exists.
    pub fn lookup(&self, labels: &Labels) -> Option<Identity> {
        let txn = self.db.read_txn();
        self.table
            .get(&txn, &labels_query(labels))
            .map(|o| o.identity())
    }

    /// The CIDR identity of `prefix`, if one exists.
    pub fn lookup_cidr(&self, prefix: Ipv4Net) -> Option<Identity> {
        self.lookup(&cidr_labels(&prefix))
    }

    /// Every identity, reserved ones included, by id.
    pub fn list(&self) -> Vec<IdentityObj> {
        let txn = self.db.read_txn();
        self.table.all(&txn).map(|o| (*o).clone()).collect()
    }

    /// The identity of `labels` with `owner` added to its owners: the existing one when the
    /// label set is known (a reserved label set gives the reserved identity, untracked), a new
    /// one (>= 256) otherwise. Idempotent per owner.
    pub fn allocate(&self, labels: &Labels, owner: &str) -> Result<Identity, IdentityError> {
        self.allocate_hinted(labels, owner, None)
    }

    /// Like [`IdentityAllocator::allocate`], but a new identity gets `preferred` when that id
    /// is free: restoring an endpoint whose identity is gone from `identities.json` keeps its
    /// id.
    pub fn allocate_hinted(
        &self,
        labels: &Labels,
        owner: &str,
        preferred: Option<Identity>,
    ) -> Result<Identity, IdentityError> {
        if labels.is_empty() {
            return Err(IdentityError::Invalid(format!(
                "owner {owner:?} asked for an identity of an empty label set"
            )));
        }
        self.mutate(owner, |this, w, counters| {
            if let Some(found) = this.add_owner(w, labels, owner)? {
                return Ok(found);
            }
            let free = |id: u32| this.table.get(&*w, &id_query(Identity(id))).is_none();
            let id = match preferred {
                Some(p) if p.is_endpoint() && free(p.0) => p.0,
                _ => next_free(
                    &mut counters.next_id,
                    Identity::MIN_ALLOCATED,
                    Identity::MAX_ALLOCATED,
                    free,
                )
                .ok_or_else(|| IdentityError::Exhausted {
                    what: format_labels(labels),
                    kind: "endpoint",
                })?,
            };
            this.table.insert(
                w,
                IdentityObj {
                    id,
                    labels: labels.clone(),
                    kind: IdentityKind::Endpoint,
                    cidr: None,
                    owners: BTreeSet::from([owner.to_string()]),
                },
            )?;
            counters.counts[IdentityKind::Endpoint as usize] += 1;
            tracing::info!(identity = id, labels = %format_labels(labels), owner, "identity allocated");
            Ok(Identity(id))
        })
    }

    /// The node-local identity of `prefix` (host bits cleared) with `owner` added; a new one
    /// (`0x0100_0000 + n`) also gets the ipcache row `prefix -> identity` (unless another
    /// writer, e.g. an endpoint's /32, owns the row of that exact prefix).
    pub fn allocate_cidr(&self, prefix: Ipv4Net, owner: &str) -> Result<Identity, IdentityError> {
        self.mutate(owner, |this, w, counters| {
            this.add_cidr_owner(w, counters, prefix, owner)
        })
    }

    /// [`IdentityAllocator::allocate_cidr`] for many prefixes at once: one table transaction
    /// and one state-file write for the batch, all or nothing (an error changes nothing).
    /// The identities come back in the order of `prefixes`.
    pub fn allocate_cidrs(
        &self,
        prefixes: &[Ipv4Net],
        owner: &str,
    ) -> Result<Vec<Identity>, IdentityError> {
        self.mutate(owner, |this, w, counters| {
            prefixes
                .iter()
                .map(|p| this.add_cidr_owner(w, counters, *p, owner))
                .collect()
        })
    }

    /// Makes the CIDR identity references of every owner starting with `owner_prefix` equal
    /// `desired` (owner -> prefixes, host bits cleared here): missing references are added
    /// (new identities allocated with their ipcache rows), references no longer desired are
    /// dropped (identities left without owners released). One table transaction and one
    /// state-file write for the whole change; nothing is written when nothing differs. A
    /// prefix for which no id is free is counted in [`CidrSync::failed`] and skipped; any
    /// other error changes nothing.
    pub fn sync_cidr_owners(
        &self,
        owner_prefix: &str,
        desired: &BTreeMap<String, BTreeSet<Ipv4Net>>,
    ) -> Result<CidrSync, IdentityError> {
        if owner_prefix.is_empty() {
            return Err(IdentityError::Invalid(
                "the owner prefix of a CIDR identity sync must not be empty".into(),
            ));
        }
        if let Some(bad) = desired.keys().find(|o| !o.starts_with(owner_prefix)) {
            return Err(IdentityError::Invalid(format!(
                "owner {bad:?} of a CIDR identity sync does not start with {owner_prefix:?}"
            )));
        }
        let desired: BTreeMap<&str, BTreeSet<Ipv4Net>> = desired
            .iter()
            .map(|(o, ps)| (o.as_str(), ps.iter().map(Ipv4Net::trunc).collect()))
            .collect();
        // Cheap check first (read only): most passes change nothing.
        let (to_add, to_drop) = {
            let txn = self.db.read_txn();
            self.cidr_diff(&txn, owner_prefix, &desired)
        };
        if to_add.is_empty() && to_drop.is_empty() {
            return Ok(CidrSync::default());
        }
        self.mutate(owner_prefix, |this, w, counters| {
            // Recompute under the lock from the write transaction's view.
            let (to_add, to_drop) = this.cidr_diff(&*w, owner_prefix, &desired);
            let mut out = CidrSync::default();
            for (id, owner) in &to_drop {
                out.dropped += 1;
                if this.drop_owner(w, counters, *id, owner)? {
                    out.released += 1;
                }
            }
            for (prefix, owner) in &to_add {
                let labels = cidr_labels(prefix);
                let existed = this.table.get(&*w, &labels_query(&labels)).is_some();
                match this.add_cidr_owner(w, counters, *prefix, owner) {
                    Ok(_) => {
                        out.added += 1;
                        out.allocated += usize::from(!existed);
                    }
                    Err(IdentityError::Exhausted { what, kind }) => {
                        tracing::warn!(%prefix, owner, what, kind, "no free CIDR identity");
                        out.failed += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
            if out.allocated > 0 || out.released > 0 {
                tracing::info!(
                    owners = owner_prefix,
                    allocated = out.allocated,
                    released = out.released,
                    added = out.added,
                    dropped = out.dropped,
                    "CIDR identities synced"
                );
            }
            Ok(out)
        })
    }

    /// References to add (prefix, owner) and drop (identity, owner) to make the CIDR
    /// owners starting with `owner_prefix` equal `desired`.
    #[expect(clippy::type_complexity, reason = "two plain lists")]
    fn cidr_diff<R: statedb::Txn + ?Sized>(
        &self,
        txn: &R,
        owner_prefix: &str,
        desired: &BTreeMap<&str, BTreeSet<Ipv4Net>>,
    ) -> (Vec<(Ipv4Net, String)>, Vec<(Identity, String)>) {
        let mut have: BTreeMap<&str, BTreeSet<Ipv4Net>> = BTreeMap::new();
        let mut to_drop = Vec::new();
        let all: Vec<Arc<IdentityObj>> = self
            .table
            .all(txn)
            .filter(|o| o.kind == IdentityKind::Cidr)
            .map(|o| o.object())
            .collect();
        for o in &all {
            let Some(c) = o.cidr else { continue };
            for owner in o.owners.iter().filter(|w| w.starts_with(owner_prefix)) {
                if desired.get(owner.as_str()).is_some_and(|d| d.contains(&c)) {
                    have.entry(owner.as_str()).or_default().insert(c);
                } else {
                    to_drop.push((o.identity(), owner.clone()));
                }
            }
        }
        let to_add = desired
            .iter()
            .flat_map(|(owner, ps)| {
                let have = have.get(owner);
                ps.iter()
                    .filter(move |p| !have.is_some_and(|h| h.contains(p)))
                    .map(move |p| (*p, (*owner).to_string()))
            })
            .collect();
        (to_add, to_drop)
    }

    /// Adds `owner` to the identity of `prefix`, allocating it (with its ipcache row) when
    /// it does not exist.
    fn add_cidr_owner(
        &self,
        w: &mut WriteTxn,
        counters: &mut Counters,
        prefix: Ipv4Net,
        owner: &str,
    ) -> Result<Identity, IdentityError> {
        let prefix = prefix.trunc();
        let labels = cidr_labels(&prefix);
        if let Some(found) = self.add_owner(w, &labels, owner)? {
            return Ok(found);
        }
        let free = |id: u32| self.table.get(&*w, &id_query(Identity(id))).is_none();
        let id = next_free(
            &mut counters.next_cidr,
            Identity::CIDR_BASE + 1,
            Identity::CIDR_MAX,
            free,
        )
        .ok_or_else(|| IdentityError::Exhausted {
            what: prefix.to_string(),
            kind: "cidr",
        })?;
        self.table.insert(
            w,
            IdentityObj {
                id,
                labels,
                kind: IdentityKind::Cidr,
                cidr: Some(prefix),
                owners: BTreeSet::from([owner.to_string()]),
            },
        )?;
        counters.counts[IdentityKind::Cidr as usize] += 1;
        Self::put_cidr_row(&self.ipcache, w, prefix, Identity(id))?;
        tracing::debug!(identity = id, %prefix, owner, "CIDR identity allocated");
        Ok(Identity(id))
    }

    /// Drops `owner`'s reference to `id`; the identity (and the ipcache row of a CIDR
    /// identity) is deleted when no owner remains. `Ok(true)` when it was deleted. Reserved
    /// and unknown identities, and owners that hold no reference, are left alone.
    pub fn release(&self, id: Identity, owner: &str) -> Result<bool, IdentityError> {
        if id.is_reserved() || id == Identity::UNKNOWN {
            return Ok(false);
        }
        {
            let txn = self.db.read_txn();
            match self.table.get(&txn, &id_query(id)) {
                Some(o) if o.owners.contains(owner) => {}
                _ => return Ok(false),
            }
        }
        self.mutate(owner, |this, w, counters| {
            this.drop_owner(w, counters, id, owner)
        })
    }

    /// Removes every owner starting with `prefix` for which `keep` says false, deleting
    /// identities left without owners; returns how many references were dropped. A cell
    /// calls it after its restore to forget owners that did not come back (e.g. the endpoint
    /// cell with prefix `cni:` and the set of restored endpoint keys).
    pub fn retain_owners(
        &self,
        prefix: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Result<usize, IdentityError> {
        let stale: Vec<(Identity, String)> = self
            .list()
            .into_iter()
            .flat_map(|o| {
                let id = o.identity();
                o.owners
                    .into_iter()
                    .filter(|ow| ow.starts_with(prefix) && !keep(ow))
                    .map(move |ow| (id, ow))
            })
            .collect();
        if stale.is_empty() {
            return Ok(0);
        }
        // One transaction and one state-file write for all of them.
        self.mutate(prefix, |this, w, counters| {
            for (id, owner) in &stale {
                tracing::info!(
                    identity = id.0,
                    owner,
                    "dropping a stale identity reference"
                );
                this.drop_owner(w, counters, *id, owner)?;
            }
            Ok(())
        })?;
        Ok(stale.len())
    }

    /// Runs one mutation: lock, write txn, `f`, persist from the txn, commit.
    fn mutate<T>(
        &self,
        owner: &str,
        f: impl FnOnce(&Self, &mut WriteTxn, &mut Counters) -> Result<T, IdentityError>,
    ) -> Result<T, IdentityError> {
        if owner.is_empty() {
            return Err(IdentityError::Invalid(
                "the owner of an identity reference must not be empty".into(),
            ));
        }
        let mut guard = self.counters.lock();
        // Work on a copy: a failed mutation leaves cursors and counts as they were (the
        // write transaction is dropped, so the table is unchanged too).
        let mut counters = *guard;
        let mut w = self.db.write_txn(&[&*self.table, &*self.ipcache])?;
        let before = self.table.revision(&w);
        let out = f(self, &mut w, &mut counters)?;
        if self.table.revision(&w) != before {
            let persisted = Persisted {
                next_id: counters.next_id,
                next_cidr: counters.next_cidr,
                identities: self
                    .table
                    .all(&w)
                    .filter(|o| o.kind != IdentityKind::Reserved)
                    .map(|o| (*o).clone())
                    .collect(),
            };
            self.state.store(&persisted)?;
            w.commit();
            *guard = counters;
            self.update_metrics(&counters.counts);
        } else {
            *guard = counters;
        }
        Ok(out)
    }

    /// Adds `owner` to the identity of `labels` if it exists.
    fn add_owner(
        &self,
        w: &mut WriteTxn,
        labels: &Labels,
        owner: &str,
    ) -> Result<Option<Identity>, IdentityError> {
        let Some(cur) = self.table.get(&*w, &labels_query(labels)) else {
            return Ok(None);
        };
        if cur.kind != IdentityKind::Reserved && !cur.owners.contains(owner) {
            let mut new = (*cur).clone();
            new.owners.insert(owner.to_string());
            self.table.insert(w, new)?;
        }
        Ok(Some(cur.identity()))
    }

    fn drop_owner(
        &self,
        w: &mut WriteTxn,
        counters: &mut Counters,
        id: Identity,
        owner: &str,
    ) -> Result<bool, IdentityError> {
        let Some(cur) = self.table.get(&*w, &id_query(id)) else {
            return Ok(false);
        };
        let mut new = (*cur).clone();
        if !new.owners.remove(owner) {
            return Ok(false);
        }
        if !new.owners.is_empty() {
            self.table.insert(w, new)?;
            return Ok(false);
        }
        self.table.delete(w, &new)?;
        counters.counts[new.kind as usize] -= 1;
        if let Some(prefix) = new.cidr {
            let row = self.ipcache.get(&*w, &prefix_query(&prefix));
            if let Some(row) = row
                && row.source == IPCACHE_SOURCE
            {
                let row = (*row).clone();
                self.ipcache.delete(w, &row)?;
            }
        }
        if new.kind == IdentityKind::Cidr {
            tracing::debug!(identity = id.0, labels = %format_labels(&new.labels), "identity released");
        } else {
            tracing::info!(identity = id.0, labels = %format_labels(&new.labels), "identity released");
        }
        Ok(true)
    }

    fn put_cidr_row(
        ipcache: &Table<IpcacheEntry>,
        w: &mut WriteTxn,
        prefix: Ipv4Net,
        id: Identity,
    ) -> Result<(), IdentityError> {
        match ipcache.get(&*w, &prefix_query(&prefix)) {
            Some(row) if row.source != IPCACHE_SOURCE => {
                tracing::debug!(%prefix, source = %row.source, "ipcache row of another writer kept");
            }
            Some(row) if row.identity == id.0 => {}
            _ => {
                ipcache.insert(w, IpcacheEntry::new(prefix, id.0, IPCACHE_SOURCE))?;
            }
        }
        Ok(())
    }

    fn update_metrics(&self, counts: &[i64; 3]) {
        let Some(m) = &self.metrics else { return };
        for (kind, n) in [
            IdentityKind::Reserved,
            IdentityKind::Endpoint,
            IdentityKind::Cidr,
        ]
        .into_iter()
        .zip(counts)
        {
            m.count.with_label_values(&[kind.as_str()]).set(*n);
        }
    }
}

/// The first id in `min..=max` for which `free` holds, searching from `*next` and wrapping;
/// advances `*next` past it.
fn next_free(next: &mut u32, min: u32, max: u32, free: impl Fn(u32) -> bool) -> Option<u32> {
    let start = clamp_next(*next, min, max);
    let span = u64::from(max - min) + 1;
    for i in 0..span {
        let offset = (u64::from(start - min) + i) % span;
        let id = min + u32::try_from(offset).ok()?;
        if free(id) {
            *next = if id == max { min } else { id + 1 };
            return Some(id);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_free_wraps_and_skips_used() {
        let mut next = 9;
        assert_eq!(next_free(&mut next, 5, 10, |i| i != 9), Some(10));
        assert_eq!(next, 5);
        assert_eq!(next_free(&mut next, 5, 10, |i| i > 6), Some(7));
        assert_eq!(next, 8);
        assert_eq!(next_free(&mut next, 5, 10, |_| false), None);
    }
}
