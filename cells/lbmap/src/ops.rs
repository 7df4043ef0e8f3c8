//! Reconciler operations: rows of the `frontends` table into the BPF load-balancer maps.
//!
//! Order per frontend, so the datapath never sees a half-written service (it reads only
//! the `count` slots named by the slot-0 header, and backends by id):
//! 1. backends (id → address) of the new selection,
//! 2. backend slots `1..=n`,
//! 3. the Maglev table (a new inner map swapped in at once),
//! 4. reverse NAT (service id → frontend), and the `loadBalancerSourceRanges` prefixes the
//!    frontend gains; then, for a frontend with two scopes (`externalTrafficPolicy: Local`
//!    with backends elsewhere), the header of its internal scope (clients on this node),
//!    whose slots were written in step 2,
//! 5. the slot-0 header with the new count (the switch-over; flagged two-scopes when there
//!    is an internal scope),
//! 6. surplus slots `n+1..=old n` trimmed (in each scope), an internal scope the frontend
//!    no longer has deleted (header, then slots), and the source ranges it lost deleted,
//! 7. state of backends that left the frontend flushed (UDP conntrack, affinity,
//!    unconnected-socket choices) so their flows move, and backends no frontend uses
//!    deleted.
//!
//! Deleting a frontend removes the headers first, then its slots, Maglev table, reverse
//! NAT, source ranges and orphaned backends. The operations keep a shadow of what they
//! wrote, loaded from the maps on first use (restart) and dropped on error.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use async_trait::async_trait;
use cilium_bpf::types::{
    CT_F_SERVICE, CT_KEY_F_SERVICE, LB_ALG_MAGLEV, LB_ALG_RANDOM, LB_SCOPE_EXT, LB_SCOPE_INT,
    SVC_F_AFFINITY, SVC_F_EXTERNAL, SVC_F_NO_BACKENDS, SVC_F_SRC_RANGE, SVC_F_SRC_RANGE_DENY,
    SVC_F_TWO_SCOPES,
};
use cilium_bpf::{Datapath, Lb4Backend, Lb4Key, Lb4RevNat, Lb4RevNatKey, Lb4Service};
use parking_lot::Mutex;
use statedb::reconciler::{BatchEntry, Operations, Reconcilable};
use statedb::{ObjIter, ReadTxn, Revision};

use crate::error::Error;
use crate::maglev;

/// Backend selection algorithm (`--lb-algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// A random backend per new flow.
    #[default]
    Random,
    /// Maglev consistent hashing on the flow's 5-tuple.
    Maglev,
}

/// One backend of a frontend as the maps need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendDesc {
    /// Stable id (> 0).
    pub id: u32,
    /// Address.
    pub address: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// Terminating (informative: the control plane already chose the set).
    pub terminating: bool,
}

/// A frontend as the maps need it (the contract's `Frontend`, reduced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendDesc {
    /// Frontend address.
    pub address: Ipv4Addr,
    /// Frontend port.
    pub port: u16,
    /// IP protocol number (6, 17, 132).
    pub proto: u8,
    /// NodePort / ExternalIP / LoadBalancer (socket-translated only in the host netns).
    pub external: bool,
    /// Kind name for display (`ClusterIP`, `NodePort`, ...).
    pub kind: String,
    /// `namespace/name` of the service.
    pub service: String,
    /// Reverse-NAT index (> 0), unique per frontend.
    pub service_id: u16,
    /// Final backend selection, active first; empty = refuse.
    pub backends: Vec<BackendDesc>,
    /// ClientIP affinity timeout (s), 0 = none.
    pub affinity_timeout_secs: u32,
    /// `loadBalancerSourceRanges` (prefix, length; host bits zero): when not empty only
    /// clients in one of them reach the frontend (with `source_ranges_deny`: all others).
    pub source_ranges: Vec<(Ipv4Addr, u8)>,
    /// `service.cilium.io/src-ranges-policy: deny`: the ranges are the clients refused.
    pub source_ranges_deny: bool,
    /// A second backend set for clients on this node (pods, host processes), written under
    /// the internal scope: an external frontend of an `externalTrafficPolicy: Local`
    /// service whose backends are not all local. None: one set for every client.
    pub internal: Option<Vec<BackendDesc>>,
}

/// A `loadBalancerSourceRanges` entry of the maps: service id, client prefix, length.
pub type SrcRange = (u16, Ipv4Addr, u8);

/// Frontend key: address, port, protocol.
pub type FrontendKey = (Ipv4Addr, u16, u8);

impl FrontendDesc {
    /// Its key.
    pub fn key(&self) -> FrontendKey {
        (self.address, self.port, self.proto)
    }
}

/// Anything the reconciler can read a [`FrontendDesc`] from (the loadbalancer cell's
/// `Frontend`; a test double).
pub trait FrontendSource {
    /// The frontend's desired state.
    fn desc(&self) -> FrontendDesc;
}

/// Where services go: the BPF maps in the agent, a double in tests.
pub trait LbBackend: Send + Sync + 'static {
    /// Inserts or replaces backends.
    fn write_backends(&self, b: &[(u32, Lb4Backend)]) -> Result<(), cilium_bpf::Error>;
    /// Deletes backends (absent is fine).
    fn delete_backends(&self, ids: &[u32]) -> Result<(), cilium_bpf::Error>;
    /// Inserts or replaces service entries (slots or header).
    fn write_services(&self, e: &[(Lb4Key, Lb4Service)]) -> Result<(), cilium_bpf::Error>;
    /// Deletes service entries (absent is fine).
    fn delete_services(&self, keys: &[Lb4Key]) -> Result<(), cilium_bpf::Error>;
    /// Installs a Maglev table.
    fn set_maglev(&self, id: u16, table: &[u32]) -> Result<(), cilium_bpf::Error>;
    /// Removes a Maglev table (absent is fine).
    fn remove_maglev(&self, id: u16) -> Result<(), cilium_bpf::Error>;
    /// Writes a reverse-NAT entry.
    fn write_revnat(&self, id: u16, v: Lb4RevNat) -> Result<(), cilium_bpf::Error>;
    /// Writes many reverse-NAT entries.
    fn write_revnats(&self, e: &[(u16, Lb4RevNat)]) -> Result<(), cilium_bpf::Error> {
        e.iter().try_for_each(|(id, v)| self.write_revnat(*id, *v))
    }
    /// Deletes a reverse-NAT entry (absent is fine).
    fn delete_revnat(&self, id: u16) -> Result<(), cilium_bpf::Error>;
    /// Adds source-range client prefixes.
    fn write_src_ranges(&self, r: &[SrcRange]) -> Result<(), cilium_bpf::Error>;
    /// Deletes source-range client prefixes (absent is fine).
    fn delete_src_ranges(&self, r: &[SrcRange]) -> Result<(), cilium_bpf::Error>;
    /// Every source-range client prefix.
    fn src_ranges(&self) -> Result<Vec<SrcRange>, cilium_bpf::Error>;
    /// Every service entry.
    fn dump_services(&self) -> Result<Vec<(Lb4Key, Lb4Service)>, cilium_bpf::Error>;
    /// Every backend with its id.
    fn dump_backends(&self) -> Result<Vec<(u32, Lb4Backend)>, cilium_bpf::Error>;
    /// Every reverse-NAT id.
    fn revnat_ids(&self) -> Result<Vec<u16>, cilium_bpf::Error>;
    /// Every service id with a Maglev table.
    fn maglev_ids(&self) -> Vec<u16>;
    /// Forgets flow state pointing at the given backends, each `(rev_nat_id, backend id,
    /// backend)`: UDP/other conntrack entries, affinity, unconnected-socket choices. One
    /// pass over each map for the whole list. Returns entries removed.
    fn flush_backends(
        &self,
        targets: &[(u16, u32, Lb4Backend)],
    ) -> Result<usize, cilium_bpf::Error>;
}

impl LbBackend for Arc<Datapath> {
    fn write_backends(&self, b: &[(u32, Lb4Backend)]) -> Result<(), cilium_bpf::Error> {
        self.maps().lb.backends.insert_many(b)
    }
    fn delete_backends(&self, ids: &[u32]) -> Result<(), cilium_bpf::Error> {
        self.maps().lb.backends.delete_many(ids).map(|_| ())
    }
    fn write_services(&self, e: &[(Lb4Key, Lb4Service)]) -> Result<(), cilium_bpf::Error> {
        self.maps().lb.services.insert_many(e)
    }
    fn delete_services(&self, keys: &[Lb4Key]) -> Result<(), cilium_bpf::Error> {
        self.maps().lb.services.delete_many(keys).map(|_| ())
    }
    fn set_maglev(&self, id: u16, table: &[u32]) -> Result<(), cilium_bpf::Error> {
        self.maps().lb.set_maglev(id, table)
    }
    fn remove_maglev(&self, id: u16) -> Result<(), cilium_bpf::Error> {
        self.maps().lb.remove_maglev(id).map(|_| ())
    }
    fn write_revnat(&self, id: u16, v: Lb4RevNat) -> Result<(), cilium_bpf::Error> {
        self.maps().lb.revnat.insert(
            &Lb4RevNatKey {
                rev_nat_id: id,
                pad: 0,
            },
            &v,
        )
    }
    fn write_revnats(&self, e: &[(u16, Lb4RevNat)]) -> Result<(), cilium_bpf::Error> {
        let entries: Vec<(Lb4RevNatKey, Lb4RevNat)> = e
            .iter()
            .map(|(id, v)| {
                (
                    Lb4RevNatKey {
                        rev_nat_id: *id,
                        pad: 0,
                    },
                    *v,
                )
            })
            .collect();
        self.maps().lb.revnat.insert_many(&entries)
    }
    fn delete_revnat(&self, id: u16) -> Result<(), cilium_bpf::Error> {
        self.maps()
            .lb
            .revnat
            .delete(&Lb4RevNatKey {
                rev_nat_id: id,
                pad: 0,
            })
            .map(|_| ())
    }
    fn write_src_ranges(&self, r: &[SrcRange]) -> Result<(), cilium_bpf::Error> {
        self.maps().lb.add_src_ranges(r)
    }
    fn delete_src_ranges(&self, r: &[SrcRange]) -> Result<(), cilium_bpf::Error> {
        self.maps().lb.remove_src_ranges(r).map(|_| ())
    }
    fn src_ranges(&self) -> Result<Vec<SrcRange>, cilium_bpf::Error> {
        self.maps().lb.src_ranges()
    }
    fn dump_services(&self) -> Result<Vec<(Lb4Key, Lb4Service)>, cilium_bpf::Error> {
        self.maps().lb.services.entries()
    }
    fn dump_backends(&self) -> Result<Vec<(u32, Lb4Backend)>, cilium_bpf::Error> {
        self.maps().lb.backends.entries()
    }
    fn revnat_ids(&self) -> Result<Vec<u16>, cilium_bpf::Error> {
        Ok(self
            .maps()
            .lb
            .revnat
            .entries()?
            .into_iter()
            .map(|(k, _)| k.rev_nat_id)
            .collect())
    }
    fn maglev_ids(&self) -> Vec<u16> {
        self.maps().lb.maglev_services()
    }
    fn flush_backends(
        &self,
        targets: &[(u16, u32, Lb4Backend)],
    ) -> Result<usize, cilium_bpf::Error> {
        if targets.is_empty() {
            return Ok(0);
        }
        let by_id: HashSet<(u16, u32)> = targets.iter().map(|(s, b, _)| (*s, *b)).collect();
        // Raw (network-order) address and port, as the conntrack key stores them.
        let by_addr: HashSet<(u16, u32, u16)> = targets
            .iter()
            .map(|(s, _, be)| (*s, be.address, be.port))
            .collect();
        let maps = self.maps();
        let mut n = 0;
        // Non-TCP conntrack only: established TCP connections to a terminating backend
        // keep running; datagram flows move to a remaining backend.
        let ct = &maps.conntrack.any;
        for (k, v) in ct.entries()? {
            if v.flags & CT_F_SERVICE == 0 {
                continue;
            }
            let points = if k.flags & CT_KEY_F_SERVICE != 0 {
                by_id.contains(&(v.rev_nat_id, v.nat_aux))
            } else {
                by_addr.contains(&(v.rev_nat_id, k.daddr, k.dport))
                    || by_addr.contains(&(v.rev_nat_id, k.saddr, k.sport))
            };
            if points && ct.delete(&k)? {
                n += 1;
            }
        }
        for (k, v) in maps.lb.affinity.entries()? {
            if by_id.contains(&(k.rev_nat_id, v.backend_id)) && maps.lb.affinity.delete(&k)? {
                n += 1;
            }
        }
        for (k, v) in maps.lb.sk_fwd.entries()? {
            if by_id.contains(&(v.rev_nat_id, v.backend_id)) && maps.lb.sk_fwd.delete(&k)? {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// What was written for one frontend.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Written {
    service_id: u16,
    /// Backend ids in slot order.
    backends: Vec<u32>,
    /// Addresses of the backends it uses (both scopes), to flush their flows once they
    /// leave.
    addrs: BTreeMap<u32, Lb4Backend>,
    /// Source ranges written under `service_id`.
    ranges: BTreeSet<(Ipv4Addr, u8)>,
    /// Backend ids of the internal scope's slots, in slot order; None when the frontend
    /// has no internal scope in the maps.
    internal: Option<Vec<u32>>,
}

impl Written {
    /// Every backend id it uses (both scopes).
    fn all_backends(&self) -> impl Iterator<Item = u32> + '_ {
        self.backends
            .iter()
            .chain(self.internal.iter().flatten())
            .copied()
    }

    /// Its source ranges as map entries under service id `id`.
    fn range_entries(&self, id: u16) -> Vec<SrcRange> {
        self.ranges.iter().map(|&(a, l)| (id, a, l)).collect()
    }
}

/// The `frontends` reconciler's operations over a backend.
pub struct LbMapOps<B = Arc<Datapath>> {
    backend: B,
    algorithm: Algorithm,
    maglev_size: u32,
    shadow: Mutex<Option<HashMap<FrontendKey, Written>>>,
    /// Inside a batch: the flushes and orphan checks its frontends asked for, done once at
    /// its end (one pass over the flow maps, one look at which backends are still used)
    /// instead of once per frontend.
    deferred: Mutex<Option<Deferred>>,
}

/// Writes a whole batch of frontends at once ([`LbMapOps::apply_many`]).
type WriteAll<S> = fn(&S, &[FrontendDesc]) -> Result<(), Error>;

/// Work a batch defers to its end.
#[derive(Debug, Default)]
struct Deferred {
    /// `(service id, backend id, backend)` whose flow state goes.
    flush: Vec<(u16, u32, Lb4Backend)>,
    /// Backend ids that left some frontend (deleted if no frontend uses them).
    removed: BTreeSet<u32>,
}

impl<B> std::fmt::Debug for LbMapOps<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbMapOps")
            .field("algorithm", &self.algorithm)
            .field("maglev_size", &self.maglev_size)
            .finish_non_exhaustive()
    }
}

fn fe_name(k: &FrontendKey) -> String {
    format!("{}:{}/{}", k.0, k.1, k.2)
}

fn map_err(op: &'static str, k: &FrontendKey) -> impl FnOnce(cilium_bpf::Error) -> Error {
    let frontend = fe_name(k);
    move |source| Error::Map {
        op,
        frontend,
        source: Box::new(source),
    }
}

fn backend_value(b: &BackendDesc, proto: u8) -> Lb4Backend {
    Lb4Backend::new(b.address, b.port, proto, u8::from(b.terminating))
}

/// Number of slots a set of backends fills (at most `u16::MAX`).
fn slot_count<T>(set: &[T]) -> u16 {
    u16::try_from(set.len()).unwrap_or(u16::MAX)
}

/// Keys of slots `from..=to` of frontend `k` in `scope` (slot 0: the header); none when
/// `from > to`.
fn scope_slots(k: &FrontendKey, scope: u8, from: u32, to: u16) -> Vec<Lb4Key> {
    (from..=u32::from(to))
        .filter_map(|s| u16::try_from(s).ok())
        .map(|s| Lb4Key::scoped(k.0, k.1, k.2, s, scope))
        .collect()
}

impl<B: LbBackend> LbMapOps<B> {
    /// Operations writing into `backend` with the given algorithm and Maglev size.
    pub fn new(backend: B, algorithm: Algorithm, maglev_size: u32) -> Self {
        Self {
            backend,
            algorithm,
            maglev_size,
            shadow: Mutex::new(None),
            deferred: Mutex::new(None),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn load_shadow(&self) -> Result<HashMap<FrontendKey, Written>, Error> {
        self.read_maps().map(|(shadow, _)| shadow)
    }

    /// What the maps hold: the shadow of every frontend in them, and every backend id of the
    /// backends map.
    fn read_maps(&self) -> Result<(HashMap<FrontendKey, Written>, Vec<u32>), Error> {
        let none = (Ipv4Addr::UNSPECIFIED, 0, 0);
        let entries = self
            .backend
            .dump_services()
            .map_err(map_err("listing services for", &none))?;
        /// What the maps hold for one frontend: the header and slots of each scope.
        #[derive(Default)]
        struct Found {
            header: Option<Lb4Service>,
            slots: BTreeMap<u16, u32>,
            internal_header: Option<Lb4Service>,
            internal_slots: BTreeMap<u16, u32>,
        }
        let mut found: HashMap<FrontendKey, Found> = HashMap::new();
        for (k, v) in entries {
            let f = found.entry((k.addr(), k.port(), k.proto)).or_default();
            match (k.scope == LB_SCOPE_INT, k.slot) {
                (false, 0) => f.header = Some(v),
                (false, slot) => {
                    f.slots.insert(slot, v.backend_id);
                }
                (true, 0) => f.internal_header = Some(v),
                (true, slot) => {
                    f.internal_slots.insert(slot, v.backend_id);
                }
            }
        }
        // Addresses of the backends the frontends use, so that flows of a backend the first
        // write after a restart removes are flushed too.
        let known: HashMap<u32, Lb4Backend> = self
            .backend
            .dump_backends()
            .map_err(map_err("listing backends for", &none))?
            .into_iter()
            .collect();
        let mut ranges: HashMap<u16, BTreeSet<(Ipv4Addr, u8)>> = HashMap::new();
        for (id, a, l) in self
            .backend
            .src_ranges()
            .map_err(map_err("listing source ranges for", &none))?
        {
            ranges.entry(id).or_default().insert((a, l));
        }
        // Slots beyond a header's count (or without a header) are surplus: kept in the
        // shadow so the next write trims them (or the prune deletes them).
        let out = found
            .into_iter()
            .map(|(key, f)| {
                let service_id = f.header.or(f.internal_header).map_or(0, |h| h.rev_nat_id);
                let internal = (f.internal_header.is_some() || !f.internal_slots.is_empty())
                    .then(|| f.internal_slots.into_values().collect());
                let mut written = Written {
                    service_id,
                    backends: f.slots.into_values().collect(),
                    addrs: BTreeMap::new(),
                    ranges: f
                        .header
                        .and_then(|h| ranges.get(&h.rev_nat_id).cloned())
                        .unwrap_or_default(),
                    internal,
                };
                written.addrs = written
                    .all_backends()
                    .filter_map(|id| known.get(&id).map(|b| (id, *b)))
                    .collect();
                (key, written)
            })
            .collect();
        Ok((out, known.into_keys().collect()))
    }

    fn with_shadow<T>(
        &self,
        f: impl FnOnce(&mut HashMap<FrontendKey, Written>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut guard = self.shadow.lock();
        if guard.is_none() {
            *guard = Some(self.load_shadow()?);
        }
        let Some(shadow) = guard.as_mut() else {
            return Err(Error::Flag {
                flag: "internal",
                value: String::new(),
                reason: "lb shadow missing after load".into(),
            });
        };
        let res = f(shadow);
        if res.is_err() {
            *guard = None;
        }
        res
    }

    /// The slot-0 header of `d` with `n` slots in `scope`. The internal scope always picks
    /// randomly (Maglev's consistency across nodes matters only to outside clients) and is
    /// never flagged two-scopes.
    fn header(&self, d: &FrontendDesc, n: u16, scope: u8) -> Lb4Service {
        let maglev = self.algorithm == Algorithm::Maglev && n > 0 && scope == LB_SCOPE_EXT;
        let mut flags = 0;
        if d.affinity_timeout_secs > 0 {
            flags |= SVC_F_AFFINITY;
        }
        if n == 0 {
            flags |= SVC_F_NO_BACKENDS;
        }
        if d.external {
            flags |= SVC_F_EXTERNAL;
        }
        if !d.source_ranges.is_empty() {
            flags |= SVC_F_SRC_RANGE;
            if d.source_ranges_deny {
                flags |= SVC_F_SRC_RANGE_DENY;
            }
        }
        if d.internal.is_some() && scope == LB_SCOPE_EXT {
            flags |= SVC_F_TWO_SCOPES;
        }
        Lb4Service {
            backend_id: if maglev { self.maglev_size } else { 0 },
            affinity_timeout: d.affinity_timeout_secs,
            count: n,
            rev_nat_id: d.service_id,
            flags,
            algorithm: if maglev { LB_ALG_MAGLEV } else { LB_ALG_RANDOM },
            pad: 0,
        }
    }

    /// Backend ids used by any frontend in `shadow`.
    fn referenced(shadow: &HashMap<FrontendKey, Written>) -> BTreeSet<u32> {
        shadow.values().flat_map(Written::all_backends).collect()
    }

    /// Writes one frontend (see the module docs for the order).
    pub fn apply(&self, d: &FrontendDesc) -> Result<(), Error> {
        self.apply_many(std::slice::from_ref(d))
    }

    /// Writes several frontends, each in the order of the module docs, with one map call per
    /// step for all of them: every backend, then every slot, the Maglev tables, the reverse
    /// NAT entries, and only then the headers (a frontend switches over to its new slots only
    /// once everything it points at is written), then the per-frontend clean-up. An error
    /// names the first frontend; the caller retries frontend by frontend, which is
    /// idempotent and names the one that fails.
    fn apply_many(&self, ds: &[FrontendDesc]) -> Result<(), Error> {
        let Some(first) = ds.first() else {
            return Ok(());
        };
        let first = first.key();
        self.with_shadow(|shadow| {
            let mut backends: Vec<(u32, Lb4Backend)> = Vec::new();
            let mut slots: Vec<(Lb4Key, Lb4Service)> = Vec::new();
            let mut revnats: Vec<(u16, Lb4RevNat)> = Vec::with_capacity(ds.len());
            let mut ranges: Vec<SrcRange> = Vec::new();
            let mut headers: Vec<(Lb4Key, Lb4Service)> = Vec::with_capacity(ds.len());
            let mut internal_headers: Vec<(Lb4Key, Lb4Service)> = Vec::new();
            let mut counts = Vec::with_capacity(ds.len());
            for d in ds {
                let n = slot_count(&d.backends);
                let scopes = std::iter::once((LB_SCOPE_EXT, &d.backends, n)).chain(
                    d.internal
                        .as_ref()
                        .map(|int| (LB_SCOPE_INT, int, slot_count(int))),
                );
                for (scope, set, count) in scopes {
                    for (b, slot) in set.iter().take(usize::from(count)).zip(1u16..) {
                        backends.push((b.id, backend_value(b, d.proto)));
                        slots.push((
                            Lb4Key::scoped(d.address, d.port, d.proto, slot, scope),
                            Lb4Service {
                                backend_id: b.id,
                                rev_nat_id: d.service_id,
                                ..Default::default()
                            },
                        ));
                    }
                    let header = (
                        Lb4Key::scoped(d.address, d.port, d.proto, 0, scope),
                        self.header(d, count, scope),
                    );
                    if scope == LB_SCOPE_EXT {
                        headers.push(header);
                    } else {
                        internal_headers.push(header);
                    }
                }
                revnats.push((d.service_id, Lb4RevNat::new(d.address, d.port)));
                ranges.extend(d.source_ranges.iter().map(|&(a, l)| (d.service_id, a, l)));
                counts.push(n);
            }
            // 1. backends
            self.backend
                .write_backends(&backends)
                .map_err(map_err("writing backends of", &first))?;
            // 2. slots 1..=n
            self.backend
                .write_services(&slots)
                .map_err(map_err("writing backend slots of", &first))?;
            // 3. Maglev
            for (d, &n) in ds.iter().zip(&counts) {
                let key = d.key();
                if self.algorithm == Algorithm::Maglev && n > 0 {
                    let ids: Vec<u32> = d
                        .backends
                        .iter()
                        .take(usize::from(n))
                        .map(|b| b.id)
                        .collect();
                    let table = maglev::table(&ids, self.maglev_size);
                    self.backend
                        .set_maglev(d.service_id, &table)
                        .map_err(map_err("writing the Maglev table of", &key))?;
                } else {
                    self.backend
                        .remove_maglev(d.service_id)
                        .map_err(map_err("removing the Maglev table of", &key))?;
                }
            }
            // 4. reverse NAT
            self.backend
                .write_revnats(&revnats)
                .map_err(map_err("writing reverse NAT of", &first))?;
            self.backend
                .write_src_ranges(&ranges)
                .map_err(map_err("writing source ranges of", &first))?;
            if !internal_headers.is_empty() {
                self.backend
                    .write_services(&internal_headers)
                    .map_err(map_err("writing the internal-scope header of", &first))?;
            }
            // 5. headers: the switch-over
            self.backend
                .write_services(&headers)
                .map_err(map_err("writing the header of", &first))?;
            for (d, &n) in ds.iter().zip(&counts) {
                self.finish(shadow, d, n)?;
            }
            Ok(())
        })
    }

    /// Steps 6 and 7 of writing frontend `d` (now pointing at its `n` new slots): trim the
    /// slots it no longer has, drop what an old service id left, forget removed backends.
    fn finish(
        &self,
        shadow: &mut HashMap<FrontendKey, Written>,
        d: &FrontendDesc,
        n: u16,
    ) -> Result<(), Error> {
        let key = d.key();
        let cur = shadow.remove(&key).unwrap_or_default();
        // 6. trim surplus slots; an internal scope no longer wanted goes, header first
        let mut surplus = scope_slots(
            &key,
            LB_SCOPE_EXT,
            u32::from(n) + 1,
            slot_count(&cur.backends),
        );
        if let Some(old) = &cur.internal {
            let old_m = slot_count(old);
            match &d.internal {
                Some(int) => surplus.extend(scope_slots(
                    &key,
                    LB_SCOPE_INT,
                    u32::from(slot_count(int)) + 1,
                    old_m,
                )),
                None => {
                    self.backend
                        .delete_services(&scope_slots(&key, LB_SCOPE_INT, 0, 0))
                        .map_err(map_err("deleting the internal-scope header of", &key))?;
                    surplus.extend(scope_slots(&key, LB_SCOPE_INT, 1, old_m));
                }
            }
        }
        if !surplus.is_empty() {
            self.backend
                .delete_services(&surplus)
                .map_err(map_err("trimming slots of", &key))?;
        }
        let new_ranges: BTreeSet<(Ipv4Addr, u8)> = d.source_ranges.iter().copied().collect();
        let lost: Vec<SrcRange> = cur
            .range_entries(cur.service_id)
            .into_iter()
            .filter(|&(id, a, l)| id != d.service_id || !new_ranges.contains(&(a, l)))
            .collect();
        if !lost.is_empty() {
            self.backend
                .delete_src_ranges(&lost)
                .map_err(map_err("deleting source ranges of", &key))?;
        }
        if cur.service_id != 0 && cur.service_id != d.service_id {
            self.backend
                .delete_revnat(cur.service_id)
                .map_err(map_err("deleting the old reverse NAT of", &key))?;
            self.backend
                .remove_maglev(cur.service_id)
                .map_err(map_err("removing the old Maglev table of", &key))?;
        }
        // 7. flush flows of removed backends (in neither scope now), delete orphans
        let used = |set: &[BackendDesc]| -> Vec<u32> {
            set.iter()
                .take(usize::from(slot_count(set)))
                .map(|b| b.id)
                .collect()
        };
        let written = Written {
            service_id: d.service_id,
            backends: used(&d.backends),
            // The backends it uses now (removed ones are flushed by `cur.addrs` below).
            addrs: d
                .backends
                .iter()
                .chain(d.internal.iter().flatten())
                .map(|b| (b.id, backend_value(b, d.proto)))
                .collect(),
            ranges: new_ranges,
            internal: d.internal.as_deref().map(used),
        };
        let new_ids: BTreeSet<u32> = written.all_backends().collect();
        let removed: Vec<u32> = cur
            .all_backends()
            .filter(|id| !new_ids.contains(id))
            .collect::<BTreeSet<u32>>()
            .into_iter()
            .collect();
        shadow.insert(key, written);
        self.forget_backends(shadow, &key, cur.service_id, &removed, &cur.addrs)?;
        tracing::debug!(frontend = %fe_name(&key), service = %d.service, backends = n,
            internal = ?d.internal.as_ref().map(Vec::len), removed = removed.len(), "frontend written");
        Ok(())
    }

    fn forget_backends(
        &self,
        shadow: &HashMap<FrontendKey, Written>,
        key: &FrontendKey,
        service_id: u16,
        removed: &[u32],
        addrs: &BTreeMap<u32, Lb4Backend>,
    ) -> Result<(), Error> {
        if removed.is_empty() {
            return Ok(());
        }
        let flush: Vec<(u16, u32, Lb4Backend)> = removed
            .iter()
            .filter_map(|id| addrs.get(id).map(|be| (service_id, *id, *be)))
            .collect();
        if let Some(d) = self.deferred.lock().as_mut() {
            d.flush.extend(flush);
            d.removed.extend(removed.iter().copied());
            return Ok(());
        }
        let removed: BTreeSet<u32> = removed.iter().copied().collect();
        self.flush_and_delete(shadow, key, &flush, &removed)
    }

    /// Flushes the flow state of `flush` and deletes the backends of `removed` that no
    /// frontend of `shadow` uses any more.
    fn flush_and_delete(
        &self,
        shadow: &HashMap<FrontendKey, Written>,
        key: &FrontendKey,
        flush: &[(u16, u32, Lb4Backend)],
        removed: &BTreeSet<u32>,
    ) -> Result<(), Error> {
        let n = self
            .backend
            .flush_backends(flush)
            .map_err(map_err("flushing flows of removed backends of", key))?;
        if n > 0 {
            tracing::info!(frontend = %fe_name(key), backends = flush.len(), flushed = n,
                "flows of removed backends flushed");
        }
        let used = Self::referenced(shadow);
        let orphans: Vec<u32> = removed
            .iter()
            .copied()
            .filter(|id| !used.contains(id))
            .collect();
        self.backend
            .delete_backends(&orphans)
            .map_err(map_err("deleting orphan backends of", key))
    }

    /// Runs `each` over a batch with flushes deferred, then does them at once. If that
    /// fails, every entry of the batch is marked failed (retried; a retry is idempotent).
    /// `all`, when given, first tries the whole batch at once; if it fails, `each` runs
    /// entry by entry (idempotent) so every entry gets its own result.
    fn batch<T: FrontendSource>(
        &self,
        batch: &mut [BatchEntry<T, Error>],
        each: impl Fn(&Self, &FrontendDesc) -> Result<(), Error>,
        all: Option<WriteAll<Self>>,
    ) {
        *self.deferred.lock() = Some(Deferred::default());
        let together = all.is_some_and(|all| {
            let ds: Vec<FrontendDesc> = batch.iter().map(|e| e.object.desc()).collect();
            match all(self, &ds) {
                Ok(()) => true,
                Err(err) => {
                    tracing::debug!(error = %err, frontends = ds.len(), "batch write failed; writing frontend by frontend");
                    false
                }
            }
        });
        for e in batch.iter_mut() {
            e.result = Some(if together {
                Ok(())
            } else {
                each(self, &e.object.desc())
            });
        }
        let Some(d) = self.deferred.lock().take() else {
            return;
        };
        if d.flush.is_empty() && d.removed.is_empty() {
            return;
        }
        let key = (Ipv4Addr::UNSPECIFIED, 0, 0);
        if let Err(err) =
            self.with_shadow(|shadow| self.flush_and_delete(shadow, &key, &d.flush, &d.removed))
        {
            tracing::warn!(error = %err, "flushing removed backends failed; the batch is retried");
            let reason = err.to_string();
            for e in batch.iter_mut() {
                if matches!(e.result, Some(Ok(()))) {
                    e.result = Some(Err(Error::Deferred {
                        reason: reason.clone(),
                    }));
                }
            }
        }
    }

    /// Removes one frontend: header first, then slots, Maglev, reverse NAT, orphans.
    pub fn remove(&self, d: &FrontendDesc) -> Result<(), Error> {
        let key = d.key();
        self.with_shadow(|shadow| {
            let cur = shadow.remove(&key).unwrap_or_default();
            self.remove_written(shadow, &key, &cur, d.service_id)
        })
    }

    fn remove_written(
        &self,
        shadow: &HashMap<FrontendKey, Written>,
        key: &FrontendKey,
        cur: &Written,
        service_id: u16,
    ) -> Result<(), Error> {
        let mut headers = scope_slots(key, LB_SCOPE_EXT, 0, 0);
        let mut slots = scope_slots(key, LB_SCOPE_EXT, 1, slot_count(&cur.backends));
        if let Some(int) = &cur.internal {
            headers.extend(scope_slots(key, LB_SCOPE_INT, 0, 0));
            slots.extend(scope_slots(key, LB_SCOPE_INT, 1, slot_count(int)));
        }
        self.backend
            .delete_services(&headers)
            .map_err(map_err("deleting the header of", key))?;
        self.backend
            .delete_services(&slots)
            .map_err(map_err("deleting slots of", key))?;
        for id in [service_id, cur.service_id] {
            if id == 0 {
                continue;
            }
            self.backend
                .remove_maglev(id)
                .map_err(map_err("removing the Maglev table of", key))?;
            self.backend
                .delete_revnat(id)
                .map_err(map_err("deleting reverse NAT of", key))?;
        }
        self.backend
            .delete_src_ranges(&cur.range_entries(cur.service_id))
            .map_err(map_err("deleting source ranges of", key))?;
        let all: Vec<u32> = cur
            .all_backends()
            .collect::<BTreeSet<u32>>()
            .into_iter()
            .collect();
        self.forget_backends(shadow, key, cur.service_id, &all, &cur.addrs)
    }

    /// Removes every frontend, reverse NAT, Maglev table and backend not in `wanted`.
    pub fn prune_to(&self, wanted: &[FrontendDesc]) -> Result<(), Error> {
        let mut guard = self.shadow.lock();
        *guard = None;
        // The backends map as it is now: removing the stale frontends below only defers its
        // deletions, so it is still that when the orphans are picked.
        let (mut present, backend_ids) = self.read_maps()?;
        let want_keys: BTreeSet<FrontendKey> = wanted.iter().map(FrontendDesc::key).collect();
        let stale: Vec<FrontendKey> = present
            .keys()
            .filter(|k| !want_keys.contains(k))
            .copied()
            .collect();
        // Flushes deferred to one pass; the orphan backends are deleted below anyway.
        *self.deferred.lock() = Some(Deferred::default());
        let mut removed = Ok(());
        for k in &stale {
            if let Some(w) = present.remove(k) {
                removed = self.remove_written(&present, k, &w, 0);
                if removed.is_err() {
                    break;
                }
            }
        }
        let deferred = self.deferred.lock().take().unwrap_or_default();
        removed?;
        let none = (Ipv4Addr::UNSPECIFIED, 0, 0);
        self.backend
            .flush_backends(&deferred.flush)
            .map_err(map_err("flushing flows of pruned backends for", &none))?;
        let want_ids: BTreeSet<u16> = wanted.iter().map(|d| d.service_id).collect();
        for id in self
            .backend
            .revnat_ids()
            .map_err(map_err("listing reverse NAT for", &none))?
        {
            if !want_ids.contains(&id) {
                self.backend
                    .delete_revnat(id)
                    .map_err(map_err("pruning reverse NAT for", &none))?;
            }
        }
        let want_ranges: BTreeSet<SrcRange> = wanted
            .iter()
            .flat_map(|d| d.source_ranges.iter().map(|&(a, l)| (d.service_id, a, l)))
            .collect();
        let stale_ranges: Vec<SrcRange> = self
            .backend
            .src_ranges()
            .map_err(map_err("listing source ranges for", &none))?
            .into_iter()
            .filter(|r| !want_ranges.contains(r))
            .collect();
        self.backend
            .delete_src_ranges(&stale_ranges)
            .map_err(map_err("pruning source ranges for", &none))?;
        for w in present.values_mut() {
            w.ranges
                .retain(|&(a, l)| want_ranges.contains(&(w.service_id, a, l)));
        }
        for id in self.backend.maglev_ids() {
            if !want_ids.contains(&id) || self.algorithm != Algorithm::Maglev {
                self.backend
                    .remove_maglev(id)
                    .map_err(map_err("pruning Maglev tables for", &none))?;
            }
        }
        let want_backends: BTreeSet<u32> = wanted
            .iter()
            .flat_map(|d| d.backends.iter().chain(d.internal.iter().flatten()))
            .map(|b| b.id)
            .chain(Self::referenced(&present))
            .collect();
        let orphans: Vec<u32> = backend_ids
            .into_iter()
            .filter(|id| !want_backends.contains(id))
            .collect();
        if !orphans.is_empty() || !stale.is_empty() {
            tracing::info!(
                frontends = stale.len(),
                backends = orphans.len(),
                "pruned load-balancer entries no frontend wants"
            );
        }
        self.backend
            .delete_backends(&orphans)
            .map_err(map_err("pruning backends for", &none))?;
        *guard = Some(present);
        Ok(())
    }
}

#[async_trait]
impl<T, B> Operations<T> for LbMapOps<B>
where
    T: FrontendSource + Reconcilable,
    B: LbBackend,
{
    type Error = Error;

    async fn update(&self, _txn: &ReadTxn, _rev: Revision, obj: &T) -> Result<(), Error> {
        self.apply(&obj.desc())
    }

    async fn delete(&self, _txn: &ReadTxn, _rev: Revision, obj: &T) -> Result<(), Error> {
        self.remove(&obj.desc())
    }

    async fn prune(&self, _txn: &ReadTxn, objects: ObjIter<'_, T>) -> Result<(), Error> {
        let wanted: Vec<FrontendDesc> = objects.map(|o| o.desc()).collect();
        self.prune_to(&wanted)
    }

    async fn update_batch(&self, _txn: &ReadTxn, batch: &mut [BatchEntry<T, Error>]) {
        self.batch(batch, Self::apply, Some(Self::apply_many));
    }

    async fn delete_batch(&self, _txn: &ReadTxn, batch: &mut [BatchEntry<T, Error>]) {
        self.batch(batch, Self::remove, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake map set that logs every call.
    #[derive(Default)]
    struct Fake {
        services: Mutex<BTreeMap<Lb4Key, Lb4Service>>,
        backends: Mutex<BTreeMap<u32, Lb4Backend>>,
        revnat: Mutex<BTreeMap<u16, Lb4RevNat>>,
        maglev: Mutex<BTreeMap<u16, Vec<u32>>>,
        ranges: Mutex<BTreeSet<SrcRange>>,
        log: Mutex<Vec<String>>,
    }

    impl LbBackend for Arc<Fake> {
        fn write_backends(&self, b: &[(u32, Lb4Backend)]) -> Result<(), cilium_bpf::Error> {
            let ids: Vec<u32> = b.iter().map(|(i, _)| *i).collect();
            self.log.lock().push(format!("backends {ids:?}"));
            self.backends.lock().extend(b.iter().copied());
            Ok(())
        }
        fn delete_backends(&self, ids: &[u32]) -> Result<(), cilium_bpf::Error> {
            self.log.lock().push(format!("del-backends {ids:?}"));
            let mut m = self.backends.lock();
            for i in ids {
                m.remove(i);
            }
            Ok(())
        }
        fn write_services(&self, e: &[(Lb4Key, Lb4Service)]) -> Result<(), cilium_bpf::Error> {
            let slots = slot_names(e.iter().map(|(k, _)| k));
            self.log.lock().push(format!("slots {slots}"));
            self.services.lock().extend(e.iter().copied());
            Ok(())
        }
        fn delete_services(&self, keys: &[Lb4Key]) -> Result<(), cilium_bpf::Error> {
            let slots = slot_names(keys);
            self.log.lock().push(format!("del-slots {slots}"));
            let mut m = self.services.lock();
            for k in keys {
                m.remove(k);
            }
            Ok(())
        }
        fn set_maglev(&self, id: u16, table: &[u32]) -> Result<(), cilium_bpf::Error> {
            self.log.lock().push(format!("maglev {id}"));
            self.maglev.lock().insert(id, table.to_vec());
            Ok(())
        }
        fn remove_maglev(&self, id: u16) -> Result<(), cilium_bpf::Error> {
            self.maglev.lock().remove(&id);
            Ok(())
        }
        fn write_revnat(&self, id: u16, v: Lb4RevNat) -> Result<(), cilium_bpf::Error> {
            self.log.lock().push(format!("revnat {id}"));
            self.revnat.lock().insert(id, v);
            Ok(())
        }
        fn delete_revnat(&self, id: u16) -> Result<(), cilium_bpf::Error> {
            self.revnat.lock().remove(&id);
            Ok(())
        }
        fn write_src_ranges(&self, r: &[SrcRange]) -> Result<(), cilium_bpf::Error> {
            if !r.is_empty() {
                self.log.lock().push(format!("ranges {}", fmt_ranges(r)));
            }
            self.ranges.lock().extend(r.iter().copied());
            Ok(())
        }
        fn delete_src_ranges(&self, r: &[SrcRange]) -> Result<(), cilium_bpf::Error> {
            if !r.is_empty() {
                self.log
                    .lock()
                    .push(format!("del-ranges {}", fmt_ranges(r)));
            }
            let mut m = self.ranges.lock();
            for x in r {
                m.remove(x);
            }
            Ok(())
        }
        fn src_ranges(&self) -> Result<Vec<SrcRange>, cilium_bpf::Error> {
            Ok(self.ranges.lock().iter().copied().collect())
        }
        fn dump_services(&self) -> Result<Vec<(Lb4Key, Lb4Service)>, cilium_bpf::Error> {
            Ok(self.services.lock().iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn dump_backends(&self) -> Result<Vec<(u32, Lb4Backend)>, cilium_bpf::Error> {
            Ok(self.backends.lock().iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn revnat_ids(&self) -> Result<Vec<u16>, cilium_bpf::Error> {
            Ok(self.revnat.lock().keys().copied().collect())
        }
        fn maglev_ids(&self) -> Vec<u16> {
            self.maglev.lock().keys().copied().collect()
        }
        fn flush_backends(
            &self,
            targets: &[(u16, u32, Lb4Backend)],
        ) -> Result<usize, cilium_bpf::Error> {
            for (_, backend_id, _) in targets {
                self.log.lock().push(format!("flush {backend_id}"));
            }
            Ok(0)
        }
    }

    /// `[1, 2, i0, i1]`: slot numbers, those of the internal scope prefixed with `i`.
    fn slot_names<'a>(keys: impl IntoIterator<Item = &'a Lb4Key>) -> String {
        let names: Vec<String> = keys
            .into_iter()
            .map(|k| match k.scope {
                LB_SCOPE_INT => format!("i{}", k.slot),
                _ => k.slot.to_string(),
            })
            .collect();
        format!("[{}]", names.join(", "))
    }

    fn backend_descs(ids: &[u32]) -> Vec<BackendDesc> {
        ids.iter()
            .map(|b| BackendDesc {
                id: *b,
                address: Ipv4Addr::new(10, 200, 0, u8::try_from(*b).unwrap()),
                port: 8080,
                terminating: false,
            })
            .collect()
    }

    fn fe(id: u16, backends: &[u32]) -> FrontendDesc {
        FrontendDesc {
            address: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            proto: 6,
            external: false,
            kind: "ClusterIP".into(),
            service: "x/s".into(),
            service_id: id,
            backends: backend_descs(backends),
            affinity_timeout_secs: 0,
            source_ranges: Vec::new(),
            source_ranges_deny: false,
            internal: None,
        }
    }

    /// An external frontend with `local` backends for outside clients and `all` for clients
    /// on the node.
    fn two_scopes(id: u16, local: &[u32], all: &[u32]) -> FrontendDesc {
        FrontendDesc {
            external: true,
            kind: "NodePort".into(),
            internal: Some(backend_descs(all)),
            ..fe(id, local)
        }
    }

    fn internal_header(fake: &Fake) -> Option<Lb4Service> {
        let key = Lb4Key::scoped(Ipv4Addr::new(10, 96, 0, 10), 80, 6, 0, LB_SCOPE_INT);
        fake.services.lock().get(&key).copied()
    }

    #[test]
    fn internal_scope_is_written_before_the_flagged_header_and_deleted_after_it() {
        let fake = Arc::new(Fake::default());
        let ops = LbMapOps::new(fake.clone(), Algorithm::Maglev, 251);
        ops.apply(&two_scopes(7, &[1], &[1, 2])).unwrap();
        assert_eq!(
            fake.log.lock().clone(),
            vec![
                "backends [1, 1, 2]",
                "slots [1, i1, i2]",
                "maglev 7",
                "revnat 7",
                "slots [i0]",
                "slots [0]"
            ]
        );
        let hdr = fake.services.lock()[&Lb4Key::new(Ipv4Addr::new(10, 96, 0, 10), 80, 6, 0)];
        assert_eq!((hdr.count, hdr.algorithm), (1, LB_ALG_MAGLEV));
        assert_ne!(hdr.flags & SVC_F_TWO_SCOPES, 0);
        let int = internal_header(&fake).unwrap();
        // The internal scope picks randomly and is not flagged itself.
        assert_eq!(
            (int.count, int.algorithm, int.backend_id, int.rev_nat_id),
            (2, LB_ALG_RANDOM, 0, 7)
        );
        assert_eq!(int.flags & SVC_F_TWO_SCOPES, 0);
        assert_ne!(int.flags & SVC_F_EXTERNAL, 0);

        // The internal set shrinks: its surplus slot goes after the headers; backend 3 was
        // never there, backend 2 stays in the external set now.
        ops.apply(&two_scopes(7, &[1, 2], &[1, 2, 3])).unwrap();
        fake.log.lock().clear();
        ops.apply(&two_scopes(7, &[1, 2], &[1, 2])).unwrap();
        let log = fake.log.lock().clone();
        assert_eq!(
            &log[log.len() - 3..],
            ["del-slots [i3]", "flush 3", "del-backends [3]"]
        );

        // Back to one scope: the external header loses the flag first, then the internal
        // header goes, then its slots; backend 2, in neither set now, is flushed.
        fake.log.lock().clear();
        ops.apply(&fe(7, &[1])).unwrap();
        let log = fake.log.lock().clone();
        let hdr = log.iter().position(|l| l == "slots [0]").unwrap();
        assert_eq!(
            &log[hdr..],
            [
                "slots [0]",
                "del-slots [i0]",
                "del-slots [2, i1, i2]",
                "flush 2",
                "del-backends [2]"
            ],
            "{log:?}"
        );
        assert!(internal_header(&fake).is_none());
        assert_eq!(header_flags(&fake) & SVC_F_TWO_SCOPES, 0);
        assert_eq!(fake.services.lock().len(), 2);

        // Removal: both headers first, then both scopes' slots.
        ops.apply(&two_scopes(7, &[1], &[1, 4])).unwrap();
        fake.log.lock().clear();
        ops.remove(&two_scopes(7, &[1], &[1, 4])).unwrap();
        let log = fake.log.lock().clone();
        assert_eq!(&log[..2], ["del-slots [0, i0]", "del-slots [1, i1, i2]"]);
        assert!(fake.services.lock().is_empty() && fake.backends.lock().is_empty());
    }

    #[test]
    fn removed_backends_are_flushed_after_a_restart_and_forgotten_after_the_flush() {
        let fake = Arc::new(Fake::default());
        let ops = LbMapOps::new(fake.clone(), Algorithm::Random, 251);
        ops.apply(&fe(7, &[1, 2])).unwrap();
        // A new process whose first write drops backend 2: its flows are flushed, found by
        // the address the backends map holds.
        let restarted = LbMapOps::new(fake.clone(), Algorithm::Random, 251);
        fake.log.lock().clear();
        restarted.apply(&fe(7, &[1])).unwrap();
        let log = fake.log.lock().clone();
        assert!(log.iter().any(|l| l == "flush 2"), "{log:?}");
        // Backends coming and going: the shadow keeps only the addresses in use.
        for b in 3..60 {
            restarted.apply(&fe(7, &[1, b])).unwrap();
        }
        let shadow = restarted.shadow.lock();
        let w = &shadow.as_ref().unwrap()[&fe(7, &[]).key()];
        assert_eq!(w.addrs.keys().copied().collect::<Vec<_>>(), [1, 59]);
    }

    #[test]
    fn a_restart_finds_the_internal_scope_and_drops_or_prunes_it() {
        let fake = Arc::new(Fake::default());
        let ops = LbMapOps::new(fake.clone(), Algorithm::Random, 251);
        ops.apply(&two_scopes(7, &[1], &[1, 2, 3])).unwrap();
        // A new process: the shadow comes from the maps.
        let restarted = LbMapOps::new(fake.clone(), Algorithm::Random, 251);
        restarted.apply(&two_scopes(7, &[1], &[1, 2])).unwrap();
        assert_eq!(internal_header(&fake).map(|h| h.count), Some(2));
        assert!(
            !fake
                .services
                .lock()
                .keys()
                .any(|k| k.scope == LB_SCOPE_INT && k.slot == 3),
            "the internal scope's surplus slot stayed"
        );
        assert!(!fake.backends.lock().contains_key(&3));
        let again = LbMapOps::new(fake.clone(), Algorithm::Random, 251);
        again.apply(&fe(7, &[1])).unwrap();
        assert!(
            !fake.services.lock().keys().any(|k| k.scope == LB_SCOPE_INT),
            "the internal scope outlived a restart"
        );
        assert!(!fake.backends.lock().contains_key(&2));
        // A frontend nobody wants any more, with two scopes: pruned whole.
        again.apply(&two_scopes(7, &[1], &[1, 5])).unwrap();
        let last = LbMapOps::new(fake.clone(), Algorithm::Random, 251);
        last.prune_to(&[]).unwrap();
        assert!(fake.services.lock().is_empty() && fake.backends.lock().is_empty());
    }

    fn fmt_ranges(r: &[SrcRange]) -> String {
        let v: Vec<String> = r.iter().map(|(id, a, l)| format!("{id}:{a}/{l}")).collect();
        v.join(",")
    }

    fn header_flags(fake: &Fake) -> u8 {
        fake.services.lock()[&Lb4Key::new(Ipv4Addr::new(10, 96, 0, 10), 80, 6, 0)].flags
    }

    #[test]
    fn source_ranges_are_written_before_the_header_and_deleted_after_it() {
        let fake = Arc::new(Fake::default());
        let ops = LbMapOps::new(fake.clone(), Algorithm::Random, 251);
        let net = |a: [u8; 4], l: u8| (Ipv4Addr::from(a), l);
        let mut d = fe(7, &[1]);
        d.source_ranges = vec![net([192, 0, 2, 0], 24), net([198, 51, 100, 7], 32)];
        ops.apply(&d).unwrap();
        assert_eq!(
            fake.log.lock().clone(),
            vec![
                "backends [1]",
                "slots [1]",
                "revnat 7",
                "ranges 7:192.0.2.0/24,7:198.51.100.7/32",
                "slots [0]"
            ]
        );
        assert_eq!(
            header_flags(&fake) & (SVC_F_SRC_RANGE | SVC_F_SRC_RANGE_DENY),
            SVC_F_SRC_RANGE
        );
        // The deny policy flips one header bit over the same entries.
        d.source_ranges_deny = true;
        ops.apply(&d).unwrap();
        assert_eq!(
            header_flags(&fake) & (SVC_F_SRC_RANGE | SVC_F_SRC_RANGE_DENY),
            SVC_F_SRC_RANGE | SVC_F_SRC_RANGE_DENY
        );
        assert_eq!(fake.ranges.lock().len(), 2);
        d.source_ranges_deny = false;
        ops.apply(&d).unwrap();
        // One range replaced: the new one goes in before the header, the old one after.
        fake.log.lock().clear();
        d.source_ranges = vec![net([192, 0, 2, 0], 24), net([203, 0, 113, 0], 25)];
        ops.apply(&d).unwrap();
        let log = fake.log.lock().clone();
        let pos = |l: &str| log.iter().position(|x| x == l).unwrap();
        assert!(
            pos("ranges 7:192.0.2.0/24,7:203.0.113.0/25") < pos("slots [0]")
                && pos("slots [0]") < pos("del-ranges 7:198.51.100.7/32"),
            "{log:?}"
        );
        // No ranges: the flag goes with the header, then the entries.
        fake.log.lock().clear();
        d.source_ranges.clear();
        d.source_ranges_deny = true;
        ops.apply(&d).unwrap();
        assert_eq!(
            header_flags(&fake) & (SVC_F_SRC_RANGE | SVC_F_SRC_RANGE_DENY),
            0,
            "no ranges: nothing to check, whatever the policy"
        );
        d.source_ranges_deny = false;
        assert_eq!(
            fake.log.lock().last().map(String::as_str),
            Some("del-ranges 7:192.0.2.0/24,7:203.0.113.0/25")
        );
        assert!(fake.ranges.lock().is_empty());
        // Removal deletes them too, and a restart prunes what no frontend wants.
        d.source_ranges = vec![net([192, 0, 2, 0], 24)];
        ops.apply(&d).unwrap();
        ops.remove(&d).unwrap();
        assert!(fake.ranges.lock().is_empty());
        ops.apply(&d).unwrap();
        fake.ranges
            .lock()
            .insert((9, Ipv4Addr::new(10, 0, 0, 0), 8));
        let restarted = LbMapOps::new(fake.clone(), Algorithm::Random, 251);
        restarted.prune_to(std::slice::from_ref(&d)).unwrap();
        assert_eq!(
            fake.ranges.lock().iter().copied().collect::<Vec<_>>(),
            vec![(7, Ipv4Addr::new(192, 0, 2, 0), 24)]
        );
        // The reloaded shadow knows the written range: dropping it deletes it.
        d.source_ranges.clear();
        restarted.apply(&d).unwrap();
        assert!(fake.ranges.lock().is_empty());
    }

    #[test]
    fn writes_backends_slots_maglev_revnat_then_header_then_trims() {
        let fake = Arc::new(Fake::default());
        let ops = LbMapOps::new(fake.clone(), Algorithm::Maglev, 251);
        ops.apply(&fe(7, &[1, 2, 3])).unwrap();
        assert_eq!(
            fake.log.lock().clone(),
            vec![
                "backends [1, 2, 3]",
                "slots [1, 2, 3]",
                "maglev 7",
                "revnat 7",
                "slots [0]"
            ]
        );
        let hdr = fake.services.lock()[&Lb4Key::new(Ipv4Addr::new(10, 96, 0, 10), 80, 6, 0)];
        assert_eq!(
            (hdr.count, hdr.algorithm, hdr.backend_id),
            (3, LB_ALG_MAGLEV, 251)
        );
        assert_eq!(fake.maglev.lock()[&7].len(), 251);
        fake.log.lock().clear();
        // Backend 3 leaves: header (count 2) before the surplus slot 3 goes, then flush
        // and delete the orphan.
        ops.apply(&fe(7, &[1, 2])).unwrap();
        assert_eq!(
            fake.log.lock().clone(),
            vec![
                "backends [1, 2]",
                "slots [1, 2]",
                "maglev 7",
                "revnat 7",
                "slots [0]",
                "del-slots [3]",
                "flush 3",
                "del-backends [3]"
            ]
        );
        assert_eq!(fake.services.lock().len(), 3);
        assert!(!fake.backends.lock().contains_key(&3));
        // No backends: the header says so (refuse at once).
        ops.apply(&fe(7, &[])).unwrap();
        let hdr = fake.services.lock()[&Lb4Key::new(Ipv4Addr::new(10, 96, 0, 10), 80, 6, 0)];
        assert_eq!(hdr.count, 0);
        assert_ne!(hdr.flags & SVC_F_NO_BACKENDS, 0);
        fake.log.lock().clear();
        ops.apply(&fe(7, &[4])).unwrap();
        ops.remove(&fe(7, &[4])).unwrap();
        let log = fake.log.lock().clone();
        let del = log.iter().position(|l| l == "del-slots [0]").unwrap();
        assert_eq!(
            log[del + 1],
            "del-slots [1]",
            "header removed before the slots: {log:?}"
        );
        assert!(fake.services.lock().is_empty() && fake.backends.lock().is_empty());
        assert!(fake.revnat.lock().is_empty() && fake.maglev.lock().is_empty());
    }

    #[test]
    fn a_batch_writes_each_step_once_for_all_its_frontends_headers_last() {
        let fake = Arc::new(Fake::default());
        let ops = LbMapOps::new(fake.clone(), Algorithm::Random, 251);
        let mut other = fe(8, &[4, 5]);
        other.port = 81;
        ops.apply(&fe(7, &[1, 2, 3])).unwrap();
        fake.log.lock().clear();
        // :80 loses backend 3, :81 is new.
        ops.apply_many(&[fe(7, &[1, 2]), other]).unwrap();
        assert_eq!(
            fake.log.lock().clone(),
            vec![
                "backends [1, 2, 4, 5]",
                "slots [1, 2, 1, 2]",
                "revnat 7",
                "revnat 8",
                "slots [0, 0]",
                "del-slots [3]",
                "flush 3",
                "del-backends [3]"
            ]
        );
        assert_eq!(fake.services.lock().len(), 6);
        assert_eq!(
            fake.backends.lock().keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 4, 5]
        );
        // The same state as writing them one by one.
        let single = Arc::new(Fake::default());
        let one = LbMapOps::new(single.clone(), Algorithm::Random, 251);
        let mut other = fe(8, &[4, 5]);
        other.port = 81;
        one.apply(&fe(7, &[1, 2])).unwrap();
        one.apply(&other).unwrap();
        assert_eq!(*single.services.lock(), *fake.services.lock());
        assert_eq!(*single.backends.lock(), *fake.backends.lock());
        assert_eq!(*single.revnat.lock(), *fake.revnat.lock());
    }

    #[test]
    fn shared_backends_survive_and_prune_after_restart_removes_the_rest() {
        let fake = Arc::new(Fake::default());
        let ops = LbMapOps::new(fake.clone(), Algorithm::Random, 251);
        let mut other = fe(8, &[1, 9]);
        other.port = 81;
        ops.apply(&fe(7, &[1, 2])).unwrap();
        ops.apply(&other).unwrap();
        ops.apply(&fe(7, &[2])).unwrap();
        assert!(fake.backends.lock().contains_key(&1), "still used by :81");
        // Restart: a new instance prunes to what the table wants.
        let ops = LbMapOps::new(fake.clone(), Algorithm::Random, 251);
        ops.prune_to(&[fe(7, &[2])]).unwrap();
        assert_eq!(
            fake.backends.lock().keys().copied().collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(
            fake.revnat.lock().keys().copied().collect::<Vec<_>>(),
            vec![7]
        );
        assert!(fake.services.lock().keys().all(|k| k.port() == 80));
    }
}
